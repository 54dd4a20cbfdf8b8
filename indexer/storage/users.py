"""Users' recent items, published with an index version (`users.parquet`) for personalisation."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from indexer.storage.manifest import MANIFEST_NAME, file_sha256, load_manifest, save_manifest
from trainer.data.labels import Interactions
from trainer.io import atomic_path
from trainer.privacy.pseudonym import Pseudonymizer

log = logging.getLogger(__name__)

USERS_FILE = "users.parquet"
MAX_RECENT = 50  # the most recent items kept per user (the recommendation protocol's limit)


def users_table(
    interactions: Interactions,
    known_item_ids: set[str],
    max_recent: int = MAX_RECENT,
    pseudonyms: Pseudonymizer | None = None,
) -> pa.Table:
    """One row per user: `user_id` (string), `recent` (list<string>, oldest first).

    Items not in the catalog are dropped (counted in the log: a history may mention items the
    shop no longer sells); users left with no item are dropped. With `pseudonyms`, user ids
    are stored as their keyed pseudonyms (the key id is in the schema metadata), never raw.
    """
    if max_recent < 1:
        raise ValueError(f"max_recent must be >= 1, got {max_recent}")
    users, recents, unknown = [], [], 0
    for user, items in interactions.histories.items():
        kept = [i for i in items if i in known_item_ids]
        unknown += len(items) - len(kept)
        if kept:
            users.append(pseudonyms.pseudonym(user) if pseudonyms is not None else user)
            recents.append(kept[-max_recent:])
    if unknown:
        log.warning("%s: %d interactions name items not in the catalog", interactions.path, unknown)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "recent": pa.array(recents, pa.list_(pa.string())),
        },
        metadata={"user_key_id": pseudonyms.key_id} if pseudonyms is not None else None,
    )


def write_users(table: pa.Table, path: str | Path) -> None:
    pq.write_table(table, str(path))


def read_users(version_dir: str | Path) -> dict[str, list[str]]:
    """user id → recent item ids (oldest first); empty when the version has no users file."""
    path = Path(version_dir) / USERS_FILE
    if not path.exists():
        return {}
    table = pq.read_table(str(path))
    return dict(
        zip(table.column("user_id").to_pylist(), table.column("recent").to_pylist(), strict=True)
    )


def forget_users(version_dir: str | Path, user_ids: set[str]) -> int:
    """Erasure: rewrite the version's users file without `user_ids` (pseudonyms) and its
    manifest's checksum of it; the number of users removed (the file is untouched at 0)."""
    version_dir = Path(version_dir)
    path = version_dir / USERS_FILE
    if not path.exists():
        return 0
    table = pq.read_table(str(path))
    keep = [u not in user_ids for u in table.column("user_id").to_pylist()]
    removed = keep.count(False)
    if not removed:
        return 0
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table.filter(pa.array(keep)), str(tmp))
    manifest_path = version_dir / MANIFEST_NAME
    manifest = load_manifest(manifest_path)
    if USERS_FILE in manifest.files:
        files = {**manifest.files, USERS_FILE: file_sha256(path)}
        save_manifest(dataclasses.replace(manifest, files=files), manifest_path)
    log.info("%s: forgot %d users", path, removed)
    return removed
