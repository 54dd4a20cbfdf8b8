"""Paired served measurements: two settings measured against each other in alternating blocks
with the same queries, so load from other processes hits both alike: the impression log on vs
off (two servers) and ranked vs hybrid (one server, a copy of the index with a ranker attached).
Used by ``benchmarks.bench_latency`` (``--impressions-only``, ``--modes ...,ranked``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import Server, level_line, run_load, summary

IMPRESSIONS_CONCURRENCY = 8
IMPRESSIONS_ROUNDS = 8


def impressions_cost(
    root: Path, work: Path, queries: list[str], requests: int, k: int, query_tower: str = "full"
) -> dict[str, Any]:
    """p50 at concurrency 8 with the impression log on and off: two servers (cache off), the
    same queries sent to each in alternating blocks (IMPRESSIONS_ROUNDS rounds, the order
    flipping each round), latencies pooled per side."""
    block = max(50, requests // IMPRESSIONS_ROUNDS)
    c = IMPRESSIONS_CONCURRENCY
    servers = {
        side: Server(root, work, cache_size=0, impressions=side, query_tower=query_tower)
        for side in ("on", "off")
    }
    pooled: dict[str, list[float]] = {"on": [], "off": []}
    errors = {"on": 0, "off": 0}
    cpu = {"on": 0.0, "off": 0.0}  # server CPU seconds: far less noisy than latency on a busy host
    per_round = []
    try:
        for server in servers.values():
            run_load(server.address, queries[-50:], c, 50, k)  # warm-up, not counted
        for r in range(IMPRESSIONS_ROUNDS):
            sample = queries[r * block : (r + 1) * block] or queries[:block]
            p50 = {}
            for side in ("on", "off") if r % 2 == 0 else ("off", "on"):
                before = servers[side].cpu_s()
                level = run_load(servers[side].address, sample, c, len(sample), k)
                cpu[side] += servers[side].cpu_s() - before
                pooled[side] += level["latencies_ms"]
                errors[side] += level["errors"]
                p50[side] = level["p50_ms"]
            per_round.append(p50)
        written = servers["on"].events_dir / "impressions.jsonl"
    finally:
        for side, server in servers.items():
            server.stop(keep_events=side == "on")
    lines = sum(1 for _ in written.open()) if written.exists() else 0
    shutil.rmtree(servers["on"].events_dir, ignore_errors=True)
    on, off = (summary(pooled[s], 0.0, errors[s]) for s in ("on", "off"))
    return {
        "concurrency": c,
        "rounds": IMPRESSIONS_ROUNDS,
        "requests_per_side": len(pooled["on"]),
        "on": on,
        "off": off,
        "per_round_p50_ms": per_round,
        "p50_added_pct": round((on["p50_ms"] / off["p50_ms"] - 1) * 100, 2),
        "server_cpu_ms_per_request": {
            side: round(cpu[side] * 1e3 / max(1, len(pooled[side])), 3) for side in cpu
        },
        "server_cpu_added_pct": round((cpu["on"] / max(cpu["off"], 1e-9) - 1) * 100, 2),
        "impressions_logged": lines,  # the warm-up's 50 included
    }


def impressions_line(cost: dict[str, Any]) -> str:
    return (
        f"impressions (c={cost['concurrency']}): p50 on {cost['on']['p50_ms']:.2f} ms, off "
        f"{cost['off']['p50_ms']:.2f} ms: {cost['p50_added_pct']:+.1f} %; server CPU per "
        f"request {cost['server_cpu_ms_per_request']} ms ({cost['server_cpu_added_pct']:+.1f} %); "
        f"{cost['impressions_logged']} logged"
    )


def ranked_levels(
    root: Path, args: Any, config: Any, pool: Any, query_tower: str = "full"
) -> list[dict[str, Any]]:
    """Hybrid and ranked at concurrency 1, in alternating blocks on one server over a copy of
    the index (files hard-linked) with ``args.ranker`` attached: the ranking stage's cost with
    everything else equal."""
    from indexer.build.ranker import attach_ranker

    if args.ranker is None:
        raise SystemExit("--modes ranked needs --ranker FILE (aisle-rank train)")
    if not config.lexical:
        raise SystemExit("--modes ranked needs an index with BM25 (this preset has none)")
    work = Path(tempfile.mkdtemp(prefix="ranked-", dir=args.cache_dir))
    copy = work / "index"
    shutil.copytree(root, copy, copy_function=os.link)
    attach_ranker(copy, args.ranker, keep=None)
    server = Server(copy, args.cache_dir, cache_size=0, query_tower=query_tower)
    levels: dict[str, dict[str, Any]] = {}
    try:
        for mode in ("hybrid", "ranked"):  # warm-up
            run_load(server.address, pool.take(20)[0], 1, 20, config.k, mode=mode)
        blocks = 4
        for _ in range(blocks):
            queries, _ = pool.take(max(config.requests // blocks, 20))
            for mode in ("hybrid", "ranked"):
                level = run_load(server.address, queries, 1, len(queries), config.k, mode=mode)
                merged = levels.setdefault(mode, {"latencies_ms": [], "stages": [], "errors": 0})
                merged["latencies_ms"] += level["latencies_ms"]
                merged["errors"] += level["errors"]
                merged["stages"].append(level["stages_p50_ms"])
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = []
    for mode, merged in levels.items():
        level = summary(merged["latencies_ms"], 0.0, merged["errors"])
        level.update(mode=mode, concurrency=1, latencies_ms=merged["latencies_ms"])
        # The median over the blocks of each stage's per-block p50.
        level["stages_p50_ms"] = {
            name: round(float(np.median([b[name] for b in merged["stages"]])), 3)
            for name in merged["stages"][0]
        }
        out.append(level)
        print(level_line(f"{mode:6s} concurrency   1 (paired)", level))
    return out


def ranked_cost(levels: list[dict[str, Any]]) -> dict[str, float] | None:
    """Ranked minus hybrid latency at concurrency 1 (ms), same server, same queries."""
    by_mode = {level["mode"]: level for level in levels}
    if "ranked" not in by_mode or "hybrid" not in by_mode:
        return None
    return {
        q: round(by_mode["ranked"][f"{q}_ms"] - by_mode["hybrid"][f"{q}_ms"], 3)
        for q in ("p50", "p99")
    }
