"""The report's part for bench_query_tower: each query tower's encode cost, quality and served
load, relative to the full tower, with the figure NDCG@10 vs encode µs. ``served_towers_table``
also renders bench_latency's rows per tower (``query_towers``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report.figures import Context, Figure, pyplot, save_figure
from benchmarks.report.format import Metrics, Record, fmt, md_table, put_metric

# The targets (docs/benchmarks.md): encode p50 at most 1 ms on one core, hybrid NDCG@10
# within 2 % (relative) of the full tower's, served QPS at concurrency 8 at least 2.5x.
ENCODE_TARGET_US = 1000.0
HYBRID_LOSS_TARGET_PCT = 2.0
QPS_C8_TARGET = 2.5


def served_levels(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A tower's served levels as a list with ``concurrency`` (older lines keyed them by the
    concurrency as a string)."""
    served = row.get("served") or row.get("levels") or []
    if isinstance(served, Mapping):
        return [{"concurrency": int(c), **level} for c, level in served.items()]
    return list(served)


def _pct(value: Any, reference: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(reference, int | float):
        return None
    if not reference:
        return None
    return round((value / reference - 1) * 100, 2)


def _ratio(value: Any, reference: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(reference, int | float):
        return None
    return round(value / reference, 2) if reference else None


def _signed(value: float | None, unit: str = " %") -> str:
    return "—" if value is None else f"{value:+.4g}{unit}"


def processes_levels(row: Mapping[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """(N, levels) of a tower served by ``aisle-serve --processes N`` (``--serve-processes``);
    (1, []) when the line has none."""
    extra = row.get("served_processes") or {}
    return int(extra.get("processes", 1)), list(extra.get("levels") or [])


def served_towers_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One table row per tower and concurrency level: p50/p99 ms, QPS, errors, the server's
    encode p50/p99 and QPS and p50 relative to the first row's tower at that level."""
    if not rows:
        return ""
    ref = {level["concurrency"]: level for level in served_levels(rows[0])}
    table = []
    for row in rows:
        for level in sorted(served_levels(row), key=lambda x: x["concurrency"]):
            base = ref.get(level["concurrency"], {})
            first = row is rows[0]
            table.append(
                [
                    row.get("tower"),
                    level["concurrency"],
                    level.get("p50_ms"),
                    level.get("p99_ms"),
                    level.get("qps"),
                    level.get("errors"),
                    level.get("encode_p50_ms"),
                    level.get("encode_p99_ms"),
                    "—" if first else fmt(_ratio(level.get("qps"), base.get("qps"))) + "×",
                    "—" if first else _signed(_pct(level.get("p50_ms"), base.get("p50_ms"))),
                ]
            )
    header = ["tower", "concurrency", "p50 ms", "p99 ms", "QPS", "errors", "encode p50 ms",
              "encode p99 ms", f"QPS vs {rows[0].get('tower')}",
              f"p50 vs {rows[0].get('tower')}"]  # fmt: skip
    return md_table(header, table)


def _encode_table(results: Sequence[Mapping[str, Any]]) -> str:
    full = next((r for r in results if r.get("tower") == "full"), results[0])
    table = []
    for r in results:
        ref = r is not full
        table.append(
            [
                r.get("tower"),
                r.get("encode_cpu_p50_us"),
                r.get("encode_cpu_p99_us"),
                r.get("encode_p50_us"),
                r.get("encode_p99_us"),
                _ratio(full.get("encode_cpu_p50_us"), r.get("encode_cpu_p50_us")) if ref else "—",
                r.get("ndcg@10_dense"),
                _signed(_pct(r.get("ndcg@10_dense"), full.get("ndcg@10_dense"))) if ref else "—",
                r.get("ndcg@10_hybrid"),
                _signed(_pct(r.get("ndcg@10_hybrid"), full.get("ndcg@10_hybrid"))) if ref else "—",
            ]
        )
    header = ["tower", "encode CPU p50 µs", "CPU p99 µs", "wall p50 µs", "wall p99 µs",
              "speed-up (CPU p50)", "NDCG@10 dense", "vs full", "NDCG@10 hybrid",
              "vs full"]  # fmt: skip
    return md_table(header, table)


def _targets(results: Sequence[Mapping[str, Any]]) -> str:
    """One line per fast tower: which of the issue's targets it meets."""
    full = next((r for r in results if r.get("tower") == "full"), None)
    if full is None:
        return ""
    full_c8 = next((x for x in served_levels(full) if x["concurrency"] == 8), {})
    lines = []
    for r in results:
        if r is full:
            continue
        encode = r.get("encode_cpu_p50_us")
        loss = _pct(r.get("ndcg@10_hybrid"), full.get("ndcg@10_hybrid"))
        parts = [
            f"encode CPU p50 {fmt(encode)} µs "
            + ("≤" if isinstance(encode, int | float) and encode <= ENCODE_TARGET_US else ">")
            + f" {fmt(ENCODE_TARGET_US)} µs",
            f"hybrid NDCG@10 {_signed(loss)} "
            + ("within" if loss is not None and loss >= -HYBRID_LOSS_TARGET_PCT else "outside")
            + f" {HYBRID_LOSS_TARGET_PCT:g} %",
        ]
        n, levels = processes_levels(r)
        for label, served in (
            ("served QPS at concurrency 8", served_levels(r)),
            (f"with {n} server processes", levels),
        ):
            c8 = next((x for x in served if x["concurrency"] == 8), None)
            if c8 is not None and full_c8:
                ratio = _ratio(c8.get("qps"), full_c8.get("qps"))
                parts.append(
                    f"{label} {fmt(ratio)}× the full tower's"
                    + (" (one process) " if served is levels else " ")
                    + ("≥" if ratio is not None and ratio >= QPS_C8_TARGET else "<")
                    + f" {QPS_C8_TARGET:g}×, errors {fmt(c8.get('errors'))}"
                )
        lines.append(f"- **{r.get('tower')}**: " + "; ".join(parts) + ".")
    return "Targets (≤ 1 ms encode, ≤ 2 % hybrid loss, ≥ 2.5× QPS at concurrency 8):\n\n" + (
        "\n".join(lines)
    )


def draw_query_towers(record: Record, path: Path) -> None:
    """NDCG@10 (dense and hybrid) against the encode CPU p50 (µs, log scale), one point per
    tower and mode, the 1 ms target as a line."""
    plt = pyplot()
    results = record.get("results") or []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for mode, marker, color in (("dense", "o", "tab:blue"), ("hybrid", "s", "tab:orange")):
        points = [
            (r["encode_cpu_p50_us"], r[f"ndcg@10_{mode}"], r["tower"])
            for r in results
            if isinstance(r.get("encode_cpu_p50_us"), int | float)
            and isinstance(r.get(f"ndcg@10_{mode}"), int | float)
        ]
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, linestyle="",
                color=color, label=mode)  # fmt: skip
        for x, y, tower in points:
            ax.annotate(tower, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(ENCODE_TARGET_US, color="grey", linestyle="--", label="1 ms target")
    ax.set_xscale("log")
    ax.set_xlabel("query encode p50 (CPU µs on one thread, log scale)")
    ax.set_ylabel("Home Depot dev NDCG@10")
    ax.set_title(f"Query towers: quality vs encode cost, {record.get('items', 0):,} items")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def query_tower_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    r = ctx.record
    results = r.get("results") or []
    if not results:
        return ["No tower rows in this line."], []
    load = r.get("load_avg")
    blocks = [
        f"{fmt(r.get('items'))} catalog items (every item judged for a dev query plus random "
        f"others), {fmt(r.get('dev_queries'))} Home Depot dev queries"
        + (f"; load average at the end {', '.join(fmt(x) for x in load)}" if load else "")
        + ". Encode: one query at a time on one thread, towers interleaved in blocks; the CPU "
        "time is the cost on one core, the wall time adds waiting for it. Relative changes are "
        "against the full tower.",
        _encode_table(results),
    ]
    served = [{"tower": x.get("tower"), "levels": served_levels(x)} for x in results]
    for x in results:
        n, levels = processes_levels(x)
        if levels:
            served.append({"tower": f"{x.get('tower')} x{n} processes", "levels": levels})
    if any(row["levels"] for row in served):
        blocks.append(
            "Served (dense, cache off, every tower's server up at once, the same queries per "
            "level)\n\n" + served_towers_table([s for s in served if s["levels"]])
        )
    blocks.append(_targets(results))
    path = ctx.figures_dir / "query_tower.png"
    draw_query_towers(r, path)
    return blocks, [Figure(path, "NDCG@10 vs query encode µs per query tower", drawn=True)]


def query_tower_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    for r in record.get("results") or []:
        name = f"query_tower/{r.get('tower')}"
        put_metric(out, f"{name}/encode_cpu_p50_us", r.get("encode_cpu_p50_us"), "lower")
        put_metric(out, f"{name}/encode_cpu_p99_us", r.get("encode_cpu_p99_us"), "lower")
        put_metric(out, f"{name}/ndcg@10_dense", r.get("ndcg@10_dense"), "higher")
        put_metric(out, f"{name}/ndcg@10_hybrid", r.get("ndcg@10_hybrid"), "higher")
        for level in served_levels(r):
            c = level["concurrency"]
            put_metric(out, f"{name}/served/c{c}/qps", level.get("qps"), "higher")
            put_metric(out, f"{name}/served/c{c}/p99_ms", level.get("p99_ms"), "lower")
        n, levels = processes_levels(r)
        for level in levels:
            c = level["concurrency"]
            put_metric(out, f"{name}/served_x{n}/c{c}/qps", level.get("qps"), "higher")
            put_metric(out, f"{name}/served_x{n}/c{c}/p99_ms", level.get("p99_ms"), "lower")
    return out
