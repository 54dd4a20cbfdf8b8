"""Users' recent items, published with an index version (`users.parquet`) for personalisation."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data.labels import Interactions

log = logging.getLogger(__name__)

USERS_FILE = "users.parquet"
MAX_RECENT = 50  # the most recent items kept per user (the recommendation protocol's limit)


def users_table(
    interactions: Interactions, known_item_ids: set[str], max_recent: int = MAX_RECENT
) -> pa.Table:
    """One row per user: `user_id` (string), `recent` (list<string>, oldest first).

    Items not in the catalog are dropped (counted in the log: a history may mention items the
    shop no longer sells); users left with no item are dropped.
    """
    if max_recent < 1:
        raise ValueError(f"max_recent must be >= 1, got {max_recent}")
    users, recents, unknown = [], [], 0
    for user, items in interactions.histories.items():
        kept = [i for i in items if i in known_item_ids]
        unknown += len(items) - len(kept)
        if kept:
            users.append(user)
            recents.append(kept[-max_recent:])
    if unknown:
        log.warning("%s: %d interactions name items not in the catalog", interactions.path, unknown)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "recent": pa.array(recents, pa.list_(pa.string())),
        }
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
