"""The report's part for bench_latency: served latency per load level, at both scales."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.report.figures import Context, Figure, own_or_drawn, pyplot, save_figure
from benchmarks.report.format import Metrics, Record, config_line, fmt, md_table, put_metric
from benchmarks.report.query_tower import served_towers_table


def _stages(level: Mapping[str, Any]) -> list[Any]:
    stages = level.get("stages_p50_ms") or {}
    return [stages.get(s) for s in ("encode_ms", "search_ms", "rerank_ms")]


def draw_latency(record: Record, path: Path) -> None:
    """p50/p95/p99 per concurrency (bars, log scale) and the in-process floor's p50 (line)."""
    plt = pyplot()
    served = record.get("served") or []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.25
    for j, q in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        xs = [i + (j - 1) * width for i in range(len(served))]
        ax.bar(xs, [level[q] for level in served], width, label=q.replace("_ms", ""))
    floor = (record.get("floor") or {}).get("p50_ms")
    if floor:
        ax.axhline(floor, color="grey", linestyle="--", label="in-process floor p50")
    ax.set_xticks(range(len(served)), [f"concurrency {level['concurrency']}" for level in served])
    ax.set_yscale("log")
    ax.set_ylabel("latency through gRPC (ms, log scale)")
    ax.set_title(f"Served latency, {record.get('n_items', 0):,} items, k={record.get('k')}")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path)


_LATENCY_HEADER = [
    "load",
    "concurrency",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "mean ms",
    "QPS",
    "errors",
    "encode p50",
    "search p50",
    "re-rank p50",
]


def _latency_rows(r: Record) -> list[list[Any]]:
    """One table row per load level of a bench_latency record."""
    rows = []

    def add(label: str, c: Any, level: Mapping[str, Any]) -> None:
        rows.append(
            [
                label,
                c,
                level.get("p50_ms"),
                level.get("p95_ms"),
                level.get("p99_ms"),
                level.get("mean_ms"),
                level.get("qps"),
                level.get("errors"),
                *_stages(level),
            ]
        )

    for level in r.get("served") or []:
        add("served, dense, cache off", level["concurrency"], level)
    for level in r.get("hybrid") or []:
        add("served, hybrid, cache off", level["concurrency"], level)
    if r.get("cache_on_concurrency_8"):
        cached = r["cache_on_concurrency_8"]
        add(f"served, cache on (hit rate {fmt(cached.get('hit_rate'))})", 8, cached)
    if r.get("soak"):
        add(f"soak, {fmt(r['soak'].get('minutes'))} min", 32, r["soak"])
    if r.get("floor"):
        floor = r["floor"]
        if floor.get("paired_served"):
            add("served, interleaved with the floor", 1, floor["paired_served"])
        add("in-process floor (no gRPC)", 1, floor)
    return rows


def _latency_blocks(r: Record) -> list[str]:
    tower = (
        f" Main levels served with the {r['query_tower']} query tower."
        if "query_tower" in r
        else ""
    )
    blocks = [
        config_line(r.get("config") or {}) + f" {fmt(r.get('n_items'))} items.{tower}",
        md_table(_LATENCY_HEADER, _latency_rows(r)),
        f"**Served p50 / in-process floor p50 at concurrency 1: "
        f"{fmt(r.get('served_over_floor_p50'))}** (1.0 = gRPC and the server add nothing)"
        + (
            f"; the floor was measured {r['floor']['method']}; "
            f"the separate concurrency-1 level over the floor: "
            f"{fmt(r.get('served_c1_over_floor_p50'))}."
            if (r.get("floor") or {}).get("method")
            else "."
        ),
    ]
    cost = r.get("hybrid_cost_ms")
    if cost:
        blocks.append(
            f"Cost of the second (lexical) channel, hybrid minus dense at concurrency 1: "
            f"p50 {fmt(cost.get('p50'))} ms, p99 {fmt(cost.get('p99'))} ms."
        )
    if r.get("query_towers"):
        blocks.append(_towers_block(r["query_towers"]))
    rss = (r.get("soak") or {}).get("rss_mb_first_last_max")
    if rss:
        blocks.append(
            f"Server RSS during the soak, MB first / last / max: {' / '.join(map(fmt, rss))}."
        )
    return blocks


def _towers_block(rows: list[dict[str, Any]]) -> str:
    return (
        "Per query tower, side by side (dense, cache off, one server per tower up at once, the "
        "same queries per level; `--query-tower`)\n\n" + served_towers_table(rows)
    )


def _newest_towers_only(ctx: Context) -> Record | None:
    """The newest line of ``latency_towers.jsonl`` (``bench_latency --query-tower-only``)."""
    try:
        lines = (ctx.out_dir / "latency_towers.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("query_towers"):
            return record
    return None


def _other_scale(ctx: Context) -> Record | None:
    """The newest latency line at the other scale (grown 1M index vs the real catalog), if any:
    both are reported, the newest line alone would hide one."""
    path = ctx.out_dir / "latency.jsonl"
    grown = bool((ctx.record.get("config") or {}).get("grow"))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            other = json.loads(line)
        except ValueError:
            continue
        if isinstance(other, dict) and bool((other.get("config") or {}).get("grow")) != grown:
            return other
    return None


def latency_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    r = ctx.record
    blocks = _latency_blocks(r)
    other = _other_scale(ctx)
    if other is not None:
        preset = (other.get("config") or {}).get("preset")
        blocks.append(
            f"**Also: the newest run at the other scale** (`python -m benchmarks.bench_latency "
            f"--preset {preset}`, written {other.get('time', '?')}):"
        )
        blocks += _latency_blocks(other)
    towers = None if r.get("query_towers") else _newest_towers_only(ctx)
    if towers is not None:
        blocks.append(
            f"**Also: the newest rows per query tower** (`{towers.get('command', '?')}`, written "
            f"{towers.get('time', '?')}, {fmt(towers.get('n_items'))} items):"
        )
        blocks.append(_towers_block(towers["query_towers"]))
    figures = []
    if r.get("served"):
        figures.append(
            own_or_drawn(
                ctx,
                "latency",
                [r.get("plot"), ctx.out_dir / "latency.png"],
                lambda path: draw_latency(r, path),
                "Served latency distribution per concurrency, with the in-process floor",
            )
        )
    return blocks, figures


def latency_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    for level in record.get("served") or []:
        c = level.get("concurrency")
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            put_metric(out, f"latency/c{c}/{q}", level.get(q), "lower")
        put_metric(out, f"latency/c{c}/qps", level.get("qps"), "higher")
        put_metric(out, f"latency/c{c}/errors", level.get("errors"), "lower")
    put_metric(out, "latency/floor/p50_ms", (record.get("floor") or {}).get("p50_ms"), "lower")
    put_metric(out, "latency/served_over_floor_p50", record.get("served_over_floor_p50"), "lower")
    cached = record.get("cache_on_concurrency_8") or {}
    put_metric(out, "latency/cache_on_c8/p50_ms", cached.get("p50_ms"), "lower")
    for row in record.get("query_towers") or []:
        for level in row.get("levels") or []:
            name = f"latency/tower_{row.get('tower')}/c{level.get('concurrency')}"
            put_metric(out, f"{name}/qps", level.get("qps"), "higher")
            put_metric(out, f"{name}/p99_ms", level.get("p99_ms"), "lower")
    soak = record.get("soak") or {}
    put_metric(out, "latency/soak/p99_ms", soak.get("p99_ms"), "lower")
    put_metric(out, "latency/soak/errors", soak.get("errors"), "lower")
    return out
