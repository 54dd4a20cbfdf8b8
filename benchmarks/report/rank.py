"""The report's part for bench_rank: the learned ranker against hybrid fusion and each channel
over the same candidates, what the ranking stage costs, and which features it leans on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.report.figures import Context, Figure
from benchmarks.report.format import Metrics, Record, config_line, fmt, md_table, put_metric

METHODS = (
    ("ranked", "ranked (LightGBM lambdarank)"),
    ("hybrid", "hybrid (the default fusion)"),
    ("dense", "dense channel alone"),
    ("lexical", "lexical channel alone"),
)


def _cell(summary: Any) -> str:
    if not isinstance(summary, Mapping) or summary.get("mean") is None:
        return "—"
    return f"{fmt(summary['mean'])} ± {fmt(summary.get('stderr'))}"


def _validation(training: dict) -> str:
    """How the ranker was validated (never on dev): cross-validation or a held-out slice."""
    if training.get("validation") == "cv":
        return (
            f"{fmt(training.get('queries_fit'))} train queries, "
            f"{fmt(training.get('cv_folds'))}-fold cross-validation over them (never dev), "
            f"mean fold NDCG@10 {fmt(training.get('held_out_ndcg@10'))}"
        )
    return (
        f"{fmt(training.get('queries_fit'))} train queries fitted, "
        f"{fmt(training.get('queries_held_out'))} held out for early stopping (never dev), "
        f"held-out NDCG@10 {fmt(training.get('held_out_ndcg@10'))}"
    )


def rank_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    r = ctx.record.get("results") or {}
    config = ctx.record.get("config") or {}
    metrics = r.get("metrics") or {}
    diff = metrics.get("ranked_minus_hybrid") or {}
    training = r.get("training") or {}
    stage = r.get("rank_stage_ms") or {}
    ranked = _cell((metrics.get("ranked") or {}).get("ndcg@10"))
    hybrid = _cell((metrics.get("hybrid") or {}).get("ndcg@10"))
    blocks = [
        config_line(config, skip=("ranker",)),
        f"**{config.get('dataset', '?')} dev: ranked {ranked} vs hybrid {hybrid} NDCG@10; "
        "ranked - hybrid "
        f"{fmt(diff.get('mean'))} ± {fmt(diff.get('stderr'))} (paired over {fmt(diff.get('n'))} "
        "queries).**",
        md_table(
            ["method", "NDCG@10", "Recall@100"],
            [
                [
                    label,
                    _cell((metrics.get(name) or {}).get("ndcg@10")),
                    _cell((metrics.get(name) or {}).get("recall@100")),
                ]
                for name, label in METHODS
                if name in metrics
            ],
        ),  # fmt: skip
        f"Training: {_validation(training)}, "
        f"{fmt(training.get('candidates'))} candidates, {fmt(training.get('rounds'))} rounds; "
        f"features {fmt(r.get('train_features_s'))} s, LightGBM {fmt(r.get('train_s'))} s.",
        f"Ranking stage (features + LightGBM, one thread, per dev query): p50 "
        f"{fmt(stage.get('p50'))} ms, p95 {fmt(stage.get('p95'))} ms, for "
        f"{fmt(stage.get('candidates_p50'))} candidates at the median (at most "
        f"{fmt(stage.get('candidates_max'))}); the fusion it replaces p50 "
        f"{fmt(stage.get('fuse_p50'))} ms. The served cost is bench_latency's ranked rows.",
    ]
    gain = r.get("feature_gain") or {}
    top = sorted(((k, v) for k, v in gain.items() if v), key=lambda kv: -kv[1])[:12]
    if top:
        total = sum(v for _, v in gain.items() if v) or 1.0
        blocks.append(
            "Features by total split gain (top 12)\n\n"
            + md_table(["feature", "share of gain"], [[k, f"{v / total:.1%}"] for k, v in top])
        )
    return blocks, []


def rank_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    r = record.get("results") or {}
    dataset = (record.get("config") or {}).get("dataset", "?")
    metrics = r.get("metrics") or {}
    for name, _ in METHODS:
        put_metric(
            out, f"rank/{dataset}/{name}/ndcg@10",
            ((metrics.get(name) or {}).get("ndcg@10") or {}).get("mean"), "higher",
        )  # fmt: skip
    put_metric(
        out, f"rank/{dataset}/stage_p50_ms", (r.get("rank_stage_ms") or {}).get("p50"), "lower"
    )
    return out
