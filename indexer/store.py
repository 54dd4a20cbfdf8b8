"""Read a published index version: its manifest, shards, stored vectors and item attributes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.layout import ITEMS_FILE, resolve_version_dir
from indexer.manifest import (
    MANIFEST_NAME,
    IndexFormatError,
    Manifest,
    ModelMismatchError,
    load_manifest,
    verify_files,
)

__all__ = ["SEARCH_PARAMS", "IndexVersion"]

logger = logging.getLogger(__name__)

SEARCH_PARAMS = ("nprobe", "efSearch")
# FAISS uses BLAS for flat search only from this many queries on (default 20); below it, it loops
# one query at a time, ~8x slower at batch 64 with the same results.
_BLAS_THRESHOLD = 16
_MISSING_SCORE = np.float32(-np.finfo(np.float32).max)  # FAISS's own "no result" score for IP


class IndexVersion:
    """One opened, read-only index version. Safe to search from many threads at once.

    Attributes:
        manifest: the version's manifest.
        path: the version dir.
        version, dim, n_items: from the manifest.
        item_ids: (n_items,) object array of str; global row r is item ``item_ids[r]``.
        items: item attributes (all catalog columns), row-aligned with ``item_ids``.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        indexes: list[faiss.Index],
        shard_vectors: list[np.ndarray],
        shard_rows: list[np.ndarray],
        items: pa.Table,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.version = manifest.version
        self.dim = manifest.dim
        self.n_items = manifest.n_items
        self.items = items
        self.item_ids = np.asarray(items.column("item_id").to_pylist(), dtype=object)
        self._indexes = indexes
        self._shard_vectors = shard_vectors  # per shard: (n_s, dim) float32 memmap
        # Global row -> (shard, position in shard), to gather stored vectors by row.
        self._row_shard = np.empty(self.n_items, dtype=np.int32)
        self._row_local = np.empty(self.n_items, dtype=np.int64)
        for s, rows in enumerate(shard_rows):
            self._row_shard[rows] = s
            self._row_local[rows] = np.arange(len(rows))
        self._row_by_id: dict[str, int] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"IndexVersion(path={str(self.path)!r}, version={self.version}, "
            f"n_items={self.n_items}, dim={self.dim}, shards={m.n_shards}, factory={m.factory!r})"
        )

    @classmethod
    def open(
        cls, path: str | Path, *, verify: bool = True, expected_fingerprint: str | None = None
    ) -> IndexVersion:
        """Open an index root (follows CURRENT) or a version dir.

        Args:
            path: index root or version dir.
            verify: check every file's sha256 against the manifest (reads every byte once).
            expected_fingerprint: fingerprint of the model that will encode queries; the index
                must have been built with the same model.

        Raises:
            IndexFormatError: missing, corrupt or inconsistent files (the message names the file).
            ModelMismatchError: the index was built with another model.
        """
        version_dir = resolve_version_dir(path)
        manifest = load_manifest(version_dir / MANIFEST_NAME)
        if expected_fingerprint is not None and expected_fingerprint != manifest.model_fingerprint:
            raise ModelMismatchError(
                f"{version_dir}: index was built with model fingerprint "
                f"{manifest.model_fingerprint} ({manifest.model_path}), but the model in use has "
                f"fingerprint {expected_fingerprint}; rebuild the index with this model "
                f"(aisle-index build --model ...) or serve the model the index was built with"
            )
        if verify:
            verify_files(version_dir, manifest)
        # Process-wide FAISS setting; only ever lowered, so it is safe to set from any thread.
        faiss.cvar.distance_compute_blas_threshold = min(
            faiss.cvar.distance_compute_blas_threshold, _BLAS_THRESHOLD
        )

        indexes, shard_vectors, shard_rows = [], [], []
        for info in manifest.shards:
            index_path = version_dir / info.index_file
            try:
                index = faiss.read_index(str(index_path))
            except RuntimeError as e:
                raise IndexFormatError(f"{index_path}: not a readable FAISS index ({e})") from e
            if index.ntotal != info.count or index.d != manifest.dim:
                raise IndexFormatError(
                    f"{index_path}: holds {index.ntotal} vectors of dim {index.d}, manifest says "
                    f"{info.count} of dim {manifest.dim}"
                )
            xb = _load_npy(version_dir / info.vectors_file, (info.count, manifest.dim), np.float32)
            rows = _load_npy(version_dir / info.rows_file, (info.count,), np.int64, mmap=False)
            indexes.append(index)
            shard_vectors.append(xb)
            shard_rows.append(rows)

        _check_rows_partition(version_dir, shard_rows, manifest.n_items)
        items_path = version_dir / ITEMS_FILE
        try:
            items = pq.read_table(items_path)
        except (OSError, pa.ArrowException) as e:
            raise IndexFormatError(f"{items_path}: not a readable Parquet file ({e})") from e
        if items.num_rows != manifest.n_items or "item_id" not in items.column_names:
            raise IndexFormatError(
                f"{items_path}: expected {manifest.n_items} rows with an item_id column, got "
                f"{items.num_rows} rows and columns {items.column_names}"
            )
        logger.info(
            "opened index version %d (%d items, %d shards, %s) from %s",
            manifest.version,
            manifest.n_items,
            manifest.n_shards,
            manifest.factory,
            version_dir,
        )
        return cls(version_dir, manifest, indexes, shard_vectors, shard_rows, items)

    def row_of(self, item_id: str) -> int:
        """Global row of ``item_id``; KeyError if the index does not hold it."""
        if self._row_by_id is None:
            with self._lock:  # built once, on first use: most callers never need it
                if self._row_by_id is None:
                    self._row_by_id = {item: r for r, item in enumerate(self.item_ids)}
        return self._row_by_id[item_id]

    def record(self, row: int) -> dict[str, Any]:
        """Attributes of the item at global ``row``, nulls omitted; IndexError if out of range."""
        row = int(row)
        if not 0 <= row < self.n_items:
            raise IndexError(f"row {row} out of range for {self.n_items} items")
        values = self.items.slice(row, 1).to_pylist()[0]
        return {key: value for key, value in values.items() if value is not None}

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of global ``rows``.

        Args:
            rows: (m,) int global rows, each in [0, n_items) (no -1).

        Returns:
            (m, dim) float32, a copy.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_items):
            raise IndexError(f"rows must be in [0, {self.n_items}), got {rows.min()}..{rows.max()}")
        out = np.empty((len(rows), self.dim), dtype=np.float32)  # (m, dim)
        shards = self._row_shard[rows]
        local = self._row_local[rows]
        for s in np.unique(shards):
            mask = shards == s
            out[mask] = self._shard_vectors[s][local[mask]]
        return out

    def search(
        self, xq: np.ndarray, k: int, *, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product over all shards.

        Args:
            xq: (nq, dim) float32 queries.
            k: results per query, >= 1 (may exceed n_items; the rest is padding).
            params: per-call overrides of ``manifest.search_defaults``: ``nprobe`` (IVF) and
                ``efSearch`` (HNSW); a parameter that does not apply to this index is ignored.

        Returns:
            D: (nq, k) float32 scores, descending (ties by lower row); padding is -FLT_MAX.
            I: (nq, k) int64 global rows; padding is -1.
        """
        xq = np.asarray(xq)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise ValueError(f"xq must have shape (nq, {self.dim}), got {xq.shape}")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        merged = {**self.manifest.search_defaults, **(params or {})}
        unknown = set(merged) - set(SEARCH_PARAMS)
        if unknown:
            raise ValueError(f"unknown search params {sorted(unknown)}; known: {SEARCH_PARAMS}")
        for name, value in merged.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"search param {name} must be an integer >= 1, got {value!r}")

        nq = len(xq)
        D_parts, I_parts = [], []
        for index, info in zip(self._indexes, self.manifest.shards, strict=True):
            if info.count == 0 or nq == 0:
                continue
            keep: list[Any] = []  # SWIG param objects must outlive the search call
            sp = _search_parameters(index, merged, keep)
            D_s, I_s = index.search(xq, min(k, info.count), params=sp)
            D_parts.append(D_s)
            I_parts.append(I_s)
        return _merge_topk(D_parts, I_parts, nq, k)


def _merge_topk(
    D_parts: list[np.ndarray], I_parts: list[np.ndarray], nq: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard results (nq, k_s) into the global top-k, ties broken by lower row."""
    D = np.full((nq, k), _MISSING_SCORE, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)  # noqa: E741 - FAISS notation
    if not D_parts:
        return D, I
    D_all = np.concatenate(D_parts, axis=1)  # (nq, sum k_s)
    I_all = np.concatenate(I_parts, axis=1).astype(np.int64, copy=False)
    missing = I_all < 0  # IVF returns -1 when the probed lists hold fewer than k_s items
    score_key = np.where(missing, np.inf, -D_all.astype(np.float64))
    row_key = np.where(missing, np.iinfo(np.int64).max, I_all)
    order = np.lexsort((row_key, score_key), axis=-1)[:, :k]  # primary: score desc; then row asc
    take = order.shape[1]
    I[:, :take] = np.take_along_axis(I_all, order, axis=1)
    D[:, :take] = np.take_along_axis(D_all, order, axis=1)
    D[I < 0] = _MISSING_SCORE
    return D, I


def _search_parameters(index: faiss.Index, params: dict[str, Any], keep: list[Any]) -> Any:
    """Per-call FAISS SearchParameters for ``index`` (no shared index state is mutated)."""
    if not params:
        return None
    part = faiss.downcast_index(index)  # a second proxy; `index` keeps owning the C++ object
    if isinstance(part, faiss.IndexIDMap | faiss.IndexIDMap2):
        # The id map hands its params straight to the wrapped index.
        return _search_parameters(part.index, params, keep)
    if isinstance(part, faiss.IndexPreTransform):
        inner = _search_parameters(part.index, params, keep)
        if inner is None:
            return None
        sp = faiss.SearchParametersPreTransform()
        sp.index_params = inner
    elif isinstance(part, faiss.IndexIVF) and "nprobe" in params:
        sp = faiss.SearchParametersIVF()
        sp.nprobe = int(params["nprobe"])
    elif isinstance(part, faiss.IndexHNSW) and "efSearch" in params:
        sp = faiss.SearchParametersHNSW()
        sp.efSearch = int(params["efSearch"])
    else:
        return None
    keep.append(sp)
    return sp


def _load_npy(path: Path, shape: tuple[int, ...], dtype: type, *, mmap: bool = True) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{path}: not a readable .npy file ({e})") from e
    if arr.shape != shape or arr.dtype != dtype:
        raise IndexFormatError(
            f"{path}: expected shape {shape} {np.dtype(dtype).name}, got {arr.shape} {arr.dtype}"
        )
    return arr


def _check_rows_partition(version_dir: Path, shard_rows: list[np.ndarray], n_items: int) -> None:
    # Every global row must live in exactly one shard, or search results would name wrong items.
    seen = np.zeros(n_items, dtype=np.int32)
    for rows in shard_rows:
        if rows.size and (rows.min() < 0 or rows.max() >= n_items):
            raise IndexFormatError(f"{version_dir}: shard rows fall outside [0, {n_items})")
        np.add.at(seen, rows, 1)
    if not (seen == 1).all():
        raise IndexFormatError(
            f"{version_dir}: shard rows files do not cover each of the {n_items} items exactly once"
        )
