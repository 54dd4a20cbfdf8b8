"""BM25 math and postings: parameters, the immutable postings and state types, top-k scoring.

The postings of a set of documents are a CSC term-document matrix (``indptr`` over the shared
vocabulary, ``docs`` local positions, ``weights`` float32 BM25 weights); a query is scored by
summing its terms' columns (``_top_k``), and the parts from every shard and delta segment are
merged by ``_finish``. The formula and the global statistics are described in
``indexer.lexical``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BM25Params"]

_MISSING_SCORE = np.float32(-np.finfo(np.float32).max)  # padding score, as IndexVersion.search


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
