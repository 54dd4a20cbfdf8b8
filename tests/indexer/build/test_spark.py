"""Tests for the Spark batch reindex (local[2]): equivalence with the local build, restarts."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyspark")

import indexer.build.pipeline  # noqa: E402
from indexer.build.config import BuildConfig  # noqa: E402
from indexer.build.local import build_index  # noqa: E402
from indexer.build.spark import SparkConfig, build_index_spark, spark_session  # noqa: E402
from indexer.cli import arg_parser  # noqa: E402
from indexer.live.index import LiveIndex  # noqa: E402
from indexer.version import IndexVersion  # noqa: E402
from tests.helpers import live_state, some_updates, version_state, write_catalog  # noqa: E402


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module: starting one costs ~11 s."""
    session = spark_session("local[2]", "aisle-test")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spark_catalog") / "products.jsonl"
    write_catalog(path, 100, seed=3)
    return path


def _shard_contents(version_dir: Path) -> tuple[IndexVersion, dict[int, np.ndarray]]:
    index = IndexVersion.open(version_dir)
    rows = {
        s: np.load(version_dir / f"shard_{s:03d}.rows.npy") for s in range(index.manifest.n_shards)
    }
    return index, rows


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="partitions must be an integer"):
        SparkConfig(partitions=0)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="must be a directory"):
        SparkConfig(embeddings_out=tmp_path / "f")


def test_cli_flags():
    args = arg_parser().parse_args(
        ["build", "--catalog", "c.jsonl", "--out", "i", "--engine", "spark", "--master",
         "local[2]", "--partitions", "4", "--embeddings-out", "emb"]
    )  # fmt: skip
    assert (args.engine, args.master, args.partitions, args.embeddings_out) == (
        "spark",
        "local[2]",
        4,
        "emb",
    )
    assert arg_parser().parse_args(["build", "--catalog", "c", "--out", "i"]).engine == "local"


@pytest.mark.slow
def test_flat_equivalent_to_local_build(spark, small_catalog, tiny_model_dir, tmp_path):
    config = BuildConfig(
        catalog=small_catalog, out=tmp_path / "local", model=tiny_model_dir, shards=3
    )
    local_dir = build_index(config)
    emb = tmp_path / "embeddings"
    spark_dir = build_index_spark(
        BuildConfig(catalog=small_catalog, out=tmp_path / "spark", model=tiny_model_dir, shards=3),
        SparkConfig(partitions=3, embeddings_out=emb),
        spark=spark,
    )
    assert spark_dir == (tmp_path / "spark" / "versions" / "1").resolve()
    local, local_rows = _shard_contents(local_dir)
    remote, remote_rows = _shard_contents(spark_dir)
    for s in range(3):  # same item → shard assignment and ids per shard
        np.testing.assert_array_equal(local_rows[s], remote_rows[s])
    xb_local = local.vectors(np.arange(local.n_items))
    xb_spark = remote.vectors(np.arange(remote.n_items))
    np.testing.assert_allclose(xb_spark, xb_local, atol=1e-5)
    _, I_local = local.search(xb_local[:20], 5)
    _, I_spark = remote.search(xb_local[:20], 5)
    np.testing.assert_array_equal(I_local, I_spark)
    assert remote.manifest.model_fingerprint == local.manifest.model_fingerprint
    assert remote.manifest.search_defaults == local.manifest.search_defaults
    assert remote.manifest.build["engine"] == "spark"
    # The same BM25 index (the lexical channel) is published with the Spark build.
    from indexer.lexical.index import LexicalIndex

    query = json.loads(small_catalog.read_text().splitlines()[7])["title"]
    D_local, I_local = LexicalIndex.load(local_dir).search(query, 5)
    D_spark, I_spark = LexicalIndex.load(spark_dir).search(query, 5)
    assert I_local[0] >= 0  # the title's own item matches
    np.testing.assert_array_equal(I_spark, I_local)
    np.testing.assert_allclose(D_spark, D_local, atol=1e-6)
    assert set(remote.manifest.files) == set(local.manifest.files)
    # The embeddings stay for reuse, one row per item.
    table = spark.read.parquet(str(emb)).toPandas().sort_values("row")
    assert table["row"].tolist() == list(range(100))
    np.testing.assert_allclose(np.stack(table["vector"].to_numpy()), xb_local, atol=1e-5)
    assert not (tmp_path / "spark" / ".spark").exists()  # the work dir is cleaned up


@pytest.mark.slow
def test_ivf_recall_like_local(spark, small_catalog, tiny_model_dir, tmp_path):
    kwargs = dict(catalog=small_catalog, model=tiny_model_dir, shards=2, factory="IVF4,Flat")
    local = IndexVersion.open(build_index(BuildConfig(out=tmp_path / "a", **kwargs)))
    remote = IndexVersion.open(
        build_index_spark(BuildConfig(out=tmp_path / "b", **kwargs), spark=spark)
    )
    assert remote.manifest.factory == local.manifest.factory
    assert "tuning" in remote.manifest.build
    xb = local.vectors(np.arange(local.n_items))
    rng = np.random.default_rng(0)
    xq = xb[rng.choice(len(xb), 30, replace=False)] + 0.05 * rng.standard_normal((30, xb.shape[1]))
    xq = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
    I_ref = np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :10]

    def recall(index: IndexVersion) -> float:
        _, I = index.search(xq, 10)  # noqa: E741
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_ref, strict=True)]))

    assert abs(recall(remote) - recall(local)) <= 0.05, (recall(remote), recall(local))


@pytest.mark.slow
def test_restart_rebuilds_only_broken_shard(
    spark, small_catalog, tiny_model_dir, tmp_path, monkeypatch, caplog
):
    config = BuildConfig(catalog=small_catalog, out=tmp_path, model=tiny_model_dir, shards=3)

    class Stop(Exception):
        pass

    def stop_at(name: str) -> None:
        if name == "after-shards-written":  # like AISLE_FAULT_AT, without killing pytest
            raise Stop(name)

    monkeypatch.setattr(indexer.build.pipeline, "fault_point", stop_at)
    with pytest.raises(Stop):
        build_index_spark(config, spark=spark)
    assert not (tmp_path / "versions").exists()
    (work,) = (tmp_path / ".spark").iterdir()
    version = work / "version"
    # The shard tasks' outputs; the BM25 files are rebuilt by the driver on every run (seconds).
    mtimes = {
        p.name: p.stat().st_mtime_ns
        for p in version.glob("shard_*")
        if not p.name.endswith(".lexical.npz")
    }
    (version / "shard_001.faiss").write_bytes(b"corrupt")  # fails its checksum
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="indexer.build.spark"):
        published = build_index_spark(config, spark=spark)
    assert "reusing the embeddings" in caplog.text
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["build"]["shards_rebuilt"] == [1]
    for name, mtime in mtimes.items():
        after = (published / name).stat().st_mtime_ns
        assert (after != mtime) == name.startswith("shard_001"), name
    IndexVersion.open(published)  # checksums verify
    assert not work.exists()


@pytest.mark.slow
def test_bad_catalog_same_message(spark, tmp_path, tiny_model_dir):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"item_id": "a", "title": "x"}\n{"item_id": "a", "title": "y"}\n')
    config = BuildConfig(catalog=path, out=tmp_path / "out", model=tiny_model_dir)
    with pytest.raises(ValueError) as local_error:
        build_index(config)
    with pytest.raises(ValueError) as spark_error:
        build_index_spark(config, spark=spark)
    assert str(spark_error.value) == str(local_error.value)


@pytest.mark.slow
def test_replays_pending_updates_like_local_build(spark, flat_root_copy, catalog, tiny_model_dir):
    live = LiveIndex.open(flat_root_copy)
    xb = some_updates(live)
    expected = live_state(live)
    live.close()
    config = BuildConfig(catalog=catalog[0], out=flat_root_copy, model=tiny_model_dir, shards=3)
    version = IndexVersion.open(build_index_spark(config, spark=spark))
    m = version.manifest
    assert m.applied_seq == 3
    updates = m.build["updates"]
    assert updates["replayed"] == 3 and updates["vectors_kept"] == 2
    assert version_state(version) == expected
    # Logged vectors of the same model are kept, as in the local build.
    np.testing.assert_array_equal(version.vectors([version.row_of("NEW")]), xb[:1])
    np.testing.assert_array_equal(version.vectors([version.row_of("SKU0001")]), xb[1:])
    assert LiveIndex.open(flat_root_copy).pending_updates == 0


def test_running_stages_are_logged_every_few_seconds(spark, caplog):
    """A Spark job says what it is doing while it runs (it printed nothing for 47 minutes)."""
    import time as _time

    from indexer.build.spark_progress import spark_progress

    def slow(rows):
        _time.sleep(1.5)
        return [sum(1 for _ in rows)]

    with caplog.at_level(logging.INFO, logger="indexer.build.spark_progress"):
        with spark_progress(spark, every_s=0.5):
            counts = spark.sparkContext.parallelize(range(40), 4).mapPartitions(slow).collect()
    assert sum(counts) == 40
    lines = [r.getMessage() for r in caplog.records if r.name == "indexer.build.spark_progress"]
    assert lines, "no progress line while a 3 s job ran"
    assert any(re.search(r"spark stage \d+ \(collect\): \d/4 tasks done", line) for line in lines)
