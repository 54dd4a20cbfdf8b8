"""The registry of the report's parts: for each benchmark its title, renderer and headline metrics.

Each part renders markdown tables, figures and headline metrics from the benchmark's JSON line
(the record a ``bench_*.py`` appends); it lives in ``benchmarks/report/<benchmark>.py``, and what
the parts share in ``format.py`` (cells, tables, times, metric entries) and ``figures.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.report.ann import ann_metrics, ann_section
from benchmarks.report.figures import Context, Figure
from benchmarks.report.format import Metrics, Record
from benchmarks.report.latency import latency_metrics, latency_section
from benchmarks.report.loop import loop_metrics, loop_section
from benchmarks.report.quality import quality_metrics, quality_section
from benchmarks.report.query_tower import query_tower_metrics, query_tower_section
from benchmarks.report.rank import rank_metrics, rank_section
from benchmarks.report.reindex import reindex_metrics, reindex_section
from benchmarks.report.rerank import rerank_metrics, rerank_section
from benchmarks.report.train import train_metrics, train_section

__all__ = ["PARTS", "Part"]


@dataclass(frozen=True)
class Part:
    """How the report shows one benchmark."""

    title: str
    render: Callable[[Context], tuple[list[str], list[Figure]]]
    metrics: Callable[[Record], Metrics]
    # How to run a benchmark the report does not run itself (None: the report runs it).
    command: str | None = None


PARTS: dict[str, Part] = {
    "quality": Part("Retrieval quality", quality_section, quality_metrics),
    "ann": Part("Recall vs queries/s per index type", ann_section, ann_metrics),
    "latency": Part("Served latency", latency_section, latency_metrics),
    "query_tower": Part(
        "Query towers: encode cost, quality and served load",
        query_tower_section,
        query_tower_metrics,
        command="python -m benchmarks.bench_query_tower --model MODEL_FAST [--model ...] "
        "[--serve INDEX]  (model dirs with query_fast/: aisle-train writes one by default)",
    ),
    "train": Part("Training throughput", train_section, train_metrics),
    "reindex": Part("Batch reindex throughput", reindex_section, reindex_metrics),
    "rerank": Part("Re-ranking kernels", rerank_section, rerank_metrics),
    "loop": Part("Learning loop", loop_section, loop_metrics),
    "rank": Part(
        "Learned ranking stage",
        rank_section,
        rank_metrics,
        command="python -m benchmarks.bench_rank --dataset homedepot --index ROOT  (ROOT: an "
        "index of the dataset's catalog, aisle-index build)",
    ),
}
