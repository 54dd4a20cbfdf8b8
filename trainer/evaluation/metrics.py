"""Retrieval metrics as pure functions (NDCG@k, Recall@k, MRR, mean ± standard error), and
``evaluate_rankings``, which scores any ranker's output against graded judgments.

A ranking is a sequence of item ids, best first. Judgments map item id → grade; a gain table
maps grade → NDCG gain. A metric that is undefined for a query (no item with positive gain for
NDCG, no relevant item for Recall/MRR) returns ``None``, and the query is left out of the mean,
as the datasets' evaluation conventions prescribe (``../shared/data/*/README.md``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.labels import Labels

logger = logging.getLogger(__name__)

TASKS = ("search", "recommendation")

# grade → NDCG gain. "esci": the official ESCI gains (E=1, S=0.1, C=0.01, I=0); "grade": the
# gain is the grade itself (Home Depot: 0, 1, 2).
ESCI_GAINS: dict[int, float] = {3: 1.0, 2: 0.1, 1: 0.01, 0: 0.0}
GRADE_GAINS: dict[int, float] = {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}
GAIN_TABLES: dict[str, dict[int, float]] = {"esci": ESCI_GAINS, "grade": GRADE_GAINS}

# The lowest grade that counts as relevant for Recall and MRR, per dataset: ESCI Exact (3),
# Home Depot grade 2. Recommendation targets are judged 1 (see trainer.evaluation.recommend).
DEFAULT_RECALL_GRADE: dict[str, int] = {"esci": 3, "homedepot": 2}


@dataclass(frozen=True)
class MetricSummary:
    """Mean and standard error of one metric over the queries it is defined for.

    ``stderr`` is the sample standard deviation (ddof=1) / sqrt(n); NaN when n < 2. ``mean``
    is NaN when n == 0.
    """

    mean: float
    stderr: float
    n: int


def resolve_gains(gains: str | Mapping[int, float]) -> dict[int, float]:
    """A gain table from its name in ``GAIN_TABLES`` ("esci", "grade") or a grade → gain map.

    Raises:
        ValueError: an unknown name, or a table with a negative or non-finite gain.
    """
    if isinstance(gains, str):
        if gains not in GAIN_TABLES:
            raise ValueError(
                f"unknown gain table {gains!r}; use one of {sorted(GAIN_TABLES)} or pass a "
                "{grade: gain} mapping"
            )
        return dict(GAIN_TABLES[gains])
    table = {int(grade): float(gain) for grade, gain in gains.items()}
    bad = {g: v for g, v in table.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"gains must be finite and >= 0, got {bad}")
    return table


def item_gains(judgments: Mapping[str, int], gains: Mapping[int, float]) -> dict[str, float]:
    """item id → gain for one query's judged items.

    Raises:
        ValueError: a grade that the gain table does not cover.
    """
    out = {}
    for item_id, grade in judgments.items():
        if grade not in gains:
            raise ValueError(
                f"grade {grade} of item {item_id!r} has no gain in the table {dict(gains)}; "
                "pick the gain table that matches the labels (e.g. 'esci' for 0..3 ESCI grades)"
            )
        out[item_id] = gains[grade]
    return out


def relevant_items(judgments: Mapping[str, int], recall_grade: int) -> set[str]:
    """Judged items with grade >= ``recall_grade`` (the items Recall and MRR look for)."""
    return {item_id for item_id, grade in judgments.items() if grade >= recall_grade}


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


def _top(ranking: Sequence[str], k: int) -> Sequence[str]:
    top = ranking[:k]
    if len(set(top)) != len(top):
        # A repeated item would be counted twice and could push NDCG or Recall above 1.
        seen: set[str] = set()
        for item_id in top:
            if item_id in seen:
                raise ValueError(f"ranking lists item {item_id!r} more than once")
            seen.add(item_id)
    return top


def dcg(gains_in_rank_order: Iterable[float]) -> float:
    """Discounted cumulative gain: sum over ranks r = 1.. of gain_r / log2(r + 1)."""
    g = np.asarray(list(gains_in_rank_order), dtype=np.float64)  # (n,)
    if g.size == 0:
        return 0.0
    discounts = np.log2(np.arange(2, g.size + 2, dtype=np.float64))  # (n,) log2(r + 1)
    return float(np.sum(g / discounts))


def ndcg_at_k(ranking: Sequence[str], gains: Mapping[str, float], k: int) -> float | None:
    """NDCG@k of one ranking.

    Args:
        ranking: item ids, best first; unjudged items have gain 0; may be shorter than k.
        gains: the query's judged items, item id → gain (``item_gains``).
        k: cutoff.

    Returns:
        DCG@k of the ranking / DCG@k of the judged items sorted by gain, in [0, 1]; ``None``
        when no judged item has a positive gain (the query has no NDCG).
    """
    _check_k(k)
    ideal = dcg(sorted((g for g in gains.values() if g > 0), reverse=True)[:k])
    if ideal <= 0:
        return None
    return dcg(gains.get(item_id, 0.0) for item_id in _top(ranking, k)) / ideal


def weighted_dcg(ranks: np.ndarray, weights: np.ndarray, k: int = 10) -> float:
    """Self-normalised weighted DCG@k of judged items, over any number of queries.

    With clicks weighted by their inverse examination propensity this is the IPS estimate of
    the DCG@k of clicked items (Joachims et al., "Unbiased Learning-to-Rank with Biased
    Feedback", WSDM 2017): a click from a position few shoppers examined stands in for the
    unseen ones, so it counts for more.

    Args:
        ranks: (n,) 1-based rank a ranker gives each judged item; 0 or > k = a miss.
        weights: (n,) finite weights > 0, one per item.

    Returns:
        ``sum_i w_i / log2(1 + r_i)`` over the hits, divided by ``sum_i w_i``: in [0, 1];
        NaN for n = 0.
    """
    _check_k(k)
    ranks = np.asarray(ranks, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != ranks.shape or ranks.ndim != 1:
        raise ValueError(f"ranks and weights must be two (n,) arrays, got {ranks.shape}, {w.shape}")
    if len(ranks) == 0:
        return float("nan")
    if np.any(~np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("weights must be finite and > 0")
    hit = (ranks >= 1) & (ranks <= k)
    gains = np.where(hit, 1.0 / np.log2(1.0 + np.maximum(ranks, 1)), 0.0)  # (n,)
    return float(np.sum(w * gains) / np.sum(w))


def weighted_dcg_at_k(
    rankings: Mapping[str, Sequence[str]], labels: Labels, gains: str | Mapping[int, float], k: int
) -> float:
    """``weighted_dcg`` of every judged item with a positive gain, over all queries, each
    weighted by its ``Labels.weight`` times its gain: for judgments learned from logs (weight =
    action weight x inverse propensity) the IPS estimate of DCG@k. Unlike NDCG, a query's weights
    do not cancel out (one click at a deep position still counts for more than one at the top).

    Args:
        rankings: query_id → item ids, best first; every judged query needs one.
        labels: the judgments and their weights (1.0 where a row gave none).
        gains: grade → gain, or a name in ``GAIN_TABLES``.

    Returns:
        In [0, 1]; NaN when no judged item has a positive gain.
    """
    table = resolve_gains(gains)
    ranks, weights = [], []
    for query_id, judged in labels.judgments.items():
        if query_id not in rankings:
            raise ValueError(f"judged query {query_id!r} has no ranking")
        top = list(_top(rankings[query_id], k))
        for item_id, gain in item_gains(judged, table).items():
            if gain > 0:
                ranks.append(top.index(item_id) + 1 if item_id in top else 0)
                weights.append(labels.weight(query_id, item_id) * gain)
    return weighted_dcg(np.asarray(ranks, dtype=np.int64), np.asarray(weights, np.float64), k)


def recall_at_k(ranking: Sequence[str], relevant: Collection[str], k: int) -> float | None:
    """Share of ``relevant`` items in the top k of ``ranking``; ``None`` if none is relevant."""
    _check_k(k)
    if not relevant:
        return None
    hits = sum(1 for item_id in _top(ranking, k) if item_id in relevant)
    return hits / len(relevant)


def mrr(ranking: Sequence[str], relevant: Collection[str], k: int | None = None) -> float | None:
    """Reciprocal rank of the first relevant item in the top k (all of ``ranking`` if k is None).

    Returns:
        1 / rank (1-based), 0.0 when no relevant item is in the top k, ``None`` when
        ``relevant`` is empty. Averaged over queries this is the mean reciprocal rank.
    """
    if k is not None:
        _check_k(k)
    if not relevant:
        return None
    for rank, item_id in enumerate(_top(ranking, len(ranking) if k is None else k), start=1):
        if item_id in relevant:
            return 1.0 / rank
    return 0.0


def mean_stderr(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error (sample std with ddof=1, / sqrt(n)) of per-query values.

    Returns:
        (mean, stderr); mean is NaN for no values, stderr is NaN for fewer than two.
    """
    x = np.asarray(values, dtype=np.float64)  # (n,)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def summarize(values: Sequence[float] | np.ndarray) -> MetricSummary:
    """``mean_stderr`` of ``values`` as a MetricSummary with n = len(values)."""
    mean, stderr = mean_stderr(values)
    return MetricSummary(mean=mean, stderr=stderr, n=len(values))


# ---------------------------------------------------------------------------------------------
# Scoring rankings


@dataclass(frozen=True)
class EvalReport:
    """The result of one evaluation.

    Attributes:
        task: "search" or "recommendation".
        metrics: "ndcg@10", "recall@100", "mrr@100", ... → mean, stderr and n (the number of
            queries/users the metric is defined for).
        per_query: query_id (or user_id) → metric → value, only the metrics defined for it.
        n_queries: queries (users) ranked.
        info: what was evaluated and how: model, fingerprint, files, gains, timings (seconds).
    """

    task: str
    metrics: dict[str, MetricSummary]
    per_query: dict[str, dict[str, float]]
    n_queries: int
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, per_query: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (NaN → None)."""
        out: dict[str, Any] = {
            "task": self.task,
            "n_queries": self.n_queries,
            "metrics": {name: _json_safe(asdict(m)) for name, m in self.metrics.items()},
            "info": _json_safe(self.info),
        }
        if per_query:
            out["per_query"] = self.per_query
        return out

    def format_table(self) -> str:
        """A readable table: one line per metric with mean, ± standard error and n."""
        unit = "users" if self.task == "recommendation" else "queries"
        head = f"{self.task}: {self.n_queries} {unit}"
        if "n_items" in self.info:
            head += f" over {self.info['n_items']:,} items"
        if self.info.get("dataset"):
            head += f" ({self.info['dataset']})"
        lines = [head, f"{'metric':<12} {'mean':>8} {'± stderr':>9} {'n':>7}"]
        for name, m in self.metrics.items():
            mean = "-" if math.isnan(m.mean) else f"{m.mean:.4f}"
            stderr = "-" if math.isnan(m.stderr) else f"{m.stderr:.4f}"
            lines.append(f"{name:<12} {mean:>8} {stderr:>9} {m.n:>7}")
        seconds = self.info.get("seconds")
        if isinstance(seconds, Mapping) and "total" in seconds:
            lines.append(f"time: {seconds['total']:.1f} s")
        return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validated cutoffs, sorted and deduplicated; ValueError unless all are positive ints."""
    out = tuple(ks)
    if not out or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in out):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return tuple(sorted(set(out)))


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]],
    labels: Labels | Mapping[str, Mapping[str, int]],
    gains: str | Mapping[int, float],
    recall_grade: int,
    ks: Sequence[int] = (10, 100),
    *,
    task: str = "search",
) -> EvalReport:
    """Score rankings from any ranker against graded judgments.

    Args:
        rankings: query_id → item ids, best first (at least max(ks) long for exact numbers;
            shorter rankings count missing ranks as misses). Every judged query needs one.
        labels: ``Labels`` or its ``judgments`` (query_id → {item_id: grade}).
        gains: grade → NDCG gain, or a name in ``GAIN_TABLES``.
        recall_grade: items with grade >= this are relevant for Recall and MRR.
        ks: cutoffs; NDCG@k and Recall@k for each, MRR within the top max(ks).
        task: recorded in the report.

    Returns:
        An EvalReport: NDCG over queries with a positive-gain judged item, Recall and MRR over
        queries with a relevant item.

    Raises:
        ValueError: a judged query without a ranking, a grade missing from the gain table, a
            ranking that repeats an item, or bad ks.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    ks = check_ks(ks)
    table = resolve_gains(gains)
    judgments = labels.judgments if isinstance(labels, Labels) else labels
    missing = [q for q in judgments if q not in rankings]
    if missing:
        shown = ", ".join(repr(q) for q in missing[:5])
        raise ValueError(
            f"{len(missing)} judged queries have no ranking (first: {shown}); rank every query "
            "of the labels (an empty list for a query with no results)"
        )
    extra = len(set(rankings) - set(judgments))
    if extra:
        logger.warning("%d rankings are for queries without judgments; ignored", extra)

    depth = max(ks)
    names = [f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks] + [f"mrr@{depth}"]
    values: dict[str, list[float]] = {name: [] for name in names}
    per_query: dict[str, dict[str, float]] = {}
    for query_id, judged in judgments.items():
        ranking = list(rankings[query_id])
        query_gains = item_gains(judged, table)
        relevant = relevant_items(judged, recall_grade)
        scores: dict[str, float | None] = {}
        for k in ks:
            scores[f"ndcg@{k}"] = ndcg_at_k(ranking, query_gains, k)
            scores[f"recall@{k}"] = recall_at_k(ranking, relevant, k)
        scores[f"mrr@{depth}"] = mrr(ranking, relevant, depth)
        defined = {name: value for name, value in scores.items() if value is not None}
        for name, value in defined.items():
            values[name].append(value)
        per_query[query_id] = defined
    metrics = {name: summarize(values[name]) for name in names}
    info = {"gains": table, "recall_grade": recall_grade, "ks": list(ks)}
    return EvalReport(task, metrics, per_query, len(judgments), info)
