"""Tests for reading an index version: exact search, stored vectors, attributes, integrity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.storage.manifest import IndexFormatError, ModelMismatchError
from indexer.storage.sharding import shard_of
from indexer.version import IndexVersion
from trainer.encoder.load import load_encoder
from trainer.text import item_text

MISSING = -np.finfo(np.float32).max


def brute_force(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k by inner product: score descending, ties by lower row."""
    scores = xq @ xb.T  # (nq, n)
    order = np.lexsort((np.broadcast_to(np.arange(len(xb)), scores.shape), -scores), axis=-1)
    order = order[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(scope="module")
def index(flat_root) -> IndexVersion:
    return IndexVersion.open(flat_root)


def test_open_root_and_version_dir(index, flat_root):
    assert index.version == 1 and index.n_items == 200 and index.dim == 32
    assert index.manifest.n_shards == 3 and index.manifest.metric == "inner_product"
    counts = np.bincount(shard_of(list(index.item_ids), 3), minlength=3)
    assert [s.count for s in index.manifest.shards] == counts.tolist()
    assert index.manifest.build["device"] == "cpu"
    assert {b["device"] for b in index.manifest.build["shards"]} == {"cpu"}
    same = IndexVersion.open(flat_root / "versions" / "1")
    assert same.path == index.path


def test_rows_align_with_catalog_and_model(index, catalog, tiny_model_dir):
    _, records = catalog
    assert index.item_ids.dtype == object
    assert list(index.item_ids) == [r["item_id"] for r in records]
    encoder = load_encoder(tiny_model_dir)
    assert index.manifest.model_fingerprint == encoder.fingerprint
    expected = encoder.encode_items([item_text(r) for r in records])  # (200, 32)
    stored = index.vectors(np.arange(index.n_items))
    assert stored.dtype == np.float32 and stored.shape == (200, 32)
    np.testing.assert_allclose(stored, expected, atol=1e-5)


def test_record_and_row_of(index, catalog):
    _, records = catalog
    for row in (0, 1, 3, 199):
        assert index.record(row) == records[row]  # nulls omitted, as in the catalog
        assert index.row_of(records[row]["item_id"]) == row
    with pytest.raises(KeyError):
        index.row_of("NOPE")
    with pytest.raises(IndexError):
        index.record(200)
    with pytest.raises(IndexError):
        index.vectors(np.array([0, 200]))


@pytest.mark.parametrize("k", [1, 10, 57])
def test_search_equals_brute_force(index, k):
    xb = index.vectors(np.arange(index.n_items))
    rng = np.random.default_rng(1)
    xq = rng.standard_normal((25, index.dim)).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    D, I = index.search(xq, k)  # noqa: E741
    D_ref, I_ref = brute_force(xq, xb, k)
    assert D.shape == I.shape == (25, k) and D.dtype == np.float32 and I.dtype == np.int64
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, atol=1e-5)


def test_own_vector_retrieves_itself_first(index):
    rows = np.arange(index.n_items)
    D, I = index.search(index.vectors(rows), 3)  # noqa: E741
    np.testing.assert_array_equal(I[:, 0], rows)
    np.testing.assert_allclose(D[:, 0], 1.0, atol=1e-5)  # normalised vectors


def test_k_larger_than_catalog(index):
    xq = index.vectors(np.array([5]))
    D, I = index.search(xq, 250)  # noqa: E741
    assert sorted(I[0, :200].tolist()) == list(range(200))
    assert (I[0, 200:] == -1).all() and (D[0, 200:] == MISSING).all()
    assert (np.diff(D[0, :200]) <= 0).all()


def test_search_input_checks(index):
    with pytest.raises(ValueError, match=r"shape \(nq, 32\)"):
        index.search(np.zeros((2, 16), np.float32), 5)
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.zeros((2, 32), np.float32), 0)
    with pytest.raises(ValueError, match="unknown search params"):
        index.search(np.zeros((2, 32), np.float32), 5, params={"nprob": 3})
    D, I = index.search(np.zeros((0, 32), np.float32), 5)  # noqa: E741
    assert D.shape == I.shape == (0, 5)
    # Parameters for other index types are ignored on a Flat index.
    D, I = index.search(index.vectors(np.array([7])), 1, params={"nprobe": 2})  # noqa: E741
    assert I[0, 0] == 7


def test_fingerprint_mismatch(flat_root, index):
    other = "0" * 64
    with pytest.raises(ModelMismatchError) as info:
        IndexVersion.open(flat_root, expected_fingerprint=other)
    assert other in str(info.value) and index.manifest.model_fingerprint in str(info.value)
    assert isinstance(info.value, IndexFormatError)
    IndexVersion.open(flat_root, expected_fingerprint=index.manifest.model_fingerprint)


def _flip_byte(path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_shard_file(flat_root_copy):
    _flip_byte(flat_root_copy / "versions" / "1" / "shard_001.faiss")
    with pytest.raises(IndexFormatError, match=r"shard_001\.faiss: checksum mismatch"):
        IndexVersion.open(flat_root_copy)


def test_missing_vectors_file(flat_root_copy):
    (flat_root_copy / "versions" / "1" / "shard_002.vectors.npy").unlink()
    with pytest.raises(IndexFormatError, match=r"shard_002\.vectors\.npy: missing"):
        IndexVersion.open(flat_root_copy)


def test_bad_manifest_json(flat_root_copy):
    (flat_root_copy / "versions" / "1" / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match=r"manifest\.json: not valid JSON"):
        IndexVersion.open(flat_root_copy)


def test_wrong_schema_version(flat_root_copy):
    path = flat_root_copy / "versions" / "1" / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match=r"manifest\.json: schema_version 99"):
        IndexVersion.open(flat_root_copy)


def test_unverified_open_still_checks_structure(flat_root_copy):
    # Without checksums, a truncated shard is still caught when it is read.
    path = flat_root_copy / "versions" / "1" / "shard_000.faiss"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IndexFormatError, match=r"shard_000\.faiss"):
        IndexVersion.open(flat_root_copy, verify=False)
