"""The report's part for bench_ann: recall vs queries/s per index type, with a figure."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.report.figures import Context, Figure, own_or_drawn, pyplot, save_figure
from benchmarks.report.format import Metrics, Record, config_line, fmt, md_table, put_metric


def _setting(row: Mapping[str, Any] | None) -> str:
    if not row:
        return "—"
    return next((f"{k}={row[k]}" for k in ("efSearch", "nprobe") if k in row), "—")


def draw_ann(results: Mapping[str, Any], path: Path, k: int) -> None:
    """Recall@k vs queries/s (log) per index type and effort, batched and single-query."""
    plt = pyplot()
    rows = results["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, mode in zip(axes, ("batched", "single"), strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            one = len(mine) == 1
            ax.plot(
                [r["recall"] for r in mine],
                [r[f"qps_{mode}"] for r in mine],
                "*" if one else ".-",
                label=method,
                markersize=12 if one else 6,
            )
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{k}")
        ax.set_ylabel("queries / s")
        ax.set_title(f"{mode}: {results.get('n_items', 0):,} vectors")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    save_figure(fig, path)


def ann_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    config = ctx.record.get("config") or {}
    results = ctx.record.get("results") or {}
    k = config.get("k", 10)
    blocks = [
        config_line(config)
        + f" {fmt(results.get('n_items'))} vectors ({fmt(results.get('n_real'))} real), "
        f"{fmt(results.get('n_queries'))} queries, dim {results.get('dim')}, "
        f"nlist {results.get('nlist')}."
    ]
    summary = results.get("summary") or {}
    builds = results.get("build_s") or {}
    memory = results.get("bytes_per_million_items") or {}
    rows = []
    for method, entry in summary.items():
        base = method.split(" + ")[0]  # "IVF..,PQ.. + exact re-score" is built as IVF..,PQ..
        mb = memory.get(method, memory.get(base))
        if entry is None:
            best = max(
                (r["recall"] for r in results.get("rows", []) if r["method"] == method),
                default=None,
            )
            rows.append(
                [
                    method,
                    f"not reached (best {fmt(best)})",
                    *[None] * 7,
                    builds.get(base),
                    mb / 1e6 if mb else None,
                ]
            )
            continue
        b, s = entry.get("batched") or {}, entry.get("single") or {}
        rows.append(
            [
                method,
                _setting(b),
                b.get("recall"),
                b.get("qps"),
                b.get("x_exact"),
                _setting(s),
                s.get("recall"),
                s.get("qps"),
                s.get("x_exact"),
                builds.get(base),
                mb / 1e6 if mb else None,
            ]
        )
    blocks.append(
        f"Fastest setting of each index reaching recall@{k} ≥ 0.95 (hnswlib is the peer)\n\n"
        + md_table(
            [
                "index",
                "batched: setting",
                f"recall@{k}",
                "QPS",
                "× exact",
                "single query: setting",
                f"recall@{k}",
                "QPS",
                "× exact",
                "build s",
                "MB / M items",
            ],
            rows,
        )
    )
    tuning = [
        [index, source, _setting(t), t.get("tuning_recall"), t.get("recall_on_measured_queries")]
        for index, by_source in (results.get("tuning") or {}).items()
        for source, t in by_source.items()
    ]
    if tuning:
        blocks.append(
            "Effort `indexer.build.tune` picks for recall 0.95, and what it gives on the measured "
            "queries\n\n"
            + md_table(["index", "tuned on", "effort", "tuning recall", "measured recall"], tuning)
        )
    sweep = [
        [r["method"], _setting(r), r["recall"], r["qps_batched"], r["qps_single"], r["p50_us"]]
        for r in results.get("rows") or []
    ]
    if sweep:
        blocks.append(
            "<details><summary>Every setting measured</summary>\n\n"
            + md_table(
                ["index", "setting", f"recall@{k}", "QPS batched", "QPS single", "p50 µs"], sweep
            )
            + "\n\n</details>"
        )
    figures = []
    if results.get("rows"):
        preset = config.get("preset", "S")
        figures.append(
            own_or_drawn(
                ctx,
                "ann",
                [ctx.record.get("plot"), ctx.out_dir / f"ann_{preset}.png"],
                lambda path: draw_ann(results, path, k),
                f"Recall@{k} vs queries/s per index type, with the hnswlib peer",
            )
        )
    return blocks, figures


def ann_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    results = record.get("results") or {}
    for method, entry in (results.get("summary") or {}).items():
        for mode in ("batched", "single"):
            best = (entry or {}).get(mode) or {}
            put_metric(out, f"ann/{method}/qps_{mode}@recall0.95", best.get("qps"), "higher")
    for method, seconds in (results.get("build_s") or {}).items():
        put_metric(out, f"ann/{method}/build_s", seconds, "lower")
    return out
