"""Per-request re-ranking specs, validated on construction: filter, boost and diversity."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from indexer.rerank.columns import SIGNAL_NAMES

__all__ = ["BoostSpec", "DiversitySpec", "FilterSpec"]


@dataclass(frozen=True)
class FilterSpec:
    """Conditions an item must meet (all of them). Unset fields impose nothing.

    Attributes:
        category_prefix: breadcrumb prefix, matched by whole levels and case-insensitively:
            "Home > Furniture" matches "home > furniture > Sofas" but not "Home > Furniture Sets".
        brands: allowed brands (case-insensitive); empty = any brand.
        price_min, price_max: inclusive USD bounds; an item without a price fails a set bound.
        attribute_ranges: ``(name, lo, hi)`` inclusive bounds on numeric attributes (None = open
            end); an item missing the attribute fails.
        in_stock: True / False to require that stock flag; unknown stock fails a set condition.
        exclude_rows: global rows never returned (e.g. items already shown or bought).
    """

    category_prefix: str = ""
    brands: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    attribute_ranges: tuple[tuple[str, float | None, float | None], ...] = ()
    in_stock: bool | None = None
    exclude_rows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.category_prefix, str):
            raise ValueError(f"category_prefix must be a str, got {self.category_prefix!r}")
        brands = tuple(self.brands)
        if any(not isinstance(b, str) or not b.strip() for b in brands):
            raise ValueError(f"brands must be non-empty strings, got {brands!r}")
        object.__setattr__(self, "brands", brands)
        _check_range("price", self.price_min, self.price_max)
        ranges, seen = [], set()
        for entry in self.attribute_ranges:
            if not isinstance(entry, tuple | list) or len(entry) != 3:
                raise ValueError(f"attribute_ranges entries must be (name, lo, hi), got {entry!r}")
            name, lo, hi = entry
            if not isinstance(name, str) or name in seen:
                raise ValueError(f"attribute range names must be distinct strings, got {name!r}")
            if lo is None and hi is None:
                raise ValueError(f"attribute range {name!r}: give lo, hi or both")
            _check_range(name, lo, hi)
            seen.add(name)
            ranges.append((name, lo, hi))
        object.__setattr__(self, "attribute_ranges", tuple(ranges))
        if self.in_stock is not None:
            if not isinstance(self.in_stock, bool | np.bool_):
                raise ValueError(f"in_stock must be True, False or None, got {self.in_stock!r}")
            object.__setattr__(self, "in_stock", bool(self.in_stock))
        rows = tuple(self.exclude_rows)
        if any(isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 0 for r in rows):
            raise ValueError(f"exclude_rows must be global rows (ints >= 0), got {rows!r}")
        object.__setattr__(self, "exclude_rows", tuple(int(r) for r in rows))


def _is_number(value: object) -> bool:
    """A real number (Python or NumPy), not a bool and not NaN."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool | np.bool_)
        and not math.isnan(value)
    )


def _check_range(name: str, lo: float | None, hi: float | None) -> None:
    for bound in (lo, hi):
        if bound is not None and not _is_number(bound):
            raise ValueError(f"{name} bounds must be numbers or None, got {bound!r}")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{name} range is empty: min {lo} > max {hi}; swap the bounds")


@dataclass(frozen=True)
class BoostSpec:
    """Per-request weights: final score = similarity + sum of weight * signal (signals in [0, 1],
    see ``ItemColumns.signals``). 0 = unused; a negative weight demotes (e.g. the long tail)."""

    popularity: float = 0.0
    rating: float = 0.0
    margin: float = 0.0

    def __post_init__(self) -> None:
        for name in SIGNAL_NAMES:
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"boost weight {name} must be a finite number, got {value!r}")

    @property
    def weights(self) -> np.ndarray:
        """(3,) float32 in ``SIGNAL_NAMES`` order."""
        return np.array([getattr(self, name) for name in SIGNAL_NAMES], dtype=np.float32)

    @property
    def is_active(self) -> bool:
        return any(getattr(self, name) != 0 for name in SIGNAL_NAMES)


@dataclass(frozen=True)
class DiversitySpec:
    """Result diversity.

    Attributes:
        max_per_category: at most this many results per category (0 = no cap; items without a
            category are not capped).
        mmr_lambda: maximal marginal relevance trade-off in (0, 1]; 0 = off, 1 = relevance only,
            lower = more diverse. Applied to the best ``max(4k, 100)`` candidates.
    """

    max_per_category: int = 0
    mmr_lambda: float = 0.0

    def __post_init__(self) -> None:
        cap = self.max_per_category
        if isinstance(cap, bool) or not isinstance(cap, int | np.integer) or cap < 0:
            raise ValueError(f"max_per_category must be an int >= 0 (0 = no cap), got {cap!r}")
        lam = self.mmr_lambda
        if not _is_number(lam) or not 0.0 <= lam <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1] (0 = off), got {lam!r}")

    @property
    def is_active(self) -> bool:
        return self.max_per_category > 0 or self.mmr_lambda > 0
