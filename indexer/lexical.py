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

Analysis (``analyze``): NFKC, casefold, diacritics removed; tokens are runs of two or more
letters or runs of digits, so "2x4" -> 2, 4 and "12-Gauge" -> 12, gauge; English stopwords
(bm25s's list) dropped; Snowball English stems (PyStemmer). Splitting digits from letters and
keeping one-digit numbers beat bm25s's default pattern (``\\w\\w+``) on the Home Depot train split
(NDCG@10 0.251 vs 0.239, 2,000 queries) and matched it on ESCI.

Live updates. ``upsert`` and ``delete`` change a small in-memory delta, searchable when they
return. Statistics stay frozen at build time (N, df, avgdl): a new or replaced document is
weighted with them, and a term the build never saw counts as the rarest possible one (df = 1).
Deleted and replaced documents keep counting in the statistics until the next build, as in
Lucene before a merge. Each upsert call adds one immutable segment; past ``MAX_SEGMENTS`` they are
merged into one, so a write costs O(its documents) amortised.

Concurrency: copy-on-write snapshots. Readers take ``self._state`` (an immutable ``_State``) once
per search and need no lock; writers are serialised by one lock, build a new state and publish it
with one reference assignment, so a search sees an update completely or not at all.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from indexer.manifest import IndexFormatError, write_atomic

__all__ = [
    "ANALYZER",
    "LEXICAL_META_FILE",
    "BM25Params",
    "LexicalIndex",
    "analyze",
    "lexical_file_names",
    "lexical_shard_file_name",
]

logger = logging.getLogger(__name__)

ANALYZER = "aisle-en-1"  # bump when `analyze` changes: an index is only valid with its analyzer
FORMAT_VERSION = 1
LEXICAL_META_FILE = "lexical.json"  # params, statistics, vocabulary
LEXICAL_DF_FILE = "lexical.df.npy"  # (n_terms,) int64 document frequencies
MAX_SEGMENTS = 8  # delta segments kept before they are merged into one
_MISSING_SCORE = np.float32(-np.finfo(np.float32).max)  # padding score, as IndexVersion.search

# bm25s's English list (bm25s.stopwords.STOPWORDS_EN), copied so serving needs no bm25s.
STOPWORDS_EN = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)
# Runs of 2+ letters, or runs of digits: "2x4" -> 2, 4 ("x" alone says nothing), "r2d2" -> 2, 2.
_TOKEN = re.compile(r"[^\W\d_]{2,}|\d+")
_local = threading.local()  # one stemmer per thread: PyStemmer objects are not thread-safe


def lexical_shard_file_name(shard: int) -> str:
    """The shard's postings: ``indptr``, ``docs``, ``weights``, ``rows`` arrays in one .npz."""
    return f"shard_{shard:03d}.lexical.npz"


def lexical_file_names(n_shards: int) -> list[str]:
    """Every file ``LexicalIndex.save`` writes, relative to the version dir."""
    return [LEXICAL_META_FILE, LEXICAL_DF_FILE] + [
        lexical_shard_file_name(s) for s in range(n_shards)
    ]


def _stemmer() -> Any:
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        try:
            import Stemmer
        except ImportError as e:  # pragma: no cover - PyStemmer is a dependency
            raise ImportError(
                "the lexical index needs PyStemmer (Snowball stemmers): pip install PyStemmer"
            ) from e
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


def _fold(text: str) -> str:
    """NFKC + casefold + diacritics removed ("Crème" -> "creme", "５００" -> "500")."""
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold()
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def analyze(text: str) -> list[str]:
    """The terms of ``text``, in order, as indexed and searched (see the module docstring)."""
    words = [w for w in _TOKEN.findall(_fold(text)) if w not in STOPWORDS_EN]
    return _stemmer().stemWords(words) if words else []


@dataclass(frozen=True)
class BM25Params:
    """BM25 parameters: ``k1`` >= 0 (term-frequency saturation), ``b`` in [0, 1] (length
    normalisation). Defaults are Lucene's."""

    k1: float = 1.2
    b: float = 0.75

    def __post_init__(self) -> None:
        if not (isinstance(self.k1, int | float) and np.isfinite(self.k1) and self.k1 >= 0):
            raise ValueError(f"k1 must be a finite number >= 0 (Lucene uses 1.2), got {self.k1!r}")
        if not (isinstance(self.b, int | float) and 0 <= self.b <= 1):
            raise ValueError(f"b must be a number in [0, 1] (Lucene uses 0.75), got {self.b!r}")


@dataclass(frozen=True)
class _Postings:
    """Term-document weights of a set of documents, CSC by term: term t's documents are
    ``docs[indptr[t]:indptr[t + 1]]`` (local positions, ascending) with ``weights`` alongside.

    ``rows`` (n_docs,) int64 global rows; ``shards`` (n_docs,) int32 shard of each document.
    ``dead`` holds the local positions deleted or replaced since (sorted, unique int64)."""

    indptr: np.ndarray
    docs: np.ndarray
    weights: np.ndarray
    rows: np.ndarray
    shards: np.ndarray
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_docs(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class _State:
    """What a search reads: immutable, replaced whole by writers."""

    shards: tuple[_Postings | None, ...]  # None: a shard not loaded in this process
    segments: tuple[_Postings, ...]  # the live delta, one segment per upsert (until merged)


def _postings(
    doc_terms: list[np.ndarray],
    doc_weights: list[np.ndarray],
    rows: np.ndarray,
    shards: np.ndarray,
    n_terms: int,
) -> _Postings:
    """CSC postings from per-document (term ids, weights); local position = list position."""
    lengths = np.fromiter((len(t) for t in doc_terms), dtype=np.int64, count=len(doc_terms))
    if lengths.sum():
        terms = np.concatenate(doc_terms)
        weights = np.concatenate(doc_weights).astype(np.float32)
    else:
        terms, weights = np.zeros(0, np.int64), np.zeros(0, np.float32)
    docs = np.repeat(np.arange(len(doc_terms), dtype=np.int32), lengths)
    order = np.argsort(terms, kind="stable")  # stable: docs stay ascending within a term
    indptr = np.zeros(n_terms + 1, dtype=np.int64)
    np.cumsum(np.bincount(terms, minlength=n_terms), out=indptr[1:])
    return _Postings(
        indptr=indptr,
        docs=docs[order],
        weights=weights[order],
        rows=np.asarray(rows, dtype=np.int64),
        shards=np.asarray(shards, dtype=np.int32),
    )


def _idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene idf of document frequencies ``df`` (float64) in ``n_docs`` documents; always > 0."""
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def _weights(
    tf: np.ndarray, doc_len: np.ndarray | float, idf: np.ndarray, avg_doc_len: float, p: BM25Params
) -> np.ndarray:
    """BM25 weights (float64) of terms with counts ``tf`` in documents of length ``doc_len``."""
    return idf * tf / (tf + p.k1 * (1.0 - p.b + p.b * doc_len / avg_doc_len))


def _top_k(
    postings: _Postings, term_ids: np.ndarray, k: int, wanted: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores float32, global rows int64) of one postings set; unordered, maybe < k."""
    n_terms = len(postings.indptr) - 1
    ids = term_ids[term_ids < n_terms]  # terms added after this set was built are not in it
    empty = (np.zeros(0, np.float32), np.zeros(0, np.int64))
    if len(ids) == 0 or postings.n_docs == 0:
        return empty
    starts, ends = postings.indptr[ids], postings.indptr[ids + 1]
    docs = np.concatenate([postings.docs[s:e] for s, e in zip(starts, ends, strict=True)])
    if len(docs) == 0:
        return empty
    weights = np.concatenate([postings.weights[s:e] for s, e in zip(starts, ends, strict=True)])
    # Dense accumulation: one O(n_docs) pass, cheaper than sorting the postings at catalog
    # scale. Every matching document scores > 0 (idf > 0, tf > 0), so 0 means "no match".
    acc = np.bincount(docs, weights=weights, minlength=postings.n_docs)  # (n_docs,) float64
    if len(postings.dead):
        acc[postings.dead] = 0.0
    if wanted is not None:
        acc[~np.isin(postings.shards, wanted)] = 0.0
    local = np.flatnonzero(acc)
    scores = acc[local].astype(np.float32)
    if len(local) > k:
        # Keep every document tied with the k-th score, so ties are settled by row later.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        local, scores = local[keep], scores[keep]
    return scores, postings.rows[local]


def _finish(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort by score desc, then row asc; keep k; pad with (-FLT_MAX, -1)."""
    D = np.full(k, _MISSING_SCORE, dtype=np.float32)
    I = np.full(k, -1, dtype=np.int64)
    order = np.lexsort((rows, -scores))[:k]
    D[: len(order)] = scores[order]
    I[: len(order)] = rows[order]
    return D, I


class LexicalIndex:
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
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = sorted(self._vocab, key=self._vocab.__getitem__)
        meta = {
            "format_version": FORMAT_VERSION,
            "analyzer": ANALYZER,
            "k1": self.params.k1,
            "b": self.params.b,
            "n_docs": self.n_docs,
            "avg_doc_len": self.avg_doc_len,
            "n_shards": self.n_shards,
            "shard_docs": [p.n_docs for p in state.shards],  # type: ignore[union-attr]
            "vocab": vocab,
        }
        write_atomic(directory / LEXICAL_META_FILE, json.dumps(meta).encode("utf-8"))
        write_atomic(directory / LEXICAL_DF_FILE, _npy_bytes(self._df))
        for s, p in enumerate(state.shards):
            assert p is not None
            buf = io.BytesIO()
            np.savez(buf, indptr=p.indptr, docs=p.docs, weights=p.weights, rows=p.rows)
            write_atomic(directory / lexical_shard_file_name(s), buf.getvalue())
        return lexical_file_names(self.n_shards)

    @classmethod
    def load(cls, directory: str | Path, *, shards: Sequence[int] | None = None) -> LexicalIndex:
        """Read an index ``save`` wrote.

        Args:
            directory: the dir holding ``lexical_file_names(n_shards)``.
            shards: load only these shards' postings (a shard server); None = all.

        Raises:
            IndexFormatError: a missing or corrupt file, another format version or analyzer.
        """
        directory = Path(directory)
        meta_path = directory / LEXICAL_META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            df = np.load(directory / LEXICAL_DF_FILE, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise IndexFormatError(f"{directory}: cannot read the lexical index: {e}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{meta_path}: lexical format {meta.get('format_version')!r}, this code reads "
                f"{FORMAT_VERSION}; rebuild the index"
            )
        if meta.get("analyzer") != ANALYZER:
            raise IndexFormatError(
                f"{meta_path}: built with analyzer {meta.get('analyzer')!r}, this code uses "
                f"{ANALYZER!r}; queries would not match its terms: rebuild the index"
            )
        vocab = {t: i for i, t in enumerate(meta["vocab"])}
        n_shards = int(meta["n_shards"])
        if len(vocab) != len(df) or df.ndim != 1:
            raise IndexFormatError(f"{directory}: {len(vocab)} terms but df has {df.shape}")
        wanted = set(range(n_shards)) if shards is None else {int(s) for s in shards}
        if not wanted <= set(range(n_shards)):
            raise ValueError(f"shards must be in [0, {n_shards}), got {sorted(wanted)}")
        loaded: list[_Postings | None] = []
        for s in range(n_shards):
            if s not in wanted:
                loaded.append(None)
                continue
            path = directory / lexical_shard_file_name(s)
            try:
                with np.load(path, allow_pickle=False) as z:
                    p = _Postings(
                        indptr=z["indptr"],
                        docs=z["docs"],
                        weights=z["weights"],
                        rows=z["rows"],
                        shards=np.full(len(z["rows"]), s, dtype=np.int32),
                    )
            except (OSError, ValueError, KeyError) as e:
                raise IndexFormatError(f"{path}: cannot read lexical shard: {e}") from e
            if len(p.indptr) != len(vocab) + 1 or p.n_docs != meta["shard_docs"][s]:
                raise IndexFormatError(f"{path}: does not match {LEXICAL_META_FILE}")
            loaded.append(p)
        return cls(
            params=BM25Params(k1=meta["k1"], b=meta["b"]),
            vocab=vocab,
            df=df,
            n_docs=int(meta["n_docs"]),
            avg_doc_len=float(meta["avg_doc_len"]),
            n_shards=n_shards,
            shards=loaded,
        )


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _check_rows(rows: np.ndarray, n: int, name: str, *, unique: bool = True) -> None:
    if rows.shape != (n,) or (n and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"{name} must be ({n},) integers, got shape {rows.shape} {rows.dtype}")
    if n and rows.min() < 0:
        raise ValueError(f"{name} must be >= 0 (global rows), got {rows.min()}")
    if unique and len(np.unique(rows)) != n:
        raise ValueError(f"{name} must be unique")
