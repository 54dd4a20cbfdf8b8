"""BM25 lexical index: catalog-global statistics, per-shard weights, a live delta of updates.

Scoring is BM25 in its Lucene form (the ``method="lucene"`` of bm25s; Kamphuis et al., ECIR
2020)::

    score(q, d) = sum over query terms t of  idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with ``tf`` the count of t in d, ``|d|`` the document's length in terms, ``N`` the number of
documents and ``avgdl`` their mean length. A term repeated in the query counts once per
occurrence, as in bm25s and in a Lucene boolean query.

Global statistics. ``N``, ``df`` and ``avgdl`` come from the whole catalog, while the postings are
split by the dense side's shard assignment (``indexer.storage.sharding.shard_of``; document ids are
global rows). Every shard's weights use the same idf and avgdl, so scores from different shards (or
shard servers) compare and a merged top-k equals the top-k of one unsharded index. bm25s cannot do
that (it computes idf per index), which is why this module precomputes its own weights: per shard a
CSC term-document matrix (``indptr`` over the shared vocabulary, ``docs`` local positions,
``weights`` float32 BM25 weights), scored at query time by summing the query terms' columns.
Equality with bm25s on one index is checked in the tests.

Analysis (``analyze``, ``indexer.lexical.analysis``): NFKC, casefold, diacritics removed, runs
of letters or digits, English stopwords dropped, Snowball English stems.

Live updates. ``upsert`` and ``delete`` change a small in-memory delta, searchable when they
return. Statistics stay frozen at build time (N, df, avgdl): a new or replaced document is
weighted with them, and a term the build never saw counts as the rarest possible one (df = 1).
Deleted and replaced documents keep counting in the statistics until the next build, as in
Lucene before a merge. Each upsert call adds one immutable segment; past ``MAX_SEGMENTS`` they are
merged into one, so a write costs O(its documents) amortised.

Concurrency: copy-on-write snapshots. Readers take ``self._state`` (an immutable
``LexicalState``, public as ``state`` so a serving snapshot can pin one) once per search and need
no lock; writers are serialised by one lock, build a new state and publish it with one reference
assignment, so a search sees an update completely or not at all.

Modules. ``LexicalIndex`` (build, search, upsert, delete, save, load) is here; the analyzer is
in ``indexer.lexical.analysis``, the BM25 weights, postings and top-k in
``indexer.lexical.bm25``, the file format in ``indexer.lexical.files``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer.lexical.analysis import analyze
from indexer.lexical.bm25 import (
    BM25Params,
    Postings,
    add_row_weights,
    build_shards,
    document_postings,
    finish,
    idf,
    live_postings,
    top_k,
    weights,
)
from indexer.lexical.files import LexicalBuild, read_lexical, write_lexical

__all__ = ["MAX_SEGMENTS", "LexicalIndex", "LexicalState"]

logger = logging.getLogger(__name__)

MAX_SEGMENTS = 8  # delta segments kept before they are merged into one


@dataclass(frozen=True)
class LexicalState:
    """What a search reads: immutable, replaced whole by writers. A serving snapshot pins one
    (``LexicalIndex.state``) beside the vectors and columns of the same moment, so BM25 never
    returns a row that snapshot does not have."""

    shards: tuple[Postings | None, ...]  # None: a shard not loaded in this process
    segments: tuple[Postings, ...]  # the live delta, one segment per upsert (until merged)


class LexicalIndex:
    """A BM25 index over item texts, split by shard, with global statistics and a live delta.

    Make one with ``build`` or ``load``. ``search`` is safe from any number of threads while one
    thread at a time calls ``upsert`` / ``delete`` (see the module docstring).
    """

    def __init__(self, built: LexicalBuild) -> None:
        self.params = built.params
        self.n_shards = len(built.shards)
        self.n_docs = built.n_docs  # N at build time (frozen, see the module docstring)
        self.avg_doc_len = built.avg_doc_len
        self.n_build_terms = len(built.df)
        self._built = built  # what ``save`` writes
        self._vocab = built.vocab  # term -> id; writers append ids for new terms (atomic dict ops)
        self._idf = idf(built.df.astype(np.float64), self.n_docs)  # (n_build_terms,) float64
        self._state = LexicalState(shards=built.shards, segments=())
        self._write_lock = threading.Lock()
        # Writer-only bookkeeping, read and changed under _write_lock only. Build rows by global
        # row (arrays: a catalog has millions); delta rows in a dict (the delta is small).
        shards = built.shards
        n_rows = max(
            (int(p.rows.max()) + 1 for p in shards if p is not None and p.n_docs), default=0
        )
        self._main_shard = np.full(n_rows, -1, dtype=np.int32)  # -1: not in the build, or dead
        self._main_local = np.zeros(n_rows, dtype=np.int64)
        for s, p in enumerate(shards):
            if p is not None:
                self._main_shard[p.rows] = s
                self._main_local[p.rows] = np.arange(p.n_docs)
        self._delta_loc: dict[int, tuple[int, int]] = {}  # row -> (segment id, local)
        self._segment_ids: list[int] = []  # segment id of each entry of _state.segments
        self._next_segment = 0

    def __repr__(self) -> str:
        return (
            f"LexicalIndex(n_docs={self.n_docs}, n_terms={len(self._vocab)}, "
            f"shards={self.n_shards}, loaded={list(self.loaded_shards)}, "
            f"delta_docs={len(self._delta_loc)}, k1={self.params.k1}, b={self.params.b})"
        )

    # ------------------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        rows: np.ndarray,
        shard_ids: np.ndarray,
        n_shards: int,
        *,
        params: BM25Params | None = None,
        show_progress: bool = False,
    ) -> LexicalIndex:
        """Index ``texts`` (use ``trainer.text.item_text``, the dense side's text).

        Args:
            texts: n item texts.
            rows: (n,) int global rows of the texts (unique, >= 0): search returns these.
            shard_ids: (n,) int shard of each text (``indexer.storage.sharding.shard_of``), in
                [0, n_shards).
            n_shards: number of shards, >= 1.
            params: BM25 parameters; None = ``BM25Params()``.
            show_progress: a tqdm bar over the analysis (the slow part: ~20 µs per title).

        Returns:
            The index, every shard loaded, no delta.

        Raises:
            ValueError: mismatched lengths, duplicate or negative rows, shards out of range.
        """
        params = params or BM25Params()
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of item texts, not one string")
        n = len(texts)
        rows = np.asarray(rows)
        shard_ids = np.asarray(shard_ids)
        if isinstance(n_shards, bool) or not isinstance(n_shards, int | np.integer) or n_shards < 1:
            raise ValueError(f"n_shards must be an integer >= 1, got {n_shards!r}")
        _check_rows(rows, n, "rows")
        if shard_ids.shape != (n,) or (n and not np.issubdtype(shard_ids.dtype, np.integer)):
            raise ValueError(f"shard_ids must be ({n},) integers, got {shard_ids.shape}")
        if n and (shard_ids.min() < 0 or shard_ids.max() >= n_shards):
            raise ValueError(f"shard_ids must be in [0, {n_shards}), got {shard_ids.min()}..")

        vocab: dict[str, int] = {}
        doc_terms: list[np.ndarray] = []
        for text in tqdm(texts, desc="lexical index", disable=not show_progress, unit="doc"):
            terms = analyze(text)
            doc_terms.append(
                np.fromiter((vocab.setdefault(t, len(vocab)) for t in terms), np.int64, len(terms))
            )
        n_shards = int(n_shards)
        df, avg_doc_len, shards = build_shards(
            doc_terms, rows, shard_ids, n_shards, len(vocab), params
        )
        index = cls(
            LexicalBuild(
                params=params,
                vocab=vocab,
                df=df,
                n_docs=n,
                avg_doc_len=avg_doc_len,
                shards=tuple(shards),
            )
        )
        logger.info(
            "built lexical index: %d docs, %d terms, %d postings, %d shards, avgdl %.1f",
            n,
            len(vocab),
            sum(len(p.docs) for p in shards),
            n_shards,
            avg_doc_len,
        )
        return index

    # ------------------------------------------------------------------------------ files

    def save(self, directory: str | Path) -> list[str]:
        """Write the index into ``directory`` (an index version dir being built).

        Only a freshly built or loaded index is saved: live changes belong to the update log,
        which replays them on top of the saved index.

        Returns:
            The names written, relative to ``directory`` (``lexical_file_names(n_shards)``).

        Raises:
            ValueError: the index has live changes, or does not hold every shard.
        """
        state = self._state
        if state.segments or any(p is not None and len(p.dead) for p in state.shards):
            raise ValueError(
                "this lexical index has live updates; save the built index (build it again) "
                "and let the update log replay the changes"
            )
        if any(p is None for p in state.shards):
            raise ValueError("save needs every shard loaded (this index was loaded with shards=)")
        return write_lexical(directory, self._built)  # no live change: still what it holds

    @classmethod
    def load(cls, directory: str | Path, *, shards: Sequence[int] | None = None) -> LexicalIndex:
        """Read an index ``save`` wrote.

        Args:
            directory: the dir holding ``lexical_file_names(n_shards)``.
            shards: load only these shards' postings (a shard server); None = all.

        Raises:
            IndexFormatError: a missing or corrupt file, another format version or analyzer.
        """
        return cls(read_lexical(directory, shards=shards))

    # ------------------------------------------------------------------------------ search

    @property
    def loaded_shards(self) -> tuple[int, ...]:
        """The shards whose postings this process holds (all unless loaded with ``shards=``)."""
        return tuple(s for s, p in enumerate(self._state.shards) if p is not None)

    @property
    def n_terms(self) -> int:
        """Vocabulary size: the build's terms plus those new terms upserts brought."""
        return len(self._vocab)

    def term_ids(self, query: str) -> np.ndarray:
        """(t,) int64 ids of the query's known terms (analysed once; unknown terms dropped)."""
        vocab = self._vocab
        ids = [vocab.get(t, -1) for t in analyze(query)]
        return np.asarray([i for i in ids if i >= 0], dtype=np.int64)

    def term_id(self, term: str) -> int:
        """The id of one already analysed term (``analyze``'s output), -1 when unknown."""
        return self._vocab.get(term, -1)

    @property
    def state(self) -> LexicalState:
        """The current state, fixed: later upserts and deletes publish new ones (search it with
        ``search(..., state=)``)."""
        return self._state

    def search(
        self,
        query: str | np.ndarray,
        k: int,
        *,
        shards: Sequence[int] | None = None,
        state: LexicalState | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by BM25 for one query, over the build (deleted rows dropped) and the delta.

        Args:
            query: the query text, or its ``term_ids`` when the caller analysed it already.
            k: results, >= 1.
            shards: search only these shards (each must be loaded); None = every loaded shard.
                Delta documents count in the shard their upsert named.
            state: search this state (``state``, taken earlier); None = the current one.

        Returns:
            D: (k,) float32 BM25 scores, descending (ties by lower row); padding -FLT_MAX.
            I: (k,) int64 global rows; padding -1 (documents matching no query term never
            appear).
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        if state is None:
            state = self._state  # one snapshot for the whole search
        if shards is None:
            wanted = [s for s, p in enumerate(state.shards) if p is not None]
        else:
            wanted = sorted({int(s) for s in shards})
            for s in wanted:
                if not 0 <= s < self.n_shards or state.shards[s] is None:
                    raise ValueError(
                        f"shard {s} is not loaded (loaded: {list(self.loaded_shards)})"
                    )
        segment_filter = None if len(wanted) == self.n_shards else np.asarray(wanted)
        term_ids = self.term_ids(query) if isinstance(query, str) else np.asarray(query, np.int64)
        parts = [top_k(state.shards[s], term_ids, k, None) for s in wanted]  # type: ignore[arg-type]
        parts += [top_k(seg, term_ids, k, segment_filter) for seg in state.segments]
        if not parts:
            return finish(np.zeros(0, np.float32), np.zeros(0, np.int64), k)
        return finish(
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), k
        )

    def row_term_weights(
        self,
        query: str | np.ndarray,
        rows: np.ndarray,
        *,
        state: LexicalState | None = None,
    ) -> np.ndarray:
        """BM25 weight of each query term in each of ``rows`` (the learned ranker's features:
        a candidate's BM25 score is its row's sum, query-term coverage its share of > 0).

        Args:
            query: the query text, or its ``term_ids``.
            rows: (m,) int global rows; a row not held (never indexed, deleted, or in a shard
                not loaded) gets zeros.
            state: read this state; None = the current one.

        Returns:
            (m, t) float32, t = the query's known terms (``term_ids``), repeats kept.
        """
        if state is None:
            state = self._state
        term_ids = self.term_ids(query) if isinstance(query, str) else np.asarray(query, np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), len(term_ids)), dtype=np.float32)
        if len(term_ids) == 0:
            return out
        for postings in (*state.shards, *state.segments):
            if postings is not None:
                add_row_weights(postings, term_ids, rows, out)
        return out

    # ------------------------------------------------------------------------------ updates

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
                term_idf = np.full(len(uniq), idf(np.float64(1.0), self.n_docs))
                known = uniq < self.n_build_terms
                term_idf[known] = self._idf[uniq[known]]
                w = weights(
                    tf.astype(np.float64), len(terms), term_idf, self.avg_doc_len, self.params
                )
                doc_terms.append(uniq)
                doc_weights.append(w)
            segment = document_postings(doc_terms, doc_weights, rows, shards, len(vocab))
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

    @property
    def n_segments(self) -> int:
        """Delta segments searched beside the shards (at most ``MAX_SEGMENTS``: merged past it)."""
        return len(self._state.segments)

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
                    "(indexer.storage.sharding.shard_of(item_ids, n_shards))"
                )
        return out

    def _kill(self, state: LexicalState, rows: np.ndarray) -> LexicalState:
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

        shards = tuple(
            p.with_dead(main_dead[s]) if p is not None and s in main_dead else p
            for s, p in enumerate(state.shards)
        )
        segments = tuple(
            seg.with_dead(seg_dead[sid]) if sid in seg_dead else seg
            for sid, seg in zip(self._segment_ids, state.segments, strict=True)
        )
        return LexicalState(shards=shards, segments=segments)

    def _merge_segments(self, state: LexicalState) -> LexicalState:
        """One segment holding every live delta document (dead ones dropped)."""
        merged = live_postings(state.segments, len(self._vocab))
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
