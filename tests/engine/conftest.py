"""Fixtures for the engine tests: a small catalog, an index built with the tiny model, a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.client import AisleClient
from engine.server import AisleServer, ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index

COLORS = ["red", "blue", "green", "black", "white", "grey"]
NOUNS = ["sofa", "lamp", "chair", "table", "kettle", "drill", "skillet", "towel", "rug", "desk"]


def write_catalog(path: Path, n: int = 60) -> list[dict]:
    """Title-only items: their item text equals the title, so a query equal to a title must
    retrieve that item first whatever the (random) model weights are."""
    records = []
    for i in range(n):
        color, noun = COLORS[i % len(COLORS)], NOUNS[(i // len(COLORS)) % len(NOUNS)]
        records.append({"item_id": f"SKU{i:04d}", "title": f"{color} {noun} model {i}"})
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    path = tmp_path_factory.mktemp("catalog") / "products.jsonl"
    return path, write_catalog(path)


@pytest.fixture(scope="session")
def index_root(tmp_path_factory, catalog, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("index")
    build_index(BuildConfig(catalog=catalog[0], out=root, model=tiny_model_dir, shards=2))
    return root


@pytest.fixture(scope="module")
def server(index_root: Path) -> AisleServer:
    srv = create_server(ServerConfig(index=index_root, port=0, workers=4))
    yield srv
    srv.stop(0)


@pytest.fixture()
def client(server: AisleServer) -> AisleClient:
    with AisleClient(f"127.0.0.1:{server.port}") as c:
        yield c
