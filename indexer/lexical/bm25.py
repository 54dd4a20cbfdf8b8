"""BM25 math and postings, pure: parameters, statistics, weights, CSC postings, top-k scoring.

The postings of a set of documents are a CSC term-document matrix (``indptr`` over the shared
vocabulary, ``docs`` local positions, ``weights`` float32 BM25 weights); a query is scored by
summing its terms' columns (``top_k``), and the parts from every shard and delta segment are
merged by ``finish``. The formula and the global statistics are described in
``indexer.lexical.index``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

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
class Postings:
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
        """Documents held, dead ones included."""
        return len(self.rows)

    def with_dead(self, local: Sequence[int]) -> Postings:
        """These postings with the documents at local positions ``local`` dead too."""
        return replace(self, dead=np.union1d(self.dead, np.asarray(local, dtype=np.int64)))


def postings(
    terms: np.ndarray,
    docs: np.ndarray,
    weights: np.ndarray,
    rows: np.ndarray,
    shards: np.ndarray,
    n_terms: int,
) -> Postings:
    """CSC postings from (term id, local position, weight) triples, one per (term, document)."""
    order = np.lexsort((docs, terms))  # by term, then document
    indptr = np.zeros(n_terms + 1, dtype=np.int64)
    np.cumsum(np.bincount(terms, minlength=n_terms), out=indptr[1:])
    return Postings(
        indptr=indptr,
        docs=docs[order].astype(np.int32),
        weights=weights[order].astype(np.float32),
        rows=np.asarray(rows, dtype=np.int64),
        shards=np.asarray(shards, dtype=np.int32),
    )


def document_postings(
    doc_terms: list[np.ndarray],
    doc_weights: list[np.ndarray],
    rows: np.ndarray,
    shards: np.ndarray,
    n_terms: int,
) -> Postings:
    """CSC postings from per-document (unique term ids, weights); local position = list position."""
    lengths = np.fromiter((len(t) for t in doc_terms), dtype=np.int64, count=len(doc_terms))
    if lengths.sum():
        terms, weights = np.concatenate(doc_terms), np.concatenate(doc_weights)
    else:
        terms, weights = np.zeros(0, np.int64), np.zeros(0, np.float32)
    docs = np.repeat(np.arange(len(doc_terms), dtype=np.int32), lengths)
    return postings(terms, docs, weights, rows, shards, n_terms)


def idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene idf of document frequencies ``df`` (float64) in ``n_docs`` documents; always > 0."""
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def weights(
    tf: np.ndarray, doc_len: np.ndarray | float, idf: np.ndarray, avg_doc_len: float, p: BM25Params
) -> np.ndarray:
    """BM25 weights (float64) of terms with counts ``tf`` in documents of length ``doc_len``."""
    return idf * tf / (tf + p.k1 * (1.0 - p.b + p.b * doc_len / avg_doc_len))


def build_shards(
    doc_terms: list[np.ndarray],
    rows: np.ndarray,
    shard_ids: np.ndarray,
    n_shards: int,
    n_terms: int,
    params: BM25Params,
) -> tuple[np.ndarray, float, list[Postings]]:
    """Statistics and per-shard postings of n analysed documents.

    Args:
        doc_terms: n (len_i,) int64 term ids of each document, in text order (repeats count).
        rows: (n,) int64 global rows, unique; shard_ids: (n,) int shard of each, in [0, n_shards).
        n_terms: vocabulary size (every id < n_terms).

    Returns:
        df: (n_terms,) int64 document frequencies; avg_doc_len: mean terms per document (1.0
        when no document has a term); shards: per shard its postings, local position = rank of
        the row within the shard (rows ascending).
    """
    n = len(doc_terms)
    lengths = np.fromiter((len(t) for t in doc_terms), dtype=np.int64, count=n)
    # (doc, term) pairs with their counts, vectorised: one key per occurrence, then unique.
    all_terms = np.concatenate(doc_terms) if lengths.sum() else np.zeros(0, np.int64)
    all_docs = np.repeat(np.arange(n, dtype=np.int64), lengths)
    pairs, tf = np.unique(all_docs * max(n_terms, 1) + all_terms, return_counts=True)
    pair_doc, pair_term = pairs // max(n_terms, 1), pairs % max(n_terms, 1)
    df = np.bincount(pair_term, minlength=n_terms).astype(np.int64)
    # An all-empty catalog has avgdl 0; 1.0 keeps later upserts finite (nothing else uses it).
    avg_doc_len = float(lengths.mean()) if n and lengths.sum() else 1.0

    term_idf = idf(df.astype(np.float64), n)
    pair_weights = weights(
        tf.astype(np.float64), lengths[pair_doc], term_idf[pair_term], avg_doc_len, params
    )
    shards = []
    pair_shard = shard_ids[pair_doc]
    local_of = np.empty(n, dtype=np.int64)
    for s in range(n_shards):
        members = np.flatnonzero(shard_ids == s)
        members = members[np.argsort(rows[members], kind="stable")]
        local_of[members] = np.arange(len(members))
        sel = pair_shard == s
        shards.append(
            postings(
                pair_term[sel],
                local_of[pair_doc[sel]],
                pair_weights[sel],
                rows[members],
                np.full(len(members), s, dtype=np.int32),
                n_terms,
            )
        )
    return df, avg_doc_len, shards


def live_postings(segments: Sequence[Postings], n_terms: int) -> Postings:
    """One postings set holding every live document of ``segments`` in order (dead dropped)."""
    doc_terms, doc_weights, rows, shards = [], [], [], []
    for seg in segments:
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
    return document_postings(
        doc_terms,
        doc_weights,
        np.asarray(rows, dtype=np.int64),
        np.asarray(shards, dtype=np.int32),
        n_terms,
    )


def top_k(
    postings: Postings, term_ids: np.ndarray, k: int, wanted: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores float32, global rows int64) of one postings set; unordered, maybe < k.

    ``wanted``: only documents of these shards count (None = all); dead documents never do.
    Every document tied with the k-th score is kept, so ``finish`` settles ties by row."""
    n_terms = len(postings.indptr) - 1
    ids = term_ids[term_ids < n_terms]  # terms added after this set was built are not in it
    empty = (np.zeros(0, np.float32), np.zeros(0, np.int64))
    if len(ids) == 0 or postings.n_docs == 0:
        return empty
    starts, ends = postings.indptr[ids], postings.indptr[ids + 1]
    docs = np.concatenate([postings.docs[s:e] for s, e in zip(starts, ends, strict=True)])
    if len(docs) == 0:
        return empty
    w = np.concatenate([postings.weights[s:e] for s, e in zip(starts, ends, strict=True)])
    # Dense accumulation: one O(n_docs) pass, cheaper than sorting the postings at catalog
    # scale. Every matching document scores > 0 (idf > 0, tf > 0), so 0 means "no match".
    acc = np.bincount(docs, weights=w, minlength=postings.n_docs)  # (n_docs,) float64
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


def finish(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(k,) float32 scores and (k,) int64 rows of the best k candidates: score desc, then row
    asc; padded with (-FLT_MAX, -1)."""
    D = np.full(k, _MISSING_SCORE, dtype=np.float32)
    I = np.full(k, -1, dtype=np.int64)  # noqa: E741 - FAISS notation
    order = np.lexsort((rows, -scores))[:k]
    D[: len(order)] = scores[order]
    I[: len(order)] = rows[order]
    return D, I


def add_row_weights(
    postings: Postings, term_ids: np.ndarray, rows: np.ndarray, out: np.ndarray
) -> None:
    """Add into ``out`` the BM25 weight of each (row, query term) these postings hold.

    Args:
        postings: one shard's or delta segment's postings (dead documents are skipped).
        term_ids: (t,) int64 query term ids (ids past this set's vocabulary match nothing).
        rows: (m,) int64 global rows.
        out: (m, t) float32, added to in place: ``out[i, j] += weight(term_ids[j], rows[i])``.
    """
    if postings.n_docs == 0 or len(rows) == 0:
        return
    doc_rows = postings.rows
    order = None
    if len(doc_rows) > 1 and not np.all(doc_rows[1:] >= doc_rows[:-1]):
        order = np.argsort(doc_rows, kind="stable")  # delta segments: rows in upsert order
        doc_rows = doc_rows[order]
    pos = np.minimum(np.searchsorted(doc_rows, rows), len(doc_rows) - 1)
    found = doc_rows[pos] == rows
    local = pos if order is None else order[pos]
    if len(postings.dead):
        found &= ~np.isin(local, postings.dead)
    which = np.flatnonzero(found)
    if len(which) == 0:
        return
    local = local[which]
    n_terms = len(postings.indptr) - 1
    for j, t in enumerate(term_ids.tolist()):
        if t >= n_terms:
            continue
        start, end = postings.indptr[t], postings.indptr[t + 1]
        if start == end:
            continue
        docs = postings.docs[start:end]  # ascending local positions
        at = np.minimum(np.searchsorted(docs, local), len(docs) - 1)
        match = docs[at] == local
        out[which[match], j] += postings.weights[start:end][at[match]]
