"""Position bias: examination propensities per position, estimated from logged clicks by EM.

The position-based click model: a shown item is clicked when the shopper examines its position
(probability ``theta[k]``, the same for every query) and finds it relevant (``gamma[q, d]``,
the same at every position): ``P(click | q, d, k) = theta[k] * gamma[q, d]``. Both are fitted
by expectation-maximisation over the logged (query, item, position, clicked) cells, as in
Wang et al., "Position Bias Estimation for Unbiased Learning to Rank in Personal Search"
(WSDM 2018). Their regression-EM fits gamma with a feature regression to share strength across
sparse pairs; here gamma is one free parameter per (query, item) pair, which is the same EM
without features: enough when pairs recur in the logs, and with no features to keep in sync.

Why EM and not randomisation: it needs no change to what shoppers see (no swapped results, no
revenue cost, no --explore-rate to tune) and uses all traffic, not a small randomised share.
What it needs instead is the natural variation of where one item lands for one query (model
updates, personalisation, pages, live catalog changes): a (query, item) seen at only one
position says nothing about theta, and EM's answer then leans on the pairs that do move.

Only theta's ratios are identified (theta * c and gamma / c explain the clicks equally well),
so propensities are reported relative to position 1: ``propensity[1] = 1``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_EPS = 1e-6


@dataclass(frozen=True)
class Propensities:
    """Relative examination probability per 1-based position; ``by_position[0]`` is position 1
    (always 1.0). Positions past the fitted range take the last fitted value."""

    by_position: np.ndarray  # (max_position,) float64, non-increasing is typical, not enforced
    iterations: int
    log_likelihood: float
    cells: int  # (query, item, position) cells the fit saw
    positions_seen: np.ndarray  # (max_position,) int64 impressions per position

    def at(self, positions: np.ndarray) -> np.ndarray:
        """(n,) float64 propensities of 1-based ``positions`` ((n,) int); 1.0 for position <= 0."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(self.by_position) == 0:
            return np.ones(len(positions))
        index = np.clip(positions, 1, len(self.by_position)) - 1
        return np.where(positions >= 1, self.by_position[index], 1.0)

    def to_json(self) -> dict:
        return {
            "method": "em-position-based-model",
            "reference": "Wang et al., WSDM 2018 (regression-EM without features)",
            "by_position": [round(float(p), 6) for p in self.by_position],
            "impressions_by_position": [int(n) for n in self.positions_seen],
            "iterations": self.iterations,
            "log_likelihood": self.log_likelihood,
            "cells": self.cells,
        }


def estimate_propensities(
    pair: np.ndarray,
    position: np.ndarray,
    clicked: np.ndarray,
    *,
    max_position: int = 50,
    iterations: int = 200,
    tol: float = 1e-7,
) -> Propensities:
    """Fit the position-based model to logged impressions by EM.

    Args:
        pair: (n,) int64, a dense id of each impression's (query, item) pair, 0..n_pairs-1.
        position: (n,) int64, the 1-based position it was shown at; positions past
            ``max_position`` are pooled into the last one.
        clicked: (n,) bool or int, whether it was engaged (clicked, added to cart or bought).
        max_position: the deepest position fitted.
        iterations: at most this many EM steps; stops early when the log-likelihood gains
            less than ``tol`` per impression.

    Returns:
        Propensities relative to position 1.
    """
    pair = np.asarray(pair, dtype=np.int64)
    position = np.clip(np.asarray(position, dtype=np.int64), 1, max_position) - 1
    clicked = np.asarray(clicked).astype(np.float64)
    n = len(pair)
    if n == 0:
        return Propensities(np.ones(1), 0, 0.0, 0, np.zeros(1, np.int64))
    n_pos = int(position.max()) + 1
    # Aggregate to (pair, position) cells: N shown, C clicked. EM works on counts.
    cell = pair * n_pos + position
    cells, inverse = np.unique(cell, return_inverse=True)
    shown = np.bincount(inverse).astype(np.float64)
    clicks = np.bincount(inverse, weights=clicked)
    cell_pair = cells // n_pos
    cell_pos = cells % n_pos
    pairs, cell_pair = np.unique(cell_pair, return_inverse=True)
    n_pairs = len(pairs)
    seen = np.bincount(cell_pos, weights=shown, minlength=n_pos)
    shown_per_pair = np.bincount(cell_pair, weights=shown, minlength=n_pairs)
    theta = np.full(n_pos, 0.5)
    gamma = np.clip(
        np.bincount(cell_pair, weights=clicks, minlength=n_pairs) / shown_per_pair, 0.05, 0.95
    )
    previous = -np.inf
    ll = previous
    step = 0
    for step in range(1, iterations + 1):  # noqa: B007 (the count is reported)
        t = theta[cell_pos]  # (cells,)
        g = gamma[cell_pair]  # (cells,)
        p = np.clip(t * g, _EPS, 1 - _EPS)
        ll = float(np.sum(clicks * np.log(p) + (shown - clicks) * np.log1p(-p)))
        if ll - previous < tol * n:
            break
        previous = ll
        unclicked = shown - clicks
        # E-step: for an unclicked impression, P(examined | no click) and P(relevant | no click).
        examined = t * (1 - g) / (1 - p)
        relevant = (1 - t) * g / (1 - p)
        # M-step: expected examinations per position, expected relevance per pair.
        theta = np.bincount(cell_pos, weights=clicks + unclicked * examined, minlength=n_pos)
        theta = np.clip(theta / np.maximum(seen, _EPS), _EPS, 1.0)
        gamma = np.bincount(cell_pair, weights=clicks + unclicked * relevant, minlength=n_pairs)
        gamma = np.clip(gamma / shown_per_pair, _EPS, 1.0)
    relative = theta / theta[0]
    relative = np.where(seen > 0, relative, np.nan)
    # A position never shown takes its shallower neighbour's value.
    for k in range(1, n_pos):
        if not np.isfinite(relative[k]):
            relative[k] = relative[k - 1]
    relative[0] = 1.0
    # Position 1 is the reference; a deeper position estimated above it is noise on sparse data.
    relative = np.minimum(relative, 1.0)
    log.info(
        "propensities after %d EM steps over %d cells: %s",
        step,
        len(cells),
        np.array2string(relative[:10], precision=3),
    )
    return Propensities(relative, step, ll, len(cells), seen.astype(np.int64))


def inverse_propensity(propensity: np.ndarray, clip: float) -> np.ndarray:
    """(n,) float64 weights ``1 / propensity``, clipped to [1, ``clip``] (``clip`` >= 1; 1
    turns the weighting off): the clip bounds the variance one deep click can add, at the price
    of some bias."""
    if clip < 1:
        raise ValueError(f"clip must be >= 1, got {clip}")
    return np.clip(1.0 / np.maximum(np.asarray(propensity, dtype=np.float64), _EPS), 1.0, clip)
