"""Tests for build-time effort tuning (nprobe / efSearch to a target recall@k)."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest

from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.build.shard import build_shard_index
from indexer.build.tune import (
    TuneConfig,
    TuneResult,
    combine_results,
    effort_range,
    exact_search,
    float_codes,
    perturbed_queries,
    rescore,
    tie_aware_recall,
    tune_effort,
)
from indexer.version import IndexVersion


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    # FAISS's (and torch's) OpenMP threads slow down 10-50x when they compete with other
    # processes for the 2 cores; one thread keeps these tests fast and their results identical.
    import torch

    threads, torch_threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(torch_threads)


def _clustered(n: int, dim: int = 32, *, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit vectors in Gaussian clusters: neighbourhoods like real embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    xb = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (xb / np.linalg.norm(xb, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xb (4000, 32), ids (4000,) = global rows of a shard, xq (300, 32) perturbed items)."""
    xb = _clustered(4000)
    ids = np.arange(4000, dtype=np.int64) * 3 + 1  # not 0..n-1: ids must be mapped back
    return xb, ids, perturbed_queries(xb, 300, noise=0.5, seed=1)


def _recall_at(index, xb, ids, xq, params, k=10) -> float:
    """Independent check: search with ``params`` and score against a NumPy exact top-k."""
    order = np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :k]  # (nq, k) rows
    D_ref = np.take_along_axis(xq @ xb.T, order, axis=1)
    sp = {"nprobe": faiss.SearchParametersIVF, "efSearch": faiss.SearchParametersHNSW}
    (name, value), = params.items()  # fmt: skip
    p = sp[name]()
    setattr(p, name, value)
    _, I = index.search(xq, k, params=p)
    rows = np.searchsorted(ids, I)  # ids ascending
    return tie_aware_recall(xq, xb, np.where(I >= 0, rows, -1), D_ref)


@pytest.mark.parametrize(("factory", "param"), [("IVF64,Flat", "nprobe"), ("HNSW16", "efSearch")])
@pytest.mark.parametrize("target", [0.9, 0.98])
def test_tuning_reaches_target_with_smallest_effort(data, factory, param, target):
    xb, ids, xq = data
    index, _ = build_shard_index(xb, ids, factory)
    result = tune_effort(index, xb, ids, xq, k=10, target_recall=target)
    assert result.param == param and result.reached
    assert result.recall >= target
    # Measured independently, at the chosen value and one below it.
    assert _recall_at(index, xb, ids, xq, {param: result.value}) == pytest.approx(result.recall)
    low = effort_range(index, 10)[1]
    if result.value > low:
        assert _recall_at(index, xb, ids, xq, {param: result.value - 1}) < target
    # The curve holds every value tried, the chosen one included.
    assert result.value in [v for v, _, _ in result.curve]
    assert all(0 <= r <= 1 and us > 0 for _, r, us in result.curve)


def test_higher_target_needs_more_effort(data):
    xb, ids, xq = data
    index, _ = build_shard_index(xb, ids, "IVF64,Flat")
    values = [tune_effort(index, xb, ids, xq, target_recall=t).value for t in (0.8, 0.95, 1.0)]
    assert values[0] <= values[1] <= values[2] <= 64


def test_unreachable_target_keeps_best_and_warns(data, caplog):
    xb, ids, xq = data
    index, _ = build_shard_index(xb, ids, "IVF16,PQ4x4np")  # 2 bytes a vector: recall capped
    caplog.set_level(logging.WARNING, logger="indexer.build.tune")
    result = tune_effort(index, xb, ids, xq, target_recall=1.0, rescore_depth=0)
    assert not result.reached and result.param == "nprobe"
    assert result.recall == max(r for _, r, _ in result.curve)
    assert "target 1.000 not reached" in caplog.text


def test_compressed_codes_are_measured_after_rescoring(data):
    xb, ids, xq = data
    index, _ = build_shard_index(xb, ids, "IVF16,PQ16x4fs")
    assert not float_codes(index)
    plain = tune_effort(index, xb, ids, xq, target_recall=0.9, rescore_depth=0)
    rescored = tune_effort(index, xb, ids, xq, target_recall=0.9, rescore_depth=100)
    assert rescored.rescore_depth == 100 and plain.rescore_depth == 0
    # Re-scoring 100 candidates exactly lifts recall@10 far above the codes' own top 10.
    assert rescored.reached and rescored.recall > plain.recall
    for factory in ("Flat", "IVF16,Flat", "HNSW16"):
        assert float_codes(build_shard_index(xb[:500], ids[:500], factory)[0])


def test_no_knob_and_exact_indexes(data):
    xb, ids, xq = data
    flat, _ = build_shard_index(xb, ids, "Flat")
    result = tune_effort(flat, xb, ids, xq)
    assert result.param is None and result.recall == 1.0 and result.reached
    sq, _ = build_shard_index(xb, ids, "SQ8")
    result = tune_effort(sq, xb, ids, xq, target_recall=0.99)
    assert result.param is None and result.rescore_depth == 100 and result.recall >= 0.99


def test_empty_and_tiny_shards():
    xb = _clustered(5)
    index, _ = build_shard_index(xb, np.arange(5), "HNSW16")
    result = tune_effort(index, xb, np.arange(5), perturbed_queries(xb, 5), k=10)
    assert result.reached and result.recall == 1.0  # k > n: recall over the 5 there are
    empty = tune_effort(index, xb[:0], np.arange(0), perturbed_queries(xb, 5))
    assert empty.param is None and empty.reached


def test_tie_aware_recall_counts_tied_items():
    xb = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)  # rows 0, 1 tie
    xq = np.array([[1, 0]], dtype=np.float32)
    D_ref, I_ref = exact_search(xq, xb, 1)
    assert I_ref[0, 0] in (0, 1)
    assert tie_aware_recall(xq, xb, np.array([[1]]), D_ref) == 1.0
    assert tie_aware_recall(xq, xb, np.array([[0]]), D_ref) == 1.0
    assert tie_aware_recall(xq, xb, np.array([[3]]), D_ref) == 0.0
    assert tie_aware_recall(xq, xb, np.array([[-1]]), D_ref) == 0.0
    D_ref, _ = exact_search(xq, xb, 3)
    assert tie_aware_recall(xq, xb, np.array([[0, 3, -1]]), D_ref) == pytest.approx(2 / 3)


def test_exact_search_in_blocks_matches_numpy():
    xb = _clustered(500, seed=3)
    xq = perturbed_queries(xb, 20, seed=4)
    D, I = exact_search(xq, xb, 7, block_rows=70)  # several blocks, a ragged last one
    scores = xq @ xb.T
    ref = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    np.testing.assert_allclose(D, np.take_along_axis(scores, ref, axis=1), rtol=1e-5, atol=1e-6)
    assert (I == ref).mean() > 0.99  # equal up to float ties
    assert exact_search(xq, xb[:3], 7, block_rows=70)[1].shape == (20, 3)


def test_rescore_orders_candidates_exactly():
    xb = _clustered(50, seed=5)
    xq = perturbed_queries(xb, 4, seed=6)
    candidates = np.tile(np.arange(50), (4, 1))[:, ::-1].copy()
    candidates[:, 10] = -1  # row 39 is no candidate
    top = rescore(xq, xb, candidates, 5)
    scores = xq @ xb.T
    scores[:, 39] = -np.inf
    assert (top == np.argsort(-scores, axis=1, kind="stable")[:, :5]).all()
    assert (rescore(xq, xb, np.full((4, 3), -1), 2) == -1).all()


def test_perturbed_queries():
    xb = _clustered(100)
    xq = perturbed_queries(xb, 30, noise=0.5, seed=7)
    assert xq.shape == (30, 32) and xq.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(xq, axis=1), 1.0, rtol=1e-5)
    nearest = (xq @ xb.T).max(axis=1)
    assert (nearest < 0.999).all() and (nearest > 0.7).all()  # near items, none of them
    assert np.array_equal(xq, perturbed_queries(xb, 30, noise=0.5, seed=7))
    assert len(perturbed_queries(xb, 500)) == 100


def test_combine_results():
    config = TuneConfig(target_recall=0.9)
    results = [
        TuneResult("nprobe", 6, 0.93, True, ((6, 0.93, 1.0),), 100),
        TuneResult("nprobe", 9, 0.91, True, ((9, 0.91, 1.0),), 100),
    ]
    assert combine_results(results, config) == {
        "nprobe": 9,
        "measured_recall": 0.91,
        "recall_k": 10,
        "target_recall": 0.9,
    }
    assert combine_results([], config) == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_recall": 0}, "target_recall must be in"),
        ({"target_recall": 1.5}, "target_recall must be in"),
        ({"k": 0}, "tuning k must be"),
        ({"noise": -1}, "noise must be"),
        ({"rescore_depth": -1}, "rescore_depth must be"),
    ],
)
def test_tune_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        TuneConfig(**changes)


# ----------------------------------------------------------------------------- through a build


def test_build_tunes_and_records(tmp_path, catalog, tiny_model_dir):
    version_dir = build_index(
        BuildConfig(
            catalog=catalog[0],
            out=tmp_path,
            model=tiny_model_dir,
            shards=2,
            factory="IVF8,Flat",
            target_recall=0.9,
        )
    )
    index = IndexVersion.open(version_dir)
    defaults = index.manifest.search_defaults
    assert set(defaults) == {"nprobe", "measured_recall", "recall_k", "target_recall"}
    assert 1 <= defaults["nprobe"] <= 8 and defaults["measured_recall"] >= 0.9
    tuning = index.manifest.build["tuning"]
    assert tuning["target_recall"] == 0.9 and tuning["queries"].startswith("perturbed item")
    assert [s["shard"] for s in tuning["shards"]] == [0, 1]
    assert defaults["nprobe"] == max(s["value"] for s in tuning["shards"])
    assert all(s["curve"] and s["reached"] for s in tuning["shards"])

    # Fresh queries (another seed) searched with the manifest's defaults: recall holds up to
    # sampling noise (stated tolerance 0.1); and the per-request override still applies.
    xb = index.vectors(np.arange(index.n_items))
    xq = perturbed_queries(xb, 100, seed=99)
    D_ref, _ = exact_search(xq, xb, 10)
    _, I = index.search(xq, 10)
    assert tie_aware_recall(xq, xb, I, D_ref) >= 0.9 - 0.1
    _, I = index.search(xq, 10, params={"nprobe": 8})
    assert tie_aware_recall(xq, xb, I, D_ref) == 1.0  # every list probed: exact


def test_build_tunes_with_query_file(tmp_path, catalog, tiny_model_dir):
    queries = tmp_path / "queries_dev.jsonl"
    with queries.open("w") as f:
        for i, text in enumerate(["red sofa", "blue lamp", "green chair", "black desk"] * 3):
            f.write(json.dumps({"query_id": str(i % 4), "query": text}) + "\n")
    version_dir = build_index(
        BuildConfig(
            catalog=catalog[0],
            out=tmp_path / "index",
            model=tiny_model_dir,
            factory="HNSW16",
            tune_queries=queries,
        )
    )
    manifest = IndexVersion.open(version_dir).manifest
    tuning = manifest.build["tuning"]
    assert tuning["queries"] == str(queries.resolve()) and tuning["n_queries"] == 4
    assert manifest.search_defaults["efSearch"] >= 10
    assert manifest.search_defaults["measured_recall"] >= 0.95


def test_bad_query_file_fails_before_embedding(tmp_path, catalog, tiny_model_dir):
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"query_id": "1"}\n')
    config = BuildConfig(
        catalog=catalog[0], out=tmp_path / "i", model=tiny_model_dir, factory="HNSW16"
    )
    with pytest.raises(ValueError, match=r"labels\.jsonl:1: missing required field 'query'"):
        build_index(BuildConfig(**{**config.__dict__, "tune_queries": bad}))
    with pytest.raises(ValueError, match="tune_queries file not found"):
        BuildConfig(**{**config.__dict__, "tune_queries": tmp_path / "nope.jsonl"})
