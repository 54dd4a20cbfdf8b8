"""Tests for the index types: ``--factory auto`` and every factory kind end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from indexer.build.config import BuildConfig
from indexer.build.factory import choose_factory, estimate_index_bytes, nlist_for, parse_memory
from indexer.build.local import build_index
from indexer.build.shard import build_shard_index, builder_name
from indexer.build.tune import exact_search, perturbed_queries, rescore, tie_aware_recall
from indexer.cli import main
from indexer.version import IndexVersion
from tests.helpers import write_catalog

DIM = 384


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


@pytest.fixture(scope="module")
def catalog600(tmp_path_factory) -> Path:
    """600 items: enough to train 8 IVF lists and 4-bit PQ (16 centroids) in one shard."""
    path = tmp_path_factory.mktemp("catalog600") / "products.jsonl"
    write_catalog(path, n=600, seed=1)
    return path


# ----------------------------------------------------------------------------- the auto rule


@pytest.mark.parametrize(
    ("n", "budget", "shards", "expected"),
    [
        (1_000, None, 1, "Flat"),
        (49_999, None, 1, "Flat"),
        (50_000, None, 1, "HNSW32"),
        (1_000_000, None, 1, "HNSW32"),
        (1_000_001, None, 1, "IVF4096,Flat"),
        (4_000_000, None, 1, "IVF8192,Flat"),
        # 200k: HNSW32 needs ~390 MB, the floats in IVF lists ~310 MB.
        (200_000, "350MB", 1, "IVF2048,Flat"),
        (200_000, "700MB", 2, "IVF2048,Flat"),  # the budget is shared by the shards
        (200_000, "800MB", 2, "HNSW32"),
        # 1M: the floats need 1.5 GB; PQ192x4fs codes are 96 bytes per vector, PQ128x4fs 64.
        (1_000_000, "1GB", 1, "IVF4096,PQ192x4fs"),
        (1_000_000, "80MB", 1, "IVF4096,PQ128x4fs"),
        (10_000, "1MB", 1, "IVF256,PQ96x4fs"),  # tiny budget: compress even a small shard
    ],
)
def test_auto_choice_table(n, budget, shards, expected):
    choice = choose_factory(
        n, DIM, memory_budget=None if budget is None else parse_memory(budget), n_shards=shards
    )
    assert choice.factory == expected, choice.reason
    if budget is not None:
        assert choice.estimated_bytes <= parse_memory(budget)
    assert str(n) in choice.reason


def test_auto_budget_too_small():
    with pytest.raises(ValueError, match="memory budget .* too small .* raise --memory-budget"):
        choose_factory(1_000_000, DIM, memory_budget=parse_memory("10MB"))


def test_auto_choices_are_valid_factories():
    for n in (10, 60_000, 2_000_000):
        for budget in (None, parse_memory("50MB")):
            try:
                factory = choose_factory(n, 64, memory_budget=budget).factory
            except ValueError:
                continue
            index = faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT)
            assert index.d == 64


def test_nlist_for():
    assert nlist_for(1_000_000) == 4096  # 4 sqrt(n) = 4000
    assert nlist_for(100_000) == 1024  # 1265 -> nearest power of two
    assert nlist_for(1_000) == 16  # capped so each list gets >= 39 training points
    assert nlist_for(1) == 1
    with pytest.raises(ValueError):
        nlist_for(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (123, 123),
        ("800000000", 800_000_000),
        ("2GB", 2_000_000_000),
        ("2 gb", 2_000_000_000),
        ("1.5G", 1_500_000_000),
        ("512MiB", 512 * 2**20),
        ("64kb", 64_000),
    ],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "2XB", "-1GB", "0", "GB", True])
def test_parse_memory_rejects(text):
    with pytest.raises(ValueError):
        parse_memory(text)


def test_estimates_match_faiss_sizes():
    # The estimates must track what FAISS really holds, within 25 %.
    rng = np.random.default_rng(0)
    n, dim = 4000, 64
    xb = rng.standard_normal((n, dim)).astype(np.float32)
    for factory in ("Flat", "HNSW16", "IVF32,Flat", "IVF32,SQ8", "IVF32,PQ16x4fs"):
        index, _ = build_shard_index(xb, np.arange(n), factory)
        actual = len(faiss.serialize_index(index))
        estimate = estimate_index_bytes(factory, n, dim)
        if factory in ("Flat", "HNSW16"):
            # Serialized id maps hold 8 bytes per id; the estimate adds the in-RAM reverse map.
            actual += 40 * n
        assert 0.75 < estimate / actual < 1.25, (factory, estimate, actual)


# ----------------------------------------------------------------------------- every kind


_KINDS = [
    "Flat",
    "IVF8,Flat",
    "IVF8,PQ8x4np",  # IVFn,PQmxb ("np": no polysemous training, seconds saved per test)
    "IVF8,PQ16x4fs",  # fast scan
    "IVF8,PQ16x4fs,RFlat",
    "IVF8,SQ8",
    "HNSW16",
    "HNSW16,SQ8",
    "SQ8",
    "PQ16x4fs",
    "OPQ4,IVF8,PQ4x4np",
]


@pytest.mark.parametrize("factory", _KINDS)
def test_every_factory_kind_end_to_end(tmp_path, catalog600, tiny_model_dir, factory):
    version_dir = build_index(
        BuildConfig(catalog=catalog600, out=tmp_path, model=tiny_model_dir, factory=factory)
    )
    index = IndexVersion.open(version_dir)
    assert index.manifest.factory == factory
    assert faiss.read_index(str(version_dir / "shard_000.faiss")).ntotal == 600
    xb = index.vectors(np.arange(index.n_items))
    xq = perturbed_queries(xb, 50, seed=5)
    D_ref, _ = exact_search(xq, xb, 10)
    D, I = index.search(xq, 100)  # the engine's candidate depth
    # IVF pads with -1 when the probed lists hold fewer than 100 items.
    assert (I[I >= 0] < 600).all() and (I[:, 0] >= 0).all() and (np.diff(D, axis=1) <= 1e-6).all()
    # Exact re-scoring of 100 candidates (as the engine does) finds most of the true top 10,
    # even with 4-bit codes on these tiny-model vectors (stated tolerance: 0.6 for PQ).
    top = rescore(xq, xb, I, 10)
    exact_codes = factory in ("Flat", "IVF8,Flat", "HNSW16")
    assert tie_aware_recall(xq, xb, top, D_ref) >= (0.9 if exact_codes else 0.6)
    defaults = index.manifest.search_defaults
    if factory == "Flat":
        assert defaults == {}
    else:
        assert defaults["recall_k"] == 10 and 0 < defaults["measured_recall"] <= 1
        assert ("rescore_depth" in defaults) == (not exact_codes)


def test_auto_build_records_choice(tmp_path, catalog600, tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="indexer.build")
    version_dir = build_index(
        BuildConfig(catalog=catalog600, out=tmp_path / "a", model=tiny_model_dir, factory="auto")
    )
    build = IndexVersion.open(version_dir).manifest.build
    assert IndexVersion.open(version_dir).manifest.factory == "Flat"
    assert build["factory_choice"]["requested"] == "auto"
    assert build["factory_choice"]["factory"] == "Flat"
    assert "exact search" in build["factory_choice"]["reason"]
    assert "factory auto: Flat, because" in caplog.text

    # 600 vectors of dim 32: floats ~106 KB, HNSW ~280 KB, IVF8 4-bit PQ16 ~11 KB.
    version_dir = build_index(
        BuildConfig(
            catalog=catalog600,
            out=tmp_path / "b",
            model=tiny_model_dir,
            factory="auto",
            memory_budget="20KB",
        )
    )
    manifest = IndexVersion.open(version_dir).manifest
    assert manifest.factory == "IVF8,PQ16x4fs"
    assert manifest.build["factory_choice"]["memory_budget"] == 20_000
    assert manifest.build["factory_choice"]["estimated_bytes"] <= 20_000


def test_memory_budget_needs_auto(tmp_path, catalog600):
    with pytest.raises(ValueError, match="memory_budget only applies to factory 'auto'"):
        BuildConfig(catalog=catalog600, out=tmp_path, factory="Flat", memory_budget="1GB")
    with pytest.raises(ValueError, match="cannot read memory size"):
        BuildConfig(catalog=catalog600, out=tmp_path, factory="auto", memory_budget="lots")


def test_cli_build_auto(tmp_path, catalog600, tiny_model_dir, capsys):
    code = main(
        [
            "build",
            "--catalog",
            str(catalog600),
            "--out",
            str(tmp_path),
            "--model",
            str(tiny_model_dir),
            "--factory",
            "auto",
            "--memory-budget",
            "100KB",
            "--target-recall",
            "0.9",
            "--vectors",
            "f16",
        ]
    )
    assert code == 0
    version_dir = Path(capsys.readouterr().out.strip())
    manifest = json.loads((version_dir / "manifest.json").read_text())
    # Flat needs ~106 KB with its id map, HNSW ~280 KB, the floats in 8 IVF lists ~83 KB.
    assert manifest["factory"] == "IVF8,Flat"
    assert manifest["search_defaults"]["target_recall"] == 0.9
    assert manifest["search_defaults"]["measured_recall"] >= 0.9
    assert manifest["build"]["vectors"] == "f16"
    assert (version_dir / "shard_000.vectors_f16.npy").is_file()

    assert main(["build", "--catalog", str(catalog600), "--out", str(tmp_path), "--model",
                 str(tiny_model_dir), "--factory", "HNSW16", "--no-tune"]) == 0  # fmt: skip
    manifest = json.loads((Path(capsys.readouterr().out.strip()) / "manifest.json").read_text())
    assert manifest["search_defaults"] == {"efSearch": 64} and "tuning" not in manifest["build"]

    code = main(["build", "--catalog", str(catalog600), "--out", str(tmp_path),
                 "--factory", "Flat", "--memory-budget", "1GB"])  # fmt: skip
    assert code == 2
    assert "memory_budget only applies" in capsys.readouterr().err


# ----------------------------------------------------------------------------- GPU branches


class _FakeCagra:
    """Stands in for faiss.GpuIndexCagra: 'builds' by remembering the vectors, and copies
    them into the CPU index the way copyTo fills an IndexHNSWCagra."""

    def __init__(self, resources, d, metric, config):
        assert metric == faiss.METRIC_INNER_PRODUCT and config.graph_degree == 32
        self.xb = None

    def train(self, xb):
        self.xb = xb

    def copyTo(self, cpu_index):  # noqa: N802 - FAISS's name
        cpu_index.add(self.xb)


def test_cagra_branch_builds_hnsw_with_global_ids(monkeypatch, caplog):
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "GpuIndexCagraConfig", SimpleNamespace, raising=False)
    monkeypatch.setattr(faiss, "GpuIndexCagra", _FakeCagra, raising=False)
    monkeypatch.setattr(faiss, "IndexHNSWCagra", faiss.IndexHNSWFlat)
    caplog.set_level(logging.INFO, logger="indexer.build")
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((500, 16)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)  # inner product: each vector finds itself
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    index, device = build_shard_index(xb, ids, "HNSW16", shard=2)
    assert device == "gpu"
    assert "shard 2: built the HNSW16 graph of 500 vectors with CAGRA" in caplog.text
    assert builder_name("HNSW16", device) == "cuvs-cagra->hnsw"
    _, I = index.search(xb[:5], 1)
    assert I[:, 0].tolist() == ids[:5].tolist()  # FAISS ids are the global rows
    copy = faiss.deserialize_index(faiss.serialize_index(index))
    assert copy.search(xb[:5], 1)[1][:, 0].tolist() == ids[:5].tolist()


def test_gpu_without_cagra_builds_hnsw_on_cpu_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.delattr(faiss, "GpuIndexCagra", raising=False)
    caplog.set_level(logging.INFO, logger="indexer.build")
    xb = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    _, device = build_shard_index(xb, np.arange(100), "HNSW16")
    assert device == "cpu"
    assert "this FAISS has no CAGRA" in caplog.text
