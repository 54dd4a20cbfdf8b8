"""Read a published index version: its manifest, shards, stored vectors and item attributes."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.rerank.vectors import VECTOR_KINDS, VectorStore, vector_file_names
from indexer.storage.layout import ITEMS_FILE, resolve_version_dir
from indexer.storage.manifest import (
    MANIFEST_NAME,
    IndexFormatError,
    Manifest,
    ModelMismatchError,
    load_manifest,
    verify_files,
)

__all__ = [
    "SEARCH_PARAMS",
    "IndexVersion",
    "check_queries",
    "merge_topk",
    "search_parameters",
    "vector_files",
    "vector_kind",
]

logger = logging.getLogger(__name__)

SEARCH_PARAMS = ("nprobe", "efSearch")
# FAISS uses BLAS for flat search only from this many queries on (default 20); below it, it loops
# one query at a time, ~8x slower at batch 64 with the same results.
_BLAS_THRESHOLD = 16
_MAX_EFFORTS = 256  # cached SearchParameters per version (distinct nprobe/efSearch per shard)
_MISSING_SCORE = np.float32(-np.finfo(np.float32).max)  # FAISS's own "no result" score for IP
# Suffix of a shard's vectors file -> encoding (names written by VectorStore.save).
_VECTOR_SUFFIXES = {vector_file_names("", kind)[0]: kind for kind in VECTOR_KINDS}


def vector_files(shard: int, kind: str = "f32") -> list[str]:
    """File names of a shard's stored vectors in encoding ``kind``: the vectors file first
    (``ShardInfo.vectors_file``), then the i8 scales file. f32: ``shard_000.vectors.npy``;
    f16: ``shard_000.vectors_f16.npy``; i8: ``shard_000.vectors_i8.npy`` + ``shard_000.scales.npy``.
    """
    return vector_file_names(f"shard_{shard:03d}", kind)


def vector_kind(vectors_file: str) -> tuple[str, str]:
    """(encoding, file prefix) of a ``ShardInfo.vectors_file`` name, e.g. ("f16", "shard_000").

    Raises:
        IndexFormatError: a name none of the encodings writes.
    """
    for suffix, kind in _VECTOR_SUFFIXES.items():
        if vectors_file.endswith(suffix) and len(vectors_file) > len(suffix):
            return kind, vectors_file[: -len(suffix)]
    raise IndexFormatError(
        f"vectors file {vectors_file!r} has none of the known suffixes {list(_VECTOR_SUFFIXES)}"
    )


class IndexVersion:
    """One opened, read-only index version. Safe to search from many threads at once.

    Attributes:
        manifest: the version's manifest.
        path: the version dir.
        version, dim, n_items: from the manifest.
        item_ids: (n_items,) object array of str; global row r is item ``item_ids[r]``.
        items: item attributes (all catalog columns), row-aligned with ``item_ids``.
        vector_kind: encoding of the stored vectors: "f32", "f16" or "i8" (``--vectors``).
        loaded_shards: the shards whose FAISS index and vectors are loaded (all unless opened
            with ``shards=``; a shard server holds one).
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        indexes: list[faiss.Index | None],
        shard_vectors: list[VectorStore | np.ndarray | None],
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
        # (shard, params) -> (SearchParameters, the SWIG objects it points to): built once per
        # effort setting; FAISS only reads them, so concurrent searches share one.
        self._search_params: dict[tuple, tuple[Any, list[Any]]] = {}
        # Per shard: its stored vectors by local position (memory-mapped); a plain array is
        # taken as float32 vectors.
        # None: a shard this process does not hold (opened with ``shards=``).
        self._shard_vectors: list[VectorStore | None] = [
            v
            if v is None or isinstance(v, VectorStore)
            else VectorStore("f32", np.asarray(v, np.float32))
            for v in shard_vectors
        ]
        self.loaded_shards = tuple(s for s, v in enumerate(self._shard_vectors) if v is not None)
        kinds = {v.kind for v in self._shard_vectors if v is not None}
        self.vector_kind = kinds.pop() if len(kinds) == 1 else "f32"
        self._shard_rows = shard_rows
        self._global_store: VectorStore | None = None
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
        cls,
        path: str | Path,
        *,
        verify: bool = True,
        expected_fingerprint: str | None = None,
        shards: Sequence[int] | None = None,
    ) -> IndexVersion:
        """Open an index root (follows CURRENT) or a version dir.

        Args:
            path: index root or version dir.
            verify: check every file's sha256 against the manifest (reads every byte once).
            expected_fingerprint: fingerprint of the model that will encode queries; the index
                must have been built with the same model.
            shards: load only these shards' FAISS indexes and stored vectors (a shard server
                holds one; a router none); None loads every shard. The items table and every
                shard's rows file are always read, so global rows, item ids and attributes stay
                whole; ``search`` covers the loaded shards only, and ``vectors`` of rows held by
                another shard raise IndexError. Only the loaded files are verified.

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
        wanted = _wanted_shards(shards, manifest)
        if verify:
            verify_files(version_dir, _without_shard_files(manifest, wanted))
        # Process-wide FAISS setting; only ever lowered, so it is safe to set from any thread.
        faiss.cvar.distance_compute_blas_threshold = min(
            faiss.cvar.distance_compute_blas_threshold, _BLAS_THRESHOLD
        )

        indexes, shard_vectors, shard_rows = [], [], []
        for info in manifest.shards:
            rows = _load_npy(version_dir / info.rows_file, (info.count,), np.int64, mmap=False)
            shard_rows.append(rows)
            if info.shard not in wanted:
                indexes.append(None)
                shard_vectors.append(None)
                continue
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
            xb = _load_vectors(version_dir, info.vectors_file, (info.count, manifest.dim))
            indexes.append(index)
            shard_vectors.append(xb)

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
            out[mask] = self._loaded_store(int(s)).gather(local[mask])  # decodes f16 / i8
        return out

    def shard_rows(self, shard: int) -> np.ndarray:
        """(n_s,) int64 global rows of ``shard``; position i holds the shard's i-th vector."""
        return self._shard_rows[shard]

    def vector_store(self, shard: int | None = None) -> VectorStore:
        """The stored vectors as an ``indexer.rerank.vectors.VectorStore`` (in ``vector_kind``).

        Args:
            shard: None for a global view indexed by global row (what ``rerank`` takes), or a
                shard number for that shard's vectors indexed by position in the shard (map
                with ``shard_rows``).

        A shard's store is the memory-mapped file itself. The global view is that same store
        when there is one shard (its rows are 0..n-1); with several shards it is gathered into
        RAM once, on first use, and cached.
        """
        if shard is not None:
            return self._loaded_store(shard)
        if self._global_store is None:
            with self._lock:
                if self._global_store is None:
                    self._global_store = self._gather_global_store()
        return self._global_store

    def _loaded_store(self, shard: int) -> VectorStore:
        store = self._shard_vectors[shard]
        if store is None:
            raise IndexError(
                f"shard {shard} is not loaded in this process (opened with shards="
                f"{list(self.loaded_shards)}); ask the server that holds it"
            )
        return store

    def _gather_global_store(self) -> VectorStore:
        stores = [self._loaded_store(s) for s in range(len(self._shard_vectors))]
        if len(stores) == 1:  # one shard holds rows 0..n-1 in order: no copy
            return stores[0]
        first = stores[0]
        data = np.empty((self.n_items, self.dim), dtype=first.data.dtype)  # (n, dim)
        scales = np.empty(self.n_items, np.float32) if first.kind == "i8" else None
        for store, rows in zip(stores, self._shard_rows, strict=True):
            data[rows] = store.data
            if scales is not None:
                scales[rows] = store.scales
        logger.info(
            "gathered %d %s vectors of %d shards into one re-scoring store (%.1f MB)",
            self.n_items,
            first.kind,
            len(stores),
            (data.nbytes + (0 if scales is None else scales.nbytes)) / 1e6,
        )
        return VectorStore(first.kind, data, scales)

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
        xq, k = check_queries(xq, k, self.dim)
        # search_defaults also records how the effort was tuned (measured_recall, ...): only
        # the search parameters in it apply.
        defaults = {
            name: value
            for name, value in self.manifest.search_defaults.items()
            if name in SEARCH_PARAMS
        }
        unknown = set(params or {}) - set(SEARCH_PARAMS)
        if unknown:
            raise ValueError(f"unknown search params {sorted(unknown)}; known: {SEARCH_PARAMS}")
        merged = {**defaults, **(params or {})}
        for name, value in merged.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"search param {name} must be an integer >= 1, got {value!r}")

        if not self.loaded_shards:
            raise ValueError(
                "this IndexVersion was opened with shards=() (catalog only): it holds no shard "
                "to search; search through the shard servers"
            )
        nq = len(xq)
        D_parts, I_parts = [], []
        effort = tuple(sorted(merged.items()))
        shards = zip(self._indexes, self.manifest.shards, strict=True)
        for shard, (index, info) in enumerate(shards):
            if index is None or info.count == 0 or nq == 0:  # None: a shard held elsewhere
                continue
            cached = self._search_params.get((shard, effort))
            if cached is None:
                keep: list[Any] = []  # SWIG param objects must outlive every search using them
                cached = (search_parameters(index, merged, keep), keep)
                if len(self._search_params) >= _MAX_EFFORTS:  # efforts a client may vary
                    self._search_params.clear()
                self._search_params[(shard, effort)] = cached
            D_s, I_s = index.search(xq, min(k, info.count), params=cached[0])
            D_parts.append(D_s)
            I_parts.append(I_s)
        return merge_topk(D_parts, I_parts, nq, k)


def check_queries(xq: np.ndarray, k: int, dim: int) -> tuple[np.ndarray, int]:
    """The arguments of a ``search``: ``xq`` as C-contiguous (nq, dim) float32 and ``k`` as an
    int >= 1; ValueError otherwise."""
    xq = np.asarray(xq)
    if xq.ndim != 2 or xq.shape[1] != dim:
        raise ValueError(f"xq must have shape (nq, {dim}), got {xq.shape}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return np.ascontiguousarray(xq, dtype=np.float32), int(k)


def merge_topk(
    D_parts: list[np.ndarray], I_parts: list[np.ndarray], nq: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge parts (per shard, or base and delta) of (nq, k_p) float32 scores and int rows (-1 =
    none) into the (nq, k) top-k: scores descending, ties by lower row, padded (-FLT_MAX, -1)."""
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
    query_rows = np.arange(nq)[:, None]  # plain fancy indexing: take_along_axis costs ~10x more
    I[:, :take] = I_all[query_rows, order]
    D[:, :take] = D_all[query_rows, order]
    D[I < 0] = _MISSING_SCORE
    return D, I


def search_parameters(index: faiss.Index, params: dict[str, Any], keep: list[Any]) -> Any:
    """Per-call FAISS SearchParameters for ``index`` (no shared index state is mutated).

    Args:
        index: any index of this package (IDMap, PreTransform and Refine wrappers are walked).
        params: ``nprobe`` and/or ``efSearch``; those that do not apply are ignored.
        keep: receives every SWIG parameter object made; keep it alive during the search.

    Returns:
        A ``faiss.SearchParameters`` or None (nothing applies: search with the defaults).
    """
    if not params:
        return None
    part = faiss.downcast_index(index)  # a second proxy; `index` keeps owning the C++ object
    if isinstance(part, faiss.IndexIDMap | faiss.IndexIDMap2):
        # The id map hands its params straight to the wrapped index.
        return search_parameters(part.index, params, keep)
    if isinstance(part, faiss.IndexPreTransform):
        inner = search_parameters(part.index, params, keep)
        if inner is None:
            return None
        sp = faiss.SearchParametersPreTransform()
        sp.index_params = inner
    elif isinstance(part, faiss.IndexRefine):
        # ",RFlat": nprobe / efSearch belong to the base index; k_factor keeps its own default.
        inner = search_parameters(part.base_index, params, keep)
        if inner is None:
            return None
        sp = faiss.IndexRefineSearchParameters()
        sp.base_index_params = inner
        sp.k_factor = part.k_factor
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


def _load_vectors(version_dir: Path, vectors_file: str, shape: tuple[int, int]) -> VectorStore:
    """A shard's stored vectors in whichever encoding its file name says, memory-mapped."""
    kind, prefix = vector_kind(vectors_file)
    store = VectorStore.load(version_dir, prefix, kind)
    if store.data.shape != shape:
        raise IndexFormatError(
            f"{version_dir / vectors_file}: expected shape {shape}, got {store.data.shape}"
        )
    return store


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


def _wanted_shards(shards: Sequence[int] | None, manifest: Manifest) -> frozenset[int]:
    if shards is None:
        return frozenset(range(manifest.n_shards))
    wanted = frozenset(int(s) for s in shards)
    bad = sorted(s for s in wanted if not 0 <= s < manifest.n_shards)
    if bad:
        raise ValueError(
            f"shards {bad} do not exist: this index version has shards 0..{manifest.n_shards - 1}"
        )
    return wanted


def _without_shard_files(manifest: Manifest, wanted: frozenset[int]) -> Manifest:
    """The manifest minus the checksums of shards not loaded (their rows files stay: read)."""
    skipped = set()
    for info in manifest.shards:
        if info.shard not in wanted:
            prefix = vector_kind(info.vectors_file)[1] + "."  # also catches compact copies
            skipped |= {n for n in manifest.files if n.startswith(prefix)}
            skipped |= {info.index_file, info.vectors_file}
            skipped.discard(info.rows_file)
    if not skipped:
        return manifest
    files = {name: digest for name, digest in manifest.files.items() if name not in skipped}
    return dataclasses.replace(manifest, files=files)
