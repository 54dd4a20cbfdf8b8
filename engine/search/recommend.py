"""Recommendations: similar items by stored vector, items for a user, the popularity fallback.

Functions of one snapshot per request, on the same retrieval and paging as search. Their
responses cannot flag a partial answer, so a shard that does not answer is UNAVAILABLE.
"""

from __future__ import annotations

import time

import numpy as np

from engine.search.events import UserState
from engine.search.pipeline import check_version, history_rows, page, rows_of
from engine.search.retriever import with_excluded
from engine.search.snapshot import Snapshot
from engine.search.types import SearchResult
from indexer.rerank.filters import matching_rows
from indexer.rerank.specs import FilterSpec
from trainer.encoder.user import pool_history


def similar_items(
    snap: Snapshot,
    item_id: str,
    k: int,
    offset: int = 0,
    expected_version: int | None = None,
    spec: FilterSpec | None = None,
) -> SearchResult:
    """Neighbours of a catalog item by its stored vector; the item itself is left out."""
    check_version(snap, expected_version)
    t0 = time.perf_counter()
    row = rows_of(snap.index, (item_id,), "item_id")
    xq = snap.retriever.gather(row)[0].astype(np.float32, copy=True)  # (dim,)
    return _nearest(snap, xq, k, offset, with_excluded(spec, [int(row[0])]), t0, False)


def recommend(
    snap: Snapshot,
    users: UserState,
    k: int,
    *,
    user_id: str = "",
    history: tuple[str, ...] = (),
    include_seen: bool = False,
    offset: int = 0,
    expected_version: int | None = None,
    spec: FilterSpec | None = None,
    popularity: np.ndarray | None = None,
) -> SearchResult:
    """Items for a user: closest to their user vector, the model's user tower over their
    history (the user's recent items, then `history`, most recent last; the recency-weighted
    mean of `trainer.encoder.user.pool_history` with the model's `history_decay`). With no
    history at all (an unknown user) the most popular items come back instead, flagged as the
    popularity fallback (by `popularity`, (n_items,) in [0, 1], when given: the DP
    engagement counts of engine.search.service; else the catalog's popularity signal)."""
    check_version(snap, expected_version)
    t0 = time.perf_counter()
    rows = history_rows(snap, users, user_id, history, "history_item_ids")
    if not include_seen and len(rows):
        spec = with_excluded(spec, [int(r) for r in rows])
    if not len(rows):
        return _popular(snap, k, offset, spec, t0, popularity)
    xq = pool_history(snap.retriever.gather(rows), snap.encoder.history_decay)  # (dim,)
    return _nearest(snap, xq, k, offset, spec, t0, True)


def _nearest(
    snap: Snapshot,
    xq: np.ndarray,
    k: int,
    offset: int,
    spec: FilterSpec | None,
    t0: float,
    personalized: bool,
) -> SearchResult:
    """The page of items nearest the (dim,) vector `xq`, which took since `t0` to make."""
    t1 = time.perf_counter()
    found = snap.retriever.search(xq, offset + k + 1, spec=spec)
    keep = found.I >= 0
    hits, has_more = page(snap, found.D[keep], found.I[keep], found.sim[keep], offset, k)
    rerank_ms = (time.perf_counter() - t1) * 1e3 - found.search_ms
    timings = {"encode_ms": (t1 - t0) * 1e3, "search_ms": found.search_ms, "rerank_ms": rerank_ms}
    return SearchResult(hits, has_more, snap.summary, timings, personalized)


def _popular(
    snap: Snapshot,
    k: int,
    offset: int,
    spec: FilterSpec | None,
    t0: float,
    shopper_popularity: np.ndarray | None = None,
) -> SearchResult:
    """The popularity fallback: items by their popularity signal (log rating count,
    scaled to [0, 1]; it is also the hits' score), filter applied, ties by row."""
    if snap.dead_rows:
        spec = with_excluded(spec, list(snap.dead_rows))
    compiled = snap.filters.compiled(spec) if spec is not None else None
    rows = (
        matching_rows(compiled, snap.columns)
        if compiled is not None and compiled.has_conditions
        else np.arange(snap.columns.n_items, dtype=np.int64)
    )
    popularity = snap.columns.signals[rows, 0]  # (m,) float32 in [0, 1]
    if shopper_popularity is not None:  # rows upserted since it was computed count as 0
        padded = np.zeros(snap.columns.n_items, dtype=np.float32)
        n = min(len(shopper_popularity), len(padded))
        padded[:n] = shopper_popularity[:n]
        popularity = padded[rows]
    order = np.lexsort((rows, -popularity))[: offset + k + 1]
    D = popularity[order].astype(np.float32)
    hits, has_more = page(snap, D, rows[order], np.full_like(D, np.nan), offset, k)
    timings = {
        "encode_ms": 0.0,
        "search_ms": 0.0,
        "rerank_ms": (time.perf_counter() - t0) * 1e3,
    }
    return SearchResult(hits, has_more, snap.summary, timings, popularity_fallback=True)
