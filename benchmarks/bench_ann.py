"""Benchmark ANN index types: recall@10 vs queries/s on real Home Depot embeddings, with hnswlib.

The item vectors are the packaged MiniLM's embeddings of the 54,667 Home Depot titles, grown to
the preset size (S 100k, M 1M, L 2M) by perturbed copies: copy = real vector + a random offset
of ``copy_noise`` times the distance to that vector's nearest real neighbour, re-normalised. So
the neighbourhoods stay those of real data (random Gaussian vectors are meaningless for recall).
Queries are the encoded real Home Depot search terms (dev + train splits, a seeded sample).

For each index type and effort setting: recall@10 against exact search (tie-aware, as
``indexer.build.tune``), queries/s batched (all queries in one call, every core) and single-query
(one call per query, p50 latency), build seconds and memory per million items. The types: exact Flat
(the reference), FAISS HNSW32, IVF-Flat, IVF-SQ8 and IVF-PQ fast-scan (whose top 100 is
re-scored exactly, as the engine does, with float32, float16 and int8 vector copies), and
hnswlib (same M and efConstruction) as the peer. Also: the efforts ``indexer.build.tune`` picks from
perturbed items and from other real queries, and the recall they give on the measured queries.

Embeddings are cached in ``bench-out/cache/`` keyed by model fingerprint, catalog sha256 and
max length: the first run embeds 54k titles (minutes on 2 cores), later runs load them.

``python -m benchmarks.bench_ann [--preset S|M|L] [--out bench-out/ann.jsonl]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.common import machine as common_machine
from indexer.build.factory import nlist_for
from indexer.build.shard import build_shard_index
from indexer.build.tune import exact_search, perturbed_queries, tie_aware_recall, tune_effort
from indexer.rerank.vectors import VectorStore
from indexer.storage.manifest import file_sha256
from indexer.version import search_parameters

DATA_DIR = Path("/work/shared/data/homedepot")
CACHE_DIR = Path("bench-out/cache")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and settings of one run."""

    preset: str
    n_items: int  # real vectors plus perturbed copies
    n_queries: int  # real queries, searched in one batch for recall and batched queries/s
    n_single: int  # of those, searched one per call for single-query queries/s and latency
    k: int = 10
    max_item_length: int = 48  # titles are short: 48 tokens cover nearly all of them
    copy_noise: float = 0.5  # offset of a copy, in units of its source's nearest-neighbour distance
    hnsw_m: int = 32
    # FAISS's "HNSW32" (what aisle builds) uses efConstruction 40; hnswlib gets the same.
    ef_construction: int = 40
    rescore_depth: int = 100  # candidates the engine re-scores exactly
    tune_queries: int = 500  # real queries (not measured ones) for the tuning check
    seed: int = 0


PRESETS = {
    "S": BenchConfig("S", n_items=100_000, n_queries=2000, n_single=300),
    "M": BenchConfig("M", n_items=1_000_000, n_queries=2000, n_single=300),
    "L": BenchConfig("L", n_items=2_000_000, n_queries=2000, n_single=200),
}

EF_SEARCH = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
TARGET = 0.95

log = logging.getLogger("bench_ann")


# ----------------------------------------------------------------------------- data


def cached_array(name: str, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    path = CACHE_DIR / f"{name}_{key}.npy"
    if path.is_file():
        log.info("loading %s from %s", name, path)
        return np.load(path)
    array = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)
    return array


def real_embeddings(
    config: BenchConfig, data_dir: Path, *, encode_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """(items (54667, 384), queries (n, 384), model fingerprint), float32 unit vectors.

    Queries: the distinct search terms of queries_dev and queries_train, in a seeded order.
    """
    from trainer.data.catalog import read_catalog
    from trainer.data.labels import read_queries
    from trainer.encoder.model_dir import default_model_dir, model_fingerprint
    from trainer.text import item_text, query_text

    model_dir = default_model_dir()
    fingerprint = model_fingerprint(model_dir)
    catalog_path = data_dir / "products.jsonl.gz"
    query_paths = [data_dir / "queries_dev.jsonl", data_dir / "queries_train.jsonl"]
    item_key = cache_key(fingerprint, file_sha256(catalog_path), config.max_item_length)
    query_key = cache_key(fingerprint, *(file_sha256(p) for p in query_paths), config.seed)
    encoder = None

    def get_encoder():
        nonlocal encoder
        if encoder is None:
            from trainer.encoder.load import load_encoder

            encoder = load_encoder(model_dir, num_threads=encode_threads)
        return encoder

    def embed_items() -> np.ndarray:
        catalog = read_catalog(catalog_path)
        texts = [item_text(r) for r in catalog.records()]
        log.info("embedding %d titles (max %d tokens)", len(texts), config.max_item_length)
        return get_encoder().encode_items(
            texts, batch_size=128, show_progress=True, max_length=config.max_item_length
        )

    def embed_queries() -> np.ndarray:
        texts = list(
            dict.fromkeys(query_text(q) for p in query_paths for q in read_queries(p).values())
        )
        order = np.random.default_rng(config.seed).permutation(len(texts))
        log.info("embedding %d distinct queries", len(texts))
        return get_encoder().encode_queries([texts[i] for i in order], batch_size=256)

    items = cached_array("hd_items", item_key, embed_items)
    queries = cached_array("hd_queries", query_key, embed_queries)
    return items.astype(np.float32), queries.astype(np.float32), fingerprint


def cache_key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def nearest_neighbour_distance(xb: np.ndarray) -> np.ndarray:
    """(n,) Euclidean distance of each unit vector to its nearest other vector (0 for exact
    duplicates)."""
    D, _ = faiss.knn(xb, xb, 2, metric=faiss.METRIC_INNER_PRODUCT)  # column 0 is itself
    return np.sqrt(np.clip(2 - 2 * D[:, 1], 0, None)).astype(np.float32)


def grow(real: np.ndarray, nn_dist: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """(n, dim) float32: the real vectors, then perturbed copies of them in turn.

    A copy is its source plus a random direction of length ``noise`` x the source's distance
    to its nearest neighbour (a small floor for duplicates), re-normalised: it lands inside
    the source's own neighbourhood, which keeps the data's neighbourhood structure.
    """
    if n <= len(real):
        return np.ascontiguousarray(real[:n])
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    out[: len(real)] = real
    floor = np.float32(np.median(nn_dist) * 0.1)
    radius = np.maximum(nn_dist, floor) * np.float32(noise)
    for start in range(len(real), n, 65536):
        end = min(n, start + 65536)
        source = np.arange(start, end) % len(real)
        u = rng.standard_normal((end - start, real.shape[1]), dtype=np.float32)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        x = real[source] + radius[source, None] * u
        out[start:end] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


# ----------------------------------------------------------------------------- timing


def qps_batched(search: Callable[[np.ndarray], np.ndarray], xq: np.ndarray) -> tuple[float, Any]:
    """(queries/s of one call with every query, best of 3: other load only slows, its result)."""
    best, result = float("inf"), None
    for _ in range(3):
        t0 = time.perf_counter()
        result = search(xq)
        best = min(best, time.perf_counter() - t0)
    return len(xq) / best, result


def qps_single(search: Callable[[np.ndarray], Any], xq: np.ndarray) -> tuple[float, float]:
    """(queries/s, p50 microseconds) with one query per call, on one FAISS thread.

    Queries/s is 1 / p50 latency: on a shared machine the mean is dominated by the stalls
    other processes cause, the median by the search itself. One thread, as a server
    answering one request per core runs it (hnswlib is held to one too): an OpenMP team per
    single query mostly waits, and on a busy machine it stalls.
    """
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for i in range(min(20, len(xq))):  # warm-up
            search(xq[i : i + 1])
        us = np.empty(len(xq))
        for i in range(len(xq)):
            t0 = time.perf_counter_ns()
            search(xq[i : i + 1])
            us[i] = (time.perf_counter_ns() - t0) / 1e3
    finally:
        faiss.omp_set_num_threads(threads)
    p50 = float(np.median(us))
    return 1e6 / p50, p50


# ----------------------------------------------------------------------------- methods


def faiss_sweep(
    name: str,
    index: faiss.Index,
    param: str | None,
    values: tuple[int, ...],
    xq: np.ndarray,
    xb: np.ndarray,
    D_ref: np.ndarray,
    config: BenchConfig,
    rescore_stores: dict[str, VectorStore] | None = None,
) -> list[dict[str, Any]]:
    """Rows of (setting, recall, queries/s) for a FAISS index over ``values`` of ``param``.

    With ``rescore_stores``, the index returns ``rescore_depth`` candidates that each store
    re-scores exactly before the cut to k (the time of the f32 re-score is included).
    """
    rows = []
    k, n_single = config.k, config.n_single
    depth = config.rescore_depth if rescore_stores else k
    for value in values if param else (None,):
        keep: list[Any] = []
        sp = search_parameters(index, {param: value}, keep) if param else None

        def search(q: np.ndarray, sp=sp, depth=depth) -> np.ndarray:
            I = index.search(q, depth, params=sp)[1]
            if rescore_stores:
                I = _rescore(q, rescore_stores["f32"], I, k)
            return I

        qps_b, I = qps_batched(search, xq)
        qps_s, p50 = qps_single(search, xq[:n_single])
        row = {
            "method": name,
            param or "setting": value,
            "recall": round(tie_aware_recall(xq, xb, I, D_ref), 4),
            "qps_batched": round(qps_b, 1),
            "qps_single": round(qps_s, 1),
            "p50_us": round(p50, 1),
        }
        if rescore_stores:
            candidates = index.search(xq, depth, params=sp)[1]
            for kind, store in rescore_stores.items():
                if kind != "f32":
                    I_kind = _rescore(xq, store, candidates, k)
                    row[f"recall_{kind}"] = round(tie_aware_recall(xq, xb, I_kind, D_ref), 4)
        rows.append(row)
        log.info("%s", row)
        if row["recall"] >= 0.999 and param:
            break  # higher effort only costs time from here
    return rows


def _rescore(xq: np.ndarray, store: VectorStore, I: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k of candidates I (nq, depth) with the store's (decoded) vectors."""
    valid = I >= 0
    vectors = store.gather(np.where(valid, I, 0).reshape(-1)).reshape(*I.shape, -1)
    scores = np.where(valid, np.einsum("qd,qcd->qc", xq, vectors), -np.inf)  # (nq, depth)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(valid, best, axis=1), np.take_along_axis(I, best, 1), -1)


def hnswlib_sweep(
    xb: np.ndarray, xq: np.ndarray, D_ref: np.ndarray, config: BenchConfig
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """hnswlib rows over EF_SEARCH, and its build facts."""
    import hnswlib

    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=xb.shape[1])
    index.init_index(
        max_elements=len(xb), M=config.hnsw_m, ef_construction=config.ef_construction, random_seed=1
    )
    index.set_num_threads(os.cpu_count() or 1)
    index.add_items(xb, np.arange(len(xb)))
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        index.save_index(f"{tmp}/h.bin")
        size = os.path.getsize(f"{tmp}/h.bin")
    rows = []
    for ef in EF_SEARCH:
        index.set_ef(max(ef, config.k))
        index.set_num_threads(os.cpu_count() or 1)
        qps_b, I = qps_batched(lambda q: index.knn_query(q, k=config.k)[0], xq)
        index.set_num_threads(1)
        qps_s, p50 = qps_single(lambda q: index.knn_query(q, k=config.k), xq[: config.n_single])
        row = {
            "method": "hnswlib HNSW32",
            "efSearch": ef,
            "recall": round(tie_aware_recall(xq, xb, I.astype(np.int64), D_ref), 4),
            "qps_batched": round(qps_b, 1),
            "qps_single": round(qps_s, 1),
            "p50_us": round(p50, 1),
        }
        rows.append(row)
        log.info("%s", row)
        if row["recall"] >= 0.999:
            break
    facts = {"build_s": round(build_s, 1), "bytes_per_million": round(size / len(xb) * 1e6)}
    return rows, facts


def _index_bytes(index: faiss.Index) -> int:
    return len(faiss.serialize_index(index))


# ----------------------------------------------------------------------------- the benchmark


def run(
    config: BenchConfig, data_dir: Path, *, encode_threads: int | None = None
) -> dict[str, Any]:
    real, queries, fingerprint = real_embeddings(config, data_dir, encode_threads=encode_threads)
    nn_dist = cached_array(
        "hd_nn_dist",
        cache_key(fingerprint, real.shape, float(real[:100].sum())),
        lambda: nearest_neighbour_distance(real),
    )
    xb = grow(real, nn_dist, config.n_items, config.copy_noise, config.seed)
    n, dim = xb.shape
    ids = np.arange(n, dtype=np.int64)
    xq = queries[: config.n_queries]
    xq_tune = queries[config.n_queries : config.n_queries + config.tune_queries]
    log.info("%d item vectors (%d real), %d queries, dim %d", n, len(real), len(xq), dim)

    # The reference: exact search over all of xb (FAISS Flat, what "Flat" serves).
    flat, _ = build_shard_index(xb, ids, "Flat")
    D_ref, _ = exact_search(xq, xb, config.k)
    results: list[dict[str, Any]] = faiss_sweep(
        "exact (Flat)", flat, None, (), xq, xb, D_ref, config
    )
    memory = {"exact (Flat)": round(_index_bytes(flat) / n * 1e6)}
    builds: dict[str, float] = {}
    del flat

    nlist = nlist_for(n)
    pq_m = dim // 2
    specs = [
        (f"HNSW{config.hnsw_m}", "efSearch", EF_SEARCH, False),
        (f"IVF{nlist},Flat", "nprobe", NPROBE, False),
        (f"IVF{nlist},SQ8", "nprobe", NPROBE, False),
        (f"IVF{nlist},PQ{pq_m}x4fs", "nprobe", NPROBE, True),
    ]
    tuning = {}
    stores = {kind: VectorStore.encode(xb, kind) for kind in ("f32", "f16", "i8")}
    for factory, param, values, rescored in specs:
        t0 = time.perf_counter()
        index, _ = build_shard_index(xb, ids, factory)
        builds[factory] = round(time.perf_counter() - t0, 1)
        memory[factory] = round(_index_bytes(index) / n * 1e6)
        log.info("built %s in %.1f s", factory, builds[factory])
        name = factory + (f" + exact re-score of {config.rescore_depth}" if rescored else "")
        results += faiss_sweep(
            name, index, param, values, xq, xb, D_ref, config, stores if rescored else None
        )
        if factory.startswith(("HNSW", f"IVF{nlist},Flat")):
            tuning[factory] = _tuning_check(index, xb, ids, xq, xq_tune, D_ref, config)
        del index

    peer_rows, peer = hnswlib_sweep(xb, xq, D_ref, config)
    results += peer_rows
    builds["hnswlib HNSW32"] = peer["build_s"]
    memory["hnswlib HNSW32"] = peer["bytes_per_million"]
    for kind, store in stores.items():
        memory[f"vectors {kind}"] = round(store.nbytes / n * 1e6)
    return {
        "n_items": n,
        "n_real": len(real),
        "n_queries": len(xq),
        "dim": dim,
        "nlist": nlist,
        "rows": results,
        "build_s": builds,
        "bytes_per_million_items": memory,
        "tuning": tuning,
        "summary": summarize(results),
    }


def _tuning_check(
    index: faiss.Index,
    xb: np.ndarray,
    ids: np.ndarray,
    xq: np.ndarray,
    xq_tune: np.ndarray,
    D_ref: np.ndarray,
    config: BenchConfig,
) -> dict[str, Any]:
    """Efforts indexer.tune picks from perturbed items and from other real queries, and the
    recall each gives on the measured queries."""
    out = {}
    sources = {
        # The build's stand-in (indexer.build.tune.DEFAULT_NOISE), and real queries not measured.
        "perturbed items": perturbed_queries(xb, config.tune_queries, seed=config.seed + 1),
        "real queries": xq_tune,
    }
    for source, queries in sources.items():
        result = tune_effort(index, xb, ids, queries, k=config.k, target_recall=TARGET)
        keep: list[Any] = []
        sp = search_parameters(index, {result.param: result.value}, keep)
        I = index.search(xq, config.k, params=sp)[1]
        out[source] = {
            result.param: result.value,
            "tuning_recall": round(result.recall, 4),
            "recall_on_measured_queries": round(tie_aware_recall(xq, xb, I, D_ref), 4),
        }
    log.info("tuning: %s", out)
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: the fastest setting with recall >= TARGET (batched and single), and its
    speed-up over exact search."""
    exact = next(r for r in rows if r["method"] == "exact (Flat)")
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and r["recall"] >= TARGET]
        if not ok:
            out[method] = None
            continue
        entry = {}
        for mode in ("batched", "single"):
            best = max(ok, key=lambda r, mode=mode: r[f"qps_{mode}"])
            setting = {k: v for k, v in best.items() if k in ("efSearch", "nprobe")}
            entry[mode] = {
                **setting,
                "recall": best["recall"],
                "qps": best[f"qps_{mode}"],
                "x_exact": round(best[f"qps_{mode}"] / exact[f"qps_{mode}"], 1),
            }
        out[method] = entry
    return out


# ----------------------------------------------------------------------------- output


def plot(results: dict[str, Any], config: BenchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, mode in zip(axes, ("batched", "single"), strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            style = "*" if len(mine) == 1 else ".-"
            ax.plot(
                [r["recall"] for r in mine],
                [r[f"qps_{mode}"] for r in mine],
                style,
                label=method,
                markersize=12 if len(mine) == 1 else 6,
            )
        ax.axvline(TARGET, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{config.k}")
        ax.set_ylabel("queries / s")
        ax.set_title(f"{mode}: {results['n_items']:,} Home Depot vectors (preset {config.preset})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    return {**common_machine("hnswlib"), "faiss_threads": faiss.omp_get_max_threads()}


def print_results(results: dict[str, Any]) -> None:
    print(f"{'method':44s} {'setting':>14s} {'recall':>7s} {'qps batch':>10s} "
          f"{'qps single':>10s} {'p50 us':>8s}")  # fmt: skip
    for r in results["rows"]:
        setting = next((f"{k}={r[k]}" for k in ("efSearch", "nprobe") if k in r), "-")
        extra = "".join(f"  {k}={v}" for k, v in r.items() if k.startswith("recall_"))
        print(f"{r['method']:44s} {setting:>14s} {r['recall']:7.4f} {r['qps_batched']:10.1f} "
              f"{r['qps_single']:10.1f} {r['p50_us']:8.1f}{extra}")  # fmt: skip
    for name in ("build_s", "bytes_per_million_items", "tuning", "summary"):
        print(f"{name}:")
        for key, value in results[name].items():
            print(f"  {key:44s} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="S")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="Home Depot data dir")
    parser.add_argument("--out", type=Path, default=Path("bench-out/ann.jsonl"))
    parser.add_argument(
        "--plot", type=Path, default=None, help="default bench-out/ann_<preset>.png"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--encode-threads",
        type=int,
        default=None,
        help="torch threads for embedding (default: torch's; 1 is faster on a busy machine)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = BenchConfig(**{**asdict(PRESETS[args.preset]), "seed": args.seed})
    info = machine()
    print(f"config: {asdict(config)}")
    print(f"machine: {info}")
    started = time.perf_counter()
    results = run(config, args.data, encode_threads=args.encode_threads)
    print_results(results)
    plot_path = args.plot or Path(f"bench-out/ann_{config.preset}.png")
    plot(results, config, plot_path)
    record = {
        "bench": "ann",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": info,
        "results": results,
        "plot": str(plot_path),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(f"wrote {args.out} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
