"""Tests for the index root layout: versions, staging, CURRENT and atomic publish."""

from __future__ import annotations

import pytest

from indexer.storage.layout import IndexRoot, resolve_version_dir
from indexer.storage.manifest import IndexFormatError


def _stage(root: IndexRoot, n: int) -> None:
    staging = root.prepare_staging(n)
    (staging / "manifest.json").write_text("{}")


def test_empty_root(tmp_path):
    root = IndexRoot(tmp_path / "missing")
    assert root.versions() == [] and root.current() is None and root.next_version() == 1


def test_publish_sequence(tmp_path):
    root = IndexRoot(tmp_path)
    _stage(root, 1)
    assert root.publish(1) == tmp_path / "versions" / "1"
    assert root.current() == 1 and root.versions() == [1] and root.next_version() == 2
    _stage(root, 2)
    root.publish(2)
    assert root.current() == 2 and root.versions() == [1, 2]
    assert (tmp_path / "CURRENT").read_text() == "2\n"
    assert not (tmp_path / "staging").exists()  # nothing left behind
    assert resolve_version_dir(tmp_path) == tmp_path / "versions" / "2"
    assert resolve_version_dir(tmp_path / "versions" / "1") == tmp_path / "versions" / "1"


def test_publish_refuses_incomplete_staging(tmp_path):
    root = IndexRoot(tmp_path)
    root.prepare_staging(1)  # no manifest yet
    with pytest.raises(IndexFormatError, match="build is incomplete"):
        root.publish(1)
    assert root.current() is None and root.versions() == []


def test_publish_never_overwrites_a_version(tmp_path):
    root = IndexRoot(tmp_path)
    _stage(root, 1)
    root.publish(1)
    _stage(root, 1)
    with pytest.raises(FileExistsError):
        root.publish(1)
    assert root.current() == 1


def test_stale_staging_is_replaced(tmp_path):
    root = IndexRoot(tmp_path)
    stale = root.staging_dir(1)
    stale.mkdir(parents=True)
    (stale / "half_written.faiss").write_bytes(b"x")
    staging = root.prepare_staging(1)
    assert list(staging.iterdir()) == []
    assert root.versions() == []  # a staging dir is never a version


def test_current_garbage(tmp_path):
    (tmp_path / "CURRENT").write_text("latest\n")
    with pytest.raises(IndexFormatError, match="CURRENT: expected a version number"):
        IndexRoot(tmp_path).current()


def test_resolve_errors(tmp_path):
    with pytest.raises(IndexFormatError, match="no such index root"):
        resolve_version_dir(tmp_path / "nope")
    with pytest.raises(IndexFormatError, match="aisle-index build"):
        resolve_version_dir(tmp_path)
    (tmp_path / "CURRENT").write_text("7\n")
    with pytest.raises(IndexFormatError, match="names version 7"):
        resolve_version_dir(tmp_path)


def test_build_lock_is_exclusive(tmp_path):
    root = IndexRoot(tmp_path)
    with root.build_lock():
        with pytest.raises(ValueError, match="another build is running"):
            with IndexRoot(tmp_path).build_lock():
                pass
    with root.build_lock():  # released again
        pass
