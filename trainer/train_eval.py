"""Evaluation during training: dev metrics, best-step tracking and early stopping."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import numpy as np

from trainer.config import (
    EARLY_STOP_METRIC,
    RECOMMEND_EVAL_KS,
    SEARCH_EVAL_KS,
)
from trainer.data import Catalog
from trainer.evaluate import (
    evaluate_recommendation,
    exact_search,
)
from trainer.metrics import evaluate_rankings

logger = logging.getLogger("trainer.train")  # the name the loop has always logged under


class _EvalMixin:
    """Evaluate on the dev splits, keep the best weights, decide early stopping."""

    # -- evaluation ----------------------------------------------------------------------

    def _evaluate(self) -> dict[str, Any] | None:
        """Dev metrics of every dataset that has an eval split (collective; rank 0 scores)."""
        results: dict[str, Any] = {}
        weighted, weights = 0.0, 0.0
        t0 = time.perf_counter()
        for prepared in self.datasets:
            if prepared.eval_source == "none":
                continue
            data = prepared.data
            rows = prepared.eval_rows
            xb = self._catalog_vectors(data, rows)
            ids = np.asarray(data.catalog.item_ids, dtype=object)
            if rows is not None:
                ids = ids[rows]
            if prepared.task == "search":
                xq = self._embed(self.model.query_tower, prepared.eval_query_tokens)
                if not self.ctx.is_main:
                    continue
                _, I = exact_search(xq, xb, max(SEARCH_EVAL_KS))
                labels = prepared.eval_labels
                rankings = {q: ids[I[i]].tolist() for i, q in enumerate(labels.queries)}
                report = evaluate_rankings(
                    rankings, labels, prepared.gains, prepared.recall_grade, SEARCH_EVAL_KS
                )
            else:
                if not self.ctx.is_main:
                    continue
                catalog = data.catalog
                if rows is not None:
                    catalog = Catalog(table=catalog.table.take(rows), path=catalog.path)
                report = evaluate_recommendation(
                    xb,
                    catalog,
                    prepared.eval_train,
                    prepared.eval_dev,
                    ks=RECOMMEND_EVAL_KS,
                    history_length=self.config.history_length,
                )
            metrics = {name: m.mean for name, m in report.metrics.items()}
            results[prepared.spec.name] = {"source": prepared.eval_source, **metrics}
            value = metrics.get(EARLY_STOP_METRIC, math.nan)
            if math.isfinite(value):
                weighted += prepared.spec.weight * value
                weights += prepared.spec.weight
        if not self.ctx.is_main or not results:
            return None
        score = weighted / weights if weights else math.nan
        return {
            "step": self.step,
            "metric": score,
            "datasets": results,
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def _eval_and_track(self) -> None:
        record = self._evaluate()
        improved = False
        if self.ctx.is_main and record is not None:
            self.history.append(record)
            score = record["metric"]
            improved = math.isfinite(score) and (
                self.best_metric is None or score > self.best_metric
            )
            if improved:
                self.best_metric, self.best_step, self.bad_evals = score, self.step, 0
                self.checkpoints.save_best(
                    {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                    {"step": self.step, "metric": score},
                )
            else:
                self.bad_evals += 1
            logger.info(
                "step %d: dev %s %.4f%s (best %.4f at step %s) %s",
                self.step,
                EARLY_STOP_METRIC,
                score,
                " *" if improved else "",
                self.best_metric if self.best_metric is not None else math.nan,
                self.best_step,
                json.dumps(record["datasets"]),
            )
            self._log_scalars({"eval/metric": score}, self.step)
        stop = self.ctx.is_main and self.bad_evals >= self.config.patience
        self.stopped_early = bool(self.ctx.broadcast(stop))
        if self.stopped_early and self.ctx.is_main:
            logger.info(
                "early stopping at step %d: no improvement in %d evaluations",
                self.step,
                self.bad_evals,
            )
