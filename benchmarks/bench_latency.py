"""Served latency under load: a gRPC load generator against `aisle-serve` on 127.0.0.1.

What it measures, in one run (the server is its own process, this script is the load generator):

* concurrency 1, 8 and 32, distinct real Home Depot queries, k=100, dense mode, embedding cache
  off: p50/p95/p99 latency, queries/s, errors, and the server's stage breakdown (encode, search,
  re-rank) from each response;
* the same with the cache on (queries drawn with repeats, Zipf-like): hit rate and latency;
* the floor: the same encode + search + re-rank called in-process, one query at a time, no gRPC;
  the ratio served p50 / floor p50;
* `--soak MINUTES`: concurrency 32 for that long, errors and the server's RSS over time.

The index is built once (cached under bench-out/cache by catalog and settings) with the packaged
all-MiniLM-L6-v2 whose query tower is exported to ONNX, so the server encodes with ONNX Runtime.

``python -m benchmarks.bench_latency [--preset S|M|L] [--soak MINUTES] [--out FILE]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# As aisle-serve does: OpenMP threads that spin between calls steal the cores the request
# threads need. Must be set before FAISS / torch load OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from benchmarks.common import append_jsonl, machine, require_shared_data  # noqa: E402

log = logging.getLogger("bench_latency")


@dataclass(frozen=True)
class LatencyConfig:
    preset: str
    items: int  # catalog slice (0 = the whole Home Depot catalog, 54,667 items)
    requests: int  # per concurrency level
    concurrency: tuple[int, ...]
    k: int = 100
    factory: str = "IVF256,Flat"
    max_item_length: int = 32  # Home Depot items are titles: 32 tokens cover almost all
    shards: int = 1


PRESETS = {
    "S": LatencyConfig("S", items=0, requests=300, concurrency=(1, 8, 32)),
    "M": LatencyConfig("M", items=0, requests=2000, concurrency=(1, 8, 32)),
    "L": LatencyConfig("L", items=0, requests=10_000, concurrency=(1, 8, 32, 64), shards=2),
}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary(latencies_ms: list[float], wall_s: float, errors: int) -> dict[str, Any]:
    return {
        "n": len(latencies_ms),
        "errors": errors,
        "qps": round(len(latencies_ms) / wall_s, 1) if wall_s else None,
        "p50_ms": round(percentile(latencies_ms, 50), 3),
        "p95_ms": round(percentile(latencies_ms, 95), 3),
        "p99_ms": round(percentile(latencies_ms, 99), 3),
        "mean_ms": round(statistics.fmean(latencies_ms), 3) if latencies_ms else None,
    }


# ----------------------------------------------------------------------------- set-up


def prepare(config: LatencyConfig, cache: Path) -> tuple[Path, list[str]]:
    """The index root (built once per settings) and the query texts."""
    from indexer.build import BuildConfig, build_index
    from trainer.data import read_catalog, read_queries
    from trainer.encoder import default_model_dir
    from trainer.onnx_export import export_query_tower

    data = require_shared_data("homedepot")
    queries = list(read_queries(data / "queries_dev.jsonl").values())
    queries += list(read_queries(data / "queries_train.jsonl").values())
    queries = list(dict.fromkeys(queries))  # distinct texts
    model = cache / "model-onnx"
    if not model.exists():
        export_query_tower(default_model_dir(), model)
    catalog_path = data / "products.jsonl.gz"
    if config.items:
        catalog = read_catalog(catalog_path)
        catalog_path = cache / f"homedepot-{config.items}.jsonl"
        if not catalog_path.exists():
            with catalog_path.open("w") as f:
                for i, record in enumerate(catalog.records()):
                    if i == config.items:
                        break
                    f.write(json.dumps(record) + "\n")
    key = hashlib.sha256(
        json.dumps(
            [str(catalog_path), config.factory, config.max_item_length, config.shards]
        ).encode()
    ).hexdigest()[:12]
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
            )
        )
    return root, queries


class Server:
    """`aisle-serve` in its own process on 127.0.0.1; stopped by its pid."""

    def __init__(self, root: Path, work: Path, *, cache_size: int) -> None:
        port_file = work / f"port-{os.getpid()}-{cache_size}"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli_serve", "--index", str(root), "--port", "0",
             "--port-file", str(port_file), "--cache-size", str(cache_size), "--workers", "32",
             "--max-in-flight", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("aisle-serve did not start")
            time.sleep(0.1)
        self.address = f"127.0.0.1:{int(port_file.read_text())}"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- load


def run_load(
    address: str,
    queries: list[str],
    concurrency: int,
    n_requests: int,
    k: int,
    duration_s: float | None = None,
    on_tick: Any = None,
) -> dict[str, Any]:
    """`concurrency` threads, each with its own channel, sending queries back to back."""
    from engine.client import AisleClient

    lock = threading.Lock()
    cursor = {"i": 0}
    latencies: list[float] = []
    stages: dict[str, list[float]] = {"encode_ms": [], "search_ms": [], "rerank_ms": []}
    errors: dict[str, int] = {}
    stop_at = None if duration_s is None else time.monotonic() + duration_s

    def next_query() -> str | None:
        with lock:
            i = cursor["i"]
            if stop_at is None and i >= n_requests:
                return None
            if stop_at is not None and time.monotonic() > stop_at:
                return None
            cursor["i"] = i + 1
        return queries[i % len(queries)]

    def worker() -> None:
        with AisleClient(address, timeout_s=30) as client:
            while (query := next_query()) is not None:
                t = time.perf_counter()
                try:
                    response = client.search(query, k)
                except Exception as error:  # counted and reported, never hidden
                    code = error.code() if hasattr(error, "code") else type(error).__name__
                    with lock:
                        errors[str(code)] = errors.get(str(code), 0) + 1
                    continue
                elapsed = (time.perf_counter() - t) * 1e3
                with lock:
                    latencies.append(elapsed)
                    for name in stages:
                        stages[name].append(getattr(response.timings, name))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        if on_tick is not None:
            on_tick()
    wall = time.perf_counter() - started
    out = summary(latencies, wall, sum(errors.values()))
    out["errors_by_code"] = errors
    out["stages_p50_ms"] = {n: round(percentile(v, 50), 3) for n, v in stages.items()}
    out["latencies_ms"] = latencies
    return out


def floor(root: Path, queries: list[str], k: int, n: int) -> dict[str, Any]:
    """The same encode + search + re-rank in-process, one query at a time, cache off."""
    import faiss

    from engine.service import EncodingConfig, SearchQuery, SearchService, load_snapshot

    faiss.omp_set_num_threads(1)  # the server's setting (aisle-serve --threads 1)
    encoding = EncodingConfig(cache_size=0)
    snapshot = load_snapshot(root, encoding=encoding)
    service = SearchService(snapshot, index_path=root, model_dir=None, encoding=encoding)
    for q in queries[:20]:  # warm-up
        service.search(SearchQuery(text=q, k=k))
    latencies = []
    started = time.perf_counter()
    for q in queries[:n]:
        t = time.perf_counter()
        service.search(SearchQuery(text=q, k=k))
        latencies.append((time.perf_counter() - t) * 1e3)
    result = summary(latencies, time.perf_counter() - started, 0)
    service.close()
    return result


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for level in results["served"]:
        values = np.sort(np.asarray(level["latencies_ms"]))
        ax.plot(values, np.linspace(0, 1, len(values)), label=f"concurrency {level['concurrency']}")
    ax.axvline(results["floor"]["p50_ms"], color="grey", linestyle="--", label="in-process p50")
    ax.set_xscale("log")
    ax.set_xlabel("latency through gRPC (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Aisle Search latency, {results['n_items']:,} items, k={results['k']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="S")
    parser.add_argument("--soak", type=float, default=0.0, help="minutes at concurrency 32")
    parser.add_argument("--out", type=Path, default=Path("bench-out/latency.jsonl"))
    parser.add_argument("--plot", type=Path, default=Path("bench-out/latency.png"))
    parser.add_argument("--cache-dir", type=Path, default=Path("bench-out/cache"))
    parser.add_argument("--items", type=int, help="override: catalog slice (a quick check)")
    parser.add_argument("--requests", type=int, help="override: requests per concurrency level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = PRESETS[args.preset]
    overrides = {"items": args.items, "requests": args.requests}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    info = machine("prometheus-client")
    print(json.dumps({"config": asdict(config), "machine": info}, indent=1))
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    root, queries = prepare(config, args.cache_dir)
    random.Random(0).shuffle(queries)
    from indexer.store import IndexVersion

    n_items = IndexVersion.open(root, verify=False).n_items
    results: dict[str, Any] = {"benchmark": "latency", "config": asdict(config), "machine": info,
                               "n_items": n_items, "k": config.k, "served": []}  # fmt: skip

    server = Server(root, args.cache_dir, cache_size=0)
    try:
        run_load(server.address, queries[-50:], 1, 50, config.k)  # warm-up, not counted
        offset = 0
        for c in config.concurrency:
            distinct = queries[offset : offset + config.requests]  # never repeated: cache off
            offset += config.requests
            level = run_load(server.address, distinct, c, config.requests, config.k)
            level["concurrency"] = c
            results["served"].append(level)
            print(f"concurrency {c:3d}: p50 {level['p50_ms']:.2f} ms  p95 {level['p95_ms']:.2f}"
                  f"  p99 {level['p99_ms']:.2f}  qps {level['qps']}  errors {level['errors']}"
                  f"  stages {level['stages_p50_ms']}")  # fmt: skip
        if args.soak:
            rss = []
            soak = run_load(server.address, queries, 32, 0, config.k, duration_s=args.soak * 60,
                            on_tick=lambda: rss.append(round(server.rss_mb(), 1)))  # fmt: skip
            soak.pop("latencies_ms")
            soak["minutes"] = args.soak
            soak["rss_mb_first_last_max"] = [rss[0], rss[-1], max(rss)] if rss else None
            results["soak"] = soak
            print(
                f"soak {args.soak} min: {soak['n']} requests, errors {soak['errors']}, "
                f"p99 {soak['p99_ms']} ms, RSS MB first/last/max {soak['rss_mb_first_last_max']}"
            )
    finally:
        server.stop()

    server = Server(root, args.cache_dir, cache_size=10_000)
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

    results["floor"] = floor(root, queries, config.k, min(config.requests, 300))
    one = results["served"][0]
    results["served_over_floor_p50"] = round(one["p50_ms"] / results["floor"]["p50_ms"], 3)
    print(f"in-process floor p50 {results['floor']['p50_ms']:.2f} ms; served/floor at "
          f"concurrency 1: {results['served_over_floor_p50']}")  # fmt: skip
    plot(results, args.plot)
    for level in results["served"]:
        level.pop("latencies_ms")
    append_jsonl(args.out, results)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
