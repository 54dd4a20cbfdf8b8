"""Item attributes as row-aligned arrays (``ItemColumns``) for filtering and boosting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["SIGNAL_NAMES", "ItemColumns"]

SIGNAL_NAMES = ("popularity", "rating", "margin")  # columns of ItemColumns.signals


@dataclass(frozen=True, eq=False)
class ItemColumns:
    """Item attributes as arrays, row-aligned with the index's global rows.

    Attributes:
        n_items: number of items n.
        category_values, brand_values: distinct strings; codes index into them.
        category_codes, brand_codes: (n,) int32; -1 = missing.
        price: (n,) float64 USD; NaN = missing.
        attr_names: names of the numeric columns in ``attrs`` (price, rating, rating_count,
            margin and numeric extras, in table order).
        attrs: (n, a) float64; NaN = missing.
        in_stock: (n,) int8: 1, 0, or -1 unknown.
        signals: (n, 3) float32 boost signals in [0, 1], columns ``SIGNAL_NAMES``: popularity
            (log1p(rating_count), min-max scaled), rating ((stars - 1) / 4), margin (min-max
            scaled); missing = 0.
    """

    n_items: int
    category_values: tuple[str, ...]
    category_codes: np.ndarray
    brand_values: tuple[str, ...]
    brand_codes: np.ndarray
    price: np.ndarray
    attr_names: tuple[str, ...]
    attrs: np.ndarray
    in_stock: np.ndarray
    signals: np.ndarray

    def __post_init__(self) -> None:
        n = self.n_items
        expected = {
            "category_codes": ((n,), np.int32),
            "brand_codes": ((n,), np.int32),
            "price": ((n,), np.float64),
            "attrs": ((n, len(self.attr_names)), np.float64),
            "in_stock": ((n,), np.int8),
            "signals": ((n, len(SIGNAL_NAMES)), np.float32),
        }
        for name, (shape, dtype) in expected.items():
            value = getattr(self, name)
            if value.shape != shape or value.dtype != dtype or not value.flags.c_contiguous:
                raise ValueError(
                    f"ItemColumns.{name} must be a C-contiguous {shape} {np.dtype(dtype).name} "
                    f"array, got {value.shape} {value.dtype}; build it with from_table"
                )

    @classmethod
    def from_table(cls, items: pa.Table) -> ItemColumns:
        """Columns from the index's ``items`` table (``IndexVersion.items``); O(n), once per
        index version."""
        n = items.num_rows
        category_values, category_codes = _dictionary_codes(items, "category")
        brand_values, brand_codes = _dictionary_codes(items, "brand")
        numeric = {}
        for name in items.column_names:
            kind = items.schema.field(name).type
            if name != "item_id" and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                numeric[name] = _float_column(items, name)
        attrs = np.empty((n, len(numeric)), dtype=np.float64)
        for j, values in enumerate(numeric.values()):
            attrs[:, j] = values
        missing = np.full(n, np.nan)
        price = numeric.get("price", missing)
        in_stock = np.full(n, -1, dtype=np.int8)
        if "in_stock" in items.column_names:
            flags = pc.cast(items.column("in_stock"), pa.bool_())
            in_stock = np.asarray(
                pc.fill_null(pc.cast(flags, pa.int8()), -1).to_numpy(), dtype=np.int8
            )
        popularity = np.log1p(np.clip(numeric.get("rating_count", missing), 0, None))
        signals = np.stack(
            [
                _min_max(popularity),
                np.clip((numeric.get("rating", missing) - 1.0) / 4.0, 0.0, 1.0),
                _min_max(numeric.get("margin", missing)),
            ],
            axis=1,
        )
        return cls(
            n_items=n,
            category_values=category_values,
            category_codes=category_codes,
            brand_values=brand_values,
            brand_codes=brand_codes,
            price=np.ascontiguousarray(price, dtype=np.float64),
            attr_names=tuple(numeric),
            attrs=attrs,
            in_stock=np.ascontiguousarray(in_stock),
            signals=np.ascontiguousarray(np.nan_to_num(signals, nan=0.0), dtype=np.float32),
        )


def _dictionary_codes(items: pa.Table, name: str) -> tuple[tuple[str, ...], np.ndarray]:
    if name not in items.column_names:
        return (), np.full(items.num_rows, -1, dtype=np.int32)
    values = pc.cast(items.column(name), pa.string()).combine_chunks()
    encoded = pc.dictionary_encode(values)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    return tuple(encoded.dictionary.to_pylist()), np.ascontiguousarray(codes, dtype=np.int32)


def _float_column(items: pa.Table, name: str) -> np.ndarray:
    column = pc.cast(items.column(name), pa.float64()).combine_chunks()
    return np.asarray(pc.fill_null(column, np.nan).to_numpy(zero_copy_only=False), np.float64)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the non-missing values; NaN stays NaN; a constant column gives 0."""
    if not np.isfinite(values).any():
        return np.full(len(values), np.nan)
    lo, hi = np.nanmin(values), np.nanmax(values)
    if hi <= lo:
        return np.where(np.isnan(values), np.nan, 0.0)
    return (values - lo) / (hi - lo)
