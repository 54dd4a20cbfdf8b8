"""A ``FilterSpec`` compiled against ``ItemColumns``: row masks, matching rows, selectivity."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from indexer.rerank import kernels
from indexer.rerank.columns import ItemColumns
from indexer.rerank.specs import FilterSpec

__all__ = ["CompiledFilter", "compile_filter", "matching_rows", "selectivity"]


@dataclass(frozen=True, eq=False)
class CompiledFilter:
    """A ``FilterSpec`` turned into the kernel's arrays, for one ``ItemColumns``.

    Attributes:
        columns: the columns it was compiled against (codes mean nothing elsewhere).
        category_allowed, brand_allowed: bool per code; length 0 = no condition.
        price_min, price_max: float bounds, -inf/+inf when open.
        attr_min, attr_max: (a,) float64 per ``columns.attr_names``.
        in_stock_required: int8, -1 = no condition.
        exclude_rows: sorted unique int64 rows.
        matches_nothing: a condition no item can meet (unknown brand, category prefix absent).
    """

    columns: ItemColumns = field(repr=False)
    category_allowed: np.ndarray
    brand_allowed: np.ndarray
    price_min: float
    price_max: float
    attr_min: np.ndarray
    attr_max: np.ndarray
    in_stock_required: np.int8
    exclude_rows: np.ndarray
    matches_nothing: bool
    # Filled on first use (matching rows); a dict, so the dataclass itself can stay frozen.
    _memo: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    @property
    def has_conditions(self) -> bool:
        """Whether the filter can reject anything (excluded rows included)."""
        return bool(
            self.matches_nothing
            or self.category_allowed.size
            or self.brand_allowed.size
            or math.isfinite(self.price_min)
            or math.isfinite(self.price_max)
            or np.isfinite(self.attr_min).any()
            or np.isfinite(self.attr_max).any()
            or self.in_stock_required >= 0
            or self.exclude_rows.size
        )

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """(m,) bool: which of the (m,) int64 ``rows`` pass (-1 never does)."""
        if self.matches_nothing:
            return np.zeros(len(rows), dtype=bool)
        c = self.columns
        passed = kernels.filter_mask(
            rows,
            c.category_codes,
            self.category_allowed,
            c.brand_codes,
            self.brand_allowed,
            c.price,
            self.price_min,
            self.price_max,
            c.attrs,
            self.attr_min,
            self.attr_max,
            c.in_stock,
            self.in_stock_required,
        )
        if self.exclude_rows.size:
            passed &= ~np.isin(rows, self.exclude_rows)
        return passed


def _levels(category: str) -> tuple[str, ...]:
    levels = [part.strip().casefold() for part in category.split(">")]
    while levels and not levels[-1]:
        levels.pop()
    return tuple(levels)


def compile_filter(spec: FilterSpec, columns: ItemColumns) -> CompiledFilter:
    """Resolve ``spec`` against ``columns`` (strings to code masks, names to columns).

    Each distinct category / brand string is checked once, not each item.

    Raises:
        ValueError: an attribute range names a column that is not a numeric attribute.
    """
    matches_nothing = False
    category_allowed = np.zeros(0, dtype=bool)
    prefix = _levels(spec.category_prefix)
    if prefix:
        category_allowed = np.array(
            [_levels(v)[: len(prefix)] == prefix for v in columns.category_values], dtype=bool
        )
        matches_nothing |= not category_allowed.any()
    brand_allowed = np.zeros(0, dtype=bool)
    if spec.brands:
        wanted = {b.strip().casefold() for b in spec.brands}
        brand_allowed = np.array(
            [v.strip().casefold() in wanted for v in columns.brand_values], dtype=bool
        )
        matches_nothing |= not brand_allowed.any()
    n_attrs = len(columns.attr_names)
    attr_min, attr_max = np.full(n_attrs, -np.inf), np.full(n_attrs, np.inf)
    for name, lo, hi in spec.attribute_ranges:
        if name not in columns.attr_names:
            raise ValueError(
                f"unknown attribute {name!r} in attribute_ranges; numeric attributes of this "
                f"index: {list(columns.attr_names)}"
            )
        j = columns.attr_names.index(name)
        attr_min[j] = -np.inf if lo is None else float(lo)
        attr_max[j] = np.inf if hi is None else float(hi)
    exclude = np.unique(np.asarray(spec.exclude_rows, dtype=np.int64))
    return CompiledFilter(
        columns=columns,
        category_allowed=category_allowed,
        brand_allowed=brand_allowed,
        price_min=-np.inf if spec.price_min is None else float(spec.price_min),
        price_max=np.inf if spec.price_max is None else float(spec.price_max),
        attr_min=attr_min,
        attr_max=attr_max,
        in_stock_required=np.int8(-1 if spec.in_stock is None else int(spec.in_stock)),
        exclude_rows=exclude[exclude < columns.n_items],
        matches_nothing=matches_nothing,
    )


def matching_rows(compiled: CompiledFilter, columns: ItemColumns) -> np.ndarray:
    """(n_match,) int64 sorted global rows of every item that passes; memoised per filter."""
    if compiled.columns is not columns:
        raise ValueError("the filter was compiled against other ItemColumns; compile it again")
    rows = compiled._memo.get("matching")
    if rows is None:
        all_rows = np.arange(columns.n_items, dtype=np.int64)
        rows = all_rows[compiled.mask(all_rows)] if compiled.has_conditions else all_rows
        compiled._memo["matching"] = rows
    return rows


def selectivity(compiled: CompiledFilter) -> float:
    """Fraction of the catalog that passes, in [0, 1] (exact; O(n) once, then memoised)."""
    if not compiled.has_conditions:
        return 1.0
    n = compiled.columns.n_items
    return len(matching_rows(compiled, compiled.columns)) / n if n else 0.0
