"""The read side of a live index: ``LiveView``, its state at one seq, and the base + delta merge.

A view holds the seq it was taken at and references to the ``LiveIndex``'s buffers as of then;
it ignores everything stamped after its seq (the concurrency model is described in
``indexer.live``). ``search`` merges the base version's results, tombstones dropped, with an
exact search of the delta rows.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from indexer.live.index import LiveIndex

_MISSING_SCORE = np.float32(-np.finfo(np.float32).max)  # IndexVersion.search's padding score
_DELTA_BLOCK = 65536  # delta rows scored per block: bounds the (nq, block) score matrix


class UnknownItemError(KeyError, ValueError):
    """An item id the live index does not hold (never indexed, or deleted).

    Both a KeyError (a lookup failed) and a ValueError (bad input to an update call).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LiveView:
    """The state of a ``LiveIndex`` at one seq. Immutable; safe to use from many threads.

    Attributes:
        seq: the last update it includes.
        n_rows: row space size (base rows + delta rows, dead ones included).
        n_items: live items.
        pending_updates: log records applied on top of the base version.
    """

    def __init__(self, live: LiveIndex, seq: int) -> None:
        self._live = live
        self.seq = seq
        self.dim = live.base.dim
        self.n_base = live.n_base
        self.n_delta = len(live._delta_ids)
        self.n_rows = self.n_base + self.n_delta
        self.n_items = live._n_live
        self.pending_updates = live._pending
        self._n_dead_base = live._n_dead_base
        # The buffers as of now: later growth swaps in new buffers, later appends land past n.
        self._delta_vectors = live._delta_vectors.buf
        self._delta_dead = live._delta_dead.buf
        self._cache: dict[str, Any] = {}
        self._cache_lock = threading.RLock()  # columns() builds items under it

    def __repr__(self) -> str:
        return f"LiveView(seq={self.seq}, n_items={self.n_items}, n_rows={self.n_rows})"

    @property
    def manifest(self) -> Any:
        return self._live.base.manifest

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
            killed = self._live._dead_base[row]
        else:
            killed = self._delta_dead[row - self.n_base]
        return not 0 < killed <= self.seq

    def row_of(self, item_id: str) -> int:
        """Row of a live item; ``UnknownItemError`` (a KeyError) if not live in this view."""
        history = self._live._id_rows.get(item_id)
        if history:
            for seq, row in reversed(history):
                if seq <= self.seq:
                    if row < 0:
                        raise UnknownItemError(f"item {item_id!r} was deleted (update seq {seq})")
                    return row
        try:
            return self._live.base.row_of(item_id)
        except KeyError:
            raise UnknownItemError(f"no item {item_id!r} in this index") from None

    def item_id(self, row: int) -> str:
        row = self._check_row(row)
        if row < self.n_base:
            return str(self._live.base.item_ids[row])
        return self._live._delta_ids[row - self.n_base]

    @property
    def item_ids(self) -> np.ndarray:
        """(n_rows,) object array: the item id of every row (dead rows included)."""
        return self._cached("item_ids", self._make_item_ids)

    def _make_item_ids(self) -> np.ndarray:
        delta = np.empty(self.n_delta, dtype=object)
        delta[:] = self._live._delta_ids[: self.n_delta]
        return np.concatenate([self._live.base.item_ids, delta])

    def record(self, row: int) -> dict[str, Any]:
        """Attributes of the item at ``row`` with attribute updates applied, nulls omitted.

        Dead rows still answer (a search result stays readable while a delete races it).
        """
        return self._live._record_at(self._check_row(row), self.seq)

    def dead_rows(self) -> np.ndarray:
        """(n_dead,) int64 ascending: rows that hold no live item (pass them to re-ranking's
        ``FilterSpec.exclude_rows`` when it scores rows without searching, e.g. exhaustively)."""
        return self._cached("dead_rows", self._make_dead_rows)

    def _make_dead_rows(self) -> np.ndarray:
        base = self._live._dead_base
        delta = self._delta_dead[: self.n_delta]
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
        live = self._live
        schema = live._schema
        with live._overlay_lock:
            overridden = list(live._overrides.items())
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
        base = live.base.items
        for name, (rows, values) in patches.items():
            mask = np.zeros(self.n_base, dtype=bool)
            mask[rows] = True
            column = base.column(name).combine_chunks()
            replacements = pa.array(values, type=column.type)
            j = base.schema.get_field_index(name)
            base = base.set_column(j, name, pc.replace_with_mask(column, mask, replacements))
        if not self.n_delta:
            return base
        delta_records = [live._record_at(self.n_base + j, self.seq) for j in range(self.n_delta)]
        return pa.concat_tables([base, pa.Table.from_pylist(delta_records, schema=schema)])

    def columns(self) -> Any:
        """``indexer.rerank.ItemColumns`` of ``items`` (row-aligned, n_rows rows), cached."""

        def make() -> Any:
            from indexer.rerank.columns import ItemColumns

            return ItemColumns.from_table(self.items)

        return self._cached("columns", make)

    # ------------------------------------------------------------------ vectors

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of ``rows`` (each in [0, n_rows)) as (m, dim) float32, a copy."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"rows must be in [0, {self.n_rows}), got {rows.min()}..{rows.max()}")
        out = np.empty((len(rows), self.dim), dtype=np.float32)  # (m, dim)
        in_base = rows < self.n_base
        if in_base.any():
            out[in_base] = self._live.base.vectors(rows[in_base])
        if not in_base.all():
            out[~in_base] = self._delta_vectors[rows[~in_base] - self.n_base]
        return out

    def vector_store(self) -> Any:
        """An ``indexer.rerank.VectorStore`` over all n_rows rows (the base's encoding), for
        ``rerank``. The first call copies the base vectors into a growable buffer."""

        def make() -> Any:
            from indexer.rerank.vectors import VectorStore

            data, scales, kind = self._live._vector_store_rows()
            # The buffers may have grown past this view, and n_rows rows are in either one.
            return VectorStore(
                kind,
                data.buf[: self.n_rows],
                None if scales is None else scales.buf[: self.n_rows],
            )

        return self._cached("vector_store", make)

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
        xq = np.asarray(xq)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise ValueError(f"xq must have shape (nq, {self.dim}), got {xq.shape}")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        nq = len(xq)
        D_parts, I_parts = [], []
        if self.n_base:
            k_base = min(self.n_base, k + self._n_dead_base)
            D_b, I_b = self._live.base.search(xq, k_base, params=params)
            if self._n_dead_base:
                killed = self._live._dead_base[np.where(I_b >= 0, I_b, 0)]
                dead = (I_b >= 0) & (killed > 0) & (killed <= self.seq)
                I_b = np.where(dead, -1, I_b)
            D_parts.append(D_b)
            I_parts.append(I_b)
        for start in range(0, self.n_delta, _DELTA_BLOCK):
            end = min(self.n_delta, start + _DELTA_BLOCK)
            scores = xq @ self._delta_vectors[start:end].T  # (nq, block)
            killed = self._delta_dead[start:end]
            scores[:, (killed > 0) & (killed <= self.seq)] = -np.inf
            kk = min(k, end - start)
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]  # (nq, kk), unordered
            D_d = np.take_along_axis(scores, top, axis=1)
            I_d = np.where(np.isneginf(D_d), -1, top + self.n_base + start)
            D_parts.append(D_d.astype(np.float32))
            I_parts.append(I_d.astype(np.int64))
        return _merge_topk(D_parts, I_parts, nq, k)

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


def _merge_topk(
    D_parts: list[np.ndarray], I_parts: list[np.ndarray], nq: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge (nq, k_p) parts into the top-k: score desc, ties by lower row; -1 rows last."""
    D = np.full((nq, k), _MISSING_SCORE, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)  # noqa: E741 - FAISS notation
    if not D_parts:
        return D, I
    D_all = np.concatenate(D_parts, axis=1)
    I_all = np.concatenate(I_parts, axis=1)
    missing = I_all < 0
    score_key = np.where(missing, np.inf, -D_all.astype(np.float64))
    row_key = np.where(missing, np.iinfo(np.int64).max, I_all)
    order = np.lexsort((row_key, score_key), axis=-1)[:, :k]
    take = order.shape[1]
    I[:, :take] = np.take_along_axis(I_all, order, axis=1)
    D[:, :take] = np.take_along_axis(D_all, order, axis=1)
    D[I < 0] = _MISSING_SCORE
    return D, I
