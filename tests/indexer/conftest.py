"""Fixtures for the indexer tests: a small synthetic catalog and an index built from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.build.config import BuildConfig
from indexer.build.local import build_index

_COLORS = ["red", "blue", "green", "black", "white", "grey", "silver", "brown"]
_NOUNS = ["sofa", "lamp", "chair", "table", "drill", "towel", "rug", "desk", "mug", "kettle"]
_BRANDS = ["Acme", "Globex", "Initech", None]


def write_catalog(path: Path, n: int = 200, *, seed: int = 0) -> list[dict]:
    """A JSONL catalog of ``n`` items with unique titles (so no two items share a vector);
    some items lack optional fields, to check that nulls round-trip."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        color, noun = rng.choice(_COLORS), rng.choice(_NOUNS)
        record: dict = {"item_id": f"SKU{i:04d}", "title": f"{color} {noun} model {i}"}
        brand = _BRANDS[i % len(_BRANDS)]
        if brand is not None:
            record["brand"] = brand
        if i % 3:
            record["price"] = round(float(rng.uniform(1, 500)), 2)
        records.append(record)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """(path of a 200-item products.jsonl, its records in file order)."""
    path = tmp_path_factory.mktemp("catalog") / "products.jsonl"
    return path, write_catalog(path)


@pytest.fixture(scope="session")
def flat_root(tmp_path_factory, catalog, tiny_model_dir) -> Path:
    """An index root with one published version: Flat, 3 shards. Read-only: copy it to modify."""
    root = tmp_path_factory.mktemp("flat_index")
    build_index(BuildConfig(catalog=catalog[0], out=root, model=tiny_model_dir, shards=3))
    return root


@pytest.fixture()
def flat_root_copy(flat_root: Path, tmp_path: Path) -> Path:
    """A private copy of ``flat_root`` that a test may corrupt."""
    return Path(shutil.copytree(flat_root, tmp_path / "index"))
