"""The report's part for bench_rerank: re-ranking kernels, filters and compact vector copies."""

from __future__ import annotations

import re
from collections.abc import Mapping

from benchmarks.report.figures import Context, Figure
from benchmarks.report.format import Metrics, Record, config_line, fmt, md_table, put_metric


def rerank_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    r = ctx.record.get("results") or {}
    blocks = [config_line(ctx.record.get("config") or {})]
    for key, value in r.items():
        match = re.fullmatch(r"kernels_(\d+)", key)
        if match and isinstance(value, Mapping):
            blocks.append(
                f"numba kernels vs vectorised NumPy, {int(match[1]):,} candidates\n\n"
                + md_table(
                    ["kernel", "numba p50 µs", "NumPy p50 µs", "speed-up"],
                    [
                        [k, v.get("numba_p50_us"), v.get("numpy_p50_us"), v.get("speedup")]
                        for k, v in value.items()
                    ],
                )
            )
        match = re.fullmatch(r"rerank_(\d+)", key)
        if match and isinstance(value, Mapping):
            blocks.append(
                f"`rerank` of {int(match[1]):,} candidates\n\n"
                + md_table(
                    ["variant", "p50 µs", "p99 µs"],
                    [[k, v.get("p50_us"), v.get("p99_us")] for k, v in value.items()],
                )
            )
    selective = r.get("selective_filter")
    if isinstance(selective, Mapping):
        blocks.append(
            f"Selective filter ({fmt(selective.get('selectivity'))} of the catalog, "
            f"{fmt(selective.get('matching_rows'))} rows)\n\n"
            + md_table(
                ["step", "p50 µs", "p99 µs"],
                [
                    [k, v.get("p50_us"), v.get("p99_us")]
                    for k, v in selective.items()
                    if isinstance(v, Mapping)
                ],
            )
        )
    compact = r.get("compact_vectors")
    if isinstance(compact, Mapping):
        blocks.append(
            "Compact vector copies: memory and recall@10 against float32\n\n"
            + md_table(
                [
                    "copy",
                    "bytes / vector",
                    "total MiB",
                    "recall@10 (candidates)",
                    "recall@10 (whole catalog)",
                ],
                [
                    [
                        k,
                        v.get("bytes_per_vector"),
                        v.get("total_mib"),
                        v.get("recall10_rerank_candidates"),
                        v.get("recall10_whole_catalog"),
                    ]
                    for k, v in compact.items()
                ],
            )
        )
    return blocks, []


def rerank_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    r = record.get("results") or {}
    for key, value in r.items():
        if key.startswith("kernels_") and isinstance(value, Mapping):
            for name, v in value.items():
                put_metric(out, f"rerank/{key}/{name}/numba_p50_us", v.get("numba_p50_us"), "lower")
        if key.startswith("rerank_") and isinstance(value, Mapping):
            for name, v in value.items():
                put_metric(out, f"rerank/{key}/{name}/p50_us", v.get("p50_us"), "lower")
    for name, v in (r.get("compact_vectors") or {}).items():
        put_metric(
            out,
            f"rerank/compact/{name}/recall10_whole_catalog",
            v.get("recall10_whole_catalog"),
            "higher",
        )
    return out
