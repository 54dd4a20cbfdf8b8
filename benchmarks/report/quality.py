"""The report's part for bench_quality: NDCG and recall per dataset and method, with a figure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report.figures import Context, Figure, own_or_drawn, pyplot, save_figure
from benchmarks.report.format import Metrics, Record, config_line, md_table, put_metric


def _metric_order(name: str) -> tuple[int, int]:
    kind, _, k = name.partition("@")
    order = {"ndcg": 0, "recall": 1, "mrr": 2}.get(kind, 3)
    return order, int(k) if k.isdigit() else 0


def _metric_label(name: str) -> str:
    kind, _, k = name.partition("@")
    return {"ndcg": "NDCG", "recall": "Recall", "mrr": "MRR"}.get(kind, kind) + (
        f"@{k}" if k else ""
    )


def _mean_se(m: Mapping[str, Any] | None) -> str:
    if not m:
        return "—"
    se = m.get("stderr")
    if isinstance(se, int | float) and math.isfinite(se):
        return f"{m['mean']:.4f} ± {se:.4f}"
    return f"{m['mean']:.4f}"


def _recall_for_plot(metrics: Mapping[str, Any]) -> str | None:
    recalls = sorted((n for n in metrics if n.startswith("recall@")), key=_metric_order)
    return "recall@100" if "recall@100" in recalls else (recalls[-1] if recalls else None)


def draw_quality(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Grouped bars per dataset x method, NDCG@10 and Recall@100 (the deepest recall a dataset
    has otherwise), with standard-error bars."""
    plt = pyplot()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(len(methods), 1)
    for ax, which in zip(axes, ("ndcg", "recall"), strict=True):
        for j, method in enumerate(methods):
            xs, ys, es = [], [], []
            for i, ds in enumerate(datasets):
                for r in rows:
                    if r["dataset"] != ds or r["method"] != method:
                        continue
                    name = "ndcg@10" if which == "ndcg" else _recall_for_plot(r["metrics"])
                    m = r["metrics"].get(name or "")
                    if m is None:
                        continue
                    se = m.get("stderr")
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    ys.append(m["mean"])
                    es.append(se if isinstance(se, int | float) and math.isfinite(se) else 0.0)
            if xs:
                ax.bar(xs, ys, width, yerr=es, capsize=2, label=method)
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_title("NDCG@10" if which == "ndcg" else "Recall@100 (else the deepest recall)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle("Dev-split quality, mean ± standard error")
    save_figure(fig, path)


def quality_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    results = ctx.record.get("results") or {}
    rows = results.get("rows") or []
    config = ctx.record.get("config") or {}
    blocks = [config_line(config, skip=("fingerprints",))]
    for key, label in (("models", "Fine-tuned model"), ("train_configs", "Training config")):
        per_dataset = config.get(key)
        if isinstance(per_dataset, dict) and per_dataset:
            listed = ", ".join(f"{ds} `{value}`" for ds, value in per_dataset.items())
            blocks.append(f"{label} per dataset: {listed}.")
    parts = model_parts(rows)
    if parts:
        blocks.append(parts)
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == ds]
        names = sorted({n for r in mine for n in r["metrics"]}, key=_metric_order)
        split = mine[0].get("split", "dev")
        header = ["method", "queries", *(_metric_label(n) for n in names)]
        table = md_table(
            header,
            [
                [r["method"], r.get("n_queries"), *(_mean_se(r["metrics"].get(n)) for n in names)]
                for r in mine
            ],
        )
        blocks.append(f"**{ds}** ({split} split, mean ± standard error over queries)\n\n{table}")
    fusion_rows = [
        [ds, model, chosen.get("name"), chosen.get("chosen_on")]
        for ds, per_model in (results.get("fusion") or {}).items()
        for model, chosen in per_model.items()
    ]
    if fusion_rows:
        blocks.append(
            "Fusion used by the hybrid rows\n\n"
            + md_table(["dataset", "model", "fusion", "chosen on"], fusion_rows)
        )
    figures = []
    if rows:
        figures.append(
            own_or_drawn(
                ctx,
                "quality",
                [ctx.record.get("plot"), ctx.out_dir / "quality.png"],
                lambda path: draw_quality(rows, path),
                "NDCG@10 and Recall@100 per dataset and method, with standard-error bars",
            )
        )
    return blocks, figures


def model_parts(rows: list[dict]) -> str:
    """One line on the optional parts of the models behind the rows: the trigram sketch
    (``lexical``), the fast query tower and the user tower's decay, with what the comparison
    rows mean."""
    notes = []
    for r in rows:
        lexical = r.get("lexical")
        if isinstance(lexical, dict):
            notes.append(
                f"{r['dataset']} {r['method']}: BERT towers plus a {lexical.get('dim')}-dim "
                f'character-trigram sketch, weight {lexical.get("weight")} ("BERT part only": '
                "the same towers without it)"
            )
        if r.get("query_tower") == "fast":
            notes.append(
                f"{r['dataset']} {r['method']}: the fine-tuned model's distilled query tower "
                "(query_fast/) against the same item vectors (the fine-tuned rows use its full "
                "query tower)"
            )
        decay = r.get("history_decay")
        if r["method"] == "fine-tuned" and isinstance(decay, int | float) and decay != 1.0:
            notes.append(
                f"{r['dataset']} {r['method']}: user tower decay {decay} fitted on the held-out "
                'users ("zero-shot, fitted user tower": the zero-shot item vectors pooled with '
                "it; plain zero-shot pools with the mean)"
            )
    return ("Model parts: " + "; ".join(notes) + ".") if notes else ""


def quality_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    for r in (record.get("results") or {}).get("rows") or []:
        for name, m in r["metrics"].items():
            if name == "ndcg@10" or name.startswith("recall@"):
                put_metric(
                    out,
                    f"quality/{r['dataset']}/{r['method']}/{name}",
                    m.get("mean"),
                    "higher",
                    stderr=m.get("stderr"),
                )
    return out
