"""Differential privacy for aggregates of shoppers' behaviour: per-user contribution bounding,
then calibrated Laplace (pure ε) or Gaussian ((ε, δ)) noise.

Counting item interactions is the aggregate behind the popularity fallback, logQ frequencies
and engagement features. Each user adds at most `max_items_per_user` distinct items (one count
each), so adding or removing one user changes the count vector by at most that much in L1
(the Laplace sensitivity) and its square root in L2 (the Gaussian one).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DPConfig:
    """A privacy budget for one released aggregate. `delta` 0 means the Laplace mechanism
    (pure ε-DP); > 0 the Gaussian mechanism (classic calibration, stated for ε <= 1 and used
    as a conservative bound above)."""

    epsilon: float
    delta: float = 0.0
    max_items_per_user: int = 10

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be a positive number, got {self.epsilon}")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {self.delta}")
        if self.max_items_per_user < 1:
            raise ValueError(f"max_items_per_user must be >= 1, got {self.max_items_per_user}")

    @property
    def mechanism(self) -> str:
        return "gaussian" if self.delta > 0 else "laplace"

    def scale(self) -> float:
        """The noise parameter: the Laplace scale b = Δ1/ε, or the Gaussian σ =
        Δ2·sqrt(2 ln(1.25/δ))/ε."""
        if self.delta > 0:
            l2 = math.sqrt(self.max_items_per_user)
            return l2 * math.sqrt(2.0 * math.log(1.25 / self.delta)) / self.epsilon
        return self.max_items_per_user / self.epsilon

    def std(self) -> float:
        """The noise's standard deviation (Laplace: b·√2)."""
        return self.scale() * (1.0 if self.delta > 0 else math.sqrt(2.0))


def bounded_counts(
    pairs: Iterable[tuple[Hashable, Hashable]], max_items_per_user: int
) -> dict[Hashable, int]:
    """item → number of distinct users who interacted with it, counting at most the first
    `max_items_per_user` distinct items of each user (the contribution bound DP needs)."""
    seen: dict[Hashable, set[Hashable]] = {}
    counts: dict[Hashable, int] = {}
    for user, item in pairs:
        items = seen.setdefault(user, set())
        if item in items or len(items) >= max_items_per_user:
            continue
        items.add(item)
        counts[item] = counts.get(item, 0) + 1
    return counts


def add_noise(values: np.ndarray, config: DPConfig, rng: np.random.Generator) -> np.ndarray:
    """`values` (float64 copy) plus the mechanism's noise, one draw per entry."""
    values = np.asarray(values, dtype=np.float64)
    if config.delta > 0:
        noise = rng.normal(0.0, config.scale(), size=values.shape)
    else:
        noise = rng.laplace(0.0, config.scale(), size=values.shape)
    return values + noise


def private_counts(
    pairs: Iterable[tuple[Hashable, Hashable]],
    items: list[Hashable],
    config: DPConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """(len(items),) float64 noisy, non-negative interaction counts of `items` (the public
    catalog: items nobody touched get noise too, so their absence reveals nothing).
    Clamping at 0 is post-processing and costs no privacy."""
    counts = bounded_counts(pairs, config.max_items_per_user)
    exact = np.array([counts.get(i, 0) for i in items], dtype=np.float64)
    return np.maximum(add_noise(exact, config, rng), 0.0)
