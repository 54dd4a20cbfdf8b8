"""Served latency under load: a gRPC load generator against `aisle-serve` on 127.0.0.1.

What it measures, in one run (the server is its own process, this script is the load generator):

* concurrency 1, 8 and 32, distinct real Home Depot queries, k=100, dense mode (sent as
  SEARCH_MODE_DENSE; a response answered in another mode is an error, "wrong_mode"), embedding
  cache off: p50/p95/p99 latency, queries/s, errors, and the server's stage breakdown (encode,
  search, re-rank, total) from each response;
* hybrid mode (BM25 + dense, fused) at concurrency 1 and 8 on further distinct queries, and its
  cost over dense at concurrency 1 (p50 and p99 differences), where the index has BM25;
* the same dense load with the cache on (queries drawn with repeats, Zipf-like): hit rate and
  latency;
* the floor: the same dense encode + search + re-rank called in-process, one query at a time, no
  gRPC, interleaved with served requests for the same queries (blocks of 25 queries, each sent
  once through gRPC at concurrency 1 and once in-process, the order alternating per block), so
  that drift on a shared machine lands on both sides alike; the ratio of those served p50 to
  the floor p50 (``served_over_floor_p50``), and, for comparison, of the separate concurrency-1
  level's p50 to it (``served_c1_over_floor_p50``);
* impressions on vs off (``impressions``): two servers, one logging impressions (the default)
  and one started with ``--impressions off``, loaded alternately in blocks at concurrency 8 with
  the same queries (the order flipping per round, so drift lands on both): p50 of each and the
  p50 the impression log adds, in percent (the target is under 5 %); ``--impressions-only``
  runs just this;
* `--soak MINUTES`: dense, concurrency 32 for that long: errors, and the server process's RSS
  and open file descriptors over time, with the RSS slope (MB/min, least squares after the
  first SOAK_WARMUP_FRACTION of the run) that says whether memory is flat or leaking.

The index is built once (cached under bench-out/cache by catalog and settings) with the packaged
all-MiniLM-L6-v2 whose query tower is exported to ONNX, so the server encodes with ONNX Runtime.

Preset 1M serves 1,000,000 items grown from the 54,667 real Home Depot item vectors as
``benchmarks.bench_ann`` grows them (perturbed copies, no encoding of 1M texts): the catalog
repeats the source items' fields (ids ``<source id>~<j>`` for copy j >= 1), the build takes the
grown vectors as its item vectors (``BuildConfig.item_vectors``), IVF4096,Flat with nprobe tuned
on the real dev queries. It is dense-only (no BM25 over 1M repeated titles), so it has no hybrid
rows.

Query towers (``--query-tower full,fast``; the model dir, ``--model``, must have a fast tower,
``query_fast/``, which aisle-train writes by default): the main levels above use the first tower;
then ``query_towers`` holds a row per tower measured side by side (``benchmarks.tower_load``: one
server per tower, the same distinct queries at each concurrency level, dense): p50/p99 ms, QPS,
errors and the server's encode p50/p99 per level, and QPS / p50 relative to the first tower.
``--query-tower-only`` runs just those rows. Without ``--query-tower`` the server is asked for the
full tower (``full``), as before fast towers existed, so older lines stay comparable.

``python -m benchmarks.bench_latency [--preset S|M|L|1M] [--modes dense,hybrid] [--soak MINUTES]
[--model DIR] [--query-tower full,fast]``; ``--modes dense,hybrid,ranked --ranker FILE`` adds
hybrid and ranked at concurrency 1, in alternating blocks on one server over a copy of the
index with the ranker attached, and the ranking stage's cost (ranked minus hybrid p50/p99).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# As aisle-serve does: OpenMP threads that spin between calls steal the cores the request
# threads need. Must be set before FAISS / torch load OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from benchmarks.common import append_jsonl, machine, require_shared_data  # noqa: E402
from benchmarks.load import QueryPool, Server, level_line, mode_enum, run_load, summary  # noqa: E402
from benchmarks.paired_load import (  # noqa: E402
    impressions_cost,
    impressions_line,
    ranked_cost,
    ranked_levels,
)
from benchmarks.tower_load import Tower, parse_towers, tower_levels  # noqa: E402

log = logging.getLogger("bench_latency")


@dataclass(frozen=True)
class LatencyConfig:
    preset: str
    items: int  # catalog slice (0 = the whole Home Depot catalog, 54,667 items)
    requests: int  # per concurrency level
    concurrency: tuple[int, ...]  # dense levels
    k: int = 100
    factory: str = "IVF256,Flat"
    max_item_length: int = 32  # Home Depot items are titles: 32 tokens cover almost all
    shards: int = 1
    # > 0: serve this many items grown from the real item vectors (bench_ann.grow), built from
    # those vectors (no encoding); 0: encode the catalog (slice).
    grow: int = 0
    lexical: bool = True  # build BM25 (hybrid mode needs it)
    tune_on_dev_queries: bool = False  # tune nprobe on real queries, not perturbed items
    hybrid_concurrency: tuple[int, ...] = (1, 8)
    # None: the packaged MiniLM (its query tower exported to ONNX once); else a model dir
    # written by aisle-train (with its ONNX query tower), e.g. one with a trigram sketch.
    model: str | None = None


PRESETS = {
    "S": LatencyConfig("S", items=0, requests=300, concurrency=(1, 8, 32)),
    "M": LatencyConfig("M", items=0, requests=2000, concurrency=(1, 8, 32)),
    "L": LatencyConfig("L", items=0, requests=10_000, concurrency=(1, 8, 32, 64), shards=2),
    # bench_ann found perturbed-item tuning under-estimates the nprobe real queries need, so
    # the grown index is tuned on the real dev queries (they are also served: a tuning set that
    # overlaps the measured queries is fine here, recall is not what is measured).
    "1M": LatencyConfig(
        "1M",
        items=0,
        requests=2000,
        concurrency=(1, 8, 32),
        factory="IVF4096,Flat",
        max_item_length=48,  # what bench_ann embedded the real vectors with
        grow=1_000_000,
        lexical=False,
        tune_on_dev_queries=True,
    ),
}
MODES = ("dense", "hybrid", "ranked")
DEFAULT_MODES = ("dense", "hybrid")  # ranked needs --ranker


# ----------------------------------------------------------------------------- set-up


def prepare(config: LatencyConfig, cache: Path) -> tuple[Path, list[str]]:
    """The index root (built once per settings) and the query texts."""
    from indexer.build.config import BuildConfig
    from indexer.build.local import build_index
    from trainer.data.catalog import read_catalog
    from trainer.data.labels import read_queries
    from trainer.encoder.model_dir import default_model_dir, model_fingerprint
    from trainer.encoder.onnx_export import export_query_tower

    data = require_shared_data("homedepot")
    queries = list(read_queries(data / "queries_dev.jsonl").values())
    queries += list(read_queries(data / "queries_train.jsonl").values())
    queries = list(dict.fromkeys(queries))  # distinct texts
    if config.model is not None:
        model = Path(config.model)
    else:
        model = cache / "model-onnx"
        if not model.exists():
            export_query_tower(default_model_dir(), model)
    catalog_path = data / "products.jsonl.gz"
    item_vectors = None
    if config.grow:
        catalog_path, item_vectors = grown_catalog(config.grow, data, cache)
    elif config.items:
        catalog = read_catalog(catalog_path)
        catalog_path = cache / f"homedepot-{config.items}.jsonl"
        if not catalog_path.exists():
            with catalog_path.open("w") as f:
                for i, record in enumerate(catalog.records()):
                    if i == config.items:
                        break
                    f.write(json.dumps(record) + "\n")
    parts: list[object] = [str(catalog_path), config.factory, config.max_item_length, config.shards]
    # Only non-default settings join the key, so indexes cached before they existed still match.
    if item_vectors is not None:
        parts.append(f"item_vectors={item_vectors}")
    if not config.lexical:
        parts.append("no-lexical")
    if config.tune_on_dev_queries:
        parts.append("tune=queries_dev")
    if config.model is not None:
        parts.append(f"model={model_fingerprint(model)}")
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]
    root = cache / f"index-{key}"
    if not (root / "CURRENT").exists():
        log.info("building the index once (cached as %s)", root)
        build_index(
            BuildConfig(
                catalog=catalog_path,
                out=root,
                model=model,
                shards=config.shards,
                factory=config.factory,
                max_item_length=config.max_item_length,
                lexical=config.lexical,
                item_vectors=item_vectors,
                tune_queries=data / "queries_dev.jsonl" if config.tune_on_dev_queries else None,
            )
        )
    return root, queries


def grown_catalog(n: int, data: Path, cache: Path) -> tuple[Path, Path]:
    """(catalog .jsonl, item vectors .npy) of ``n`` items grown from the Home Depot catalog.

    The vectors are ``benchmarks.bench_ann.grow`` of the real item vectors (the packaged
    model's, cached by bench_ann under bench-out/cache): the 54,667 real ones, then perturbed
    copies (noise 0.5 x each source's nearest-neighbour distance, seed 0), (n, 384) float32 unit
    rows. Catalog row i is the source item of vector row i (i mod 54,667) with all its fields;
    copy j >= 1 of an item has id ``<source id>~<j>``. Both are written once into ``cache``.
    """
    from benchmarks import bench_ann
    from trainer.data.catalog import read_catalog

    ann = bench_ann.PRESETS["S"]  # max_item_length 48, copy_noise 0.5, seed 0
    real, _, fingerprint = bench_ann.real_embeddings(ann, data)
    content = (fingerprint, real.shape, float(real[:100].sum()))  # bench_ann's nn-distance key
    key = bench_ann.cache_key(*content, n, ann.copy_noise, ann.seed)
    vectors_path = cache / f"hd_grown_{n}_{key}.npy"
    catalog_path = cache / f"hd_grown_{n}_{key}.jsonl"
    if not vectors_path.exists():
        nn_dist = bench_ann.cached_array(
            "hd_nn_dist",
            bench_ann.cache_key(*content),
            lambda: bench_ann.nearest_neighbour_distance(real),
        )
        log.info("growing %d item vectors from %d real ones", n, len(real))
        xb = bench_ann.grow(real, nn_dist, n, ann.copy_noise, ann.seed)  # (n, 384) float32
        tmp = vectors_path.with_suffix(".tmp.npy")
        np.save(tmp, xb)
        os.replace(tmp, vectors_path)
        del xb
    if not catalog_path.exists():
        records = list(read_catalog(data / "products.jsonl.gz").records())
        if len(records) != len(real):
            raise RuntimeError(
                f"the catalog has {len(records)} items but the cached real vectors {len(real)}"
            )
        log.info("writing the %d-item grown catalog %s", n, catalog_path)
        tmp = catalog_path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for i in range(n):
                copy, source = divmod(i, len(records))
                record = records[source]
                if copy:
                    record = {**record, "item_id": f"{record['item_id']}~{copy}"}
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, catalog_path)
    return catalog_path, vectors_path


SOAK_WARMUP_FRACTION = 0.25  # of a soak: caches, arenas and thread pools fill up in it
SOAK_SERIES_POINTS = 20  # samples kept in the JSON line (one a second are taken)


def soak_trend(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    """From (seconds since start, RSS MB, open fds) samples: the RSS slope in MB/min fitted
    after the warm-up, RSS and fds first/last/max, and a thinned series for the JSON line."""
    if not samples:
        return {"rss_mb_per_min": None, "samples": 0}
    t = np.array([x[0] for x in samples])
    rss = np.array([x[1] for x in samples])
    fds = np.array([x[2] for x in samples])
    after = t >= t[-1] * SOAK_WARMUP_FRACTION
    slope = float(np.polyfit(t[after] / 60, rss[after], 1)[0]) if after.sum() >= 2 else None
    step = max(1, len(samples) // SOAK_SERIES_POINTS)
    return {
        "rss_mb_per_min": None if slope is None else round(slope, 3),
        "warmup_s": round(float(t[-1] * SOAK_WARMUP_FRACTION), 1),
        "rss_mb_first_last_max": [float(rss[0]), float(rss[-1]), float(rss.max())],
        "fds_first_last_max": [int(fds[0]), int(fds[-1]), int(fds.max())],
        "series_s_rss_mb_fds": [list(x) for x in samples[::step]],
        "samples": len(samples),
    }


FLOOR_BLOCK = 25  # queries per block of the interleaved floor


def floor(
    address: str, root: Path, queries: list[str], k: int, query_tower: str = "full"
) -> dict[str, Any]:
    """The floor: the same dense encode + search + re-rank in-process (cache off, one query at a
    time), interleaved with the same queries served by the server at ``address``: blocks of
    FLOOR_BLOCK queries, each block once through gRPC and once in-process, which goes first
    alternating per block. Returns the floor's summary with the paired served one inside."""
    import faiss

    from engine.client import AisleClient
    from engine.search.service import SearchService
    from engine.search.snapshot import load_snapshot
    from engine.search.types import EncodingConfig, SearchQuery

    faiss.omp_set_num_threads(1)  # the server's setting (aisle-serve --threads 1)
    encoding = EncodingConfig(cache_size=0, query_tower=query_tower)
    snapshot = load_snapshot(root, encoding=encoding)
    service = SearchService(snapshot, index_path=root, model_dir=None, encoding=encoding)
    dense = mode_enum("dense")
    local: list[float] = []
    served: list[float] = []
    errors = 0

    def in_process(q: str) -> float:
        t = time.perf_counter()
        service.search(SearchQuery(text=q, k=k, mode="dense"))
        return (time.perf_counter() - t) * 1e3

    try:
        with AisleClient(address, timeout_s=30) as client:

            def through_grpc(q: str) -> float | None:
                t = time.perf_counter()
                try:
                    client.search(q, k, mode=dense)
                except Exception:  # counted and reported, never hidden
                    return None
                return (time.perf_counter() - t) * 1e3

            for q in queries[:20]:  # warm-up, both sides
                in_process(q)
                through_grpc(q)
            started = time.perf_counter()
            for b, start in enumerate(range(0, len(queries), FLOOR_BLOCK)):
                block = queries[start : start + FLOOR_BLOCK]
                sides = (("served", through_grpc), ("local", in_process))
                for side, call in sides if b % 2 == 0 else sides[::-1]:
                    for q in block:
                        ms = call(q)
                        if ms is None:
                            errors += 1
                        else:
                            (served if side == "served" else local).append(ms)
            wall = time.perf_counter() - started
    finally:
        service.close()
    result = summary(local, wall / 2, 0)
    result["paired_served"] = summary(served, wall / 2, errors)
    result["method"] = (
        f"interleaved with gRPC requests for the same {len(queries)} queries, blocks of "
        f"{FLOOR_BLOCK}, order alternating per block"
    )
    return result


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for level in results["served"]:
        values = np.sort(np.asarray(level["latencies_ms"]))
        ax.plot(values, np.linspace(0, 1, len(values)), label=f"concurrency {level['concurrency']}")
    for level in results.get("hybrid") or []:
        if level["concurrency"] == 1:
            values = np.sort(np.asarray(level["latencies_ms"]))
            ax.plot(values, np.linspace(0, 1, len(values)), linestyle="--", color="black",
                    label="hybrid, concurrency 1")  # fmt: skip
    ax.axvline(results["floor"]["p50_ms"], color="grey", linestyle=":", label="in-process p50")
    ax.set_xscale("log")
    ax.set_xlabel("latency through gRPC (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Aisle Search latency (dense unless marked), {results['n_items']:,} items, "
                 f"k={results['k']}")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_modes(text: str) -> tuple[str, ...]:
    """``--modes``: a comma list of MODES; dense is always measured (the main levels)."""
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in MODES]
    if unknown or "dense" not in modes:
        raise argparse.ArgumentTypeError(
            f"--modes takes a comma list of {', '.join(MODES)} that includes dense (the main "
            f"levels), got {text!r}"
        )
    return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="S")
    parser.add_argument("--soak", type=float, default=0.0, help="minutes at concurrency 32")
    parser.add_argument(
        "--modes",
        type=parse_modes,
        default=DEFAULT_MODES,
        help="comma list: dense (always) and hybrid (concurrency "
        f"{', '.join(map(str, PRESETS['S'].hybrid_concurrency))}, where the index has BM25) "
        "and ranked (concurrency 1, paired with hybrid on the same server; needs --ranker) "
        "(default: dense,hybrid)",
    )
    parser.add_argument(
        "--ranker",
        type=Path,
        help="ranker file (aisle-rank train, or bench_rank's bench-out/ranker-homedepot.json: "
        "same towers, title-only fields) attached to a hard-linked copy of the index for the "
        "ranked mode",
    )
    parser.add_argument(
        "--impressions-only",
        action="store_true",
        help="measure only the impression log's cost (on vs off, concurrency 8)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results (default bench-out/latency.jsonl; with --query-tower-only "
        "bench-out/latency_towers.jsonl, so the report's newest full line stays whole)",
    )
    parser.add_argument("--plot", type=Path, default=Path("bench-out/latency.png"))
    parser.add_argument("--cache-dir", type=Path, default=Path("bench-out/cache"))
    parser.add_argument("--items", type=int, help="override: catalog slice (a quick check)")
    parser.add_argument(
        "--grow", type=int, help="override: serve N items grown from the real vectors (as 1M)"
    )
    parser.add_argument("--factory", help="override: FAISS factory string of the index")
    parser.add_argument("--requests", type=int, help="override: requests per concurrency level")
    parser.add_argument(
        "--model",
        help="override: serve this trained model dir instead of the packaged MiniLM",
    )
    parser.add_argument(
        "--query-tower",
        default="full",
        help="comma list of full,fast: the main levels use the first; with two, a row per tower "
        "side by side (query_towers); fast needs --model DIR with query_fast/ (default: full)",
    )
    parser.add_argument(
        "--query-tower-only",
        action="store_true",
        help="measure only the rows per query tower (--query-tower), dense",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        name = "latency_towers" if args.query_tower_only else "latency"
        args.out = Path(f"bench-out/{name}.jsonl")
    try:
        towers = parse_towers(args.query_tower)
    except ValueError as e:
        parser.error(str(e))
    if "fast" in towers and args.model is None:
        parser.error("--query-tower fast needs --model DIR (a model dir with query_fast/)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = shlex.join(
        ["python", "-m", "benchmarks.bench_latency", *(sys.argv[1:] if argv is None else argv)]
    )
    config = PRESETS[args.preset]
    overrides = {
        "items": args.items,
        "grow": args.grow,
        "factory": args.factory,
        "requests": args.requests,
        "model": args.model,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if config.items and config.grow:
        parser.error("--items (a catalog slice) and --grow (a grown catalog) exclude each other")
    info = machine("prometheus-client")
    print(json.dumps({"config": asdict(config), "machine": info, "command": command}, indent=1))
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    root, queries = prepare(config, args.cache_dir)
    random.Random(0).shuffle(queries)
    from indexer.version import IndexVersion

    manifest = IndexVersion.open(root, verify=False).manifest
    n_items = manifest.n_items
    hybrid_skipped = None
    if "hybrid" not in args.modes:
        hybrid_skipped = "not asked for (--modes)"
    elif not config.lexical:
        hybrid_skipped = "dense-only index (built with lexical=False: no BM25 channel)"
    results: dict[str, Any] = {
        "bench": "latency",
        "benchmark": "latency",  # the key older readers look for
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "config": asdict(config),
        "machine": info,
        "n_items": n_items,
        "k": config.k,
        "index": {
            "factory": manifest.factory,
            "search_defaults": manifest.search_defaults,
            "lexical": config.lexical,
            "item_vectors": (manifest.build.get("item_vectors") or {}).get("path"),
        },
        "query_tower": towers[0],  # of the main levels
        "served": [],
        "hybrid": [],
        "hybrid_cost_ms": None,
        # The proto's Timings has no lexical or fusion stage: in hybrid mode search_ms is BM25
        # plus the dense search, and the fusion lands in rerank_ms.
        "stages_note": "hybrid: search_ms = BM25 + dense search; fusion is in rerank_ms",
    }
    if hybrid_skipped:
        results["hybrid_skipped"] = hybrid_skipped
        log.info("no hybrid levels: %s", hybrid_skipped)
    if args.impressions_only:
        results = {**results, "bench": "latency_impressions", "benchmark": "latency_impressions"}
        results["impressions"] = cost = impressions_cost(
            root, args.cache_dir, queries, config.requests, config.k, towers[0]
        )
        print(impressions_line(cost))
        append_jsonl(args.out, results)
        print(f"wrote {args.out}")
        return 0
    pool = QueryPool(queries)
    if len(towers) > 1 or args.query_tower_only:
        model = Path(config.model) if config.model is not None else None
        results["query_towers"] = tower_levels(
            root,
            args.cache_dir,
            [Tower(t, t, model) for t in towers],
            pool,
            config.concurrency,
            config.requests,
            config.k,
        )
        if args.query_tower_only:
            results = {**results, "bench": "latency_towers", "benchmark": "latency_towers"}
            append_jsonl(args.out, results)
            print(f"wrote {args.out}")
            return 0

    server = Server(root, args.cache_dir, cache_size=0, query_tower=towers[0])
    try:
        run_load(server.address, queries[-50:], 1, 50, config.k)  # warm-up, not counted
        for c in config.concurrency:
            distinct, repeated = pool.take(config.requests)  # cache off: repeats are no help
            level = run_load(server.address, distinct, c, config.requests, config.k)
            level["concurrency"] = c
            level["repeated_queries"] = repeated
            results["served"].append(level)
            print(level_line(f"dense  concurrency {c:3d}", level))
        distinct, _ = pool.take(min(config.requests, 500))
        results["floor"] = base = floor(server.address, root, distinct, config.k, towers[0])
        one = results["served"][0]
        results["served_over_floor_p50"] = round(
            base["paired_served"]["p50_ms"] / base["p50_ms"], 3
        )
        results["served_c1_over_floor_p50"] = round(one["p50_ms"] / base["p50_ms"], 3)
        print(
            f"in-process floor p50 {base['p50_ms']:.2f} ms, the same queries served "
            f"{base['paired_served']['p50_ms']:.2f} ms: served/floor "
            f"{results['served_over_floor_p50']} (concurrency-{one['concurrency']} level: "
            f"{results['served_c1_over_floor_p50']})"
        )
        if not hybrid_skipped:
            run_load(server.address, queries[-20:], 1, 20, config.k, mode="hybrid")  # warm-up
            for c in config.hybrid_concurrency:
                distinct, repeated = pool.take(config.requests)
                level = run_load(
                    server.address, distinct, c, config.requests, config.k, mode="hybrid"
                )
                level["concurrency"] = c
                level["repeated_queries"] = repeated
                results["hybrid"].append(level)
                print(level_line(f"hybrid concurrency {c:3d}", level))
            results["hybrid_cost_ms"] = hybrid_cost(results["served"], results["hybrid"])
            print(f"hybrid cost over dense at concurrency 1 (ms): {results['hybrid_cost_ms']}")
        if args.soak:
            samples: list[tuple[float, float, int]] = []
            soak_start = time.monotonic()

            def sample() -> None:
                t = round(time.monotonic() - soak_start, 1)
                samples.append((t, round(server.rss_mb(), 1), server.open_fds()))

            soak = run_load(server.address, queries, 32, 0, config.k, duration_s=args.soak * 60,
                            on_tick=sample)  # fmt: skip
            soak.pop("latencies_ms")
            soak["minutes"] = args.soak
            soak.update(soak_trend(samples))
            results["soak"] = soak
            print(
                f"soak {args.soak} min: {soak['n']} requests, errors {soak['errors']}, "
                f"p99 {soak['p99_ms']} ms, RSS {soak['rss_mb_per_min']} MB/min after "
                f"{soak['warmup_s']} s (first/last/max {soak['rss_mb_first_last_max']} MB), "
                f"open fds first/last/max {soak['fds_first_last_max']}"
            )
    finally:
        server.stop()

    if "ranked" in args.modes:
        results["ranked"] = ranked_levels(root, args, config, pool, towers[0])
        results["ranked_cost_ms"] = ranked_cost(results["ranked"])
        print(f"ranked cost over hybrid at concurrency 1 (ms): {results['ranked_cost_ms']}")

    server = Server(root, args.cache_dir, cache_size=10_000, query_tower=towers[0])
    try:
        weights = 1.0 / np.arange(1, 501) ** 1.1  # Zipf-like popularity over 500 queries
        sample = random.Random(1).choices(queries[:500], weights=weights, k=config.requests)
        cached = run_load(server.address, sample, 8, len(sample), config.k)
        unique = len(set(sample))
        cached["hit_rate"] = round(1 - unique / len(sample), 3)  # the first sight of each misses
        cached.pop("latencies_ms")
        results["cache_on_concurrency_8"] = cached
        print(f"cache on (c=8): p50 {cached['p50_ms']:.2f} ms, hit rate {cached['hit_rate']}")
    finally:
        server.stop()

    results["impressions"] = cost = impressions_cost(
        root, args.cache_dir, queries, config.requests, config.k, towers[0]
    )
    print(impressions_line(cost))

    plot(results, args.plot)
    for level in results["served"] + results["hybrid"] + results.get("ranked", []):
        level.pop("latencies_ms")
    append_jsonl(args.out, results)
    print(f"wrote {args.out} and {args.plot}")
    return 0


def hybrid_cost(
    served: list[dict[str, Any]], hybrid: list[dict[str, Any]]
) -> dict[str, float] | None:
    """Hybrid minus dense latency at concurrency 1 (ms): {"p50": .., "p99": ..}; None when
    either has no concurrency-1 level."""
    dense_1 = next((x for x in served if x["concurrency"] == 1), None)
    hybrid_1 = next((x for x in hybrid if x["concurrency"] == 1), None)
    if dense_1 is None or hybrid_1 is None:
        return None
    return {q: round(hybrid_1[f"{q}_ms"] - dense_1[f"{q}_ms"], 3) for q in ("p50", "p99")}


if __name__ == "__main__":
    raise SystemExit(main())
