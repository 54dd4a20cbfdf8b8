"""The report's part for bench_reindex: batch reindex throughput, single machine vs Spark."""

from __future__ import annotations

from benchmarks.report.figures import Context, Figure, draw_pair, own_or_drawn
from benchmarks.report.format import Metrics, Record, config_line, fmt, md_table, put_metric


def reindex_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    config = ctx.record.get("config") or {}
    r = ctx.record.get("results") or {}
    rows = [
        ["single machine (`aisle-index`)", r.get("local_s"), r.get("local_items_per_s")],
        [
            f"Spark `{config.get('master', '?')}`, job",
            r.get("spark_job_s"),
            r.get("spark_items_per_s"),
        ],
        ["Spark session start", r.get("spark_session_start_s"), None],
    ]
    before = (ctx.record.get("machine") or {}).get("load_avg")
    after = r.get("load_avg_after")
    blocks = [
        config_line(config) + f" {fmt(r.get('n_items'))} items.",
        md_table(["path", "seconds", "items / s"], rows),
        f"**Spark overhead (Spark job s / local s, > 1 = Spark slower): "
        f"{fmt(r.get('spark_overhead_ratio'))}**; with the session start: "
        f"{fmt(r.get('spark_overhead_ratio_with_session'))}.",
    ]
    if before or after:
        load = [", ".join(fmt(round(x, 2)) for x in v) if v else "—" for v in (before, after)]
        blocks.append(f"Load average (1/5/15 min) before: {load[0]}; after: {load[1]}.")
    figures = []
    local, spark = r.get("local_items_per_s"), r.get("spark_items_per_s")
    if isinstance(local, int | float) and isinstance(spark, int | float):
        figures.append(
            own_or_drawn(
                ctx,
                "reindex",
                [ctx.record.get("plot")],
                lambda path: draw_pair(
                    ["single machine", "Spark"],
                    [local, spark],
                    "items / s",
                    "Batch reindex throughput",
                    path,
                ),
                "Reindex items/s, single machine vs the Spark job",
            )
        )
    return blocks, figures


def reindex_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    r = record.get("results") or {}
    put_metric(out, "reindex/local_items_per_s", r.get("local_items_per_s"), "higher")
    put_metric(out, "reindex/spark_items_per_s", r.get("spark_items_per_s"), "higher")
    put_metric(out, "reindex/spark_overhead_ratio", r.get("spark_overhead_ratio"), "lower")
    return out
