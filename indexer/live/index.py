"""The live index: a published version plus the update log's changes, searchable at once.

``LiveIndex`` applies upserts, deletes and attribute changes on top of a published version;
each is searchable the moment its call returns. The write path and the replay of the log on open
live here; the read side (``LiveView`` over a ``LiveState``, the base + delta merge) is in
``indexer.live.view``, and the checks of update input in ``indexer.live.records``.

Rows. The base version's global rows ``0 .. n_base-1`` keep their numbers; each upserted item
gets a new row ``n_base + j`` in a small delta (its vector kept in RAM, searched exactly). An
upsert of an existing item tombstones its old row; a delete tombstones the row. Rows are never
reused, so a row a search returned stays valid (``record``, ``vectors``) for the life of the
live index. ``n_rows`` is the size of that row space, ``n_items`` the number of live items.

Durability. Every change is appended to the ``UpdateLog`` (fsynced) before it is applied and
before the call returns; opening replays the records newer than the version's ``applied_seq``.
A replayed update was acknowledged long ago, so it is applied as far as it still fits this
version (misfit columns and values dropped with a warning), and upserts whose vectors came from
another model (the index was rebuilt since) are re-embedded with the version's model.

Other processes may write the same root's log (the worker processes of ``aisle-serve
--processes``, engine.search.siblings): a write first applies what they appended since this index
last read the log, and when its own seq is not the next one, the records in between before its own,
so every live index of the root applies the same records in seq order; ``catch_up`` takes in the
rest. A stamp of the log's files (``UpdateLog.stamp``) skips the reading when nothing changed, so a
lone writer never re-reads its own records.

Concurrency: multi-version snapshots, no reader locks. Writers are serialised by one lock. Every
change is stamped with its log seq: tombstones store the seq that killed a row, attribute overrides
and id -> row entries are append-only lists of (seq, value), delta rows are appended into buffers
with spare capacity (a full buffer is copied into a larger one, never shrunk). After applying a
change the writer publishes a new ``LiveView`` over a ``LiveState`` (an immutable object: seq, row
counts, buffer references) with one reference assignment. A reader works on one view and ignores
everything stamped after its seq, so it sees each update completely or not at all, even across
several calls (take ``snapshot()`` for that), while the writer goes on appending.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.live.records import (
    TEXT_FIELDS,
    check_attribute_column,
    check_vectors,
    conform_fields,
    conform_records,
    validate_records,
)
from indexer.live.view import GrowableRows, LiveState, LiveView, RescoringStore, UnknownItemError
from indexer.storage.log_record import LogRecord, UpdateLogError
from indexer.storage.manifest import IndexFormatError, ModelMismatchError
from indexer.storage.update_log import UPDATES_DIR, UpdateLog
from indexer.version import IndexVersion
from trainer.encoder.load import load_encoder
from trainer.text import item_text

__all__ = ["LiveIndex", "root_is_writable"]

logger = logging.getLogger(__name__)


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
        read_only: the root cannot be written (a read-only mount, a root owned by another
            user): the log is replayed and searched, and every update raises PermissionError.
    """

    def __init__(
        self,
        version: IndexVersion,
        log: UpdateLog,
        *,
        encoder: Any = None,
        read_only: bool = False,
    ) -> None:
        self.base = version
        self.log = log
        self.read_only = read_only
        self._encoder = encoder
        self.n_base = version.n_items
        self._schema = version.items.schema
        self._write_lock = threading.Lock()
        self._overlay_lock = threading.Lock()  # guards iteration of _overrides vs new keys
        # Shared, stamped state (see the module docstring); mutated only under _write_lock.
        self._dead_base = np.zeros(self.n_base, dtype=np.int64)  # seq that killed row, 0 = alive
        self._delta_vectors = GrowableRows((version.dim,), np.float32)
        self._delta_dead = GrowableRows((), np.int64)
        self._delta_ids: list[str] = []
        self._delta_records: list[dict[str, Any]] = []
        self._id_rows: dict[str, list[tuple[int, int]]] = {}  # id -> [(seq, row or -1)]
        self._overrides: dict[int, list[tuple[int, dict[str, Any]]]] = {}  # row -> [(seq, fields)]
        # Re-scoring vectors by row, made on first use.
        self._store = RescoringStore(version, self._delta_vectors, self._write_lock)
        self._n_live = self.n_base
        self._n_dead_base = 0
        self._seq = version.manifest.applied_seq
        self._pending = 0
        # The update log's stamp when this index last had every record in it; () = unknown.
        self._log_stamp: tuple = log.stamp()
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
        read_only: bool | None = None,
    ) -> LiveIndex:
        """Open the version CURRENT names (or a given version dir) and replay the update log.

        ``read_only``: see the class; None = when this process cannot write the root's update
        log dir (``root_is_writable``).

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
        root = version.path.parent.parent
        if read_only is None:
            read_only = not root_is_writable(root)
        if read_only:
            logger.warning("index root %s is read-only: serving it without live updates", root)
        log = UpdateLog(root)
        try:
            return cls(version, log, encoder=encoder, read_only=read_only)
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
                ``trainer.data.catalog.read_catalog`` and fitted to the index's columns.
            vectors: (len(records), dim) float32 item vectors, finite.
            fingerprint: fingerprint of the model that made ``vectors``; None = the index's.

        Returns:
            The update's seq (durable when this returns; searchable at once).

        Raises:
            ValueError: a bad record (the message names it and the field), an unknown column or
                a value of the wrong type, duplicate ids, a bad vector array.
            ModelMismatchError: ``fingerprint`` is not the index's model.
        """
        self._check_writable()
        records = list(records)
        if not records:
            raise ValueError("upsert needs at least one record")
        vectors = check_vectors(vectors, len(records), self.dim)
        expected = self.manifest.model_fingerprint
        if fingerprint is not None and fingerprint != expected:
            raise ModelMismatchError(
                f"upsert vectors come from model {fingerprint}, but index version "
                f"{self.base.version} was built with {expected}; encode items with the model "
                f"the index serves"
            )
        typed = validate_records(records, self._schema, "upsert")
        with self._write_lock:
            seq = self.log.append_upsert(typed, vectors, expected)
            self._apply_between(seq)
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
        self._check_writable()
        if isinstance(item_ids, str):
            raise ValueError("delete takes a list of item ids, not one string")
        ids = list(dict.fromkeys(item_ids))  # dedupe, keep order
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise ValueError(f"item ids must be non-empty strings, got {bad[:3]!r}")
        with self._write_lock:
            self._follow_log()
            found = [i for i in ids if self._live_row(i) is not None]
            not_found = [i for i in ids if self._live_row(i) is None]
            if not found:
                return self._view.seq, not_found
            seq = self.log.append_delete(found)
            self._apply_between(seq)
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
        self._check_writable()
        if not isinstance(updates, Mapping) or not updates:
            raise ValueError("update_attributes needs a non-empty {item_id: {column: value}}")
        for item_id, fields in updates.items():
            if not isinstance(fields, Mapping) or not fields:
                raise ValueError(f"item {item_id!r}: give a non-empty {{column: value}} mapping")
            for name in fields:
                check_attribute_column(name, self._schema)
        with self._write_lock:
            self._follow_log()
            merged = []
            for item_id in updates:
                row = self._live_row(item_id)
                if row is None:
                    raise UnknownItemError(
                        f"update_attributes: no live item {item_id!r} in this index"
                    )
                current = self._view.record(row)  # the view at self._seq
                for name, value in updates[item_id].items():
                    if value is None:
                        current.pop(name, None)
                    else:
                        current[name] = value
                merged.append(current)
            typed = validate_records(merged, self._schema, "update_attributes")
            changes = {
                r["item_id"]: {name: r.get(name) for name in updates[r["item_id"]]} for r in typed
            }
            seq = self.log.append_attributes(changes)
            self._apply_between(seq)
            self._apply_attributes(seq, changes)
            self._publish(seq)
        logger.debug("attributes seq %d: %d items", seq, len(changes))
        return seq

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(
                f"index root {self.path.parent.parent} is read-only: it is served for searches, "
                f"and live updates (Upsert, UpdateAttributes, Delete) need a root whose updates/ "
                f"dir this server can write"
            )

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
        self._store.append(vectors)

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

    def _publish(self, seq: int) -> None:
        self._seq = seq
        self._pending += 1
        self._view = self._make_view()  # one reference assignment: readers switch atomically
        stamp = self.log.stamp()
        self._log_stamp = stamp if self.log.written_through(stamp) else ()

    def _apply_between(self, seq: int) -> None:
        """Before this process's own record ``seq``: apply the records other processes
        appended since this index's seq, in order (none when ``seq`` is the next one)."""
        if seq == self._seq + 1:
            return
        for record in self.log.records(after=self._seq):
            if record.seq >= seq:
                break
            self._apply_record(record)

    def _follow_log(self) -> int:
        """Apply and publish what other processes appended to the log since this index last
        read it; the number of records. Holding _write_lock. Reads nothing when the log's files
        are as they were then."""
        stamp = self.log.stamp()  # before reading: an append after this changes it again
        if stamp and stamp == self._log_stamp:
            return 0
        records = self.log.records(after=self._seq)
        for record in records:
            self._apply_record(record)
        if records:
            self._view = self._make_view()
        self._log_stamp = stamp
        return len(records)

    def _make_view(self) -> LiveView:
        return LiveView(
            LiveState(
                seq=self._seq,
                n_delta=len(self._delta_ids),
                n_items=self._n_live,
                n_dead_base=self._n_dead_base,
                pending_updates=self._pending,
                base=self.base,
                dead_base=self._dead_base,
                delta_vectors=self._delta_vectors.buf,
                delta_dead=self._delta_dead.buf,
                delta_ids=self._delta_ids,
                delta_records=self._delta_records,
                id_rows=self._id_rows,
                overrides=self._overrides,
                overlay_lock=self._overlay_lock,
                store=self._store,
            )
        )

    # ------------------------------------------------------------------ replay

    def _replay(self) -> None:
        """Apply the update log's records newer than this index's seq, each as far as it still
        fits (the last step of ``__init__``, before the first view is published).

        Raises:
            UpdateLogError: the log was pruned past the seq this version holds.
            IndexFormatError: an upsert record without vectors.
            ModelMismatchError: upserts of another model that cannot be re-embedded.
        """
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
            self._apply_record(record)
        if records:
            logger.info(
                "replayed %d update(s) (seq %d..%d) onto index version %d: %d live items",
                len(records),
                records[0].seq,
                records[-1].seq,
                self.base.version,
                self._n_live,
            )

    def catch_up(self) -> int:
        """Apply the log records written since this index's seq by another ``LiveIndex`` of
        the same root (the one a Reload replaces), and publish them; the number applied.

        The sequence-number handoff of a Reload: the new live index was opened (and replayed
        the log) while the old one still took writes; with writes to the old one stopped, this
        brings the new one up to the old one's last seq before it is served, so no
        acknowledged write is left behind in the old index.
        """
        with self._write_lock:
            before = self._seq
            applied = self._follow_log()
            if applied:
                logger.info(
                    "caught up %d update(s) (seq %d..%d) onto index version %d",
                    applied,
                    before + 1,
                    self._seq,
                    self.base.version,
                )
        return applied

    def _apply_record(self, record: LogRecord) -> None:
        """Apply one logged update, as far as it still fits this version (replay, catch-up)."""
        if record.op == "upsert":
            items = conform_records(record.items, self._schema, f"update seq {record.seq}")
            vectors = record.vectors
            if vectors is None:  # the log's decoder never lets that through
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
        manifest = self.manifest
        if self._encoder is None:
            logger.info(
                "update seq %d has vectors of model %s; re-embedding with %s",
                record.seq,
                record.fingerprint,
                manifest.model_path,
            )
            try:
                self._encoder = load_encoder(manifest.model_path)
            except (ValueError, OSError) as e:
                raise ModelMismatchError(
                    f"update seq {record.seq} holds vectors of model {record.fingerprint}, but "
                    f"index version {self.base.version} uses {manifest.model_fingerprint} "
                    f"and its model cannot be loaded to re-embed them ({e}); pass encoder="
                ) from e
        if self._encoder.fingerprint != manifest.model_fingerprint:
            raise ModelMismatchError(
                f"cannot re-embed update seq {record.seq}: the encoder has fingerprint "
                f"{self._encoder.fingerprint}, index version {self.base.version} needs "
                f"{manifest.model_fingerprint}"
            )
        vectors = self._encoder.encode_items([item_text(r) for r in items])
        return check_vectors(vectors, len(items), self.dim)


def root_is_writable(root: Path) -> bool:
    """Whether this process may write the update log of the index root at ``root``: its
    ``updates/`` dir, or the root itself where that does not exist yet. ``os.access`` answers
    for a read-only mount too (EROFS), even for root."""
    updates = root / UPDATES_DIR
    return os.access(updates if updates.is_dir() else root, os.W_OK)
