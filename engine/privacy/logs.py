"""Erasure and retention over the shopper logs in an events dir (``events.jsonl``,
``impressions.jsonl``): JSON lines, each with a ``user_id`` (a pseudonym) and when it was
``recorded`` (else ``time``).

Every rewrite holds the events dir's file lock (`log_lock`), the same lock the server's
EventLog takes around each append, so a server in another process never appends into a file
being replaced; the new file replaces the old one atomically (trainer.io.atomic_path).
Forgetting a user leaves a tombstone (``tombstones.jsonl``: the pseudonym and when), so a later
compaction, a replay of the log at start, or a dataset build drops whatever of theirs was
recorded before it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from trainer.io import atomic_path, fsync_dir
from trainer.privacy.exclusions import TOMBSTONES_FILE, erased, read_tombstones

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
LOG_FILES = ("events.jsonl", "impressions.jsonl")
_thread_lock = threading.RLock()  # flock is per open file; this orders threads of one process


@contextmanager
def log_lock(directory: str | Path) -> Iterator[None]:
    """Exclusive lock on the events dir across processes (fcntl.flock on ``.lock``)."""
    path = Path(directory) / LOCK_NAME
    with _thread_lock, open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def record_time(raw: dict) -> datetime | None:
    """When a log record was recorded (else the caller's time); None if it has neither."""
    value = raw.get("recorded") or raw.get("time")
    if not value:
        return None
    when = datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class Rewrite:
    """What a rewrite of the logs removed, per file name."""

    removed: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> int:
        return self.removed.get(name, 0)


def _rewrite(path: Path, drop: Callable[[dict], bool]) -> int:
    """Rewrite the JSON-lines file `path` without the records `drop` selects (and any torn
    last line); how many it removed. Untouched when nothing is dropped."""
    if not path.exists():
        return 0
    removed = 0
    with atomic_path(path) as tmp, open(path, encoding="utf-8") as src:
        with open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                if not line.endswith("\n"):
                    removed += 1
                    break
                if drop(json.loads(line)):
                    removed += 1
                else:
                    dst.write(line)
        if not removed:
            raise _Unchanged
    return removed


class _Unchanged(Exception):
    pass


def _rewrite_logs(directory: Path, drop: Callable[[dict], bool]) -> Rewrite:
    out = Rewrite()
    for name in LOG_FILES:
        try:
            out.removed[name] = _rewrite(directory / name, drop)
        except _Unchanged:
            out.removed[name] = 0
    return out


def forget(
    directory: str | Path, candidates: tuple[str, ...], now: datetime | None = None
) -> Rewrite:
    """Remove every record of the user (all of `candidates`, their pseudonyms under each key)
    from the logs, then append a tombstone for each pseudonym (fsynced). Holds `log_lock`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now(UTC)
    users = set(candidates)
    with log_lock(directory):
        result = _rewrite_logs(directory, lambda raw: raw.get("user_id") in users)
        lines = "".join(
            json.dumps({"user_id": u, "forgotten": now.isoformat()}) + "\n" for u in candidates
        )
        path = directory / TOMBSTONES_FILE
        existed = path.exists()
        with open(path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        if not existed:
            fsync_dir(directory)
    log.info("forgot a user: %s", result.removed)
    return result


def compact(
    directory: str | Path, retention_days: float | None = None, now: datetime | None = None
) -> Rewrite:
    """Drop records older than `retention_days` (by when they were recorded; None keeps all)
    and records of forgotten users made before their tombstone. Holds `log_lock`."""
    directory = Path(directory)
    if not directory.is_dir():
        return Rewrite()
    if retention_days is not None and retention_days <= 0:
        raise ValueError(f"retention days must be > 0, got {retention_days}")
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=retention_days) if retention_days is not None else None
    with log_lock(directory):
        tombstones = read_tombstones(directory)

        def drop(raw: dict) -> bool:
            when = record_time(raw)
            if cutoff is not None and (when is None or when < cutoff):
                return True
            return erased(tombstones, raw.get("user_id", ""), when)

        result = _rewrite_logs(directory, drop)
    log.info("compacted %s: removed %s", directory, result.removed)
    return result
