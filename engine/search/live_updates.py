"""Live updates: upsert, attribute updates and deletes through the index root's update log.

Each write logs the change durably and applies it to the snapshot's live index; the caller
(SearchService) then swaps in `refreshed(snap)`, so the change is searchable when it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engine.search.errors import FailedPrecondition, InvalidArgument, NotFound
from engine.search.snapshot import Snapshot, live_snapshot, sync_lexical
from indexer.live.index import LiveIndex
from indexer.live.view import UnknownItemError
from indexer.storage.manifest import ModelMismatchError
from trainer.text import item_text


def live_index(snap: Snapshot) -> LiveIndex:
    """The snapshot's live index; FAILED_PRECONDITION when it serves a bare version dir."""
    if snap.live is None:
        raise FailedPrecondition(
            "this server serves a stand-alone version dir: live updates need an index root "
            "(aisle-serve --index ROOT)"
        )
    return snap.live


def refreshed(snap: Snapshot) -> Snapshot:
    """A snapshot of the live index's latest state (after an update), with the lexical channel
    brought up to it; `snap` itself when it has no live index."""
    if snap.live is None:
        return snap
    if snap.lexical is not None:
        view = snap.live.snapshot()
        sync_lexical(snap.lexical, view, snap.index.n_rows, set(snap.dead_rows))
    return live_snapshot(snap.encoder, snap.live, snap.version_dir, snap.lexical)


def upsert(
    snap: Snapshot,
    records: list[dict[str, Any]],
    encode_items: Callable[[list[str]], np.ndarray],
) -> int:
    """Add or replace items: embed their text with `encode_items` (the serving model's item
    tower, behind the service's encoder gate), log durably, apply. Returns the update-log
    sequence number."""
    live, encoder = live_index(snap), snap.encoder
    vectors = encode_items([item_text(r) for r in records])  # (n, dim) float32
    try:
        return live.upsert(records, vectors, fingerprint=encoder.fingerprint)
    except ModelMismatchError as error:
        raise FailedPrecondition(str(error)) from error
    except ValueError as error:
        raise InvalidArgument.field("items", str(error)) from error


def update_attributes(snap: Snapshot, updates: dict[str, dict[str, Any]]) -> int:
    """Change attribute columns (price, stock, ...) of existing items; no re-embedding."""
    try:
        return live_index(snap).update_attributes(updates)
    except UnknownItemError as error:
        raise NotFound(str(error)) from error
    except ValueError as error:
        raise InvalidArgument.field("items", str(error)) from error


def delete(snap: Snapshot, item_ids: list[str]) -> tuple[int, int, list[str]]:
    """Delete items; returns (log sequence, deleted count, ids that were not there)."""
    try:
        seq, not_found = live_index(snap).delete(item_ids)
    except ValueError as error:
        raise InvalidArgument.field("item_ids", str(error)) from error
    return seq, len(dict.fromkeys(item_ids)) - len(not_found), not_found


def pending_updates(snap: Snapshot) -> int:
    """Updates logged but not yet compacted into a version (0 without a live index)."""
    return 0 if snap.live is None else int(snap.live.pending_updates)
