"""The report's part for each benchmark (title, render, headline metrics), re-exporting its pieces.

Each part renders markdown tables, figures and headline metrics from the benchmark's JSON line
(the record a ``bench_*.py`` appends); it lives in ``report_<benchmark>.py``, and what the parts
share in ``report_format.py`` (cells, tables, times, metric entries) and ``report_figures.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.report_ann import ann_metrics, ann_section, draw_ann
from benchmarks.report_figures import Context, Figure, draw_pair, own_or_drawn
from benchmarks.report_format import Metrics, Record, bench_name, fmt, md_table, record_time
from benchmarks.report_latency import draw_latency, latency_metrics, latency_section
from benchmarks.report_quality import draw_quality, quality_metrics, quality_section
from benchmarks.report_reindex import reindex_metrics, reindex_section
from benchmarks.report_rerank import rerank_metrics, rerank_section
from benchmarks.report_train import TRAIN_COLUMNS, train_metrics, train_section

__all__ = [
    "PARTS",
    "TRAIN_COLUMNS",
    "Context",
    "Figure",
    "Metrics",
    "Part",
    "Record",
    "ann_metrics",
    "ann_section",
    "bench_name",
    "draw_ann",
    "draw_latency",
    "draw_pair",
    "draw_quality",
    "fmt",
    "latency_metrics",
    "latency_section",
    "md_table",
    "own_or_drawn",
    "quality_metrics",
    "quality_section",
    "record_time",
    "reindex_metrics",
    "reindex_section",
    "rerank_metrics",
    "rerank_section",
    "train_metrics",
    "train_section",
]


@dataclass(frozen=True)
class Part:
    """How the report shows one benchmark."""

    title: str
    render: Callable[[Context], tuple[list[str], list[Figure]]]
    metrics: Callable[[Record], Metrics]


PARTS: dict[str, Part] = {
    "quality": Part("Retrieval quality", quality_section, quality_metrics),
    "ann": Part("Recall vs queries/s per index type", ann_section, ann_metrics),
    "latency": Part("Served latency", latency_section, latency_metrics),
    "train": Part("Training throughput", train_section, train_metrics),
    "reindex": Part("Batch reindex throughput", reindex_section, reindex_metrics),
    "rerank": Part("Re-ranking kernels", rerank_section, rerank_metrics),
}
