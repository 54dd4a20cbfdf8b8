"""Tests for the manifest: JSON round trip, validation and file checksums."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.storage.manifest import (
    SCHEMA_VERSION,
    IndexFormatError,
    Manifest,
    ShardInfo,
    file_sha256,
    load_manifest,
    save_manifest,
    verify_files,
)


def _write_version(tmp_path: Path) -> tuple[Path, Manifest]:
    """A fake version dir whose files are listed with correct checksums."""
    names = ["shard_000.faiss", "shard_000.vectors.npy", "shard_000.rows.npy", "items.parquet"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * (100 + i))
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        version=3,
        created_at="2025-01-01T00:00:00+00:00",
        model_fingerprint="ab" * 32,
        model_path="/models/minilm",
        dim=32,
        metric="inner_product",
        factory="IVF16,Flat",
        n_items=5,
        n_shards=1,
        shards=(ShardInfo(0, 5, names[0], names[1], names[2]),),
        files={name: file_sha256(tmp_path / name) for name in names},
        build={"device": "cpu", "seconds": 1.5, "shards": [{"shard": 0, "device": "cpu"}]},
        search_defaults={"nprobe": 16},
    )
    save_manifest(manifest, tmp_path / "manifest.json")
    return tmp_path, manifest


def test_round_trip(tmp_path):
    version_dir, manifest = _write_version(tmp_path)
    loaded = load_manifest(version_dir / "manifest.json")
    assert loaded == manifest
    assert isinstance(loaded.shards, tuple) and isinstance(loaded.shards[0], ShardInfo)
    verify_files(version_dir, loaded)
    # Written atomically: no temp files left behind, readable by others.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert (tmp_path / "manifest.json").stat().st_mode & 0o044 == 0o044


def test_file_sha256_known_value(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_bad_json(tmp_path):
    (tmp_path / "manifest.json").write_text('{"schema_version": 1,')
    with pytest.raises(IndexFormatError, match=r"manifest\.json: not valid JSON"):
        load_manifest(tmp_path / "manifest.json")


def test_missing_manifest(tmp_path):
    with pytest.raises(IndexFormatError, match="manifest not found"):
        load_manifest(tmp_path / "manifest.json")


def test_unknown_schema_version(tmp_path):
    version_dir, _ = _write_version(tmp_path)
    _edit(version_dir / "manifest.json", schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(IndexFormatError, match=r"manifest\.json: schema_version 2 is not"):
        load_manifest(version_dir / "manifest.json")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dim": "32"}, "field 'dim' must be int, got str"),
        ({"dim": True}, "field 'dim' must be int, got bool"),
        ({"n_items": 6}, "shard counts sum to 5, but n_items is 6"),
        ({"n_shards": 2}, "n_shards is 2 but 1 shards are listed"),
        ({"metric": "l2"}, "unknown metric 'l2'"),
        ({"files": {}}, "file 'shard_000.faiss' has no checksum"),
        ({"shards": [{"shard": 0}]}, r"shards\[0\]: missing field 'count'"),
    ],
)
def test_invalid_fields(tmp_path, changes, message):
    version_dir, _ = _write_version(tmp_path)
    _edit(version_dir / "manifest.json", **changes)
    with pytest.raises(IndexFormatError, match=message):
        load_manifest(version_dir / "manifest.json")


def test_missing_field(tmp_path):
    version_dir, _ = _write_version(tmp_path)
    data = json.loads((version_dir / "manifest.json").read_text())
    del data["model_fingerprint"]
    (version_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="missing field 'model_fingerprint'"):
        load_manifest(version_dir / "manifest.json")


def test_verify_detects_corrupt_file(tmp_path):
    version_dir, manifest = _write_version(tmp_path)
    path = version_dir / "shard_000.vectors.npy"
    data = bytearray(path.read_bytes())
    data[50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"shard_000\.vectors\.npy: checksum mismatch"):
        verify_files(version_dir, manifest)


def test_verify_detects_missing_file(tmp_path):
    version_dir, manifest = _write_version(tmp_path)
    (version_dir / "items.parquet").unlink()
    with pytest.raises(IndexFormatError, match=r"items\.parquet: missing"):
        verify_files(version_dir, manifest)


def test_verify_refuses_paths_outside_the_version(tmp_path):
    version_dir, manifest = _write_version(tmp_path)
    files = {**manifest.files, "../escape": "0" * 64}
    bad = Manifest(**{**manifest.__dict__, "files": files})
    with pytest.raises(IndexFormatError, match="unsafe file name"):
        verify_files(version_dir, bad)
