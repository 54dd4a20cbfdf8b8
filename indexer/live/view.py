"""The read side of a live index: ``LiveView`` over an immutable ``LiveState``, and the buffers
the writer shares with its views.

A ``LiveIndex`` publishes a ``LiveState`` after each update: its seq and counts, and references
to the writer's append-only, seq-stamped structures as of then. A view ignores everything
stamped after its seq (the concurrency model is described in ``indexer.live.index``).
``search`` merges the base version's results, tombstones dropped, with an exact search of the
delta rows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer.rerank.columns import ItemColumns
from indexer.rerank.vectors import VectorStore
from indexer.version import IndexVersion, check_queries, merge_topk

__all__ = ["GrowableRows", "LiveState", "LiveView", "RescoringStore", "UnknownItemError"]

_DELTA_BLOCK = 65536  # delta rows scored per block: bounds the (nq, block) score matrix


class UnknownItemError(KeyError, ValueError):
    """An item id the live index does not hold (never indexed, or deleted).

    Both a KeyError (a lookup failed) and a ValueError (bad input to an update call).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class GrowableRows:
    """Append-only rows with spare capacity. ``buf[:n]`` is valid; growth copies into a new buffer,
    so a reader holding the old buffer keeps a consistent prefix."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.buf = np.zeros((16, *shape), dtype=dtype)
        self.n = 0

    def append(self, block: np.ndarray) -> None:
        """Add ``block`` (m, *shape) after the valid rows (the writer's side)."""
        end = self.n + len(block)
        if end > len(self.buf):
            # Geometric growth (x2 while small, x1.25 once large): O(1) amortised appends
            # without doubling the memory of a million-row store.
            size = len(self.buf)
            capacity = max(end, size + max(size // 4, min(size, 4096)))
            grown = np.zeros((capacity, *self.buf.shape[1:]), self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown  # readers of the old buffer are unaffected
        self.buf[self.n : end] = block
        self.n = end


class RescoringStore:
    """A live index's re-scoring vectors by row: the base's stored vectors (in their encoding),
    then the delta rows. Made on first use, then appended to by the writer.

    Args:
        base: the base version.
        delta_vectors: the writer's delta vectors, copied in when the store is made.
        write_lock: the writer's lock; the store is made under it, so no append is missed.
    """

    def __init__(
        self, base: IndexVersion, delta_vectors: GrowableRows, write_lock: threading.Lock
    ) -> None:
        self._base = base
        self._delta_vectors = delta_vectors
        self._write_lock = write_lock
        self._data: GrowableRows | None = None  # set last: readers test it without the lock
        self._scales: GrowableRows | None = None
        self._kind = "f32"

    def head(self, n_rows: int) -> VectorStore:
        """A ``VectorStore`` of rows [0, n_rows); the first call copies the base vectors into a
        growable buffer."""
        if self._data is None:
            with self._write_lock:  # the writer must not append while the store is filled
                if self._data is None:
                    self._fill()
        assert self._data is not None
        scales = self._scales
        # The buffers may have grown since, and n_rows rows are in either one.
        return VectorStore(
            self._kind, self._data.buf[:n_rows], None if scales is None else scales.buf[:n_rows]
        )

    def append(self, vectors: np.ndarray) -> None:
        """Add delta rows' (m, dim) float32 vectors (the writer, under its lock); a no-op until
        the store is made."""
        if self._data is None:
            return
        encoded = VectorStore.encode(vectors, self._kind)
        if self._scales is not None:
            self._scales.append(encoded.scales)
        self._data.append(encoded.data)

    def _fill(self) -> None:
        base = self._base
        store = base.vector_store() if hasattr(base, "vector_store") else None
        if store is None:
            store = VectorStore.from_index(base)
        data = GrowableRows(store.data.shape[1:], store.data.dtype)
        data.append(np.asarray(store.data))
        scales = None
        if store.scales is not None:
            scales = GrowableRows((), np.float32)
            scales.append(np.asarray(store.scales))
        self._kind = store.kind
        self._scales = scales
        delta = self._delta_vectors
        if delta.n:
            encoded = VectorStore.encode(delta.buf[: delta.n], store.kind)
            if scales is not None:
                scales.append(encoded.scales)
            data.append(encoded.data)
        self._data = data


@dataclass(frozen=True, eq=False)
class LiveState:
    """A ``LiveIndex``'s state at one seq, as its views read it.

    The counts and the delta buffers are those of that seq; the other references are the
    writer's shared structures, append-only and stamped with the seq of each change (a reader
    ignores stamps after its seq). ``overlay_lock`` guards iterating ``overrides`` against the
    writer adding a key.
    """

    seq: int  # the last update it includes
    n_delta: int  # delta rows (dead ones included)
    n_items: int  # live items
    n_dead_base: int  # base rows tombstoned by this seq
    pending_updates: int  # log records applied on top of the base version
    base: IndexVersion
    dead_base: np.ndarray  # (n_base,) int64 seq that killed each base row, 0 = alive
    delta_vectors: np.ndarray  # (>= n_delta, dim) float32 delta vectors by delta row
    delta_dead: np.ndarray  # (>= n_delta,) int64 seq that killed each delta row, 0 = alive
    delta_ids: list[str]  # item id of each delta row
    delta_records: list[dict[str, Any]]  # upserted record of each delta row
    id_rows: dict[str, list[tuple[int, int]]]  # item id -> [(seq, row or -1 = deleted)]
    overrides: dict[int, list[tuple[int, dict[str, Any]]]]  # row -> [(seq, attributes)]
    overlay_lock: threading.Lock
    store: RescoringStore


class LiveView:
    """The state of a ``LiveIndex`` at one seq. Immutable; safe to use from many threads.

    Attributes:
        seq: the last update it includes.
        n_rows: row space size (base rows + delta rows, dead ones included).
        n_items: live items.
        pending_updates: log records applied on top of the base version.
    """

    def __init__(self, state: LiveState) -> None:
        self._state = state
        self._base = state.base
        self.seq = state.seq
        self.dim = state.base.dim
        self.n_base = state.base.n_items
        self.n_delta = state.n_delta
        self.n_rows = self.n_base + self.n_delta
        self.n_items = state.n_items
        self.pending_updates = state.pending_updates
        self._cache: dict[str, Any] = {}
        self._cache_lock = threading.RLock()  # columns() builds items under it

    def __repr__(self) -> str:
        return f"LiveView(seq={self.seq}, n_items={self.n_items}, n_rows={self.n_rows})"

    @property
    def manifest(self) -> Any:
        return self._base.manifest

    # ------------------------------------------------------------------ rows and items

    def _check_row(self, row: int) -> int:
        row = int(row)
        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} out of range for {self.n_rows} rows")
        return row

    def is_live(self, row: int) -> bool:
        """Whether ``row`` holds a live item in this view."""
        row = self._check_row(row)
        if row < self.n_base:
            killed = self._state.dead_base[row]
        else:
            killed = self._state.delta_dead[row - self.n_base]
        return not 0 < killed <= self.seq

    def row_of(self, item_id: str) -> int:
        """Row of a live item; ``UnknownItemError`` (a KeyError) if not live in this view."""
        history = self._state.id_rows.get(item_id)
        if history:
            for seq, row in reversed(history):
                if seq <= self.seq:
                    if row < 0:
                        raise UnknownItemError(f"item {item_id!r} was deleted (update seq {seq})")
                    return row
        try:
            return self._base.row_of(item_id)
        except KeyError:
            raise UnknownItemError(f"no item {item_id!r} in this index") from None

    def item_id(self, row: int) -> str:
        row = self._check_row(row)
        if row < self.n_base:
            return str(self._base.item_ids[row])
        return self._state.delta_ids[row - self.n_base]

    @property
    def item_ids(self) -> np.ndarray:
        """(n_rows,) object array: the item id of every row (dead rows included)."""
        return self._cached("item_ids", self._make_item_ids)

    def _make_item_ids(self) -> np.ndarray:
        delta = np.empty(self.n_delta, dtype=object)
        delta[:] = self._state.delta_ids[: self.n_delta]
        return np.concatenate([self._base.item_ids, delta])

    def record(self, row: int) -> dict[str, Any]:
        """Attributes of the item at ``row`` with attribute updates applied, nulls omitted.

        Dead rows still answer (a search result stays readable while a delete races it).
        """
        row = self._check_row(row)
        if row < self.n_base:
            record = self._base.record(row)
        else:
            record = dict(self._state.delta_records[row - self.n_base])
        fields = _at(self._state.overrides.get(row), self.seq)
        if fields:
            for name, value in fields.items():
                if value is None:
                    record.pop(name, None)
                else:
                    record[name] = value
        return record

    def dead_rows(self) -> np.ndarray:
        """(n_dead,) int64 ascending: rows that hold no live item (pass them to re-ranking's
        ``FilterSpec.exclude_rows`` when it scores rows without searching, e.g. exhaustively)."""
        return self._cached("dead_rows", self._make_dead_rows)

    def _make_dead_rows(self) -> np.ndarray:
        base = self._state.dead_base
        delta = self._state.delta_dead[: self.n_delta]
        return np.concatenate(
            [
                np.flatnonzero((base > 0) & (base <= self.seq)),
                self.n_base + np.flatnonzero((delta > 0) & (delta <= self.seq)),
            ]
        ).astype(np.int64)

    @property
    def items(self) -> pa.Table:
        """(n_rows rows) every row's attributes with updates applied, the base's columns.

        Built on first use per view: O(n_rows).
        """
        return self._cached("items", self._make_items)

    def _make_items(self) -> pa.Table:
        state = self._state
        with state.overlay_lock:
            overridden = list(state.overrides.items())
        # Column -> (rows, values) of the base rows whose attributes changed by this seq.
        patches: dict[str, tuple[list[int], list[Any]]] = {}
        for row, history in sorted(overridden):
            fields = _at(history, self.seq)
            if row >= self.n_base or not fields:
                continue
            for name, value in fields.items():
                rows, values = patches.setdefault(name, ([], []))
                rows.append(row)
                values.append(value)
        base = self._base.items
        schema = base.schema
        for name, (rows, values) in patches.items():
            mask = np.zeros(self.n_base, dtype=bool)
            mask[rows] = True
            column = base.column(name).combine_chunks()
            replacements = pa.array(values, type=column.type)
            j = base.schema.get_field_index(name)
            base = base.set_column(j, name, pc.replace_with_mask(column, mask, replacements))
        if not self.n_delta:
            return base
        delta_records = [self.record(self.n_base + j) for j in range(self.n_delta)]
        return pa.concat_tables([base, pa.Table.from_pylist(delta_records, schema=schema)])

    def columns(self) -> ItemColumns:
        """``ItemColumns`` of ``items`` (row-aligned, n_rows rows), cached."""
        return self._cached("columns", lambda: ItemColumns.from_table(self.items))

    # ------------------------------------------------------------------ vectors

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of ``rows`` (each in [0, n_rows)) as (m, dim) float32, a copy."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"rows must be in [0, {self.n_rows}), got {rows.min()}..{rows.max()}")
        out = np.empty((len(rows), self.dim), dtype=np.float32)  # (m, dim)
        in_base = rows < self.n_base
        if in_base.any():
            out[in_base] = self._base.vectors(rows[in_base])
        if not in_base.all():
            out[~in_base] = self._state.delta_vectors[rows[~in_base] - self.n_base]
        return out

    def vector_store(self) -> VectorStore:
        """A ``VectorStore`` over all n_rows rows (the base's encoding), for ``rerank``. The
        first call copies the base vectors into a growable buffer."""
        return self._cached("vector_store", lambda: self._state.store.head(self.n_rows))

    def search(
        self, xq: np.ndarray, k: int, *, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k live items by inner product: the base (tombstones dropped) merged with the delta.

        The base is asked for ``k + (tombstoned base rows)`` results, enough that k live ones
        remain even when every tombstone ranks high; the delta is searched exactly.

        Args:
            xq: (nq, dim) float32 queries.
            k: results per query, >= 1.
            params: ``nprobe`` / ``efSearch`` overrides for the base, as ``IndexVersion.search``.

        Returns:
            D: (nq, k) float32 scores, descending (ties by lower row); padding -FLT_MAX.
            I: (nq, k) int64 rows; padding -1.
        """
        xq, k = check_queries(xq, k, self.dim)
        nq = len(xq)
        state = self._state
        D_parts, I_parts = [], []
        if self.n_base:
            k_base = min(self.n_base, k + state.n_dead_base)
            D_b, I_b = self._base.search(xq, k_base, params=params)
            if state.n_dead_base:
                killed = state.dead_base[np.where(I_b >= 0, I_b, 0)]
                dead = (I_b >= 0) & (killed > 0) & (killed <= self.seq)
                I_b = np.where(dead, -1, I_b)
            D_parts.append(D_b)
            I_parts.append(I_b)
        for start in range(0, self.n_delta, _DELTA_BLOCK):
            end = min(self.n_delta, start + _DELTA_BLOCK)
            scores = xq @ state.delta_vectors[start:end].T  # (nq, block)
            killed = state.delta_dead[start:end]
            scores[:, (killed > 0) & (killed <= self.seq)] = -np.inf
            kk = min(k, end - start)
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]  # (nq, kk), unordered
            D_d = np.take_along_axis(scores, top, axis=1)
            I_d = np.where(np.isneginf(D_d), -1, top + self.n_base + start)
            D_parts.append(D_d.astype(np.float32))
            I_parts.append(I_d.astype(np.int64))
        return merge_topk(D_parts, I_parts, nq, k)

    def _cached(self, key: str, make: Any) -> Any:
        value = self._cache.get(key)
        if value is None:
            with self._cache_lock:
                value = self._cache.get(key)
                if value is None:
                    value = self._cache[key] = make()
        return value


def _at(history: list[tuple[int, Any]] | None, seq: int) -> Any:
    """The newest value stamped at or before ``seq``, or None."""
    if history:
        for stamp, value in reversed(history):
            if stamp <= seq:
                return value
    return None
