"""Building training data from logs (`aisle-learn dataset`): throughput on a synthetic log.

The log is generated here, seeded: shoppers issue queries (a Zipf-like mix over
``n_queries``), each result list shows ``k`` items drawn from the query's candidates in a
shuffled order, and each shown item is clicked with ``theta[position] * relevance`` (the
position-based model with a known examination curve ``theta = 1 / position ** 0.7``); a click
is followed by an add-to-cart and a purchase with fixed probabilities, and every event carries
the response's request_id and position. A few percent of events are unattributed, and the log
ends with a torn line, as a crash would leave it.

Measured: events/s of the whole build (read both logs, join, EM, pairs, next items) and of the
write, the peak RSS, and how far the fitted propensities are from the known curve.

``python -m benchmarks.bench_feedback [--preset S|M|L] [--engine local|spark]``
(S: ~100k events; M: ~1M; L: ~5M)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from benchmarks.common import append_jsonl, machine

log = logging.getLogger("bench_feedback")


@dataclass(frozen=True)
class FeedbackBenchConfig:
    preset: str
    impressions: int
    k: int = 10
    n_queries: int = 5_000
    candidates: int = 40  # per query
    n_items: int = 50_000
    n_users: int = 20_000
    seed: int = 0


PRESETS = {
    "S": FeedbackBenchConfig("S", impressions=60_000),
    "M": FeedbackBenchConfig("M", impressions=600_000),
    "L": FeedbackBenchConfig("L", impressions=3_000_000),
}
THETA_POWER = 0.7
P_CART, P_BUY = 0.3, 0.5  # after a click; after an add-to-cart
UNATTRIBUTED = 0.03


def theta(k: int) -> np.ndarray:
    return 1.0 / np.arange(1, k + 1) ** THETA_POWER


def generate(config: FeedbackBenchConfig, out: Path) -> dict[str, int]:
    """Write impressions.jsonl and events.jsonl under ``out``; their line counts."""
    rng = np.random.default_rng(config.seed)
    out.mkdir(parents=True, exist_ok=True)
    cand = rng.integers(0, config.n_items, size=(config.n_queries, config.candidates))
    relevance = rng.beta(0.7, 2.0, size=(config.n_queries, config.candidates))
    popularity = 1.0 / np.arange(1, config.n_queries + 1) ** 0.8
    popularity /= popularity.sum()
    th = theta(config.k)
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    n_events = 0
    with open(out / "impressions.jsonl", "w") as imp, open(out / "events.jsonl", "w") as ev:
        batch = 10_000
        for start in range(0, config.impressions, batch):
            n = min(batch, config.impressions - start)
            queries = rng.choice(config.n_queries, size=n, p=popularity)
            users = rng.integers(0, config.n_users, size=n)
            order = np.argsort(rng.random((n, config.candidates)), axis=1)[:, : config.k]
            shown_rel = np.take_along_axis(relevance[queries], order, axis=1)
            clicked = rng.random((n, config.k)) < th * shown_rel
            cart = clicked & (rng.random((n, config.k)) < P_CART)
            buy = cart & (rng.random((n, config.k)) < P_BUY)
            lines, events = [], []
            for j in range(n):
                i = start + j
                when = (t0 + timedelta(seconds=i * 0.1)).isoformat()
                rid = f"{i:012x}-{j:016x}"
                items = [f"item{c}" for c in cand[queries[j], order[j]]]
                lines.append(json.dumps({
                    "request_id": rid, "time": when, "surface": "search",
                    "user_id": f"u{users[j]}", "query": f"query {queries[j]}", "mode": "dense",
                    "model_fingerprint": "bench", "index_version": 1, "offset": 0,
                    "k": config.k, "seed_item_id": "", "items": items,
                }))  # fmt: skip
                for pos in np.flatnonzero(clicked[j]):
                    actions = [("click", True), ("add_to_cart", cart[j, pos])]
                    actions.append(("purchase", buy[j, pos]))
                    for kind, happened in actions:
                        if not happened:
                            continue
                        record = {"user_id": f"u{users[j]}", "item_id": items[pos]}
                        record.update(type=kind, query=f"query {queries[j]}", time=when)
                        record["recorded"] = when
                        if rng.random() >= UNATTRIBUTED:
                            record["request_id"] = rid
                            record["position"] = int(pos) + 1
                        events.append(json.dumps(record))
            imp.write("\n".join(lines) + "\n")
            if events:
                ev.write("\n".join(events) + "\n")
            n_events += len(events)
        ev.write('{"user_id": "u1", "item_id": "it')  # a torn last line
    return {"impressions": config.impressions, "events": n_events}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="S")
    parser.add_argument("--engine", choices=("local", "spark"), default="local")
    parser.add_argument("--work", type=Path, default=Path("bench-out/feedback"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/feedback.jsonl"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = shlex.join(
        ["python", "-m", "benchmarks.bench_feedback", *(sys.argv[1:] if argv is None else argv)]
    )
    config = PRESETS[args.preset]
    info = machine("pyarrow", "pyspark")
    print(json.dumps({"config": asdict(config), "machine": info, "command": command}, indent=1))
    logs = args.work / f"logs-{config.preset}-{config.seed}"
    t = time.perf_counter()
    if not (logs / "events.jsonl").exists():
        counts = generate(config, logs)
    else:
        counts = {"impressions": config.impressions, "events": None}
    generate_s = time.perf_counter() - t
    from trainer.feedback.dataset import FeedbackConfig, build_dataset, write_dataset

    known = [f"item{i}" for i in range(config.n_items)]
    t = time.perf_counter()
    cpu = time.process_time()
    if args.engine == "spark":
        from indexer.build.spark import spark_session
        from trainer.feedback.spark import build_dataset_spark

        spark = spark_session("local[2]", "bench-feedback")
        dataset = build_dataset_spark(logs, known, FeedbackConfig(), spark=spark)
    else:
        dataset = build_dataset(logs, known, FeedbackConfig())
    build_s = time.perf_counter() - t
    build_cpu_s = time.process_time() - cpu  # this process only (not Spark's JVM)
    t = time.perf_counter()
    write_dataset(dataset, args.work / f"dataset-{config.preset}-{args.engine}")
    write_s = time.perf_counter() - t
    events = dataset.summary["events"]
    fitted = dataset.propensities.by_position[: config.k]
    truth = theta(config.k) / theta(config.k)[0]
    result = {
        "bench": "feedback",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "config": asdict(config),
        "engine": args.engine,
        "machine": info,
        "generated": counts,
        "generate_s": round(generate_s, 2),
        "events": events,
        "impressions": dataset.summary["impressions"],
        "shown_cells": dataset.summary["shown_cells"],
        "build_s": round(build_s, 2),
        "write_s": round(write_s, 2),
        "events_per_s": round(events / build_s),
        # On a shared, loaded host the wall clock overstates the work: CPU time is the steadier
        # figure (single-threaded NumPy/Arrow code uses about one core).
        "build_cpu_s": round(build_cpu_s, 2),
        "events_per_cpu_s": round(events / build_cpu_s),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "impressions_per_s": round(dataset.summary["impressions"] / build_s),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pairs": dataset.summary["pairs"],
        "skipped": dataset.summary["skipped"],
        "logs_skipped": [entry["skipped"] for entry in dataset.summary["logs"]],
        "propensity_fitted": [round(float(p), 4) for p in fitted],
        "propensity_true": [round(float(p), 4) for p in truth],
        "propensity_max_abs_error": round(float(np.max(np.abs(fitted - truth))), 4),
    }
    print(
        f"{events} events, {result['impressions']} impressions: build {build_s:.1f} s "
        f"({result['events_per_s']} events/s; CPU {build_cpu_s:.1f} s, "
        f"{result['events_per_cpu_s']} events per CPU-s), write {write_s:.1f} s, peak RSS "
        f"{result['peak_rss_mb']} MB; propensity max error {result['propensity_max_abs_error']}"
    )
    append_jsonl(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
