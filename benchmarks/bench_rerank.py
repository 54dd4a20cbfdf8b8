"""Benchmark the re-ranking kernels: numba vs NumPy, rerank latency, compact vector cost.

Measures, on synthetic unit vectors and a synthetic catalog (deterministic for a seed):

* each kernel against a vectorised NumPy equivalent on 10k candidates (p50 and the ratio);
* ``rerank`` of 1,000 candidates, p50/p99 in microseconds, plain and with filters, boosts and
  diversity (the target: well under a millisecond at dim 384, 54k items);
* the filter's selectivity pass over the whole catalog and the exhaustive path for a 0.5 % filter;
* memory per vector and recall@10 of the float16 and int8 copies against float32.

Random unit vectors are the hard case for compact copies (scores bunch together); real
embeddings have clearer neighbours.

``python -m benchmarks.bench_rerank [--preset S|M|L] [--out bench-out/rerank.jsonl]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.common import append_jsonl
from benchmarks.common import machine as common_machine
from indexer.rerank import kernels as K
from indexer.rerank.columns import ItemColumns
from indexer.rerank.filters import compile_filter, matching_rows, selectivity
from indexer.rerank.rerank import rerank
from indexer.rerank.specs import BoostSpec, DiversitySpec, FilterSpec
from indexer.rerank.vectors import VectorStore


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one run."""

    preset: str
    n_items: int
    dim: int
    candidates: int  # per rerank call
    kernel_candidates: int  # for the numba-vs-NumPy comparison
    k: int
    reps: int  # timed calls per measurement
    queries: int  # for recall
    seed: int = 0


PRESETS = {
    "S": BenchConfig("S", n_items=10_000, dim=128, candidates=1000, kernel_candidates=10_000,
                     k=10, reps=200, queries=20),
    "M": BenchConfig("M", n_items=54_000, dim=384, candidates=1000, kernel_candidates=10_000,
                     k=10, reps=1000, queries=50),
    "L": BenchConfig("L", n_items=500_000, dim=384, candidates=1000, kernel_candidates=10_000,
                     k=10, reps=2000, queries=100),
}  # fmt: skip

N_CATEGORIES = 120
N_BRANDS = 400


# ----------------------------------------------------------------------------- data


def make_world(config: BenchConfig) -> tuple[np.ndarray, pa.Table]:
    """(n, dim) float32 unit vectors and an items table with the catalog's typed columns."""
    rng = np.random.default_rng(config.seed)
    n = config.n_items
    xb = rng.standard_normal((n, config.dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    tops = ["Home", "Kitchen", "Electronics", "Clothing", "Sports & Outdoors", "Toys & Games"]
    categories = [
        f"{tops[c % len(tops)]} > Group {c // 12} > Leaf {c}" for c in range(N_CATEGORIES)
    ]
    popular = rng.zipf(1.5, n) % N_BRANDS  # a few big brands, a long tail
    items = pa.table(
        {
            "item_id": [f"SKU{i:07d}" for i in range(n)],
            "category": pa.array(np.array(categories)[rng.integers(0, N_CATEGORIES, n)]),
            "brand": pa.array([f"Brand {b}" for b in popular]),
            "price": pa.array(np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(3.5, 1.0, n)),
                              from_pandas=True),
            "rating": pa.array(np.round(rng.uniform(1, 5, n), 1)),
            "rating_count": pa.array(rng.zipf(1.3, n).clip(0, 10**6)),
            "in_stock": pa.array(rng.random(n) < 0.85),
            "margin": pa.array(rng.uniform(0.02, 0.6, n)),
        }
    )  # fmt: skip
    return xb, items


# ----------------------------------------------------------------------------- NumPy equivalents


def np_scores_f32(xq, xb, rows):
    return np.where(rows < 0, -np.inf, xb[np.maximum(rows, 0)] @ xq).astype(np.float32)


def np_scores_f16(xq, xb_f16, rows):
    return (xb_f16[rows].astype(np.float32) @ xq).astype(np.float32)


def np_scores_i8(xq, codes, scales, rows):
    return (codes[rows].astype(np.float32) @ xq) * scales[rows]


def np_filter(rows, c: ItemColumns, f):
    ok = rows >= 0
    r = np.maximum(rows, 0)
    if f.category_allowed.size:
        code = c.category_codes[r]
        ok &= (code >= 0) & f.category_allowed[np.maximum(code, 0)]
    if f.brand_allowed.size:
        code = c.brand_codes[r]
        ok &= (code >= 0) & f.brand_allowed[np.maximum(code, 0)]
    price = c.price[r]
    ok &= (price >= f.price_min) & (price <= f.price_max)
    if f.in_stock_required >= 0:
        ok &= c.in_stock[r] == f.in_stock_required
    return ok


def np_boost(sim, rows, signals, weights):
    return np.where(rows < 0, -np.inf, sim + signals[np.maximum(rows, 0)] @ weights)


def np_dedupe(rows, scores):
    order = np.lexsort((-scores, rows))
    first = np.ones(len(order), dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    keep = np.zeros(len(rows), dtype=bool)
    keep[order[first]] = True
    return keep & (rows >= 0)


def np_topk(scores, rows, k):
    part = np.argpartition(-scores, k)[:k]
    return part[np.lexsort((rows[part], -scores[part]))]


# ----------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], reps: int) -> np.ndarray:
    """Microseconds per call, after two warm-up calls (JIT compilation, caches)."""
    fn()
    fn()
    out = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        out[i] = (time.perf_counter_ns() - t0) / 1e3
    return out


def summary(us: np.ndarray) -> dict[str, float]:
    return {
        "p50_us": round(float(np.percentile(us, 50)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
    }


def machine() -> dict[str, Any]:
    return common_machine("numba")


# ----------------------------------------------------------------------------- the benchmark


def run(config: BenchConfig) -> dict[str, Any]:
    """All measurements; NumPy's BLAS is held to one thread when threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it NumPy may use every core, the kernels use one
        return _run(config, blas_threads="default")
    # One thread against one thread: a kernel call uses one core (a server runs one request per
    # core), and BLAS threads on a busy machine cost more in waiting than they gain.
    with threadpool_limits(limits=1, user_api="blas"):
        return _run(config, blas_threads=1)


def _run(config: BenchConfig, blas_threads: int | str) -> dict[str, Any]:
    rng = np.random.default_rng(config.seed + 1)
    xb, items = make_world(config)
    t0 = time.perf_counter()
    columns = ItemColumns.from_table(items)
    prepare_s = time.perf_counter() - t0
    stores = {kind: VectorStore.encode(xb, kind) for kind in ("f32", "f16", "i8")}
    queries = rng.standard_normal((config.queries, config.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    xq = queries[0]
    results: dict[str, Any] = {
        "numpy_blas_threads": blas_threads,
        "prepare_columns_s": round(prepare_s, 3),
    }

    # Kernels vs NumPy on 10k candidates (distinct rows in random order, as ANN returns them).
    m = min(config.kernel_candidates, config.n_items)
    rows = rng.choice(config.n_items, m, replace=False).astype(np.int64)
    kernel_reps = max(20, config.reps // 10)
    spec = FilterSpec(category_prefix="Home", price_min=10.0, price_max=200.0, in_stock=True)
    compiled = compile_filter(spec, columns)
    sim = K.exact_scores_f32(xq, xb, rows)
    weights = BoostSpec(popularity=0.05, rating=0.02, margin=0.01).weights
    dup_rows = np.concatenate([rows[: m // 2], rows[: m // 2]])  # every row twice
    f16, i8 = stores["f16"], stores["i8"]
    xb_f16 = f16.data.view(np.float16)
    c = columns
    pairs = {
        "exact_scores_f32": (
            lambda: K.exact_scores_f32(xq, xb, rows),
            lambda: np_scores_f32(xq, xb, rows),
        ),
        "exact_scores_f16": (
            lambda: K.exact_scores_f16(xq, f16.data, rows),
            lambda: np_scores_f16(xq, xb_f16, rows),
        ),
        "exact_scores_i8": (
            lambda: K.exact_scores_i8(xq, i8.data, i8.scales, rows),
            lambda: np_scores_i8(xq, i8.data, i8.scales, rows),
        ),
        "filter_mask": (
            lambda: compiled.mask(rows),
            lambda: np_filter(rows, c, compiled),
        ),
        "boost_scores": (
            lambda: K.boost_scores(sim, rows, c.signals, weights),
            lambda: np_boost(sim, rows, c.signals, weights),
        ),
        "dedupe_max": (
            lambda: K.dedupe_max(dup_rows, np.zeros(len(dup_rows), np.float32)),
            lambda: np_dedupe(dup_rows, np.zeros(len(dup_rows), np.float32)),
        ),
        "topk": (
            lambda: K.topk_indices(sim, rows, config.k),
            lambda: np_topk(sim, rows, config.k),
        ),
    }
    if not np.array_equal(compiled.mask(rows), np_filter(rows, c, compiled)):
        raise RuntimeError("filter_mask and its NumPy equivalent disagree")
    kernel_results = {}
    for name, (fast, reference) in pairs.items():
        numba_us = np.percentile(timed(fast, kernel_reps), 50)
        numpy_us = np.percentile(timed(reference, kernel_reps), 50)
        kernel_results[name] = {
            "numba_p50_us": round(float(numba_us), 1),
            "numpy_p50_us": round(float(numpy_us), 1),
            "speedup": round(float(numpy_us / numba_us), 2),
        }
    results[f"kernels_{m}"] = kernel_results

    # Full rerank of 1,000 candidates: a fresh query and candidate list per call.
    candidate_lists = [
        rng.choice(config.n_items, config.candidates, replace=False).astype(np.int64)
        for _ in range(64)
    ]
    boost = BoostSpec(popularity=0.05, rating=0.02)
    scenarios = {
        "plain": {},
        "filter": {"compiled_filter": compiled},
        "boost": {"boost": boost},
        "filter_boost": {"compiled_filter": compiled, "boost": boost},
        "cap2": {"diversity": DiversitySpec(max_per_category=2)},
        "mmr": {"diversity": DiversitySpec(mmr_lambda=0.7)},
    }
    rerank_results: dict[str, Any] = {}
    for kind, store in stores.items():
        for name, kwargs in scenarios.items():
            if kind != "f32" and name not in ("plain", "filter_boost"):
                continue
            calls = iter(range(10**9))

            def one(store=store, kwargs=kwargs, calls=calls) -> None:
                i = next(calls)
                rerank(
                    queries[i % len(queries)],
                    store,
                    candidate_lists[i % len(candidate_lists)],
                    config.k,
                    columns,
                    **kwargs,
                )

            rerank_results[f"{kind}_{name}"] = summary(timed(one, config.reps))
    results[f"rerank_{config.candidates}"] = rerank_results

    # Selective filters: the selectivity pass over the catalog, and exhaustive scoring. The brand
    # whose share of the catalog is closest to 0.5 % (the case the widening strategy targets).
    share = np.bincount(columns.brand_codes, minlength=len(columns.brand_values)) / config.n_items
    rare_brand = columns.brand_values[int(np.argmin(np.abs(share - 0.005)))]
    rare = FilterSpec(brands=(rare_brand,))

    def compile_and_measure() -> None:
        selectivity(compile_filter(rare, columns))

    rare_compiled = compile_filter(rare, columns)
    matching = matching_rows(rare_compiled, columns)
    results["selective_filter"] = {
        "selectivity": round(selectivity(rare_compiled), 5),
        "matching_rows": len(matching),
        "compile_and_selectivity": summary(timed(compile_and_measure, max(20, config.reps // 20))),
        "exhaustive_rerank": summary(
            timed(
                lambda: rerank(xq, stores["f32"], matching, config.k, columns, rare_compiled),
                max(20, config.reps // 10),
            )
        ),
    }

    # Compact copies: memory and recall@10 against float32.
    all_rows = np.arange(config.n_items, dtype=np.int64)
    compact: dict[str, Any] = {}
    for kind, store in stores.items():
        in_candidates = in_catalog = 0
        for qi, q in enumerate(queries):
            cand = candidate_lists[qi % len(candidate_lists)]
            exact_c = set(K.topk(stores["f32"].scores(q, cand), cand, 10)[1].tolist())
            in_candidates += len(exact_c & set(K.topk(store.scores(q, cand), cand, 10)[1].tolist()))
            exact_all = set(K.topk(stores["f32"].scores(q, all_rows), all_rows, 10)[1].tolist())
            got_all = set(K.topk(store.scores(q, all_rows), all_rows, 10)[1].tolist())
            in_catalog += len(exact_all & got_all)
        compact[kind] = {
            "bytes_per_vector": store.nbytes / config.n_items,
            "total_mib": round(store.nbytes / 2**20, 1),
            "recall10_rerank_candidates": round(in_candidates / (10 * len(queries)), 4),
            "recall10_whole_catalog": round(in_catalog / (10 * len(queries)), 4),
        }
    results["compact_vectors"] = compact
    return results


def print_results(results: dict[str, Any]) -> None:
    for name, value in results.items():
        if isinstance(value, dict):
            print(f"{name}:")
            for key, row in value.items():
                print(f"  {key:28s} {row}")
        else:
            print(f"{name}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="M")
    parser.add_argument("--out", type=Path, default=Path("bench-out/rerank.jsonl"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = BenchConfig(**{**asdict(PRESETS[args.preset]), "seed": args.seed})
    info = machine()
    print(f"config: {asdict(config)}")
    print(f"machine: {info}")
    started = time.perf_counter()
    results = run(config)
    print_results(results)
    record = {
        "bench": "rerank",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": info,
        "results": results,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    append_jsonl(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
