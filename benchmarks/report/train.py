"""The report's part for bench_train: training pairs/s, Aisle vs sentence-transformers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.report.figures import Context, Figure, draw_pair, own_or_drawn
from benchmarks.report.format import Metrics, Record, config_line, fmt, md_table, put_metric


def _scalars(mapping: Mapping[str, Any], prefix: str = "") -> list[list[Any]]:
    """(key, value) rows of a results dict, nested dicts flattened as a/b, lists shown whole."""
    rows: list[list[Any]] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            rows += _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, list):
            rows.append([f"{prefix}{key}", ", ".join(fmt(v) for v in value)])
        else:
            rows.append([f"{prefix}{key}", value])
    return rows


TRAIN_COLUMNS = {  # bench_train's per-side keys, in the order and words the table shows them
    "pairs_per_s": "pairs/s",
    "compute_pairs_per_s": "compute-only pairs/s",
    "step_s_mean": "step s (mean)",
    "step_s_median": "step s (median)",
    "setup_s": "set-up s",
    "padded_query_len_mean": "padded query len",
    "padded_item_len_mean": "padded item len",
    "tokens_per_pair": "tokens / pair (the pass with a graph; padded, or real when padding-free)",
    "tokens_fed_per_pair": "tokens fed / pair (every pass)",
    "padded_tokens_per_pair": "tokens fed / pair (every pass; records before 2026-12-06)",
}


def train_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    config = ctx.record.get("config") or {}
    results = ctx.record.get("results") or {}
    aisle, st = results.get("aisle_pairs_per_s"), results.get("st_pairs_per_s")
    blocks = [
        config_line(config),
        f"**Aisle {fmt(aisle)} pairs/s vs sentence-transformers {fmt(st)} pairs/s: ratio "
        f"{fmt(results.get('ratio'))}** ({results.get('precision', '?')}, "
        f"{results.get('device', '?')}, {fmt(results.get('threads'))} threads; "
        "> 1 = Aisle faster).",
    ]
    for row in results.get("rows") or []:
        sides = {s: row[s] for s in ("aisle", "st") if isinstance(row.get(s), Mapping)}
        keys = list(dict.fromkeys([*TRAIN_COLUMNS, *(k for side in sides.values() for k in side)]))
        keys = [
            k
            for k in keys
            if any(k in side and not isinstance(side[k], Mapping | list) for side in sides.values())
        ]
        blocks.append(
            f"{row.get('precision', '?')}: ratio {fmt(row.get('ratio'))}, compute-only ratio "
            f"{fmt(row.get('compute_ratio'))}\n\n"
            + md_table(
                ["side", *(TRAIN_COLUMNS.get(k, k) for k in keys)],
                [[name, *(side.get(k) for k in keys)] for name, side in sides.items()],
            )
        )
    settings = {k: v for k, v in results.items() if k.endswith("_settings")}
    if settings:
        blocks.append(
            "<details><summary>Settings of each side</summary>\n\n"
            + md_table(["setting", "value"], _scalars(settings))
            + "\n\n</details>"
        )
    figures = []
    if isinstance(aisle, int | float) and isinstance(st, int | float):
        ratio = results.get("ratio")
        title = "Training throughput" + (f" (ratio {fmt(ratio)})" if ratio is not None else "")
        figures.append(
            own_or_drawn(
                ctx,
                "train",
                [ctx.record.get("plot")],
                lambda path: draw_pair(
                    ["Aisle", "sentence-transformers"],
                    [aisle, st],
                    "training pairs / s",
                    title,
                    path,
                ),
                "Training pairs/s, Aisle vs sentence-transformers, same model and batch",
            )
        )
    return blocks, figures


def train_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    results = record.get("results") or {}
    put_metric(out, "train/aisle_pairs_per_s", results.get("aisle_pairs_per_s"), "higher")
    put_metric(out, "train/st_pairs_per_s", results.get("st_pairs_per_s"), "higher")
    put_metric(out, "train/ratio", results.get("ratio"), "higher")
    for row in results.get("rows") or []:
        if row.get("precision") != results.get("precision"):
            put_metric(out, f"train/{row.get('precision')}/ratio", row.get("ratio"), "higher")
    return out
