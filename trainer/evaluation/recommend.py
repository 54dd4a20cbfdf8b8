"""Next-item recommendation evaluation over the whole catalog (the UniSRec protocol).

The user's history is their ``train`` sequence (at most the 50 most recent items), the target
their ``dev`` item; all items are scored (history items are NOT removed), Recall@k = hit rate,
NDCG@k = 1 / log2(rank + 1), following ``../shared/data/scientific/README.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.catalog import Catalog
from trainer.data.labels import Interactions
from trainer.encoder.user import check_history_decay, history_vectors
from trainer.evaluation.metrics import EvalReport, check_ks, evaluate_rankings
from trainer.evaluation.search import exact_search
from trainer.evaluation.vector_cache import (
    ItemQueryEncoder,
    catalog_vectors,
    encoder_info,
    item_length,
)

logger = logging.getLogger(__name__)

HISTORY_LENGTH = 50  # the UniSRec protocol feeds at most the 50 most recent items
# Recommendation is scored as search with one judged item per user: the target, grade 1, gain 1
# (so ideal DCG = 1 and NDCG@k = 1 / log2(rank + 1)).
_TARGET_GAINS = {0: 0.0, 1: 1.0}


def next_item_targets(
    train: Interactions, dev: Interactions, *, history_length: int = HISTORY_LENGTH
) -> dict[str, tuple[list[str], str]]:
    """user_id → (history: the last ``history_length`` train items in order, dev target item).

    Users of ``dev`` with no train history are left out (they have nothing to rank from).

    Raises:
        ValueError: a dev user with more than one dev item (the leave-one-out split has one).
    """
    if history_length < 1:
        raise ValueError(f"history_length must be >= 1, got {history_length}")
    out: dict[str, tuple[list[str], str]] = {}
    no_history = 0
    for user_id, items in dev.histories.items():
        if len(items) != 1:
            raise ValueError(
                f"{dev.path}: user {user_id!r} has {len(items)} dev items; the next-item "
                "protocol expects exactly one per user (the item after their train sequence)"
            )
        history = train.histories.get(user_id, [])[-history_length:]
        if not history:
            no_history += 1
            continue
        out[user_id] = (history, items[0])
    if no_history:
        logger.warning("%d dev users have no train history and are left out", no_history)
    return out


def mean_history_vectors(xb: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """User vectors: the L2-normalised mean of their history item vectors (decay 1).

    Args:
        xb: (n_items, dim) float32 item vectors.
        histories: one int64 array of item rows per user, oldest first.

    Returns:
        (n_users, dim) float32.
    """
    return history_vectors(xb, histories, 1.0)


def evaluate_recommendation(
    encoder_or_item_vectors: ItemQueryEncoder | np.ndarray,
    catalog: Catalog,
    train_interactions: Interactions,
    dev_interactions: Interactions,
    *,
    ks: Sequence[int] = (10, 50),
    history_length: int = HISTORY_LENGTH,
    user_vectors: Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray] | None = None,
    history_decay: float | None = None,
    max_item_length: int | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> EvalReport:
    """Next-item recommendation over the whole catalog (UniSRec protocol).

    Each dev user's vector comes from their last ``history_length`` train items
    (``user_vectors``; by default the user tower of ``trainer.encoder.user``: the normalised
    recency-weighted mean with ``history_decay``, which defaults to the encoder's
    ``history_decay``, or 1 = the plain mean for raw vectors); all items are ranked by
    inner product, history items included, and the dev target is scored: Recall@k (hit rate)
    and NDCG@k = 1 / log2(rank + 1), plus MRR within the top max(ks).

    Args:
        encoder_or_item_vectors: an Encoder, or precomputed (n_items, dim) float32 item
            vectors in catalog row order.
        catalog: every item is a candidate.
        train_interactions, dev_interactions: histories and one target per dev user.

    Raises:
        ValueError: history or target items missing from the catalog, vectors of the wrong
            shape, a dev user with several targets.
    """
    ks = check_ks(ks)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if user_vectors is None:
        if history_decay is None:
            history_decay = getattr(encoder_or_item_vectors, "history_decay", 1.0)
        decay = check_history_decay(history_decay)
        info["history_decay"] = decay

        def user_vectors(xb: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
            return history_vectors(xb, histories, decay)

    if isinstance(encoder_or_item_vectors, np.ndarray):
        xb = np.asarray(encoder_or_item_vectors, dtype=np.float32)
        if xb.ndim != 2 or xb.shape[0] != len(catalog):
            raise ValueError(
                f"item vectors have shape {xb.shape}, expected ({len(catalog)}, dim): one row "
                "per catalog item, in catalog order"
            )
        cached = False
    else:
        info.update(encoder_info(encoder_or_item_vectors))
        xb, cached = catalog_vectors(
            encoder_or_item_vectors,
            catalog,
            max_item_length=max_item_length,
            batch_size=batch_size,
            cache_dir=cache_dir,
            show_progress=show_progress,
        )
    t1 = time.perf_counter()

    targets = next_item_targets(train_interactions, dev_interactions, history_length=history_length)
    row_of = {item_id: r for r, item_id in enumerate(catalog.item_ids)}
    unknown = sorted(
        {i for history, target in targets.values() for i in (*history, target)} - row_of.keys()
    )
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5])
        raise ValueError(
            f"{len(unknown)} interaction item id(s) are not in the catalog {catalog.path}: "
            f"{shown}; use the catalog the interactions were logged against"
        )
    user_ids = list(targets)
    histories = [np.array([row_of[i] for i in targets[u][0]], dtype=np.int64) for u in user_ids]
    xu = np.asarray(user_vectors(xb, histories), dtype=np.float32)  # (n_users, dim)
    _, I = exact_search(xu, xb, max(ks))
    item_ids = np.asarray(catalog.item_ids, dtype=object)
    rankings = {u: item_ids[I[j]].tolist() for j, u in enumerate(user_ids)}
    t2 = time.perf_counter()
    judgments = {u: {targets[u][1]: 1} for u in user_ids}
    report = evaluate_rankings(rankings, judgments, _TARGET_GAINS, 1, ks, task="recommendation")
    t3 = time.perf_counter()
    info.update(
        {
            "catalog": catalog.path,
            "interactions_train": train_interactions.path,
            "interactions_dev": dev_interactions.path,
            "n_items": len(catalog),
            "n_dev_users": len(dev_interactions.histories),
            "history_length": history_length,
            "max_item_length": item_length(encoder_or_item_vectors, max_item_length),
            "ks": list(ks),
            "item_vectors_cached": cached,
            "seconds": {
                "items": round(t1 - t0, 3),
                "search": round(t2 - t1, 3),
                "metrics": round(t3 - t2, 3),
                "total": round(t3 - t0, 3),
            },
        }
    )
    return replace(report, info=info)
