"""Live updates of the lexical index: ``upsert`` and ``delete`` into an in-memory delta.

Statistics stay frozen at build time (N, df, avgdl): a new or replaced document is weighted with
them, and a term the build never saw counts as the rarest possible one (df = 1). Each upsert call
adds one immutable segment; past ``MAX_SEGMENTS`` they are merged into one. Writers hold the
index's write lock, build a new ``_State`` and publish it with one reference assignment (the
concurrency model is described in ``indexer.lexical``). ``LexicalIndex`` gets these methods from
the mixin here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from indexer.lexical.analysis import analyze
from indexer.lexical.bm25 import BM25Params, _idf, _Postings, _postings, _State, _weights

__all__ = ["MAX_SEGMENTS"]

logger = logging.getLogger(__name__)

MAX_SEGMENTS = 8  # delta segments kept before they are merged into one


class _LexicalUpdates:
    """LexicalIndex's write path (the index itself is in ``indexer.lexical``)."""

    # Set by LexicalIndex.__init__; the writer bookkeeping is changed under _write_lock only.
    params: BM25Params
    n_shards: int
    n_docs: int
    avg_doc_len: float
    n_build_terms: int
    _vocab: dict[str, int]
    _idf: np.ndarray
    _state: _State
    _write_lock: threading.Lock
    _main_shard: np.ndarray
    _main_local: np.ndarray
    _delta_loc: dict[int, tuple[int, int]]
    _segment_ids: list[int]
    _next_segment: int

    def upsert(
        self, rows: np.ndarray, texts: Sequence[str], shard_ids: np.ndarray | None = None
    ) -> None:
        """Add documents, or replace the text of rows already indexed; searchable on return.

        New documents are weighted with the build's statistics (N, df, avgdl); a term the build
        never saw gets the idf of df = 1. A replaced row's old text stops matching at once.

        Args:
            rows: (n,) int global rows, unique, >= 0.
            texts: n item texts (``trainer.text.item_text``).
            shard_ids: (n,) int shard of each row; may be None when there is one shard or every
                row is already indexed (it keeps its shard).

        Raises:
            ValueError: bad rows or shard ids, or a new row without a shard when n_shards > 1.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of item texts, not one string")
        rows = np.asarray(rows)
        n = len(texts)
        _check_rows(rows, n, "rows")
        if n == 0:
            return
        analyzed = [analyze(t) for t in texts]  # outside the lock: analysis is the slow part
        with self._write_lock:
            shards = self._upsert_shards(rows, shard_ids)
            vocab = self._vocab
            doc_terms, doc_weights = [], []
            for terms in analyzed:
                ids = np.fromiter(
                    (vocab.setdefault(t, len(vocab)) for t in terms), np.int64, len(terms)
                )
                uniq, tf = np.unique(ids, return_counts=True)
                # Unseen terms get the idf of df = 1 (the rarest) until the next build counts them.
                idf = np.full(len(uniq), _idf(np.float64(1.0), self.n_docs))
                known = uniq < self.n_build_terms
                idf[known] = self._idf[uniq[known]]
                w = _weights(tf.astype(np.float64), len(terms), idf, self.avg_doc_len, self.params)
                doc_terms.append(uniq)
                doc_weights.append(w)
            segment = _postings(doc_terms, doc_weights, rows, shards, len(vocab))
            state = self._kill(self._state, rows)
            seg_id = self._next_segment
            self._next_segment += 1
            self._segment_ids.append(seg_id)
            self._delta_loc.update((int(r), (seg_id, i)) for i, r in enumerate(rows))
            state = replace(state, segments=(*state.segments, segment))
            if len(state.segments) > MAX_SEGMENTS:
                state = self._merge_segments(state)
            self._state = state

    def delete(self, rows: np.ndarray) -> int:
        """Remove rows from search at once; rows not indexed are ignored.

        Returns:
            How many indexed rows were removed.
        """
        rows = np.asarray(rows)
        _check_rows(rows, len(rows), "rows", unique=False)
        with self._write_lock:
            found = [int(r) for r in dict.fromkeys(rows.tolist()) if self._is_live(int(r))]
            if found:
                self._state = self._kill(self._state, np.asarray(found, dtype=np.int64))
        return len(found)

    @property
    def n_delta(self) -> int:
        """Live documents in the delta (upserted since the build and not deleted)."""
        return len(self._delta_loc)

    def _in_main(self, row: int) -> bool:
        return row < len(self._main_shard) and self._main_shard[row] >= 0

    def _is_live(self, row: int) -> bool:
        return row in self._delta_loc or self._in_main(row)

    def _upsert_shards(self, rows: np.ndarray, shard_ids: np.ndarray | None) -> np.ndarray:
        if shard_ids is not None:
            shard_ids = np.asarray(shard_ids)
            if shard_ids.shape != rows.shape or not np.issubdtype(shard_ids.dtype, np.integer):
                raise ValueError(f"shard_ids must be {rows.shape} integers, got {shard_ids.shape}")
            if shard_ids.min() < 0 or shard_ids.max() >= self.n_shards:
                raise ValueError(f"shard_ids must be in [0, {self.n_shards})")
            return shard_ids.astype(np.int32)
        if self.n_shards == 1:
            return np.zeros(len(rows), dtype=np.int32)
        out = np.empty(len(rows), dtype=np.int32)
        state = self._state
        for i, r in enumerate(rows.tolist()):
            if r in self._delta_loc:
                seg_id, local = self._delta_loc[r]
                out[i] = state.segments[self._segment_ids.index(seg_id)].shards[local]
            elif self._in_main(r):
                out[i] = self._main_shard[r]
            else:
                raise ValueError(
                    f"row {r} is new and there are {self.n_shards} shards: pass shard_ids "
                    "(indexer.shards.shard_of(item_ids, n_shards))"
                )
        return out

    def _kill(self, state: _State, rows: np.ndarray) -> _State:
        """A state where ``rows`` (main or delta) are dead; updates the writer bookkeeping."""
        main_dead: dict[int, list[int]] = {}
        seg_dead: dict[int, list[int]] = {}
        for r in rows.tolist():
            if self._in_main(r):
                main_dead.setdefault(int(self._main_shard[r]), []).append(int(self._main_local[r]))
                self._main_shard[r] = -1
            if r in self._delta_loc:
                seg_id, local = self._delta_loc.pop(r)
                seg_dead.setdefault(seg_id, []).append(local)

        def with_dead(p: _Postings, locals_: list[int]) -> _Postings:
            dead = np.union1d(p.dead, np.asarray(locals_, dtype=np.int64))
            return replace(p, dead=dead)

        shards = tuple(
            with_dead(p, main_dead[s]) if p is not None and s in main_dead else p
            for s, p in enumerate(state.shards)
        )
        segments = tuple(
            with_dead(seg, seg_dead[sid]) if sid in seg_dead else seg
            for sid, seg in zip(self._segment_ids, state.segments, strict=True)
        )
        return _State(shards=shards, segments=segments)

    def _merge_segments(self, state: _State) -> _State:
        """One segment holding every live delta document (dead ones dropped)."""
        doc_terms, doc_weights, rows, shards = [], [], [], []
        for seg in state.segments:
            live = np.ones(seg.n_docs, dtype=bool)
            live[seg.dead] = False
            terms = np.repeat(np.arange(len(seg.indptr) - 1), np.diff(seg.indptr))
            order = np.lexsort((terms, seg.docs))
            docs_sorted, terms_sorted = seg.docs[order], terms[order]
            w_sorted = seg.weights[order]
            bounds = np.searchsorted(docs_sorted, np.arange(seg.n_docs + 1))
            for i in np.flatnonzero(live):
                a, z = bounds[i], bounds[i + 1]
                doc_terms.append(terms_sorted[a:z])
                doc_weights.append(w_sorted[a:z])
                rows.append(seg.rows[i])
                shards.append(seg.shards[i])
        merged = _postings(
            doc_terms,
            doc_weights,
            np.asarray(rows, dtype=np.int64),
            np.asarray(shards, dtype=np.int32),
            len(self._vocab),
        )
        seg_id = self._next_segment
        self._next_segment += 1
        self._segment_ids = [seg_id]
        self._delta_loc = {int(r): (seg_id, i) for i, r in enumerate(merged.rows)}
        logger.debug("merged %d delta segments: %d docs", len(state.segments), merged.n_docs)
        return replace(state, segments=(merged,))


def _check_rows(rows: np.ndarray, n: int, name: str, *, unique: bool = True) -> None:
    if rows.shape != (n,) or (n and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"{name} must be ({n},) integers, got shape {rows.shape} {rows.dtype}")
    if n and rows.min() < 0:
        raise ValueError(f"{name} must be >= 0 (global rows), got {rows.min()}")
    if unique and len(np.unique(rows)) != n:
        raise ValueError(f"{name} must be unique")
