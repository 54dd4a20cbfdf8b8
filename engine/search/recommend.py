"""Recommendations: similar items by stored vector, items for a user, the popularity fallback."""

from __future__ import annotations

import time

import numpy as np

from engine.search.pipeline import SearchPipeline
from engine.search.snapshot import Snapshot, is_known, with_excluded
from engine.search.types import SearchResult
from indexer.rerank.filters import matching_rows
from indexer.rerank.specs import FilterSpec
from trainer.encoder.user import pool_history


class Recommendations(SearchPipeline):
    """SearchService's query-less methods, on the same retrieval and paging as search."""

    def similar_items(
        self,
        item_id: str,
        k: int,
        offset: int = 0,
        expected_version: int | None = None,
        spec: FilterSpec | None = None,
    ) -> SearchResult:
        """Neighbours of a catalog item by its stored vector; the item itself is left out."""
        snap = self._snapshot
        self._check_version(snap, expected_version)
        t0 = time.perf_counter()
        row = self._rows_of(snap.index, (item_id,), "item_id")
        xq = snap.vectors.gather(row)[0].astype(np.float32, copy=True)  # (dim,)
        t1 = time.perf_counter()
        D, I, sim, search_ms = self._retrieve(
            snap, xq, offset + k + 1, spec=with_excluded(spec, [int(row[0])])
        )
        keep = I >= 0
        result = self._page(snap, D[keep], I[keep], sim[keep], offset, k, False)
        rerank_ms = (time.perf_counter() - t1) * 1e3 - search_ms
        timings = {"encode_ms": (t1 - t0) * 1e3, "search_ms": search_ms, "rerank_ms": rerank_ms}
        return SearchResult(result.hits, result.has_more, result.index, timings)

    def recommend(
        self,
        k: int,
        *,
        user_id: str = "",
        history: tuple[str, ...] = (),
        include_seen: bool = False,
        offset: int = 0,
        expected_version: int | None = None,
        spec: FilterSpec | None = None,
    ) -> SearchResult:
        """Items for a user: closest to their user vector, the model's user tower over their
        history (the user's recent items, then `history`, most recent last; the recency-weighted
        mean of `trainer.user_tower` with the model's `history_decay`). With no history at all
        (an unknown user) the most popular items come back instead, flagged as the popularity
        fallback."""
        snap = self._snapshot
        self._check_version(snap, expected_version)
        t0 = time.perf_counter()
        known = tuple(i for i in self.users.recent(user_id) if is_known(snap, i)) if user_id else ()
        explicit = tuple(self._rows_of(snap.index, history, "history_item_ids"))
        rows = np.asarray(
            [snap.index.row_of(i) for i in known] + [int(r) for r in explicit], dtype=np.int64
        )
        if not include_seen and len(rows):
            spec = with_excluded(spec, [int(r) for r in rows])
        if not len(rows):
            return self._popular(snap, k, offset, spec, t0)
        xq = pool_history(snap.vectors.gather(rows), snap.encoder.history_decay)  # (dim,)
        t1 = time.perf_counter()
        D, I, sim, search_ms = self._retrieve(snap, xq, offset + k + 1, spec=spec)
        keep = I >= 0
        result = self._page(snap, D[keep], I[keep], sim[keep], offset, k, True)
        rerank_ms = (time.perf_counter() - t1) * 1e3 - search_ms
        timings = {"encode_ms": (t1 - t0) * 1e3, "search_ms": search_ms, "rerank_ms": rerank_ms}
        return SearchResult(result.hits, result.has_more, result.index, timings, True)

    def _popular(
        self, snap: Snapshot, k: int, offset: int, spec: FilterSpec | None, t0: float
    ) -> SearchResult:
        """The popularity fallback: items by their popularity signal (log rating count,
        scaled to [0, 1]; it is also the hits' score), filter applied, ties by row."""
        if snap.dead_rows:
            spec = with_excluded(spec, list(snap.dead_rows))
        compiled = snap.compiled(spec) if spec is not None else None
        rows = (
            matching_rows(compiled, snap.columns)
            if compiled is not None and compiled.has_conditions
            else np.arange(snap.columns.n_items, dtype=np.int64)
        )
        popularity = snap.columns.signals[rows, 0]  # (m,) float32 in [0, 1]
        order = np.lexsort((rows, -popularity))[: offset + k + 1]
        D = popularity[order].astype(np.float32)
        I = rows[order]
        result = self._page(snap, D, I, np.full_like(D, np.nan), offset, k, False)
        timings = {
            "encode_ms": 0.0,
            "search_ms": 0.0,
            "rerank_ms": (time.perf_counter() - t0) * 1e3,
        }
        return SearchResult(
            result.hits, result.has_more, result.index, timings, False, popularity_fallback=True
        )
