"""Served latency per query tower, side by side (``bench_latency --query-tower``,
``bench_query_tower --serve``).

One ``aisle-serve`` per tower (``--query-tower full|fast``, optionally its own ``--model`` dir), all
over the same index and all up at once; at each concurrency level every tower gets the same
distinct queries (embedding cache off), the order of the towers rotating from level to level, so
drift on a shared machine lands on each alike. A row per tower: per level p50/p99 ms, QPS, errors
and the server's own encode p50/p99 (from each response's timings), and for every tower but the
first (the reference, normally the full tower) its QPS and p50 relative to the reference's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.load import QueryPool, Server, run_load

log = logging.getLogger("bench_latency")

QUERY_TOWERS = ("full", "fast")
WARMUP_REQUESTS = 30


@dataclass(frozen=True)
class Tower:
    """``label``: the row's name; ``query_tower``: aisle-serve --query-tower; ``model``: its
    --model (None: the model the index was built with); ``processes``: its --processes."""

    label: str
    query_tower: str
    model: Path | None = None
    processes: int = 1


def parse_towers(text: str) -> tuple[str, ...]:
    """``--query-tower``: a comma list of QUERY_TOWERS, e.g. ``full,fast``.

    Raises:
        ValueError: an unknown tower, or none.
    """
    towers = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in towers if t not in QUERY_TOWERS]
    if unknown or not towers:
        raise ValueError(
            f"--query-tower takes a comma list of {', '.join(QUERY_TOWERS)}, got {text!r}"
        )
    return towers


def level_row(result: dict[str, Any], concurrency: int, repeated: int) -> dict[str, Any]:
    """One level of a tower's row, from ``run_load``'s result."""
    return {
        "concurrency": concurrency,
        **{k: result[k] for k in ("n", "errors", "qps", "p50_ms", "p95_ms", "p99_ms")},
        "encode_p50_ms": result["stages_p50_ms"].get("encode_ms"),
        "encode_p99_ms": result["stages_p99_ms"].get("encode_ms"),
        "repeated_queries": repeated,
    }


def relative_to_first(rows: list[dict[str, Any]]) -> None:
    """Add to each level of every row but the first ``qps_vs_ref`` (its QPS / the first row's,
    same concurrency) and ``p50_change_pct`` (its p50 vs the first row's, in percent)."""
    if not rows:
        return
    ref = {level["concurrency"]: level for level in rows[0]["levels"]}
    for row in rows[1:]:
        row["reference"] = rows[0]["tower"]
        for level in row["levels"]:
            base = ref.get(level["concurrency"])
            if base is None:
                continue
            if base["qps"] and level["qps"] is not None:
                level["qps_vs_ref"] = round(level["qps"] / base["qps"], 3)
            if base["p50_ms"]:
                level["p50_change_pct"] = round((level["p50_ms"] / base["p50_ms"] - 1) * 100, 1)


def tower_levels(
    root: Path,
    work: Path,
    towers: Sequence[Tower],
    pool: QueryPool,
    levels: Sequence[int],
    requests: int,
    k: int,
    *,
    mode: str = "dense",
) -> list[dict[str, Any]]:
    """Rows per tower (see the module doc): ``requests`` queries per level from ``pool``, the
    same ones for every tower, in ``mode``."""
    servers: dict[str, Server] = {}
    per: dict[str, list[dict[str, Any]]] = {t.label: [] for t in towers}
    try:
        for t in towers:
            servers[t.label] = Server(
                root,
                work,
                cache_size=0,
                query_tower=t.query_tower,
                model=t.model,
                processes=t.processes,
            )
        warm, _ = pool.take(WARMUP_REQUESTS)
        for t in towers:
            run_load(servers[t.label].address, warm, 1, len(warm), k, mode=mode)
        for i, c in enumerate(levels):
            queries, repeated = pool.take(requests)
            shift = i % len(towers)
            for t in [*towers[shift:], *towers[:shift]]:
                result = run_load(servers[t.label].address, queries, c, requests, k, mode=mode)
                per[t.label].append(level_row(result, c, repeated))
                row = per[t.label][-1]
                log.info(
                    "%s tower, concurrency %d: p50 %.2f ms p99 %.2f ms qps %s errors %d, "
                    "server encode p50 %s ms",
                    t.label,
                    c,
                    row["p50_ms"],
                    row["p99_ms"],
                    row["qps"],
                    row["errors"],
                    row["encode_p50_ms"],
                )
    finally:
        for server in servers.values():
            server.stop()
    rows = [
        {
            "tower": t.label,
            "query_tower": t.query_tower,
            "processes": t.processes,
            "mode": mode,
            "levels": per[t.label],
        }
        for t in towers
    ]
    relative_to_first(rows)
    return rows
