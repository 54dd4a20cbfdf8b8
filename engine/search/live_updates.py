"""Live updates: upsert, attribute updates and deletes through the index root's update log.

Each write logs the change durably and applies it to the snapshot's live index; the caller
(SearchService) then swaps in `refreshed(snap)`, so the change is searchable when it returns.
The caller holds its write lock around the write and the swap, and a Reload hands the new
snapshot over with `caught_up` under the same lock (docs/serving.md, "Writes and Reload").
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
    """The snapshot's live index; FAILED_PRECONDITION when it serves a bare version dir or a
    read-only index root (checked before any work, so a refused write costs nothing)."""
    if snap.live is None:
        raise FailedPrecondition(
            "this server serves a stand-alone version dir: live updates need an index root "
            "(aisle-serve --index ROOT)"
        )
    if snap.live.read_only:
        raise FailedPrecondition(
            "this server serves a read-only index root: searches work, live updates (Upsert, "
            "UpdateAttributes, Delete) need an index root whose updates/ dir it can write"
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
    return live_snapshot(snap.encoder, snap.live, snap.version_dir, snap.lexical, snap.ranking)


def encode_items(
    snap: Snapshot,
    records: list[dict[str, Any]],
    encode: Callable[[list[str]], np.ndarray],
) -> np.ndarray:
    """(n, dim) float32 vectors of the records' item texts, from `encode` (the serving model's
    item tower, behind the service's encoder gate); FAILED_PRECONDITION without a live index,
    before any encoding work."""
    live_index(snap)
    return encode([item_text(r) for r in records])


def upsert(snap: Snapshot, records: list[dict[str, Any]], vectors: np.ndarray) -> int:
    """Add or replace items with their `vectors` (from `encode_items` of the same model): log
    durably, apply. Returns the update-log sequence number."""
    live, encoder = live_index(snap), snap.encoder
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


def caught_up(snap: Snapshot) -> Snapshot:
    """`snap` (just loaded by a Reload) with the updates that the serving live index took while
    it loaded: the new live index replays the log past its seq (the sequence-number handoff).
    Call it with writes stopped; `snap` itself when it has no live index."""
    if snap.live is None:
        return snap
    snap.live.catch_up()
    return refreshed(snap)


def followed(snap: Snapshot) -> Snapshot | None:
    """`snap` with the updates that other processes serving the same root (sibling workers,
    engine.search.siblings) appended to the update log since its live index last read it;
    None when there were none (or it has no live index). Call it under the write lock."""
    if snap.live is None or not snap.live.catch_up():
        return None
    return refreshed(snap)


def retire(old: Snapshot, new: Snapshot) -> None:
    """Close the live index (its update log's files) of a snapshot a Reload replaced.

    Safe at the swap: writes go only to the serving snapshot, under the service's write lock,
    and searches still on `old` read its immutable views, never the log."""
    if old.live is not None and old.live is not new.live:
        old.live.close()


def pending_updates(snap: Snapshot) -> int:
    """Updates logged but not yet compacted into a version (0 without a live index)."""
    return 0 if snap.live is None else int(snap.live.pending_updates)
