"""The committed stubs match a fresh generation, and the API stays wire-compatible."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "aisle_proto_generate", PROTO_ROOT / "generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[object, Path]:
    gen = _generator()
    out = tmp_path_factory.mktemp("stubs")
    gen.generate(out)
    return gen, out


def test_committed_stubs_equal_fresh_generation(fresh) -> None:
    _, out = fresh
    generated = sorted(p.relative_to(out) for p in out.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*_pb2*.py*"))
    assert generated == committed, "stub file set differs: run `python proto/generate.py`"
    for rel in generated:
        assert (out / rel).read_bytes() == (PROTO_ROOT / rel).read_bytes(), (
            f"{rel} is stale: run `python proto/generate.py` and commit the result"
        )


def test_api_keeps_every_locked_field_and_method(fresh) -> None:
    gen, out = fresh
    locked = json.loads((PROTO_ROOT / "aisle" / "v1" / "api.lock.json").read_text())
    assert gen.lock_violations(locked, gen.describe_api(out)) == []


def test_lock_covers_the_current_api(fresh) -> None:
    # New fields must be pinned too, so that a later change to them is caught.
    gen, out = fresh
    locked = json.loads((PROTO_ROOT / "aisle" / "v1" / "api.lock.json").read_text())
    current = gen.describe_api(out)
    assert gen.merge_lock(locked, current) == locked, (
        "run `python proto/generate.py` to pin new fields"
    )


def test_lock_check_catches_renumbering_and_removal() -> None:
    gen = _generator()
    locked = {"message aisle.v1.X": {"a": "1 9 1", "b": "2 5 1"}}
    assert (
        gen.lock_violations(
            locked, {"message aisle.v1.X": {"a": "1 9 1", "b": "2 5 1", "c": "3 9 1"}}
        )
        == []
    )
    renumbered = gen.lock_violations(locked, {"message aisle.v1.X": {"a": "3 9 1", "b": "2 5 1"}})
    assert renumbered == ["message aisle.v1.X.a changed from '1 9 1' to '3 9 1'"]
    removed = gen.lock_violations(locked, {"message aisle.v1.X": {"a": "1 9 1"}})
    assert removed == ["message aisle.v1.X.b (2 5 1) was removed"]
    assert gen.lock_violations(locked, {}) == ["message aisle.v1.X was removed"]


def test_services_expose_the_documented_methods() -> None:
    from aisle.v1 import events_pb2, index_admin_pb2, retrieval_pb2

    def methods(module, service):
        return set(module.DESCRIPTOR.services_by_name[service].methods_by_name)

    assert methods(retrieval_pb2, "Retrieval") == {
        "Search",
        "BatchSearch",
        "Recommend",
        "SimilarItems",
        "Embed",
    }
    assert methods(index_admin_pb2, "IndexAdmin") == {"Upsert", "Delete", "Reload", "Status"}
    assert methods(events_pb2, "Events") == {"Record"}
