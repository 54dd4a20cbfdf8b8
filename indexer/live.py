"""A searchable live index: a published version plus the upserts, deletes and attribute changes
of the update log, searchable the moment each call returns.

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

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer.manifest import IndexFormatError, ModelMismatchError
from indexer.store import IndexVersion
from indexer.updates import LogRecord, UpdateLog, UpdateLogError

__all__ = [
    "TEXT_FIELDS",
    "LiveIndex",
    "LiveView",
    "UnknownItemError",
    "conform_fields",
    "conform_records",
]

logger = logging.getLogger(__name__)

# Fields trainer.text.item_text reads: changing one changes the item's vector, so it takes an
# upsert (with a new vector), not an attribute update.
TEXT_FIELDS = ("title", "brand", "color", "category", "bullets", "description")
_MISSING_SCORE = np.float32(-np.finfo(np.float32).max)  # IndexVersion.search's padding score
_DELTA_BLOCK = 65536  # delta rows scored per block: bounds the (nq, block) score matrix


class UnknownItemError(KeyError, ValueError):
    """An item id the live index does not hold (never indexed, or deleted).

    Both a KeyError (a lookup failed) and a ValueError (bad input to an update call).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


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
        self._replay()
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

    def _replay(self) -> None:
        truncated = self.log.truncated()
        if truncated is not None and truncated[0] > self._seq:
            raise UpdateLogError(
                f"index version {self.version} holds updates up to seq {self._seq}, but the "
                f"update log no longer has records up to seq {truncated[0]} (pruned with the "
                f"versions that held them): serve a newer version (aisle-index rollback --to) "
                f"or rebuild"
            )
        records = self.log.records(after=self._seq)
        for record in records:
            if record.op == "upsert":
                items = conform_records(record.items, self._schema, f"update seq {record.seq}")
                vectors = record.vectors
                if vectors is None:  # _decode_line never lets that through
                    raise IndexFormatError(f"update seq {record.seq}: upsert without vectors")
                if record.fingerprint != self.manifest.model_fingerprint:
                    vectors = self._reembed(items, record)
                self._apply_upsert(record.seq, items, vectors)
            elif record.op == "delete":
                self._apply_delete(record.seq, list(record.item_ids))  # skips ids not live
            else:
                self._apply_attributes(record.seq, self._replayable_attributes(record))
            self._seq = record.seq
            self._pending += 1
        if records:
            logger.info(
                "replayed %d update(s) (seq %d..%d) onto index version %d: %d live items",
                len(records),
                records[0].seq,
                records[-1].seq,
                self.base.version,
                self._n_live,
            )

    def _replayable_attributes(self, record: LogRecord) -> dict[str, dict[str, Any]]:
        out = {}
        for item_id, fields in record.attributes.items():
            where = f"update seq {record.seq}: item {item_id!r}"
            if self._live_row(item_id) is None:
                logger.warning(
                    "%s: attributes skipped: not in index version %d", where, self.version
                )
                continue
            text = [name for name in fields if name in TEXT_FIELDS or name == "item_id"]
            if text:
                logger.warning("%s: text columns %s cannot change without an upsert", where, text)
            fields = {k: v for k, v in fields.items() if k not in text}
            out[item_id] = conform_fields(fields, self._schema, where, keep_nulls=True)
        return out

    def _reembed(self, items: list[dict[str, Any]], record: LogRecord) -> np.ndarray:
        """Vectors for a replayed upsert made by another model (the index was rebuilt since)."""
        from trainer.text import item_text

        encoder = self._encoder
        if encoder is None:
            from trainer.encoder import load_encoder

            logger.info(
                "update seq %d has vectors of model %s; re-embedding with %s",
                record.seq,
                record.fingerprint,
                self.manifest.model_path,
            )
            try:
                encoder = self._encoder = load_encoder(self.manifest.model_path)
            except (ValueError, OSError) as e:
                raise ModelMismatchError(
                    f"update seq {record.seq} holds vectors of model {record.fingerprint}, but "
                    f"index version {self.base.version} uses {self.manifest.model_fingerprint} "
                    f"and its model cannot be loaded to re-embed them ({e}); pass encoder="
                ) from e
        if encoder.fingerprint != self.manifest.model_fingerprint:
            raise ModelMismatchError(
                f"cannot re-embed update seq {record.seq}: the encoder has fingerprint "
                f"{encoder.fingerprint}, index version {self.base.version} needs "
                f"{self.manifest.model_fingerprint}"
            )
        vectors = encoder.encode_items([item_text(r) for r in items])
        return _check_vectors(vectors, len(items), self.dim)

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
        from indexer.rerank import VectorStore

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
        from indexer.rerank import VectorStore

        assert self._store is not None
        encoded = VectorStore.encode(vectors, self._store_kind)
        if self._store_scales is not None:
            self._store_scales.append(encoded.scales)
        self._store.append(encoded.data)


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
            from indexer.rerank import ItemColumns

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
            from indexer.rerank import VectorStore

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


# ---------------------------------------------------------------------------------- helpers


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


def _check_vectors(vectors: Any, n: int, dim: int) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.shape != (n, dim) or not np.issubdtype(vectors.dtype, np.floating):
        raise ValueError(
            f"vectors must be a ({n}, {dim}) float array (one per record), got "
            f"{vectors.shape} {vectors.dtype}"
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("vectors hold NaN or inf values")
    return vectors


def _check_attribute_column(name: Any, schema: pa.Schema) -> None:
    if name == "item_id":
        raise ValueError("item_id cannot be changed by an attribute update; delete and upsert")
    if name in TEXT_FIELDS:
        raise ValueError(
            f"column {name!r} is part of the item text, so changing it changes the vector: "
            f"upsert the item with a new vector instead"
        )
    if name not in schema.names:
        raise ValueError(
            f"unknown column {name!r}; this index has columns {schema.names} (a new column "
            f"needs a full build)"
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _validate(
    records: Sequence[Mapping[str, Any]], schema: pa.Schema, what: str
) -> list[dict[str, Any]]:
    """Check records with the catalog reader's rules, then fit them to the index's columns.

    Each record goes through JSON (as a catalog file's lines do) and then
    ``trainer.data.catalog_from_records``: the same rules and messages as a catalog file.

    Returns:
        The typed records (nulls omitted), in input order.
    """
    from trainer.data import DataError, catalog_from_records, parse_json_line

    lines = []
    for i, record in enumerate(records, 1):
        if not isinstance(record, Mapping):
            raise ValueError(f"{what} record {i} must be a mapping, got {type(record).__name__}")
        try:
            lines.append(json.dumps(dict(record), default=_json_default))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what} record {i}: not JSON-able ({e})") from None
    try:
        parsed = [parse_json_line(text, what, i) for i, text in enumerate(lines, 1)]
        catalog = catalog_from_records(parsed, what)
    except DataError as e:
        where = f"record {e.line}" if e.line is not None else "records"
        raise ValueError(f"{what} {where}: {e.problem}") from None
    typed = []
    for record in catalog.records():
        out = {}
        for name, value in record.items():
            if name not in schema.names:
                raise ValueError(
                    f"{what} item {record['item_id']!r}: unknown column {name!r}; this index "
                    f"has columns {schema.names} (a new column needs a full build)"
                )
            try:
                out[name] = _coerce(value, schema, name)
            except ValueError as e:
                raise ValueError(f"{what} item {record['item_id']!r}: {e}") from None
        typed.append(out)
    return typed


def conform_records(
    records: Sequence[Mapping[str, Any]], schema: pa.Schema, where: str
) -> list[dict[str, Any]]:
    """Fit logged records to ``schema`` (a version's or a catalog's columns), keys in schema
    order; a column it lacks or a value of the wrong type is dropped with a warning (a replayed
    update was acknowledged long ago: it is applied as far as it still fits, never refused)."""
    out = []
    for record in records:
        item = f"{where}: item {record.get('item_id')!r}"
        out.append(conform_fields(record, schema, item, keep_nulls=False))
    return out


def conform_fields(
    fields: Mapping[str, Any], schema: pa.Schema, where: str, *, keep_nulls: bool
) -> dict[str, Any]:
    """``fields`` coerced to the types of ``schema``, in schema order; misfits dropped, logged.

    ``keep_nulls`` keeps None values (an attribute update clearing a value).
    """
    kept = {}
    names = [n for n in schema.names if n in fields]
    for name in fields:
        if name not in schema.names:
            logger.warning("%s: column %r is not in this index; dropped", where, name)
    for name in names:
        value = fields[name]
        if value is None:
            if keep_nulls:
                kept[name] = None
            continue
        try:
            kept[name] = _coerce(value, schema, name)
        except ValueError as e:
            logger.warning("%s: %s; dropped", where, e)
    return kept


def _coerce(value: Any, schema: pa.Schema, name: str) -> Any:
    """``value`` as the Python value of column ``name``'s Arrow type, or ValueError."""
    kind = schema.field(name).type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        ok = isinstance(value, str)
    elif pa.types.is_floating(kind):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif pa.types.is_integer(kind):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif pa.types.is_boolean(kind):
        ok = isinstance(value, bool)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        try:
            value = pa.scalar(value, type=kind).as_py()
            ok = True
        except (pa.ArrowException, TypeError, ValueError):
            ok = False
    if not ok:
        raise ValueError(
            f"column {name!r} holds {kind} values in this index, got "
            f"{type(value).__name__} {value!r:.40}"
        )
    return value
