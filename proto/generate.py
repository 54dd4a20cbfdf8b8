"""Regenerate the committed Python stubs of the Aisle API and pin its wire contract.

Run from anywhere: `python proto/generate.py`. It needs grpcio-tools at the version pinned in
pyproject.toml (the `dev` extra), because generated code embeds the generator's version.

Besides the stubs it maintains `aisle/v1/api.lock.json`: every service method and message field
ever published, with its number and type. Entries are only ever added; tests/proto checks that
the current .proto files still contain every locked entry unchanged, so a renumbering, a type
change or a removal (without `reserved`) fails the build.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
API_DIR = PROTO_ROOT / "aisle" / "v1"
LOCK_PATH = API_DIR / "api.lock.json"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto files of the API, sorted, relative to `root`."""
    return sorted(p.relative_to(root) for p in (root / "aisle" / "v1").glob("*.proto"))


def generate(out_dir: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) over the API into `out_dir`; return the generated files."""
    from grpc_tools import protoc

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files(root)],
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(args)}")
    return sorted(p.relative_to(out_dir) for p in out_dir.rglob("*_pb2*.py*"))


def describe_api(out_dir: Path) -> dict[str, dict[str, str]]:
    """Wire contract of freshly generated stubs in `out_dir`: element → "number type" strings.

    Keys are `message.Name` (fields: "number type label"), `enum.Name` (values: "number") and
    `service.Name` (methods: "input -> output").
    """
    import importlib.util

    from google.protobuf import descriptor_pb2

    contract: dict[str, dict[str, str]] = {}
    for pb2 in sorted((out_dir / "aisle" / "v1").glob("*_pb2.py")):
        spec = importlib.util.spec_from_file_location(f"_lockgen_{pb2.stem}", pb2)
        module = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        spec.loader.exec_module(module)
        file_proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file_proto)
        _describe_file(file_proto, contract)
    return contract


def _describe_file(file_proto, contract: dict[str, dict[str, str]]) -> None:
    package = file_proto.package

    def visit_message(msg, prefix: str) -> None:
        name = f"{prefix}.{msg.name}"
        contract[f"message {name}"] = {
            f.name: f"{f.number} {f.type} {f.label} {f.type_name}".strip() for f in msg.field
        }
        for nested in msg.nested_type:
            visit_message(nested, name)
        for enum in msg.enum_type:
            contract[f"enum {name}.{enum.name}"] = {v.name: str(v.number) for v in enum.value}

    for msg in file_proto.message_type:
        visit_message(msg, package)
    for enum in file_proto.enum_type:
        contract[f"enum {package}.{enum.name}"] = {v.name: str(v.number) for v in enum.value}
    for service in file_proto.service:
        contract[f"service {package}.{service.name}"] = {
            m.name: f"{m.input_type} -> {m.output_type}" for m in service.method
        }


def lock_violations(locked: dict, current: dict) -> list[str]:
    """What in `locked` the current contract changed or removed (empty list: compatible)."""
    problems = []
    for element, members in locked.items():
        if element not in current:
            problems.append(f"{element} was removed")
            continue
        for member, signature in members.items():
            now = current[element].get(member)
            if now is None:
                problems.append(f"{element}.{member} ({signature}) was removed")
            elif now != signature:
                problems.append(f"{element}.{member} changed from '{signature}' to '{now}'")
    return problems


def merge_lock(locked: dict, current: dict) -> dict:
    """The lock with the current contract's new entries added (nothing is ever dropped)."""
    merged = {element: dict(members) for element, members in locked.items()}
    for element, members in current.items():
        merged.setdefault(element, {})
        for member, signature in members.items():
            merged[element].setdefault(member, signature)
    return {k: dict(sorted(v.items())) for k, v in sorted(merged.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate aisle/v1 Python stubs and extend api.lock.json with new fields."
    )
    parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        files = generate(out)
        for rel in files:
            (PROTO_ROOT / rel).write_bytes((out / rel).read_bytes())
        current = describe_api(out)
    locked = json.loads(LOCK_PATH.read_text()) if LOCK_PATH.exists() else {}
    problems = lock_violations(locked, current)
    if problems:
        for p in problems:
            print(f"incompatible API change: {p}", file=sys.stderr)
        print("Add fields with new numbers instead; mark removed ones `reserved`.", file=sys.stderr)
        return 1
    LOCK_PATH.write_text(json.dumps(merge_lock(locked, current), indent=1) + "\n")
    print(f"wrote {len(files)} stub files and {LOCK_PATH.relative_to(PROTO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
