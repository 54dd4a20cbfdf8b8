"""Exact re-ranking of ANN candidates: filters, business boosts, diversity, top-k.

Per index version, prepare once: ``ItemColumns.from_table(version.items)`` (attributes as
columns) and a ``VectorStore`` (the stored vectors, float32 or a compact float16 / int8 copy).
Per request: ``compile_filter(FilterSpec, columns)`` then ``rerank`` runs
dedupe -> filter -> exact scores -> boost -> diversity -> top-k with the numba kernels of
``indexer.kernels``. ``search_and_rerank`` wraps the whole thing around an ANN search callable.

Widening for selective filters. The ANN index knows nothing of filters, so when only a fraction
``s`` of the catalog passes, ``offset + k`` matches need about ``(offset + k) / s`` candidates.
``plan_candidates`` decides, from the exact selectivity (the filter mask over all n items, one
O(n) kernel pass, memoised in the compiled filter):

1. no filter (s = 1): ask the index for ``max(base, offset + k)`` candidates;
2. ``s`` < ``MIN_ANN_SELECTIVITY`` (1 %), or the matching items are few (at most
   ``max(depth, BRUTE_FORCE_ROWS)``), or the depth below exceeds ``MAX_ANN_DEPTH``: skip the ANN
   index and score *every* matching row exactly (``matching_rows``): exact, and cheaper than an
   ANN search this deep;
3. otherwise ask for ``depth = max(base, ceil((offset + k) / s * SAFETY))`` candidates
   (``candidate_depth``, SAFETY = 2: a query's neighbourhood may pass less often than the
   catalog as a whole).

If step 3 still yields fewer than ``offset + k`` results while more items match,
``search_and_rerank`` widens the depth 4x and, past ``MAX_ANN_DEPTH`` (or the catalog size),
falls back to step 2. Exhaustive scoring of the matching rows cannot miss a match, so whenever
``offset + k`` matching items exist, that many results come back.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer import kernels
from indexer.manifest import IndexFormatError

__all__ = [
    "BRUTE_FORCE_ROWS",
    "MAX_ANN_DEPTH",
    "MIN_ANN_SELECTIVITY",
    "SIGNAL_NAMES",
    "VECTOR_KINDS",
    "BoostSpec",
    "CandidatePlan",
    "CompiledFilter",
    "DiversitySpec",
    "FilterSpec",
    "ItemColumns",
    "VectorStore",
    "candidate_depth",
    "compile_filter",
    "matching_rows",
    "plan_candidates",
    "rerank",
    "search_and_rerank",
    "select",
    "selectivity",
]

logger = logging.getLogger(__name__)

SIGNAL_NAMES = ("popularity", "rating", "margin")  # columns of ItemColumns.signals
VECTOR_KINDS = ("f32", "f16", "i8")
DEFAULT_BASE_DEPTH = 100
MIN_ANN_SELECTIVITY = 0.01
# Exact scoring of this many rows (~0.3 ms at dim 384, one core) costs about what an ANN search
# plus the re-rank of a widened candidate list does, and it cannot miss a match.
BRUTE_FORCE_ROWS = 2048
MAX_ANN_DEPTH = 10_000
_SAFETY = 2.0
_WIDEN_FACTOR = 4
# MMR costs O(pool * k * dim): it picks from the best few of the (filtered, boosted) candidates.
_MMR_POOL_FACTOR = 4
_MMR_MIN_POOL = 100
_F16_MAX = 65504.0


# ----------------------------------------------------------------------------- stored vectors


class VectorStore:
    """Item vectors for exact re-scoring, indexed by global row, in one of three encodings.

    ``f32``: (n, dim) float32, 4 bytes per value. ``f16``: (n, dim) IEEE half, kept as uint16 bit
    patterns (numba has no float16) and decoded inside the kernel, 2 bytes. ``i8``: (n, dim) int8
    codes and one float32 scale per vector (vector = codes * scale, scale = max|x| / 127),
    1 byte + 4 per vector.
    """

    def __init__(self, kind: str, data: np.ndarray, scales: np.ndarray | None = None) -> None:
        expected = {"f32": np.float32, "f16": np.uint16, "i8": np.int8}
        if kind not in expected:
            raise ValueError(f"vector kind must be one of {VECTOR_KINDS}, got {kind!r}")
        if data.ndim != 2 or data.dtype != expected[kind]:
            raise ValueError(
                f"{kind} vectors must be a 2-D {np.dtype(expected[kind]).name} array, "
                f"got shape {data.shape} {data.dtype}"
            )
        if (kind == "i8") != (scales is not None):
            raise ValueError("scales are required for i8 vectors and only for them")
        if scales is not None and (scales.shape != (len(data),) or scales.dtype != np.float32):
            raise ValueError(f"i8 scales must be ({len(data)},) float32, got {scales.shape}")
        self.kind = kind
        # np.asarray drops the np.memmap subclass (same memory): numba takes plain arrays.
        self.data = np.asarray(data)
        self.scales = None if scales is None else np.asarray(scales)

    def __repr__(self) -> str:
        return f"VectorStore(kind={self.kind!r}, n={self.n}, dim={self.dim}, nbytes={self.nbytes})"

    @property
    def n(self) -> int:
        return self.data.shape[0]

    @property
    def dim(self) -> int:
        return self.data.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held (codes plus scales)."""
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    @classmethod
    def encode(cls, xb: np.ndarray, kind: str = "f32") -> VectorStore:
        """Encode (n, dim) float vectors as ``kind`` ("f32", "f16" or "i8")."""
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if xb.ndim != 2:
            raise ValueError(f"xb must have shape (n, dim), got {xb.shape}")
        if not np.isfinite(xb).all():
            raise ValueError("xb holds NaN or inf values; re-embed the catalog before indexing")
        if kind == "f32":
            return cls("f32", xb)
        if kind == "f16":
            if xb.size and np.abs(xb).max() > _F16_MAX:
                raise ValueError(f"f16 holds values up to {_F16_MAX}; use f32 for these vectors")
            return cls("f16", xb.astype(np.float16).view(np.uint16))
        if kind == "i8":
            scales = (np.abs(xb).max(axis=1) / 127.0).astype(np.float32)  # (n,)
            safe = np.where(scales > 0, scales, 1.0)[:, None]  # a zero vector keeps codes 0
            codes = np.clip(np.rint(xb / safe), -127, 127).astype(np.int8)
            return cls("i8", codes, scales)
        raise ValueError(f"vector kind must be one of {VECTOR_KINDS}, got {kind!r}")

    @classmethod
    def from_index(cls, version: Any, kind: str = "f32", *, chunk: int = 65536) -> VectorStore:
        """Gather every stored vector of an opened ``indexer.store.IndexVersion`` by global row."""
        n, dim = version.n_items, version.dim
        parts = []
        for start in range(0, n, chunk):  # chunks bound the float32 copy for compact kinds
            part = version.vectors(np.arange(start, min(n, start + chunk)))
            parts.append(cls.encode(part, kind))
        if not parts:
            return cls.encode(np.zeros((0, dim), np.float32), kind)
        data = np.concatenate([p.data for p in parts])
        scales = None if kind != "i8" else np.concatenate([p.scales for p in parts])
        return cls(kind, data, scales)

    def check_rows(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` as (m,) int64, checked to lie in [-1, n) (the kernels do not check bounds)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        if rows.size and (rows.min() < -1 or rows.max() >= self.n):
            raise ValueError(
                f"rows must be -1 (none) or in [0, {self.n}), got {rows.min()}..{rows.max()}"
            )
        return rows

    def scores(self, xq: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact inner products.

        Args:
            xq: (dim,) float query.
            rows: (m,) int global rows; -1 = none.

        Returns:
            (m,) float32; -inf for -1 rows.
        """
        xq = _as_query(xq, self.dim)
        rows = self.check_rows(rows)
        if self.kind == "f32":
            return kernels.exact_scores_f32(xq, self.data, rows)
        if self.kind == "f16":
            return kernels.exact_scores_f16(xq, self.data, rows)
        return kernels.exact_scores_i8(xq, self.data, self.scales, rows)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Decoded vectors of ``rows`` (each >= 0) as (m, dim) float32."""
        rows = self.check_rows(rows)
        if rows.size and rows.min() < 0:
            raise ValueError("gather needs real rows, got -1")
        if self.kind == "f32":
            return self.data[rows]
        if self.kind == "f16":
            return kernels.decode_f16(self.data, rows)
        return kernels.decode_i8(self.data, self.scales, rows)

    def save(self, directory: str | Path, prefix: str) -> list[str]:
        """Write ``<prefix>.vectors.npy`` (f32), ``<prefix>.vectors_f16.npy`` (f16, stored as
        float16) or ``<prefix>.vectors_i8.npy`` + ``<prefix>.scales.npy`` (i8) into
        ``directory``; returns the file names written (for the manifest checksums)."""
        directory = Path(directory)
        names = _file_names(prefix, self.kind)
        data = self.data.view(np.float16) if self.kind == "f16" else self.data
        np.save(directory / names[0], data, allow_pickle=False)
        if self.scales is not None:
            np.save(directory / names[1], self.scales, allow_pickle=False)
        return names

    @classmethod
    def load(
        cls, directory: str | Path, prefix: str, kind: str | None = None, *, mmap: bool = True
    ) -> VectorStore:
        """Read what ``save`` wrote, memory-mapped read-only by default.

        ``kind`` None picks the one encoding present; pass it when several are.

        Raises:
            IndexFormatError: no (or an ambiguous, or a malformed) vector file.
        """
        directory = Path(directory)
        kinds = [kind] if kind is not None else VECTOR_KINDS
        found = [k for k in kinds if (directory / _file_names(prefix, k)[0]).is_file()]
        if len(found) != 1:
            wanted = [_file_names(prefix, k)[0] for k in kinds]
            problem = "none of" if not found else "several of"
            raise IndexFormatError(f"{directory}: found {problem} {wanted}; pass kind=")
        kind = found[0]
        names = _file_names(prefix, kind)
        try:
            arrays = [
                np.load(directory / name, mmap_mode="r" if mmap else None, allow_pickle=False)
                for name in names
            ]
            data = arrays[0].view(np.uint16) if kind == "f16" else arrays[0]
            return cls(kind, data, arrays[1] if kind == "i8" else None)
        except (OSError, ValueError) as e:
            raise IndexFormatError(
                f"{directory / names[0]}: unreadable {kind} vectors ({e})"
            ) from e


def _file_names(prefix: str, kind: str) -> list[str]:
    if kind == "f32":
        return [f"{prefix}.vectors.npy"]  # the same name as the f32 vectors beside each shard
    if kind == "f16":
        return [f"{prefix}.vectors_f16.npy"]
    if kind == "i8":
        return [f"{prefix}.vectors_i8.npy", f"{prefix}.scales.npy"]
    raise ValueError(f"vector kind must be one of {VECTOR_KINDS}, got {kind!r}")


def _as_query(xq: np.ndarray, dim: int) -> np.ndarray:
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xq.ndim == 2 and xq.shape[0] == 1:
        xq = xq[0]
    if xq.shape != (dim,):
        raise ValueError(f"xq must have shape ({dim},) (one query), got {xq.shape}")
    return xq


# ----------------------------------------------------------------------------- item columns


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


# ----------------------------------------------------------------------------- request specs


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


# ----------------------------------------------------------------------------- compiled filter


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


# ----------------------------------------------------------------------------- the pipeline


def rerank(
    xq: np.ndarray,
    vectors: VectorStore | np.ndarray,
    rows: np.ndarray,
    k: int,
    columns: ItemColumns,
    compiled_filter: CompiledFilter | None = None,
    boost: BoostSpec | None = None,
    diversity: DiversitySpec | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-rank candidates exactly: dedupe -> filter -> exact scores -> boost -> diversity -> top-k.

    Args:
        xq: (dim,) float32 query (a (1, dim) array is accepted).
        vectors: the stored vectors by global row (a VectorStore, or an (n, dim) float32 array).
        rows: (m,) int global candidate rows, -1 = none; duplicates allowed (counted once).
        k: results wanted, >= 1.
        columns: item attributes of the same index version.
        compiled_filter, boost, diversity: None = none.

    Returns:
        D: (k,) float32 final scores (similarity + boost), best first; with MMR, in pick order.
        I: (k,) int64 global rows.
        sim: (k,) float32 exact similarities of the same items.
        Padding (fewer than k candidates pass) is D = sim = -inf, I = -1.
    """
    store = vectors if isinstance(vectors, VectorStore) else VectorStore("f32", vectors)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if store.n != columns.n_items:
        raise ValueError(f"vectors hold {store.n} items but columns {columns.n_items}")
    if compiled_filter is not None and compiled_filter.columns is not columns:
        raise ValueError("the filter was compiled against other ItemColumns; compile it again")
    k = int(k)
    xq = _as_query(xq, store.dim)
    rows = store.check_rows(rows)
    D = np.full(k, -np.inf, dtype=np.float32)
    I = np.full(k, -1, dtype=np.int64)  # noqa: E741 - FAISS notation
    sim_out = np.full(k, -np.inf, dtype=np.float32)

    # Every copy of a row gets the same exact score, so keeping the first copy is enough.
    keep = kernels.dedupe_max(rows, np.zeros(len(rows), dtype=np.float32))
    if compiled_filter is not None and compiled_filter.has_conditions:
        keep &= compiled_filter.mask(rows)
    candidates = rows[keep]  # (m',) scoring only what passed
    sim = store.scores(xq, candidates)
    score = sim
    if boost is not None and boost.is_active:
        score = kernels.boost_scores(sim, candidates, columns.signals, boost.weights)
    positions = _select(score, candidates, k, store, columns, diversity)
    n_out = len(positions)
    D[:n_out] = score[positions]
    I[:n_out] = candidates[positions]
    sim_out[:n_out] = sim[positions]
    return D, I, sim_out


def _select(
    score: np.ndarray,
    candidates: np.ndarray,
    k: int,
    store: VectorStore,
    columns: ItemColumns,
    diversity: DiversitySpec | None,
) -> np.ndarray:
    """Positions of the results in ``candidates``, in result order."""
    if diversity is None or not diversity.is_active:
        return kernels.topk_indices(score, candidates, k)
    use_mmr = diversity.mmr_lambda > 0
    pool = max(_MMR_POOL_FACTOR * k, _MMR_MIN_POOL) if use_mmr else k
    if diversity.max_per_category > 0:
        order = kernels.topk_indices(score, candidates, len(candidates))  # full ranking
        capped = kernels.cap_per_group(
            candidates[order], columns.category_codes, diversity.max_per_category, pool
        )
        positions = order[capped]
    else:
        positions = kernels.topk_indices(score, candidates, pool)
    if use_mmr and len(positions):
        pool_vectors = store.gather(candidates[positions])  # (pool, dim) float32
        local = np.arange(len(positions), dtype=np.int64)  # ties: the better-ranked one
        picked = kernels.mmr_select(
            pool_vectors, local, score[positions], float(diversity.mmr_lambda), k
        )
        positions = positions[picked]
    return positions


def select(
    score: np.ndarray,
    candidates: np.ndarray,
    k: int,
    store: VectorStore,
    columns: ItemColumns,
    diversity: DiversitySpec | None,
) -> np.ndarray:
    """Positions of the top-k of (m,) float32 ``score`` over (m,) int64 ``candidates``, in result
    order, with the diversity rules applied: for callers that score candidates their own way
    (hybrid fusion) but want the same top-k, category cap and MMR as ``rerank``."""
    return _select(score, candidates, k, store, columns, diversity)


# ----------------------------------------------------------------------------- widening


@dataclass(frozen=True)
class CandidatePlan:
    """Where a request's candidates come from.

    Attributes:
        depth: candidates to ask the ANN index for (0 when exhaustive).
        exhaustive: score every matching row exactly instead of asking the index.
    """

    depth: int
    exhaustive: bool


def candidate_depth(
    k: int, offset: int, selectivity: float, n_items: int, base: int = DEFAULT_BASE_DEPTH
) -> int:
    """ANN candidates to fetch so that ``offset + k`` pass a filter of this selectivity:
    ``max(base, ceil((offset + k) / selectivity * SAFETY))``, at most ``n_items``."""
    need = offset + k
    if selectivity <= 0:
        return 0
    depth = max(base, need)
    if selectivity < 1:
        depth = max(depth, math.ceil(need / selectivity * _SAFETY))
    return int(min(depth, n_items))


def plan_candidates(
    k: int, offset: int, selectivity: float, n_items: int, base: int = DEFAULT_BASE_DEPTH
) -> CandidatePlan:
    """ANN depth, or exhaustive scoring of the matching rows (see the module docstring)."""
    if k < 1 or offset < 0 or base < 1 or not 0.0 <= selectivity <= 1.0:
        raise ValueError(
            f"need k >= 1, offset >= 0, base >= 1, selectivity in [0, 1]; got k={k}, "
            f"offset={offset}, base={base}, selectivity={selectivity}"
        )
    if selectivity >= 1.0:
        return CandidatePlan(depth=min(max(base, offset + k), n_items), exhaustive=False)
    n_match = round(selectivity * n_items)
    depth = candidate_depth(k, offset, selectivity, n_items, base)
    raw_depth = math.ceil((offset + k) / selectivity * _SAFETY) if selectivity > 0 else 0
    if (
        selectivity < MIN_ANN_SELECTIVITY
        or n_match <= max(depth, BRUTE_FORCE_ROWS)
        or raw_depth > MAX_ANN_DEPTH
    ):
        return CandidatePlan(depth=0, exhaustive=True)
    return CandidatePlan(depth=depth, exhaustive=False)


def search_and_rerank(
    xq: np.ndarray,
    k: int,
    search: Callable[[int], np.ndarray],
    vectors: VectorStore | np.ndarray,
    columns: ItemColumns,
    compiled_filter: CompiledFilter | None = None,
    boost: BoostSpec | None = None,
    diversity: DiversitySpec | None = None,
    *,
    offset: int = 0,
    base_depth: int = DEFAULT_BASE_DEPTH,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fetch ANN candidates (widening for selective filters) and re-rank them.

    Args:
        xq: (dim,) float32 query.
        k: results wanted, >= 1.
        search: ``search(depth) -> (depth,) int64 global rows`` (-1 padding allowed), e.g.
            ``lambda d: version.search(xq[None], d)[1][0]``.
        vectors, columns, compiled_filter, boost, diversity: as for ``rerank``.
        offset: results to skip (paging); ranks ``offset .. offset + k - 1`` come back.
        base_depth: candidates fetched when no filter is set.

    Returns:
        D, I, sim: (k,) each, as for ``rerank``. Whenever ``offset + k`` items pass the filter,
        none is padding (diversity caps aside).
    """
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    need = offset + k
    n = columns.n_items
    filtered = compiled_filter is not None and compiled_filter.has_conditions
    sel = selectivity(compiled_filter) if filtered else 1.0
    n_match = len(matching_rows(compiled_filter, columns)) if filtered else n
    plan = plan_candidates(k, offset, sel, n, base_depth)
    while True:
        if plan.exhaustive:
            candidates = matching_rows(compiled_filter, columns) if filtered else np.arange(n)
        else:
            candidates = np.asarray(search(plan.depth), dtype=np.int64).reshape(-1)
        D, I, sim = rerank(
            xq, vectors, candidates, need, columns, compiled_filter, boost, diversity
        )
        found = int((I >= 0).sum())
        if plan.exhaustive or found >= min(need, n_match):
            break
        # The query's neighbourhood passes the filter less often than the catalog: widen.
        depth = plan.depth * _WIDEN_FACTOR
        logger.debug("widening: %d of %d results at depth %d", found, need, plan.depth)
        plan = (
            CandidatePlan(depth=0, exhaustive=True)
            if depth > MAX_ANN_DEPTH or depth >= n
            else CandidatePlan(depth=depth, exhaustive=False)
        )
    return D[offset:], I[offset:], sim[offset:]
