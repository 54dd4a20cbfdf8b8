"""The house rules on imports: layers and no cycles (import-linter), one home per name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "indexer", "engine", "benchmarks")


def modules(*roots: str) -> dict[str, ast.Module]:
    """Dotted module name → parsed source, for every .py file under ``roots``."""
    out = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def first_party_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module
        and node.module.split(".")[0] in PACKAGES + ("tests",)
    ]


def test_import_linter_contracts_are_kept() -> None:
    # The contracts live in pyproject.toml: engine -> indexer -> trainer, the layers inside each
    # package, and no cycles between the modules of any package.
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--config", "pyproject.toml", "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_private_name_is_imported_from_another_module() -> None:
    found = [
        f"{module}: from {node.module} import {alias.name}"
        for module, tree in modules(*PACKAGES, "tests").items()
        for node in first_party_imports(tree)
        for alias in node.names
        if alias.name.startswith("_") and node.module != module
    ]
    assert not found, "make the name public where it belongs, or move the code:\n" + "\n".join(
        found
    )


def test_no_module_only_re_exports() -> None:
    # A facade: a module (not a package __init__) whose body is imports and nothing else.
    facades = []
    for module, tree in modules(*PACKAGES).items():
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and n is tree.body[0])]
        if body and all(isinstance(n, ast.Import | ast.ImportFrom) for n in body):
            facades.append(module)
    assert not facades


@pytest.mark.parametrize("package", PACKAGES)
def test_package_inits_import_nothing(package: str) -> None:
    # Every name has one import path: a package __init__ holds a docstring, never re-exports.
    inits = [p for p in (REPO / package).rglob("__init__.py")]
    importing = [
        str(p.relative_to(REPO))
        for p in inits
        if any(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.parse(p.read_text()).body)
    ]
    assert not importing
