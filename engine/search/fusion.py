"""Fusion of the dense and lexical candidate lists: reciprocal rank fusion and a score blend.

Pure functions, arrays in and out. A candidate list is ``(scores, rows)``: (n,) scores, higher is
better, and (n,) int64 global rows, where ``-1`` (padding) is ignored. Every function returns the
union of the rows it was given, ``(scores (m,) float32, rows (m,) int64)``, sorted by fused score
descending with ties broken by the lower row; fused scores are computed in float64, ordered, and
returned as float32.

- ``rrf`` (Cormack et al., SIGIR 2009): ``score(row) = sum_i w_i / (k_rrf + rank_i(row))`` with
  1-based ranks; a row missing from a list gets nothing from it. Only ranks count, so the lists'
  score scales never need to agree.
- ``blend``: ``alpha * norm(dense) + (1 - alpha) * norm(lexical)``, a convex combination of
  normalised scores (Bruch et al., "An Analysis of Fusion Functions for Hybrid Retrieval", TOIS
  2023: tuned convex combination beats RRF, and needs the per-list normalisation because cosine
  similarities and BM25 scores live on different scales). Normalisation per list, over the rows it
  retrieved:

  - ``"minmax"`` (the default): ``(s - min) / (max - min)`` in [0, 1]; a row missing from the list
    gets its floor, 0 (as good as the list's worst candidate). A list whose scores are all equal
    (one row, say) normalises to 1, and missing rows still get 0: it retrieved them, not the rest.
  - ``"zscore"``: ``(s - mean) / std``; floor = the list's lowest z. An all-equal list normalises
    to 0 with floor -1.

``fuse`` applies a ``FusionParams`` (method and weights, per request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FUSION_METHODS",
    "NORMALIZATIONS",
    "FusionParams",
    "blend",
    "fuse",
    "normalize_scores",
    "rrf",
]

FUSION_METHODS = ("rrf", "blend")
NORMALIZATIONS = ("minmax", "zscore")


@dataclass(frozen=True)
class FusionParams:
    """How to fuse the two channels.

    Attributes:
        method: "rrf" or "blend".
        k_rrf: RRF's rank offset, >= 0 (60 in the paper: damps the weight of the top ranks).
        rrf_weights: (dense, lexical) RRF weights, each >= 0, not both 0.
        alpha: blend weight of the dense channel in [0, 1] (1 - alpha goes to lexical).
        norm: blend's per-list normalisation, "minmax" or "zscore".
    """

    method: str = "rrf"
    k_rrf: float = 60.0
    rrf_weights: tuple[float, float] = (1.0, 1.0)
    alpha: float = 0.5
    norm: str = "minmax"

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"method must be one of {FUSION_METHODS}, got {self.method!r}")
        _check_k_rrf(self.k_rrf)
        _check_weights(self.rrf_weights, 2)
        _check_alpha(self.alpha)
        if self.norm not in NORMALIZATIONS:
            raise ValueError(f"norm must be one of {NORMALIZATIONS}, got {self.norm!r}")


def _check_k_rrf(k_rrf: float) -> None:
    if isinstance(k_rrf, bool) or not isinstance(k_rrf, int | float | np.number):
        raise ValueError(f"k_rrf must be a number >= 0 (60 is usual), got {k_rrf!r}")
    if not (math.isfinite(k_rrf) and k_rrf >= 0):
        raise ValueError(f"k_rrf must be a finite number >= 0 (60 is usual), got {k_rrf!r}")


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.number):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the dense channel's weight), got {alpha!r}")


def _check_weights(weights: Sequence[float], n: int) -> None:
    if len(weights) != n:
        raise ValueError(f"need one weight per list ({n}), got {len(weights)}")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int | float | np.number):
            raise ValueError(f"weights must be numbers >= 0, got {w!r}")
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"weights must be finite and >= 0, got {w!r}")
    if n and not any(w > 0 for w in weights):
        raise ValueError("at least one weight must be > 0")


def _rows_array(rows: np.ndarray, what: str) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or (len(rows) and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(
            f"{what} must be a 1-D integer array of rows, got {rows.shape} {rows.dtype}"
        )
    return rows.astype(np.int64, copy=False)


def _sorted_result(fused: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((rows, -fused))
    return fused[order].astype(np.float32), rows[order]


def rrf(
    ranked_lists: Sequence[np.ndarray],
    k_rrf: float = 60.0,
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion.

    Args:
        ranked_lists: lists of rows, each (n_i,) int, best first; ``-1`` entries are dropped
            before ranking, and a row repeated in one list keeps its best rank.
        k_rrf: rank offset, >= 0.
        weights: one weight >= 0 per list (not all 0); None = all 1.

    Returns:
        scores: (m,) float32 fused scores, descending (ties by lower row).
        rows: (m,) int64, every distinct row of the lists.
    """
    _check_k_rrf(k_rrf)
    weights = [1.0] * len(ranked_lists) if weights is None else list(weights)
    _check_weights(weights, len(ranked_lists))
    all_rows, all_contrib = [], []
    for i, (ranked, w) in enumerate(zip(ranked_lists, weights, strict=True)):
        rows = _rows_array(ranked, f"ranked_lists[{i}]")
        rows = rows[rows >= 0]
        _, first = np.unique(rows, return_index=True)  # first occurrence = best rank
        first.sort()
        rank = first + 1.0  # (n_unique,) 1-based ranks among the valid entries
        all_rows.append(rows[first])
        all_contrib.append(w / (k_rrf + rank))
    if not all_rows:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    rows_cat = np.concatenate(all_rows)
    uniq, inverse = np.unique(rows_cat, return_inverse=True)
    fused = np.bincount(inverse, weights=np.concatenate(all_contrib), minlength=len(uniq))
    return _sorted_result(fused, uniq)


def normalize_scores(scores: np.ndarray, norm: str = "minmax") -> tuple[np.ndarray, float]:
    """Normalise one list's scores (see the module docstring).

    Args:
        scores: (n,) finite scores.
        norm: "minmax" or "zscore".

    Returns:
        (normalised (n,) float64, floor for rows missing from the list).
    """
    if norm not in NORMALIZATIONS:
        raise ValueError(f"norm must be one of {NORMALIZATIONS}, got {norm!r}")
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return s, 0.0
    if norm == "minmax":
        low, high = s.min(), s.max()
        if high == low:
            return np.ones_like(s), 0.0
        return (s - low) / (high - low), 0.0
    std = s.std()
    if std == 0 or not np.isfinite(std):
        return np.zeros_like(s), -1.0
    z = (s - s.mean()) / std
    return z, float(z.min())


def _clean_list(pair: tuple[np.ndarray, np.ndarray], what: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) without -1 rows, one entry per row (its best score)."""
    scores, rows = pair
    rows = _rows_array(rows, f"{what} rows")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != rows.shape:
        raise ValueError(f"{what}: scores {scores.shape} and rows {rows.shape} differ in shape")
    valid = rows >= 0
    scores, rows = scores[valid], rows[valid]
    if not np.isfinite(scores).all():
        raise ValueError(f"{what}: scores of real rows (not -1) must be finite")
    order = np.lexsort((-scores, rows))  # by row, best score first
    rows, scores = rows[order], scores[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return scores[first], rows[first]


def blend(
    dense: tuple[np.ndarray, np.ndarray],
    lexical: tuple[np.ndarray, np.ndarray],
    alpha: float = 0.5,
    *,
    norm: str = "minmax",
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted blend of per-list normalised scores.

    Args:
        dense: (scores (n,), rows (n,)) from the dense channel; -1 rows ignored.
        lexical: (scores (m,), rows (m,)) from the lexical channel; -1 rows ignored.
        alpha: the dense channel's weight in [0, 1]; the lexical one gets ``1 - alpha``.
        norm: "minmax" or "zscore"; a row missing from a list gets that list's floor.

    Returns:
        scores: (u,) float32 fused scores, descending (ties by lower row).
        rows: (u,) int64, the union of the two lists' rows.
    """
    _check_alpha(alpha)
    if norm not in NORMALIZATIONS:
        raise ValueError(f"norm must be one of {NORMALIZATIONS}, got {norm!r}")
    d_scores, d_rows = _clean_list(dense, "dense")
    l_scores, l_rows = _clean_list(lexical, "lexical")
    d_norm, d_floor = normalize_scores(d_scores, norm)
    l_norm, l_floor = normalize_scores(l_scores, norm)
    rows = np.union1d(d_rows, l_rows)  # sorted, unique
    d_full = np.full(len(rows), d_floor)
    l_full = np.full(len(rows), l_floor)
    d_full[np.searchsorted(rows, d_rows)] = d_norm
    l_full[np.searchsorted(rows, l_rows)] = l_norm
    fused = alpha * d_full + (1.0 - alpha) * l_full
    return _sorted_result(fused, rows)


def fuse(
    dense: tuple[np.ndarray, np.ndarray],
    lexical: tuple[np.ndarray, np.ndarray],
    params: FusionParams | None = None,
    *,
    k: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse the two channels' candidates as ``params`` says.

    Args:
        dense: (scores (n,), rows (n,)), e.g. one query's row of ``IndexVersion.search``.
        lexical: (scores (m,), rows (m,)), e.g. ``LexicalIndex.search``.
        params: method and weights; None = ``FusionParams()``.
        k: keep the best k (>= 1); None = all.

    Returns:
        (scores float32, rows int64), best first, ties by lower row, at most k.
    """
    params = params or FusionParams()
    if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"k must be an integer >= 1 or None, got {k!r}")
    if params.method == "rrf":
        # Rank by score within each list (ties by lower row), whatever order it came in.
        ranked = []
        for pair, what in ((dense, "dense"), (lexical, "lexical")):
            scores, rows = _clean_list(pair, what)
            ranked.append(rows[np.lexsort((rows, -scores))])
        scores, rows = rrf(ranked, params.k_rrf, params.rrf_weights)
    else:
        scores, rows = blend(dense, lexical, params.alpha, norm=params.norm)
    if k is not None:
        scores, rows = scores[:k], rows[:k]
    return scores, rows
