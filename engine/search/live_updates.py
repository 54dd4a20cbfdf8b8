"""Live updates: upsert, attribute updates and deletes through the index root's update log."""

from __future__ import annotations

import threading
from typing import Any

from engine.search.errors import FailedPrecondition, InvalidArgument, NotFound
from engine.search.snapshot import Snapshot, live_snapshot, sync_lexical
from indexer.live.index import LiveIndex
from indexer.live.view import UnknownItemError
from indexer.storage.manifest import ModelMismatchError
from trainer.text import item_text


class LiveUpdates:
    """SearchService's live-update methods: each write logs the change durably, applies it, then
    swaps in a snapshot of the new state, so the change is searchable when the call returns."""

    # Set by SearchService.__init__.
    _snapshot: Snapshot
    _swap_lock: threading.Lock
    _encode_lock: threading.Lock

    def _live(self) -> LiveIndex:
        live = self._snapshot.live
        if live is None:
            raise FailedPrecondition(
                "this server serves a stand-alone version dir: live updates need an index root "
                "(aisle-serve --index ROOT)"
            )
        return live

    def _refresh(self) -> Snapshot:
        """Swap in a snapshot of the live index's latest state (after an update), with the
        lexical channel brought up to it."""
        with self._swap_lock:
            snap = self._snapshot
            if snap.live is not None:
                view = snap.live.snapshot()
                if snap.lexical is not None:
                    sync_lexical(snap.lexical, view, snap.index.n_rows, set(snap.dead_rows))
                self._snapshot = live_snapshot(
                    snap.encoder, snap.live, snap.version_dir, snap.lexical
                )
            return self._snapshot

    def upsert(self, records: list[dict[str, Any]]) -> int:
        """Add or replace items: embed their text with the serving model, log durably, apply.
        Searchable when this returns. Returns the update-log sequence number."""
        live, encoder = self._live(), self._snapshot.encoder
        texts = [item_text(r) for r in records]
        with self._encode_lock:
            vectors = encoder.encode_items(texts)  # (n, dim) float32
        try:
            seq = live.upsert(records, vectors, fingerprint=encoder.fingerprint)
        except ModelMismatchError as error:
            raise FailedPrecondition(str(error)) from error
        except ValueError as error:
            raise InvalidArgument.field("items", str(error)) from error
        self._refresh()
        return seq

    def update_attributes(self, updates: dict[str, dict[str, Any]]) -> int:
        """Change attribute columns (price, stock, ...) of existing items; no re-embedding."""
        try:
            seq = self._live().update_attributes(updates)
        except UnknownItemError as error:
            raise NotFound(str(error)) from error
        except ValueError as error:
            raise InvalidArgument.field("items", str(error)) from error
        self._refresh()
        return seq

    def delete(self, item_ids: list[str]) -> tuple[int, int, list[str]]:
        """Delete items; returns (log sequence, deleted count, ids that were not there)."""
        try:
            seq, not_found = self._live().delete(item_ids)
        except ValueError as error:
            raise InvalidArgument.field("item_ids", str(error)) from error
        self._refresh()
        return seq, len(dict.fromkeys(item_ids)) - len(not_found), not_found

    def pending_updates(self) -> int:
        live = self._snapshot.live
        return 0 if live is None else int(live.pending_updates)
