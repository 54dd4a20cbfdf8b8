"""Reload, auth, and refusing corrupt or mismatched indexes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import grpc
import pytest

from engine.client import AisleClient
from engine.search.snapshot import MODELS_ENV, find_model_dir
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.storage.manifest import IndexFormatError, ModelMismatchError
from tests.helpers import make_tiny_model, write_title_catalog

TOKEN = "s3cret-admin-token-for-tests"


@pytest.fixture()
def own_root(tmp_path, index_root) -> Path:
    """A private copy of the shared index root that a test may change."""
    root = tmp_path / "index"
    shutil.copytree(index_root, root)
    return root


def test_reload_switches_to_a_new_version_and_back(own_root, tmp_path, tiny_model_dir) -> None:
    server = create_server(ServerConfig(index=own_root, port=0, admin_token=TOKEN))
    try:
        with AisleClient(f"127.0.0.1:{server.port}", admin_token=TOKEN) as client:
            first = client.status().index.version
            bigger = tmp_path / "bigger.jsonl"
            title_70 = write_title_catalog(bigger, n=80)[70]["title"]
            build_index(BuildConfig(catalog=bigger, out=own_root, model=tiny_model_dir, shards=2))
            assert client.search(title_70, 1).hits[0].item_id != "SKU0070"
            reply = client.reload()
            assert reply.previous_version == first and reply.index.version == first + 1
            assert reply.index.item_count == 80
            assert client.search(title_70, 1).hits[0].item_id == "SKU0070"
            assert list(client.status().available_versions) == [first, first + 1]
            assert client.reload(first).index.version == first
            error = pytest.raises(grpc.RpcError, client.reload, 99).value
            assert error.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(0)


def test_admin_methods_need_the_token_when_one_is_set(index_root) -> None:
    server = create_server(ServerConfig(index=index_root, port=0, admin_token=TOKEN))
    try:
        address = f"127.0.0.1:{server.port}"
        with AisleClient(address) as anonymous:
            error = pytest.raises(grpc.RpcError, anonymous.status).value
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert len(anonymous.search("red sofa", 3).hits) == 3  # reads stay open
        with AisleClient(address, admin_token="wrong-token-of-some-length") as wrong:
            error = pytest.raises(grpc.RpcError, wrong.status).value
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        with AisleClient(address, admin_token=TOKEN) as admin:
            assert admin.status().index.item_count == 60
    finally:
        server.stop(0)


def _version_dir(root: Path) -> Path:
    return root / "versions" / (root / "CURRENT").read_text().strip()


def test_a_corrupted_shard_is_refused(own_root) -> None:
    shard = next(_version_dir(own_root).glob("shard_*.faiss"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=shard.name):
        create_server(ServerConfig(index=own_root, port=0))


def test_a_missing_file_is_refused(own_root) -> None:
    (_version_dir(own_root) / "items.parquet").unlink()
    with pytest.raises(IndexFormatError, match="items.parquet"):
        create_server(ServerConfig(index=own_root, port=0))


def test_another_model_is_refused(index_root, tmp_path) -> None:
    other = make_tiny_model(tmp_path / "other_model", seed=1)
    with pytest.raises(ModelMismatchError):
        create_server(ServerConfig(index=index_root, model=other, port=0))


def test_a_moved_model_needs_model_flag(own_root, tmp_path, tiny_model_dir) -> None:
    moved = tmp_path / "model_copy"
    shutil.copytree(tiny_model_dir, moved)
    manifest_path = _version_dir(own_root) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model_path"] = str(tmp_path / "gone")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="--model"):
        create_server(ServerConfig(index=own_root, port=0))
    # A byte-identical copy of the model is the same model: it is accepted.
    server = create_server(ServerConfig(index=own_root, model=moved, port=0))
    server.stop(0)


def test_a_moved_model_is_found_by_its_fingerprint(
    own_root, tmp_path, tiny_model_dir, monkeypatch
) -> None:
    # An index copied to another machine: the manifest's model path does not exist there.
    manifest_path = _version_dir(own_root) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    fingerprint = manifest["model_fingerprint"]
    manifest["model_path"] = str(tmp_path / "gone")
    manifest_path.write_text(json.dumps(manifest))
    monkeypatch.delenv(MODELS_ENV, raising=False)
    # 1. beside the index root's versions/, named by the fingerprint
    shutil.copytree(tiny_model_dir, own_root / "models" / fingerprint)
    assert find_model_dir(_version_dir(own_root)) == own_root / "models" / fingerprint
    server = create_server(ServerConfig(index=own_root, port=0))
    server.stop(0)
    shutil.rmtree(own_root / "models")
    # 2. in a directory of models named by $AISLE_MODELS
    shutil.copytree(tiny_model_dir, tmp_path / "models" / fingerprint)
    monkeypatch.setenv(MODELS_ENV, f"{tmp_path / 'nowhere'}{os.pathsep}{tmp_path / 'models'}")
    assert find_model_dir(_version_dir(own_root)) == tmp_path / "models" / fingerprint
    monkeypatch.delenv(MODELS_ENV)
    # 3. the packaged base model, when the fingerprint is its own (here: the tiny model)
    monkeypatch.setattr("engine.search.snapshot.default_model_dir", lambda: tiny_model_dir)
    assert find_model_dir(_version_dir(own_root)) == tiny_model_dir
    other = make_tiny_model(tmp_path / "other_model", seed=1)
    monkeypatch.setattr("engine.search.snapshot.default_model_dir", lambda: other)
    with pytest.raises(IndexFormatError, match=f"models/{fingerprint}"):
        find_model_dir(_version_dir(own_root))
