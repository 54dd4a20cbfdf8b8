"""BM25 lexical index: catalog-global statistics, per-shard weights, a live delta of updates.

Scoring is BM25 in its Lucene form (the ``method="lucene"`` of bm25s; Kamphuis et al., ECIR
2020)::

    score(q, d) = sum over query terms t of  idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with ``tf`` the count of t in d, ``|d|`` the document's length in terms, ``N`` the number of
documents and ``avgdl`` their mean length. A term repeated in the query counts once per
occurrence, as in bm25s and in a Lucene boolean query.

Global statistics. ``N``, ``df`` and ``avgdl`` come from the whole catalog, while the postings are
split by the dense side's shard assignment (``indexer.shards.shard_of``; document ids are global
rows). Every shard's weights use the same idf and avgdl, so scores from different shards (or
shard servers) compare and a merged top-k equals the top-k of one unsharded index. bm25s cannot
do that (it computes idf per index), which is why this module precomputes its own weights: per
shard a CSC term-document matrix (``indptr`` over the shared vocabulary, ``docs`` local
positions, ``weights`` float32 BM25 weights), scored at query time by summing the query terms'
columns. Equality with bm25s on one index is checked in the tests.

Analysis (``analyze``, ``indexer.lexical_analysis``): NFKC, casefold, diacritics removed, runs of
letters or digits, English stopwords dropped, Snowball English stems.

Live updates. ``upsert`` and ``delete`` change a small in-memory delta, searchable when they
return. Statistics stay frozen at build time (N, df, avgdl): a new or replaced document is
weighted with them, and a term the build never saw counts as the rarest possible one (df = 1).
Deleted and replaced documents keep counting in the statistics until the next build, as in
Lucene before a merge. Each upsert call adds one immutable segment; past ``MAX_SEGMENTS`` they are
merged into one, so a write costs O(its documents) amortised.

Concurrency: copy-on-write snapshots. Readers take ``self._state`` (an immutable ``_State``) once
per search and need no lock; writers are serialised by one lock, build a new state and publish it
with one reference assignment, so a search sees an update completely or not at all.

Modules. ``LexicalIndex`` (build, search) is here; the analyzer is in ``indexer.lexical_analysis``,
the BM25 weights, postings and top-k in ``indexer.lexical_postings``, ``save`` / ``load`` and the
file names in ``indexer.lexical_files``, ``upsert`` / ``delete`` in ``indexer.lexical_updates``.
This module is the import point: it re-exports their public names and constants.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from indexer.lexical.analysis import analyze
from indexer.lexical.bm25 import BM25Params, _finish, _idf, _Postings, _State, _top_k, _weights
from indexer.lexical.files import (
    _LexicalFiles,
)
from indexer.lexical.updates import _check_rows, _LexicalUpdates

__all__ = ["LexicalIndex"]

logger = logging.getLogger(__name__)


class LexicalIndex(_LexicalFiles, _LexicalUpdates):
    """A BM25 index over item texts, split by shard, with global statistics and a live delta.

    Make one with ``build`` or ``load``. ``search`` is safe from any number of threads while one
    thread at a time calls ``upsert`` / ``delete`` (see the module docstring).
    """

    def __init__(
        self,
        *,
        params: BM25Params,
        vocab: dict[str, int],
        df: np.ndarray,
        n_docs: int,
        avg_doc_len: float,
        n_shards: int,
        shards: Sequence[_Postings | None],
    ) -> None:
        self.params = params
        self.n_shards = n_shards
        self.n_docs = n_docs  # N at build time (frozen, see the module docstring)
        self.avg_doc_len = avg_doc_len
        self.n_build_terms = len(df)
        self._vocab = vocab  # term -> id; writers append ids for new terms (dict ops are atomic)
        self._df = np.asarray(df, dtype=np.int64)
        self._idf = _idf(self._df.astype(np.float64), n_docs)  # (n_build_terms,) float64
        self._state = _State(shards=tuple(shards), segments=())
        self._write_lock = threading.Lock()
        # Writer-only bookkeeping, read and changed under _write_lock only. Build rows by global
        # row (arrays: a catalog has millions); delta rows in a dict (the delta is small).
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
            shard_ids: (n,) int shard of each text (``indexer.shards.shard_of``), in
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
        lengths = np.fromiter((len(t) for t in doc_terms), dtype=np.int64, count=n)
        n_terms = len(vocab)
        # (doc, term) pairs with their counts, vectorised: one key per occurrence, then unique.
        all_terms = np.concatenate(doc_terms) if lengths.sum() else np.zeros(0, np.int64)
        all_docs = np.repeat(np.arange(n, dtype=np.int64), lengths)
        pairs, tf = np.unique(all_docs * max(n_terms, 1) + all_terms, return_counts=True)
        pair_doc, pair_term = pairs // max(n_terms, 1), pairs % max(n_terms, 1)
        df = np.bincount(pair_term, minlength=n_terms).astype(np.int64)
        # An all-empty catalog has avgdl 0; 1.0 keeps later upserts finite (nothing else uses it).
        avg_doc_len = float(lengths.mean()) if n and lengths.sum() else 1.0

        idf = _idf(df.astype(np.float64), n)
        weights = _weights(
            tf.astype(np.float64), lengths[pair_doc], idf[pair_term], avg_doc_len, params
        )
        # Per shard, local position = rank of the row within the shard (rows ascending).
        shards: list[_Postings | None] = []
        pair_shard = shard_ids[pair_doc]
        local_of = np.empty(n, dtype=np.int64)
        for s in range(int(n_shards)):
            members = np.flatnonzero(shard_ids == s)
            members = members[np.argsort(rows[members], kind="stable")]
            local_of[members] = np.arange(len(members))
            sel = pair_shard == s
            p_local, p_term, p_w = local_of[pair_doc[sel]], pair_term[sel], weights[sel]
            order = np.lexsort((p_local, p_term))
            indptr = np.zeros(n_terms + 1, dtype=np.int64)
            np.cumsum(np.bincount(p_term, minlength=n_terms), out=indptr[1:])
            shards.append(
                _Postings(
                    indptr=indptr,
                    docs=p_local[order].astype(np.int32),
                    weights=p_w[order].astype(np.float32),
                    rows=rows[members].astype(np.int64),
                    shards=np.full(len(members), s, dtype=np.int32),
                )
            )
        index = cls(
            params=params,
            vocab=vocab,
            df=df,
            n_docs=n,
            avg_doc_len=avg_doc_len,
            n_shards=int(n_shards),
            shards=shards,
        )
        logger.info(
            "built lexical index: %d docs, %d terms, %d postings, %d shards, avgdl %.1f",
            n,
            n_terms,
            len(pairs),
            n_shards,
            avg_doc_len,
        )
        return index

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

    def search(
        self, query: str | np.ndarray, k: int, *, shards: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by BM25 for one query, over the build (deleted rows dropped) and the delta.

        Args:
            query: the query text, or its ``term_ids`` when the caller analysed it already.
            k: results, >= 1.
            shards: search only these shards (each must be loaded); None = every loaded shard.
                Delta documents count in the shard their upsert named.

        Returns:
            D: (k,) float32 BM25 scores, descending (ties by lower row); padding -FLT_MAX.
            I: (k,) int64 global rows; padding -1 (documents matching no query term never
            appear).
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        state = self._state  # one snapshot for the whole search
        if shards is None:
            wanted = [s for s, p in enumerate(state.shards) if p is not None]
            segment_filter = None if len(wanted) == self.n_shards else np.asarray(wanted)
        else:
            wanted = sorted({int(s) for s in shards})
            for s in wanted:
                if not 0 <= s < self.n_shards or state.shards[s] is None:
                    raise ValueError(
                        f"shard {s} is not loaded (loaded: {list(self.loaded_shards)})"
                    )
            segment_filter = None if len(wanted) == self.n_shards else np.asarray(wanted)
        term_ids = self.term_ids(query) if isinstance(query, str) else np.asarray(query, np.int64)
        parts = [_top_k(state.shards[s], term_ids, k, None) for s in wanted]  # type: ignore[arg-type]
        parts += [_top_k(seg, term_ids, k, segment_filter) for seg in state.segments]
        if not parts:
            return _finish(np.zeros(0, np.float32), np.zeros(0, np.int64), k)
        return _finish(
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), k
        )
