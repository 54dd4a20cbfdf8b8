"""The live index: a published version plus the update log's changes, searchable at once.

``LiveIndex`` applies upserts, deletes and attribute changes on top of a published version;
each is searchable the moment its call returns. The write path lives here; the read side
(``LiveView``, the base + delta merge) is in ``indexer.live_view``, the replay of the log on
open in ``indexer.live_replay``, and the checks of update input in ``indexer.live_records``.
The names of those modules that callers use are re-exported from here.

Rows. The base version's global rows ``0 .. n_base-1`` keep their numbers; each upserted item
gets a new row ``n_base + j`` in a small delta (its vector kept in RAM, searched exactly). An
upsert of an existing item tombstones its old row; a delete tombstones the row. Rows are never
reused, so a row a search returned stays valid (``record``, ``vectors``) for the life of the
live index. ``n_rows`` is the size of that row space, ``n_items`` the number of live items.

Durability. Every change is appended to the ``UpdateLog`` (fsynced) before it is applied and
before the call returns; opening replays the records newer than the version's ``applied_seq``.

Concurrency: multi-version snapshots, no reader locks. Writers are serialised by one lock. Every
change is stamped with its log seq: tombstones store the seq that killed a row, attribute
overrides and id -> row entries are append-only lists of (seq, value), delta rows are appended
into buffers with spare capacity (a full buffer is copied into a larger one, never shrunk).
After applying a change the writer publishes a new ``LiveView`` (an immutable object: seq, row
counts, buffer references) with one reference assignment. A reader works on one view and ignores
everything stamped after its seq, so it sees each update completely or not at all, even across
several calls (take ``snapshot()`` for that), while the writer goes on appending.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.live.records import (
    _check_attribute_column,
    _check_vectors,
    _validate,
)
from indexer.live.replay import replay_log
from indexer.live.view import LiveView, UnknownItemError, _at
from indexer.storage.manifest import IndexFormatError, ModelMismatchError
from indexer.storage.update_log import UpdateLog
from indexer.version import IndexVersion

__all__ = ["LiveIndex"]

logger = logging.getLogger(__name__)


class _Rows:
    """Append-only rows with spare capacity. ``buf[:n]`` is valid; growth copies into a new buffer,
    so a reader holding the old buffer keeps a consistent prefix."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.buf = np.zeros((16, *shape), dtype=dtype)
        self.n = 0

    def append(self, block: np.ndarray) -> None:
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


class LiveIndex:
    """A published ``IndexVersion`` plus live updates from its root's ``UpdateLog``.

    Read methods work on the latest snapshot; ``snapshot()`` gives a ``LiveView`` that stays
    fixed across calls. It has the reading API of ``IndexVersion`` (``search``, ``row_of``,
    ``record``, ``vectors``, ``item_ids``, ``n_items``, ``dim``, ``manifest``), so code written
    for a version can serve a live index.

    Args:
        version: the base version (what CURRENT named when the live index was opened).
        log: the update log of the same index root.
        encoder: used only to re-embed replayed upserts whose vectors came from a model other
            than the version's (after a rebuild with a new model); None = load the version's
            model from ``manifest.model_path`` if that ever happens.
    """

    def __init__(self, version: IndexVersion, log: UpdateLog, *, encoder: Any = None) -> None:
        self.base = version
        self.log = log
        self._encoder = encoder
        self.n_base = version.n_items
        self._schema = version.items.schema
        self._write_lock = threading.Lock()
        self._overlay_lock = threading.Lock()  # guards iteration of _overrides vs new keys
        # Shared, stamped state (see the module docstring); mutated only under _write_lock.
        self._dead_base = np.zeros(self.n_base, dtype=np.int64)  # seq that killed row, 0 = alive
        self._delta_vectors = _Rows((version.dim,), np.float32)
        self._delta_dead = _Rows((), np.int64)
        self._delta_ids: list[str] = []
        self._delta_records: list[dict[str, Any]] = []
        self._id_rows: dict[str, list[tuple[int, int]]] = {}  # id -> [(seq, row or -1)]
        self._overrides: dict[int, list[tuple[int, dict[str, Any]]]] = {}  # row -> [(seq, fields)]
        self._store: _Rows | None = None  # re-scoring vectors by row, made on first use
        self._store_scales: _Rows | None = None
        self._store_kind = "f32"
        self._n_live = self.n_base
        self._n_dead_base = 0
        self._seq = version.manifest.applied_seq
        self._pending = 0
        replay_log(self)
        self._view = self._make_view()

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        verify: bool = True,
        expected_fingerprint: str | None = None,
        encoder: Any = None,
    ) -> LiveIndex:
        """Open the version CURRENT names (or a given version dir) and replay the update log.

        Raises:
            IndexFormatError: as ``IndexVersion.open``; the path is not inside an index root;
                the update log is corrupt (``UpdateLogError``).
            ModelMismatchError: as ``IndexVersion.open``.
        """
        version = IndexVersion.open(path, verify=verify, expected_fingerprint=expected_fingerprint)
        if version.path.parent.name != "versions":
            raise IndexFormatError(
                f"{version.path}: live updates need an index root (ROOT/versions/<n>), not a "
                f"stand-alone version dir"
            )
        log = UpdateLog(version.path.parent.parent)
        try:
            return cls(version, log, encoder=encoder)
        except BaseException:
            log.close()
            raise

    def __repr__(self) -> str:
        view = self._view
        return (
            f"LiveIndex(version={self.base.version}, seq={view.seq}, n_items={view.n_items}, "
            f"pending_updates={view.pending_updates})"
        )

    def close(self) -> None:
        """Close the update log's files."""
        self.log.close()

    def __enter__(self) -> LiveIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> LiveView:
        """The current state, fixed: later updates do not change what it returns."""
        return self._view

    @property
    def manifest(self) -> Any:
        return self.base.manifest

    @property
    def path(self) -> Path:
        return self.base.path

    @property
    def version(self) -> int:
        return self.base.version

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def seq(self) -> int:
        """Seq of the last update applied (the version's applied_seq when none)."""
        return self._view.seq

    @property
    def n_items(self) -> int:
        """Live items (base items not deleted or replaced, plus live delta items)."""
        return self._view.n_items

    @property
    def n_rows(self) -> int:
        """Size of the row space: every row ever used, dead ones included."""
        return self._view.n_rows

    @property
    def pending_updates(self) -> int:
        """Log records applied on top of the base version (what ``compact`` would fold in)."""
        return self._view.pending_updates

    @property
    def item_ids(self) -> np.ndarray:
        return self._view.item_ids

    @property
    def items(self) -> pa.Table:
        return self._view.items

    def search(
        self, xq: np.ndarray, k: int, *, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """See ``LiveView.search``."""
        return self._view.search(xq, k, params=params)

    def row_of(self, item_id: str) -> int:
        return self._view.row_of(item_id)

    def record(self, row: int) -> dict[str, Any]:
        return self._view.record(row)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self._view.vectors(rows)

    def item_id(self, row: int) -> str:
        return self._view.item_id(row)

    def is_live(self, row: int) -> bool:
        return self._view.is_live(row)

    def dead_rows(self) -> np.ndarray:
        return self._view.dead_rows()

    def columns(self) -> Any:
        return self._view.columns()

    def vector_store(self) -> Any:
        return self._view.vector_store()

    # ------------------------------------------------------------------ updates

    def upsert(
        self,
        records: Sequence[Mapping[str, Any]],
        vectors: np.ndarray,
        *,
        fingerprint: str | None = None,
    ) -> int:
        """Add or replace items (a replaced item's old row is tombstoned).

        Args:
            records: catalog records (``item_id``, ``title``, ...), validated with the rules of
                ``trainer.data.read_catalog`` and fitted to the index's columns.
            vectors: (len(records), dim) float32 item vectors, finite.
            fingerprint: fingerprint of the model that made ``vectors``; None = the index's.

        Returns:
            The update's seq (durable when this returns; searchable at once).

        Raises:
            ValueError: a bad record (the message names it and the field), an unknown column or
                a value of the wrong type, duplicate ids, a bad vector array.
            ModelMismatchError: ``fingerprint`` is not the index's model.
        """
        records = list(records)
        if not records:
            raise ValueError("upsert needs at least one record")
        vectors = _check_vectors(vectors, len(records), self.dim)
        expected = self.manifest.model_fingerprint
        if fingerprint is not None and fingerprint != expected:
            raise ModelMismatchError(
                f"upsert vectors come from model {fingerprint}, but index version "
                f"{self.base.version} was built with {expected}; encode items with the model "
                f"the index serves"
            )
        typed = _validate(records, self._schema, "upsert")
        with self._write_lock:
            seq = self.log.append_upsert(typed, vectors, expected)
            self._apply_upsert(seq, typed, vectors)
            self._publish(seq)
        logger.debug("upsert seq %d: %d items", seq, len(typed))
        return seq

    def delete(self, item_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Delete items.

        Returns:
            (seq, not_found): the update's seq (the current seq when nothing was deleted, and
            then nothing is logged) and the ids that were not live, in input order.
        """
        if isinstance(item_ids, str):
            raise ValueError("delete takes a list of item ids, not one string")
        ids = list(dict.fromkeys(item_ids))  # dedupe, keep order
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise ValueError(f"item ids must be non-empty strings, got {bad[:3]!r}")
        with self._write_lock:
            found = [i for i in ids if self._live_row(i) is not None]
            not_found = [i for i in ids if self._live_row(i) is None]
            if not found:
                return self._view.seq, not_found
            seq = self.log.append_delete(found)
            self._apply_delete(seq, found)
            self._publish(seq)
        logger.debug("delete seq %d: %d items (%d not found)", seq, len(found), len(not_found))
        return seq, not_found

    def update_attributes(self, updates: Mapping[str, Mapping[str, Any]]) -> int:
        """Change attribute columns of live items without re-embedding.

        Args:
            updates: item_id -> {column: value}; None clears a value. Columns must exist in the
                index and not feed the item text (``TEXT_FIELDS``: upsert those instead).

        Returns:
            The update's seq.

        Raises:
            UnknownItemError: an item id that is not live (a KeyError and a ValueError).
            ValueError: an unknown or text column, or a value the catalog rules reject.
        """
        if not isinstance(updates, Mapping) or not updates:
            raise ValueError("update_attributes needs a non-empty {item_id: {column: value}}")
        for item_id, fields in updates.items():
            if not isinstance(fields, Mapping) or not fields:
                raise ValueError(f"item {item_id!r}: give a non-empty {{column: value}} mapping")
            for name in fields:
                _check_attribute_column(name, self._schema)
        with self._write_lock:
            merged = []
            for item_id in updates:
                row = self._live_row(item_id)
                if row is None:
                    raise UnknownItemError(
                        f"update_attributes: no live item {item_id!r} in this index"
                    )
                current = self._record_at(row, self._seq)
                for name, value in updates[item_id].items():
                    if value is None:
                        current.pop(name, None)
                    else:
                        current[name] = value
                merged.append(current)
            typed = _validate(merged, self._schema, "update_attributes")
            changes = {
                r["item_id"]: {name: r.get(name) for name in updates[r["item_id"]]} for r in typed
            }
            seq = self.log.append_attributes(changes)
            self._apply_attributes(seq, changes)
            self._publish(seq)
        logger.debug("attributes seq %d: %d items", seq, len(changes))
        return seq

    # ------------------------------------------------------------------ applying records

    def _apply_upsert(self, seq: int, items: list[dict[str, Any]], vectors: np.ndarray) -> None:
        for record in items:
            item_id = record["item_id"]
            old = self._live_row(item_id)
            if old is not None:
                self._kill(old, seq)
            row = self.n_base + len(self._delta_ids)
            self._delta_ids.append(item_id)
            self._delta_records.append(record)
            self._id_rows.setdefault(item_id, []).append((seq, row))
            self._n_live += 1
        self._delta_vectors.append(vectors)
        self._delta_dead.append(np.zeros(len(items), dtype=np.int64))
        if self._store is not None:
            self._append_store(vectors)

    def _apply_delete(self, seq: int, item_ids: list[str]) -> None:
        for item_id in item_ids:
            row = self._live_row(item_id)
            if row is not None:
                self._kill(row, seq)
                self._id_rows.setdefault(item_id, []).append((seq, -1))

    def _apply_attributes(self, seq: int, changes: Mapping[str, Mapping[str, Any]]) -> None:
        for item_id, fields in changes.items():
            row = self._live_row(item_id)
            if row is None or not fields:
                continue
            history = self._overrides.get(row)
            merged = {**(history[-1][1] if history else {}), **fields}
            if history is None:
                with self._overlay_lock:
                    self._overrides[row] = [(seq, merged)]
            else:
                history.append((seq, merged))

    def _kill(self, row: int, seq: int) -> None:
        if row < self.n_base:
            self._dead_base[row] = seq
            self._n_dead_base += 1
        else:
            self._delta_dead.buf[row - self.n_base] = seq
        self._n_live -= 1

    def _live_row(self, item_id: str) -> int | None:
        """The item's row in the newest state (writer side), or None."""
        history = self._id_rows.get(item_id)
        if history:
            row = history[-1][1]
            return row if row >= 0 else None
        try:
            return self.base.row_of(item_id)
        except KeyError:
            return None

    def _record_at(self, row: int, seq: int) -> dict[str, Any]:
        if row < self.n_base:
            record = self.base.record(row)
        else:
            record = dict(self._delta_records[row - self.n_base])
        fields = _at(self._overrides.get(row), seq)
        if fields:
            for name, value in fields.items():
                if value is None:
                    record.pop(name, None)
                else:
                    record[name] = value
        return record

    def _publish(self, seq: int) -> None:
        self._seq = seq
        self._pending += 1
        self._view = self._make_view()  # one reference assignment: readers switch atomically

    def _make_view(self) -> LiveView:
        return LiveView(self, self._seq)

    # ------------------------------------------------------------------ re-scoring store

    def _vector_store_rows(self) -> tuple[_Rows, _Rows | None, str]:
        """The re-scoring store by row (base store + delta), made on first use."""
        if self._store is None:
            with self._write_lock:  # the writer must not append while the store is filled
                if self._store is None:
                    self._fill_store()
        assert self._store is not None
        return self._store, self._store_scales, self._store_kind

    def _fill_store(self) -> None:
        from indexer.rerank.vectors import VectorStore

        base = self.base
        store = base.vector_store() if hasattr(base, "vector_store") else None
        if store is None:
            store = VectorStore.from_index(base)
        data = _Rows(store.data.shape[1:], store.data.dtype)
        data.append(np.asarray(store.data))
        scales = None
        if store.scales is not None:
            scales = _Rows((), np.float32)
            scales.append(np.asarray(store.scales))
        self._store_kind = store.kind
        self._store_scales = scales
        self._store = data
        n_delta = len(self._delta_ids)
        if n_delta:
            self._append_store(self._delta_vectors.buf[:n_delta])

    def _append_store(self, vectors: np.ndarray) -> None:
        from indexer.rerank.vectors import VectorStore

        assert self._store is not None
        encoded = VectorStore.encode(vectors, self._store_kind)
        if self._store_scales is not None:
            self._store_scales.append(encoded.scales)
        self._store.append(encoded.data)
