"""Model selection during training: dev metrics, the best step, early stopping, and the
settings fitted on the eval data (the user tower's decay, the trigram sketch's weight)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from trainer.data.catalog import Catalog
from trainer.encoder.trigram import DEFAULT_WEIGHT, WEIGHT_GRID, LexicalSketch
from trainer.encoder.user import DECAY_GRID
from trainer.evaluation.metrics import evaluate_rankings, weighted_dcg_at_k
from trainer.evaluation.recommend import evaluate_recommendation
from trainer.evaluation.search import exact_search
from trainer.training.batches import item_texts
from trainer.training.checkpoints import CheckpointDir
from trainer.training.config import (
    EARLY_STOP_METRIC,
    RECOMMEND_EVAL_KS,
    SEARCH_EVAL_KS,
    TrainConfig,
)
from trainer.training.distributed import DistContext
from trainer.training.embedder import Embedder
from trainer.training.model import TwoTowerModel
from trainer.training.prepare import PreparedDataset

logger = logging.getLogger(__name__)

LEXICAL_FIT_K = 10  # weighted_dcg_at_k's cutoff in the sketch's weight fit, as EARLY_STOP_METRIC


class Selection:
    """Evaluates the model on the dev splits, keeps the best weights (``checkpoints.save_best``)
    and decides early stopping; at the end, fits the trigram sketch.

    Attributes:
        best_metric, best_step: the best weighted NDCG@10 so far and its step (None: none yet).
        bad_evals: evaluations since the last improvement.
        stopped_early: ``config.patience`` evaluations went by without improvement.
        history: the record of every evaluation (rank 0).
    """

    def __init__(
        self,
        config: TrainConfig,
        datasets: list[PreparedDataset],
        ctx: DistContext,
        model: TwoTowerModel,
        embedder: Embedder,
        checkpoints: CheckpointDir,
    ) -> None:
        self.config = config
        self.datasets = datasets
        self.ctx = ctx
        self.model = model
        self.embedder = embedder
        self.checkpoints = checkpoints
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.history: list[dict[str, Any]] = []

    def state(self) -> dict[str, Any]:
        """Its part of a checkpoint: the best step and metric, the early-stopping count, history."""
        return {
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "stopped_early": self.stopped_early,
            "history": self.history,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's ``state()``."""
        self.best_metric, self.best_step = state["best_metric"], state["best_step"]
        self.bad_evals, self.stopped_early = int(state["bad_evals"]), bool(state["stopped_early"])
        self.history = list(state["history"])

    def _metrics(self, step: int) -> dict[str, Any] | None:
        """Dev metrics of every dataset that has an eval split (collective; rank 0 scores).

        Recommendation datasets are scored with each decay of ``_decays()``; the one with the
        best weighted NDCG@10 over them is kept (``history_decay`` in the record).
        """
        results: dict[str, Any] = {}
        weighted, weights = 0.0, 0.0
        t0 = time.perf_counter()
        by_decay: dict[float, dict[str, dict[str, float]]] = {}  # decay → dataset → metrics
        recommend_weight: dict[str, float] = {}
        for prepared in self.datasets:
            if prepared.eval_source == "none":
                continue
            data = prepared.data
            rows = prepared.eval_rows
            label = eval_label(prepared, self.config.holdout_fraction)
            n_queries = (
                len(prepared.eval_query_tokens)
                if prepared.task == "search"
                else len(prepared.eval_dev.histories if prepared.eval_dev else {})
            )
            n_items = len(data.catalog) if rows is None else len(rows)
            encode = n_items + (n_queries if prepared.task == "search" else 0)
            if self.ctx.is_main:
                logger.info(
                    "evaluating step %d on %s: %s, %s; %d %s; encoding %d texts, %s",
                    step,
                    prepared.spec.name,
                    label["split"],
                    label["candidates"],
                    n_queries,
                    "queries" if prepared.task == "search" else "users",
                    encode,
                    self.embedder.eta(encode),
                )
            xb = self.embedder.catalog_vectors(data, step, rows)
            ids = np.asarray(data.catalog.item_ids, dtype=object)
            if rows is not None:
                ids = ids[rows]
            if prepared.task == "search":
                xq = self.embedder.embed(self.model.query_tower, prepared.eval_query_tokens)
                if not self.ctx.is_main:
                    continue
                _, I = exact_search(xq, xb, max(SEARCH_EVAL_KS))
                labels = prepared.eval_labels
                rankings = {q: ids[I[i]].tolist() for i, q in enumerate(labels.queries)}
                report = evaluate_rankings(
                    rankings, labels, prepared.gains, prepared.recall_grade, SEARCH_EVAL_KS
                )
                metrics = {name: m.mean for name, m in report.metrics.items()}
                results[prepared.spec.name] = {"source": prepared.eval_source, **label, **metrics}
            else:
                if not self.ctx.is_main:
                    continue
                catalog = data.catalog
                if rows is not None:
                    catalog = Catalog(table=catalog.table.take(rows), path=catalog.path)
                for decay in self._decays():
                    report = evaluate_recommendation(
                        xb,
                        catalog,
                        prepared.eval_train,
                        prepared.eval_dev,
                        ks=RECOMMEND_EVAL_KS,
                        history_length=self.config.history_length,
                        history_decay=decay,
                    )
                    by_decay.setdefault(decay, {})[prepared.spec.name] = {
                        name: m.mean for name, m in report.metrics.items()
                    }
                recommend_weight[prepared.spec.name] = prepared.spec.weight
                results[prepared.spec.name] = {"source": prepared.eval_source, **label}
        decay, fit = self._pick_decay(by_decay, recommend_weight)
        for name in recommend_weight:
            results[name].update(by_decay[decay][name])
        for prepared in self.datasets:
            value = results.get(prepared.spec.name, {}).get(EARLY_STOP_METRIC, math.nan)
            if math.isfinite(value):
                weighted += prepared.spec.weight * value
                weights += prepared.spec.weight
        if not self.ctx.is_main or not results:
            return None
        score = weighted / weights if weights else math.nan
        record: dict[str, Any] = {
            "step": step,
            "metric": score,
            "evaluated_on": "; ".join(
                f"{name}: {r['split']}, {r['candidates']}" for name, r in results.items()
            ),
            "datasets": results,
        }
        if recommend_weight:
            record["history_decay"] = decay
            if len(fit) > 1:
                record["history_decay_fit"] = fit
        record["seconds"] = round(time.perf_counter() - t0, 2)
        return record

    def _decays(self) -> tuple[float, ...]:
        """The user-tower decays to score: the configured one, plus the grid when fitting."""
        if not self.config.fit_history_decay:
            return (self.config.history_decay,)
        return tuple(sorted({*DECAY_GRID, self.config.history_decay}, reverse=True))

    def _pick_decay(
        self, by_decay: dict[float, dict[str, dict[str, float]]], weight: dict[str, float]
    ) -> tuple[float, dict[str, float]]:
        """(the decay with the best weighted NDCG@10 over the recommendation datasets, each
        decay's score); ties go to the larger decay, the plainer mean."""
        fit: dict[str, float] = {}
        best, best_score = self.config.history_decay, -math.inf
        total = sum(weight.values())
        for decay in sorted(by_decay, reverse=True):
            score = sum(
                weight[name] * by_decay[decay][name].get(EARLY_STOP_METRIC, math.nan)
                for name in weight
            ) / (total or 1.0)
            fit[f"{decay:g}"] = score
            if math.isfinite(score) and score > best_score:
                best, best_score = decay, score
        return best, fit

    def fit_lexical(self) -> tuple[LexicalSketch, dict[str, float]]:
        """The trigram sketch to export, on rank 0 once the best weights are loaded: IDF over
        every dataset's item texts; the weight from the config, or the one of ``WEIGHT_GRID``
        with the best weighted NDCG@10 on the search eval queries (ties: the smaller weight).
        Eval labels that carry per-judgment ``weight``s (labels learned from logs: action
        weight x clipped inverse propensity) are scored by ``weighted_dcg_at_k`` instead, over all
        their judged items with those weights times the gain: the IPS estimate of DCG@10, in
        which a click from a position few shoppers examined counts for more. Per-query NDCG
        would cancel the weights of a query's lone click, and the held-out clicks were found in
        the serving model's own top 10, so unweighted they favour its ranking. The weights are
        training's: a round without propensity weighting fits on its raw engagement. With
        ``lexical_rerank`` each query ranks only its judged items (a logged result list).

        Returns:
            (the sketch, NDCG@10, or for weighted labels the weighted DCG@10, per weight tried;
            "0" is the BERT towers alone).
        """
        cfg = self.config
        texts_of: dict[str, list[str]] = {}  # catalog path → item texts, each catalog once
        for prepared in self.datasets:
            catalog = prepared.data.catalog
            if catalog.path not in texts_of:
                texts_of[catalog.path] = item_texts(catalog)
        t0 = time.perf_counter()
        sketch = LexicalSketch.fit(
            [t for texts in texts_of.values() for t in texts], dim=cfg.lexical_dim
        )
        if cfg.lexical_weight is not None:
            return sketch.with_weight(cfg.lexical_weight), {}
        parts = []  # per search eval set: (weight, labels, gains, grade, ids, xq, lq, xb, lb)
        for prepared in self.datasets:
            if prepared.task != "search" or prepared.eval_labels is None:
                continue
            data = prepared.data
            rows = prepared.eval_rows
            if rows is None:
                rows = np.arange(len(data.catalog), dtype=np.int64)
            xb = self.embedder.embed(
                self.model.item_tower, [data.item_tokens[r] for r in rows.tolist()],
                collective=False,
            )  # fmt: skip
            xq = self.embedder.embed(
                self.model.query_tower, prepared.eval_query_tokens, collective=False
            )
            all_texts = texts_of[data.catalog.path]
            parts.append((
                prepared.spec.weight, prepared.eval_labels, prepared.gains,
                prepared.recall_grade, np.asarray(data.catalog.item_ids, dtype=object)[rows],
                xq, sketch.sketch(prepared.eval_query_texts),  # towers' rows are unit already
                xb, sketch.sketch([all_texts[r] for r in rows.tolist()]),
            ))  # fmt: skip
        fit: dict[str, float] = {}
        best, best_score = None, -math.inf
        judged = None
        if cfg.lexical_rerank:
            judged = [_judged_scores(p[1], p[4], p[5], p[6], p[7], p[8]) for p in parts]
        for weight in (0.0, *WEIGHT_GRID):
            total, score = 0.0, 0.0
            root = np.float32(math.sqrt(weight))
            for n, (w, labels, gains, grade, ids, xq, lq, xb, lb) in enumerate(parts):
                if judged is not None:  # each query's judged items reordered
                    rankings = {
                        q: items[np.argsort(-(dense + weight * lexical), kind="stable")].tolist()
                        for q, (items, dense, lexical) in judged[n].items()
                    }
                else:  # [x, sqrt(w) l] . [y, sqrt(w) m] = cos_bert + w * cos_trigrams
                    _, I = exact_search(
                        np.hstack([xq, root * lq]), np.hstack([xb, root * lb]),
                        max(SEARCH_EVAL_KS),
                    )  # fmt: skip
                    rankings = {q: ids[I[i]].tolist() for i, q in enumerate(labels.queries)}
                if labels.weights:
                    score += w * weighted_dcg_at_k(rankings, labels, gains, LEXICAL_FIT_K)
                else:
                    report = evaluate_rankings(rankings, labels, gains, grade, SEARCH_EVAL_KS)
                    score += w * report.metrics[EARLY_STOP_METRIC].mean
                total += w
            fit[f"{weight:g}"] = score / total
            if weight > 0 and score / total > best_score:
                best, best_score = weight, score / total
        if best is None:  # every score NaN: no eval query has a judged item with gain > 0
            best = DEFAULT_WEIGHT
            logger.warning(
                "lexical sketch: no eval query could score a weight (%s); exporting the default "
                "weight %g (set lexical_weight to choose one)", json.dumps(fit), best,
            )  # fmt: skip
        logger.info(
            "lexical sketch: %d dims, weight %g fitted on the eval queries in %.1f s: %s",
            sketch.dim, best, time.perf_counter() - t0, json.dumps(fit),
        )  # fmt: skip
        return sketch.with_weight(best), fit

    def best_label(self) -> str | None:
        """What the best evaluation ranked (``evaluated_on`` of its record), or None."""
        for record in self.history:
            if record["step"] == self.best_step:
                return record.get("evaluated_on")
        return None

    def evaluate(self, step: int) -> dict[str, Any] | None:
        """Evaluate the weights of ``step`` (collective), keep them if they are the best so far,
        and decide early stopping (the same decision on every rank).

        Returns:
            The evaluation's record on rank 0 (``"metric"``: weighted NDCG@10); None on other
            ranks or when no dataset has an eval split.
        """
        record = self._metrics(step)
        improved = False
        if self.ctx.is_main and record is not None:
            self.history.append(record)
            score = record["metric"]
            improved = math.isfinite(score) and (
                self.best_metric is None or score > self.best_metric
            )
            if improved:
                self.best_metric, self.best_step, self.bad_evals = score, step, 0
                meta = {"step": step, "metric": score}
                if "history_decay" in record:
                    meta["history_decay"] = record["history_decay"]
                self.checkpoints.save_best(
                    {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                    meta,
                )
            else:
                self.bad_evals += 1
            logger.info(
                "step %d: %s %.4f%s (best %.4f at step %s) on %s: %s",
                step,
                EARLY_STOP_METRIC,
                score,
                " *" if improved else "",
                self.best_metric if self.best_metric is not None else math.nan,
                self.best_step,
                record["evaluated_on"],
                json.dumps(record["datasets"]),
            )
        stop = self.ctx.is_main and self.bad_evals >= self.config.patience
        self.stopped_early = bool(self.ctx.broadcast(stop))
        if self.stopped_early and self.ctx.is_main:
            logger.info(
                "early stopping at step %d: no improvement in %d evaluations",
                step,
                self.bad_evals,
            )
        return record


def _judged_scores(
    labels, ids, xq, lq, xb, lb
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per eval query: (its judged item ids, their BERT cosines, their trigram cosines), the
    candidates of a fit that reranks them (``TrainConfig.lexical_rerank``)."""
    column = {item_id: c for c, item_id in enumerate(ids.tolist())}
    out = {}
    for i, q in enumerate(labels.queries):
        items = [item for item in labels.judgments[q] if item in column]
        cols = np.asarray([column[item] for item in items], dtype=np.int64)
        out[q] = (np.asarray(items, dtype=object), xb[cols] @ xq[i], lb[cols] @ lq[i])
    return out


def eval_label(prepared: PreparedDataset, holdout_fraction: float) -> dict[str, str]:
    """What an evaluation of ``prepared`` measures, for logs and records: ``split`` (its dev
    file, or the share of the train split held out) and ``candidates`` (the whole catalog, or
    the judged items plus a random sample: a smaller, easier ranking, so higher numbers)."""
    unit = "queries" if prepared.task == "search" else "users"
    if prepared.eval_source == "dev":
        split = f"dev ({prepared.spec.dev})"
    else:
        split = f"train hold-out ({holdout_fraction:.0%} of the train {unit}, not trained on)"
    n_catalog = len(prepared.data.catalog)
    rows = prepared.eval_rows
    if rows is None or len(rows) >= n_catalog:
        candidates = f"full catalog ({n_catalog:,} items)"
    else:
        candidates = (
            f"{len(rows):,}-item sample of the {n_catalog:,}-item catalog (judged + random; "
            "optimistic)"
        )
    return {"split": split, "candidates": candidates}
