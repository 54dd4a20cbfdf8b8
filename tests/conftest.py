"""Fixtures shared by every test suite: a tiny model, small catalogs, indexes and a server."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from engine.client import AisleClient
from engine.server import AisleServer, ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from tests.helpers import make_tiny_model, write_catalog, write_title_catalog


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT model dir (hidden size 32), shared by the session: do not modify it,
    copy it (shutil.copytree) when a test needs to change files."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


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


@pytest.fixture(scope="session")
def title_catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """(path of a 60-item title-only products.jsonl, its records): see write_title_catalog."""
    path = tmp_path_factory.mktemp("title_catalog") / "products.jsonl"
    return path, write_title_catalog(path)


@pytest.fixture(scope="session")
def index_root(tmp_path_factory, title_catalog, tiny_model_dir) -> Path:
    """An index root of ``title_catalog`` (2 shards, tiny model). Read-only."""
    root = tmp_path_factory.mktemp("index")
    build_index(BuildConfig(catalog=title_catalog[0], out=root, model=tiny_model_dir, shards=2))
    return root


@pytest.fixture(scope="module")
def server(index_root: Path) -> AisleServer:
    """A real gRPC server on 127.0.0.1 (port 0) serving ``index_root``."""
    srv = create_server(ServerConfig(index=index_root, port=0, workers=4))
    yield srv
    srv.stop(0)


@pytest.fixture()
def client(server: AisleServer) -> AisleClient:
    with AisleClient(f"127.0.0.1:{server.port}") as c:
        yield c


@pytest.fixture(scope="module")
def edge_root(tmp_path_factory, index_root) -> Path:
    """A private copy of ``index_root`` for the gRPC edge tests: a write that slips through
    lands here."""
    root = tmp_path_factory.mktemp("edge") / "index"
    shutil.copytree(index_root, root)
    return root


@pytest.fixture(scope="module")
def edge_server(edge_root):
    """A real gRPC server on 127.0.0.1 over ``edge_root``."""
    server = create_server(ServerConfig(index=edge_root, port=0, workers=4))
    yield server
    server.stop(0)


@pytest.fixture()
def channel(edge_server):
    """A raw channel to ``edge_server`` (for stubs and malformed bytes)."""
    with grpc.insecure_channel(f"127.0.0.1:{edge_server.port}") as ch:
        yield ch
