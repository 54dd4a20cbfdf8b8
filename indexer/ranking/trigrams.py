"""Hashed character-trigram vectors of short texts, for a typo-tolerant title match.

A text is lower-cased, cut into words (``\\w+``), joined by single spaces and padded with one
space each side; its trigrams (of UTF-8 bytes) are hashed into ``TRIGRAM_DIM`` buckets and
counted; the count vector is L2-normalised. The cosine of two such vectors is high for "drywal
screws" against "Drywall Screw": the words differ, most trigrams do not. All items are built in
one vectorised pass (about a second for 50,000 titles); one query costs microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from numba import njit

__all__ = [
    "TRIGRAM_DIM",
    "normalized_words",
    "row_cosines",
    "trigram_matrix",
    "trigram_vector",
]

TRIGRAM_DIM = 1 << 17
_WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads the 24-bit trigram codes


def normalized_words(text: str) -> str:
    """``text``'s words, lower-cased, joined by single spaces, with one space each side (so a
    phrase test ``" a b " in normalized_words(t)`` matches whole words only)."""
    return " " + " ".join(_WORD.findall(text.lower())) + " "


def _codes(data: np.ndarray) -> np.ndarray:
    """Bucket of every trigram starting at each position of the byte array ``data``."""
    b = data.astype(np.uint64)
    raw = (b[:-2] << np.uint64(16)) | (b[1:-1] << np.uint64(8)) | b[2:]
    return ((raw * _MIX) >> np.uint64(64 - 17)).astype(np.int64)


def trigram_matrix(texts: Sequence[str]) -> sp.csr_matrix:
    """(len(texts), TRIGRAM_DIM) float32 CSR, row i the L2-normalised trigram counts of
    ``texts[i]`` (an empty text has an empty row)."""
    n = len(texts)
    encoded = [normalized_words(t).encode("utf-8") for t in texts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=n)
    if n == 0 or int(lengths.max(initial=0)) < 3:
        return sp.csr_matrix((n, TRIGRAM_DIM), dtype=np.float32)
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    codes = _codes(data)
    # a trigram is valid when its three bytes belong to one text
    valid = owner[:-2] == owner[2:]
    keys = owner[:-2][valid] * TRIGRAM_DIM + codes[valid]
    keys, counts = np.unique(keys, return_counts=True)
    rows, cols = keys // TRIGRAM_DIM, keys % TRIGRAM_DIM
    values = counts.astype(np.float32)
    norms = np.sqrt(np.bincount(rows, weights=values.astype(np.float64) ** 2, minlength=n))
    values /= norms[rows].astype(np.float32)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return sp.csr_matrix((values, cols, indptr), shape=(n, TRIGRAM_DIM))


def trigram_vector(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(buckets, weights) of one text's L2-normalised trigram counts (empty when shorter than a
    trigram)."""
    data = np.frombuffer(normalized_words(text).encode("utf-8"), dtype=np.uint8)
    if len(data) < 3:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    buckets, counts = np.unique(_codes(data), return_counts=True)
    weights = counts.astype(np.float32)
    return buckets, weights / np.float32(np.linalg.norm(weights))


def row_cosines(
    matrix: sp.csr_matrix, rows: np.ndarray, buckets: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """(m,) float32 dot products of ``matrix``'s ``rows`` (each < its row count) with the
    sparse vector (``buckets`` sorted ascending, ``weights``): a merge of sorted indices, no
    dense query vector and no scipy indexing per call."""
    return _row_cosines(
        matrix.indptr, matrix.indices, matrix.data, np.asarray(rows, np.int64), buckets, weights
    )


@njit(cache=True, nogil=True)
def _row_cosines(indptr, indices, data, rows, buckets, weights):  # pragma: no cover - numba
    out = np.zeros(len(rows), dtype=np.float32)
    nq = len(buckets)
    for i in range(len(rows)):
        j, end = indptr[rows[i]], indptr[rows[i] + 1]
        k = 0
        acc = np.float32(0.0)
        while j < end and k < nq:
            a, b = indices[j], buckets[k]
            if a == b:
                acc += data[j] * weights[k]
                j += 1
                k += 1
            elif a < b:
                j += 1
            else:
                k += 1
        out[i] = acc
    return out
