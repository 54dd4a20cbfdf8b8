"""Training and evaluating the ranker over the candidate sets the server would produce.

For each labelled query: encode it with the version's towers, take the dense channel's top N
and the lexical channel's top N (``CANDIDATES_PER_CHANNEL``, the server's hybrid depth), their
union (``union_candidates``), and the features of every candidate (``compute_features``, the
function the server calls). Judged candidates get their grade, unjudged ones 0. LightGBM's
``lambdarank`` is trained on these groups, optimising NDCG@10 with the dataset's gains, and
validated on the *training* queries only (never dev): with many queries, early stopping on a
held-out slice of them; with few (``CV_BELOW``, ESCI's 100), where a 15-query slice is too
small to stop on and holding it out costs a sixth of the data, K-fold cross-validation over the
queries picks the tree size from a small grid (``CV_GRID``) and the number of rounds, and the
ranker is then trained on all of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
from tqdm import tqdm

from indexer.lexical.files import LEXICAL_META_FILE
from indexer.lexical.index import LexicalIndex
from indexer.ranking.features import Candidates, FeatureSource, compute_features, union_candidates
from indexer.ranking.fields import FieldIndex
from indexer.ranking.model import Ranker
from indexer.ranking.spec import CANDIDATES_PER_CHANNEL, FEATURES
from indexer.rerank.columns import ItemColumns
from indexer.version import IndexVersion
from trainer.data.labels import Labels
from trainer.encoder.load import Encoder
from trainer.evaluation.metrics import ndcg_at_k, recall_at_k, resolve_gains, summarize
from trainer.feedback.engagement import ItemEngagement
from trainer.text import query_text

__all__ = [
    "QuerySet",
    "RankerConfig",
    "evaluate_ranker",
    "prepare_queries",
    "rankings_metrics",
    "train_ranker",
    "version_source",
]

logger = logging.getLogger(__name__)

VALIDATIONS = ("auto", "holdout", "cv")
CV_BELOW = 1000  # usable training queries under which "auto" cross-validates
# (num_leaves, min_data_in_leaf) tried by cross-validation: from a few-split stump-like model
# that stays close to the fused score it is given to the default trees.
CV_GRID = ((4, 50), (8, 20), (15, 50), (31, 20))


@dataclass(frozen=True)
class RankerConfig:
    """LightGBM lambdarank settings; defaults train in minutes on two cores.

    Attributes:
        gains: grade → gain table name ("esci", "grade") for the lambdarank gains and NDCG.
        num_leaves, learning_rate, min_data_in_leaf, feature_fraction: LightGBM's.
        max_rounds: boosting rounds at most; early stopping ends sooner.
        early_stopping: rounds without a better held-out NDCG@10 before stopping.
        valid_fraction: share of the training queries held out for early stopping.
        validation: "holdout" (early stopping on ``valid_fraction`` of the queries), "cv"
            (``cv_folds``-fold cross-validation picks ``CV_GRID``'s tree size and the rounds,
            then all queries train) or "auto": cv below ``CV_BELOW`` usable queries.
        cv_folds: folds of "cv" (fewer when there are too few queries for two per fold).
        seed: the held-out split and LightGBM's seed.
        threads: LightGBM threads.
    """

    gains: str = "grade"
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9
    max_rounds: int = 500
    early_stopping: int = 50
    valid_fraction: float = 0.15
    validation: str = "auto"
    cv_folds: int = 5
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        resolve_gains(self.gains)
        if self.validation not in VALIDATIONS:
            raise ValueError(
                f"validation must be one of {', '.join(VALIDATIONS)}, got {self.validation!r}"
            )
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {self.cv_folds}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.max_rounds < 1 or self.early_stopping < 1 or self.num_leaves < 2:
            raise ValueError("max_rounds and early_stopping must be >= 1, num_leaves >= 2")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")


def version_source(
    index: IndexVersion,
    encoder: Encoder | None = None,
    engagement: ItemEngagement | None = None,
) -> FeatureSource:
    """The ``FeatureSource`` of an opened version (its BM25 index loaded, fields indexed), with
    ``engagement`` read from an event log (``aisle-rank train --events``) or none.

    Raises:
        ValueError: the version has no lexical index (built with --no-lexical).
    """
    if not (index.path / LEXICAL_META_FILE).exists():
        raise ValueError(
            f"{index.path}: the ranker needs the lexical channel, and this version has none "
            "(built with --no-lexical); build it again with the lexical index"
        )
    sketch = getattr(encoder, "lexical", None) if encoder is not None else None
    return FeatureSource(
        columns=ItemColumns.from_table(index.items),
        vectors=index.vector_store(),
        lexical=LexicalIndex.load(index.path),
        fields=FieldIndex.build(index.items),
        sketch_dim=sketch.dim if sketch is not None else 0,
        item_ids=index.item_ids,
        engagement=engagement,
    )


@dataclass(frozen=True)
class QuerySet:
    """Labelled queries with their candidates and features, ready to train or evaluate on.

    Attributes:
        query_ids: the queries, in label-file order.
        candidates: per query its ``Candidates``.
        features: per query its (n_i, F) float32 features.
        dense_scores, lexical_scores: per query (n_i,) the channels' scores of each candidate
            (dense: exact inner product; lexical: BM25), for baselines.
        labels: per query (n_i,) int grades (0 for unjudged).
        judgments: query_id → {item_id: grade}, for metrics.
        item_ids: the version's item ids by row.
    """

    query_ids: list[str]
    candidates: list[Candidates]
    features: list[np.ndarray]
    dense_scores: list[np.ndarray]
    lexical_scores: list[np.ndarray]
    labels: list[np.ndarray]
    judgments: dict[str, dict[str, int]]
    item_ids: np.ndarray


def prepare_queries(
    index: IndexVersion,
    source: FeatureSource,
    encoder: Encoder,
    labels: Labels,
    *,
    depth: int = CANDIDATES_PER_CHANNEL,
    show_progress: bool = False,
) -> QuerySet:
    """Candidates and features of every labelled query (as the server computes them)."""
    query_ids = list(labels.queries)
    texts = [labels.queries[q] for q in query_ids]
    xq = encoder.encode_queries([query_text(t) for t in texts])  # (nq, dim)
    _, I = index.search(xq, depth)
    row_of = {item_id: r for r, item_id in enumerate(index.item_ids.tolist())}
    dense_col, lexical_col = FEATURES.index("dense_score"), FEATURES.index("lexical_score")
    out = QuerySet([], [], [], [], [], [], {}, index.item_ids)
    for i, (qid, text) in enumerate(
        tqdm(list(zip(query_ids, texts, strict=True)), desc="ranker features",
             disable=not show_progress, unit="query")
    ):  # fmt: skip
        _, lex_I = source.lexical.search(text, depth)
        candidates = union_candidates(I[i], lex_I, depth)
        X = compute_features(source, text, xq[i], candidates)
        grades = labels.judgments.get(qid, {})
        y = np.zeros(len(candidates.rows), dtype=np.int64)
        for j, r in enumerate(candidates.rows.tolist()):
            y[j] = grades.get(index.item_ids[r], 0)
        out.query_ids.append(qid)
        out.candidates.append(candidates)
        out.features.append(X)
        out.dense_scores.append(X[:, dense_col].astype(np.float64))
        out.lexical_scores.append(X[:, lexical_col].astype(np.float64))
        out.labels.append(y)
        out.judgments[qid] = {k: v for k, v in grades.items() if k in row_of}
    return out


def _stack(qs: QuerySet, which: list[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    X = np.concatenate([qs.features[i] for i in which]) if which else np.zeros((0, 0))
    y = np.concatenate([qs.labels[i] for i in which]) if which else np.zeros(0)
    return X, y, [len(qs.labels[i]) for i in which]


def train_ranker(
    qs: QuerySet, config: RankerConfig, *, model_fingerprint: str, fields: tuple[str, ...]
) -> Ranker:
    """Train lambdarank on ``qs``, validated on it as ``config.validation`` says.

    Raises:
        ValueError: too few queries with a relevant candidate to hold some out.
    """
    t0 = time.perf_counter()
    useful = [i for i, y in enumerate(qs.labels) if len(y) and y.max() > 0]
    if len(useful) < 4:
        raise ValueError(
            f"only {len(useful)} labelled queries have a judged relevant item among their "
            "candidates; the ranker needs more (at least 4)"
        )
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(useful)
    gains = resolve_gains(config.gains)
    label_gain = [gains.get(g, 0.0) for g in range(max(gains) + 1)]
    validation = config.validation
    if validation == "auto":
        validation = "cv" if len(useful) < CV_BELOW else "holdout"
    if validation == "cv":
        booster, record = _train_cross_validated(qs, config, order.tolist(), label_gain)
    else:
        booster, record = _train_held_out(qs, config, order.tolist(), label_gain)
    seconds = time.perf_counter() - t0
    logger.info(
        "ranker (%s): %d rounds, validation NDCG@10 %.4f (LightGBM's, over candidates), %.1f s",
        validation, booster.current_iteration(), record["held_out_ndcg@10"] or float("nan"),
        seconds,
    )  # fmt: skip
    return Ranker(
        booster=booster,
        model_fingerprint=model_fingerprint,
        fields=fields,
        training={
            "validation": validation,
            **record,
            "candidates": int(sum(len(qs.labels[i]) for i in useful)),
            "rounds": int(booster.current_iteration()),
            "seconds": round(seconds, 2),
            "config": {k: v for k, v in config.__dict__.items()},
        },
    )


def _params(config: RankerConfig, label_gain: list[float], num_leaves: int, min_leaf: int) -> dict:
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "label_gain": label_gain,
        "num_leaves": num_leaves,
        "learning_rate": config.learning_rate,
        "min_data_in_leaf": min_leaf,
        "feature_fraction": config.feature_fraction,
        "lambdarank_truncation_level": 20,
        "num_threads": config.threads,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }


def _fit(
    qs: QuerySet,
    params: dict,
    fit: list[int],
    valid: list[int] | None,
    config: RankerConfig,
    rounds: int,
) -> lgb.Booster:
    """LightGBM on the ``fit`` queries; with ``valid``, early stopping on them."""
    X_fit, y_fit, g_fit = _stack(qs, sorted(fit))
    train_set = lgb.Dataset(X_fit, y_fit, group=g_fit, free_raw_data=False)
    if valid is None:
        return lgb.train(params, train_set, num_boost_round=rounds)
    X_val, y_val, g_val = _stack(qs, sorted(valid))
    valid_set = lgb.Dataset(X_val, y_val, group=g_val, reference=train_set)
    return lgb.train(
        params,
        train_set,
        num_boost_round=rounds,
        valid_sets=[valid_set],
        valid_names=["held_out"],
        callbacks=[lgb.early_stopping(config.early_stopping, verbose=False)],
    )


def _train_held_out(
    qs: QuerySet, config: RankerConfig, order: list[int], label_gain: list[float]
) -> tuple[lgb.Booster, dict[str, Any]]:
    """Early stopping on ``valid_fraction`` of the queries; the rest train."""
    n_valid = max(1, round(len(order) * config.valid_fraction))
    valid, fit = order[:n_valid], order[n_valid:]
    params = _params(config, label_gain, config.num_leaves, config.min_data_in_leaf)
    booster = _fit(qs, params, fit, valid, config, config.max_rounds)
    best = booster.best_score.get("held_out", {}).get("ndcg@10")
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return booster, {
        "queries_fit": len(fit),
        "queries_held_out": len(valid),
        "held_out_ndcg@10": best,
    }


def _train_cross_validated(
    qs: QuerySet, config: RankerConfig, order: list[int], label_gain: list[float]
) -> tuple[lgb.Booster, dict[str, Any]]:
    """K-fold over the queries: each ``CV_GRID`` setting trains on K-1 folds with early stopping
    on the K-th; the setting with the best mean fold NDCG@10 is trained on every query for the
    mean of its folds' best round counts."""
    folds = min(config.cv_folds, len(order) // 2)  # at least two queries per fold
    parts = [order[f::folds] for f in range(folds)]
    trials = []
    for num_leaves, min_leaf in CV_GRID:
        params = _params(config, label_gain, num_leaves, min_leaf)
        scores, rounds = [], []
        for f in range(folds):
            fit = [i for g, part in enumerate(parts) if g != f for i in part]
            booster = _fit(qs, params, fit, parts[f], config, config.max_rounds)
            scores.append(booster.best_score["held_out"]["ndcg@10"])
            rounds.append(booster.best_iteration)
        trials.append(
            {
                "num_leaves": num_leaves,
                "min_data_in_leaf": min_leaf,
                "ndcg@10": float(np.mean(scores)),
                "ndcg@10_stderr": float(np.std(scores, ddof=1) / np.sqrt(folds)),
                "rounds": max(1, round(float(np.mean(rounds)))),
            }
        )
    best = max(trials, key=lambda t: t["ndcg@10"])
    params = _params(config, label_gain, best["num_leaves"], best["min_data_in_leaf"])
    booster = _fit(qs, params, order, None, config, best["rounds"])
    return booster, {
        "queries_fit": len(order),
        "queries_held_out": 0,
        "held_out_ndcg@10": best["ndcg@10"],
        "cv_folds": folds,
        "cv_trials": trials,
    }


def evaluate_ranker(
    qs: QuerySet, ranker: Ranker | None, gains: str, *, ks: tuple[int, ...] = (10,),
    recall_grade: int = 3, recall_k: int = 100,
) -> dict[str, Any]:  # fmt: skip
    """NDCG@k (and Recall@recall_k) of the ranked candidates, and of the dense and lexical
    channels alone over the same candidates; means with standard errors."""
    table = resolve_gains(gains)
    orders: dict[str, list[np.ndarray]] = {
        "dense": [np.argsort(-s, kind="stable") for s in qs.dense_scores],
        "lexical": [np.argsort(c.lexical_rank, kind="stable") for c in qs.candidates],
    }
    if ranker is not None:
        orders["ranked"] = [
            ranker.order(X, c.rows)[0] for X, c in zip(qs.features, qs.candidates, strict=True)
        ]
    return rankings_metrics(qs, orders, table, ks=ks, recall_grade=recall_grade, recall_k=recall_k)


def rankings_metrics(
    qs: QuerySet, orders: dict[str, list[np.ndarray]], gains: dict[int, float], *,
    ks: tuple[int, ...] = (10,), recall_grade: int = 3, recall_k: int = 100,
) -> dict[str, Any]:  # fmt: skip
    """Metrics of several orderings of each query's candidates (positions into them)."""
    out: dict[str, Any] = {}
    for name, per_query in orders.items():
        values: dict[str, list[float]] = {f"ndcg@{k}": [] for k in ks}
        values[f"recall@{recall_k}"] = []
        for qid, cand, order in zip(qs.query_ids, qs.candidates, per_query, strict=True):
            ranking = [str(qs.item_ids[r]) for r in cand.rows[order]]
            judged = qs.judgments[qid]
            item_gain = {i: gains.get(g, 0.0) for i, g in judged.items()}
            for k in ks:
                v = ndcg_at_k(ranking, item_gain, k)
                if v is not None:
                    values[f"ndcg@{k}"].append(v)
            relevant = {i for i, g in judged.items() if g >= recall_grade}
            v = recall_at_k(ranking, relevant, recall_k)
            if v is not None:
                values[f"recall@{recall_k}"].append(v)
        out[name] = {m: summarize(v).__dict__ for m, v in values.items()}
    return out
