"""Tests for building from given item vectors (``BuildConfig.item_vectors``) instead of encoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.cli import main
from indexer.live.index import LiveIndex
from indexer.storage.layout import IndexRoot
from indexer.storage.manifest import file_sha256
from indexer.storage.update_log import UpdateLog
from indexer.version import IndexVersion
from trainer.encoder.load import load_encoder
from trainer.text import item_text


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float32 random unit vectors."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def save(path: Path, xb: np.ndarray) -> Path:
    np.save(path, xb)
    return path


@pytest.fixture(scope="module")
def encoded(flat_root: Path) -> np.ndarray:
    """(200, 32) float32: the vectors a normal build of the catalog stored, in catalog order."""
    version = IndexVersion.open(flat_root)
    return version.vectors(np.arange(version.n_items))


def assert_unpublished(root: Path) -> None:
    """No version is published and no staging dir is left behind."""
    index_root = IndexRoot(root)
    assert index_root.current() is None and index_root.versions() == []
    assert not list(index_root.staging_root.glob("*"))


def test_same_search_results_as_encoding(tmp_path, catalog, tiny_model_dir, flat_root, encoded):
    # The stored vectors are the encoder's output (up to batching noise).
    records = catalog[1]
    fresh = load_encoder(tiny_model_dir).encode_items([item_text(r) for r in records])
    np.testing.assert_allclose(encoded, fresh, atol=1e-5)

    path = save(tmp_path / "items.npy", encoded)
    out = tmp_path / "index"
    version_dir = build_index(
        BuildConfig(catalog=catalog[0], out=out, model=tiny_model_dir, shards=3, item_vectors=path)
    )
    given, normal = IndexVersion.open(version_dir), IndexVersion.open(flat_root)
    np.testing.assert_array_equal(given.vectors(np.arange(200)), encoded)
    assert given.item_ids.tolist() == normal.item_ids.tolist()
    xq = unit(20, 32, seed=1)
    D, I = given.search(xq, 10)
    D_ref, I_ref = normal.search(xq, 10)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-6)
    m = given.manifest
    assert m.build["item_vectors"] == {"path": str(path.resolve()), "sha256": file_sha256(path)}
    assert m.model_fingerprint == normal.manifest.model_fingerprint and m.dim == 32
    # The lexical channel is built from the catalog texts as usual.
    assert (version_dir / "lexical.json").is_file()


def test_the_file_is_used_not_the_encoder(tmp_path, catalog, tiny_model_dir):
    xb = unit(200, 32, seed=2)  # not what the model gives: visible if the file is ignored
    path = save(tmp_path / "items.npy", xb.astype(np.float64))  # float64 is converted
    version_dir = build_index(
        BuildConfig(
            catalog=catalog[0],
            out=tmp_path / "index",
            model=tiny_model_dir,
            factory="IVF4,Flat",
            target_recall=None,
            item_vectors=path,
        )
    )
    version = IndexVersion.open(version_dir)
    np.testing.assert_array_equal(version.vectors(np.arange(200)), xb)
    # Each item's own vector finds it first (probing every list: exact).
    _, I = version.search(xb[:10], 1, params={"nprobe": 4})
    assert I[:, 0].tolist() == list(range(10))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda xb: xb[:-1], r"has shape \(199, 32\), but this build needs shape \(200, 32\)"),
        (lambda xb: unit(200, 33, 0), r"has shape \(200, 33\), but this build needs shape \(200, "),
        (lambda xb: (xb * 100).astype(np.int32), "has dtype int32; it must be float32"),
    ],
)
def test_wrong_shape_or_dtype_fails_before_building(
    tmp_path, catalog, tiny_model_dir, encoded, make, message
):
    path = save(tmp_path / "items.npy", make(encoded))
    config = BuildConfig(
        catalog=catalog[0], out=tmp_path / "index", model=tiny_model_dir, item_vectors=path
    )
    with pytest.raises(ValueError, match=message):
        build_index(config)
    assert_unpublished(tmp_path / "index")


@pytest.mark.parametrize(
    ("row", "value", "message"),
    [
        (7, np.nan, "row 7 has non-finite values"),
        (150, np.inf, "row 150 has non-finite values"),
        (42, 2.0, r"row 42 has L2 norm 2\b.*must be the model's normalised output"),
    ],
)
def test_bad_rows_publish_nothing(tmp_path, catalog, tiny_model_dir, encoded, row, value, message):
    xb = encoded.copy()
    if np.isfinite(value):
        xb[row] *= value
    else:
        xb[row, 3] = value
    path = save(tmp_path / "items.npy", xb)
    root = tmp_path / "index"
    with pytest.raises(ValueError, match=message):
        build_index(
            BuildConfig(catalog=catalog[0], out=root, model=tiny_model_dir, item_vectors=path)
        )
    assert_unpublished(root)


def test_not_a_npy_file(tmp_path, catalog, tiny_model_dir):
    path = tmp_path / "items.npy"
    path.write_text("not numpy")
    with pytest.raises(ValueError, match="is not a readable .npy array"):
        build_index(
            BuildConfig(
                catalog=catalog[0], out=tmp_path / "i", model=tiny_model_dir, item_vectors=path
            )
        )
    with pytest.raises(ValueError, match="item_vectors file not found"):
        BuildConfig(catalog=catalog[0], out=tmp_path / "i", item_vectors=tmp_path / "nope.npy")


def test_live_updates_are_replayed(flat_root_copy, catalog, tiny_model_dir, encoded, tmp_path):
    """Replayed upserts keep their logged vectors (or are encoded when another model logged
    them); every other item takes its row of the file, found by item id."""
    live = LiveIndex.open(flat_root_copy)
    logged = unit(2, 32, seed=3)
    live.upsert(
        [
            {"item_id": "NEW", "title": "green kettle", "price": 7.0},
            {"item_id": "SKU0001", "title": "blue lamp v2"},  # replaces an item: new vector
        ],
        logged,
    )
    live.delete(["SKU0002"])
    live.update_attributes({"SKU0004": {"price": 1.25}})
    live.close()
    other = {"item_id": "OTHER", "title": "red drill"}
    with UpdateLog(flat_root_copy) as log:
        log.append_upsert([other], unit(1, 32, 4), "a-model-since-replaced")

    xb = unit(200, 32, seed=5)  # the file's vectors, distinct from the encoder's
    path = save(tmp_path / "items.npy", xb)
    version_dir = build_index(
        BuildConfig(catalog=catalog[0], out=flat_root_copy, model=tiny_model_dir, item_vectors=path)
    )
    version = IndexVersion.open(version_dir)
    updates = version.manifest.build["updates"]
    assert updates["upserted"] == 3 and updates["deleted"] == 1 and updates["reembedded"] == 1
    assert version.n_items == 201 and version.record(version.row_of("SKU0004"))["price"] == 1.25
    with pytest.raises(KeyError):
        version.row_of("SKU0002")
    np.testing.assert_array_equal(version.vectors([version.row_of("NEW")]), logged[:1])
    np.testing.assert_array_equal(version.vectors([version.row_of("SKU0001")]), logged[1:])
    expected = load_encoder(tiny_model_dir).encode_items([item_text(other)])
    np.testing.assert_allclose(version.vectors([version.row_of("OTHER")]), expected, atol=1e-5)
    for i in (0, 3, 4, 199):  # untouched or only re-priced: the file's row
        row = version.row_of(f"SKU{i:04d}")
        np.testing.assert_array_equal(version.vectors([row]), xb[i : i + 1])


def test_cli_flag(tmp_path, catalog, tiny_model_dir, encoded, capsys):
    path = save(tmp_path / "items.npy", encoded)
    root = tmp_path / "index"
    args = ["build", "--catalog", str(catalog[0]), "--out", str(root)]
    args += ["--model", str(tiny_model_dir), "--item-vectors", str(path)]
    assert main(args) == 0
    version_dir = Path(capsys.readouterr().out.strip())
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["build"]["item_vectors"]["path"] == str(path.resolve())

    bad = save(tmp_path / "bad.npy", encoded[:10])
    assert main([*args[:-1], str(bad)]) == 2
    assert "has shape (10, 32), but this build needs shape (200, 32)" in capsys.readouterr().err
    assert main([*args, "--engine", "spark"]) == 2
    assert "--item-vectors is for the local engine" in capsys.readouterr().err
    assert IndexRoot(root).versions() == [1]
