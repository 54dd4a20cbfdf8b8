"""Shopper events: a durable append-only log, and each user's recent items kept current from it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.privacy.logs import log_lock
from engine.search.errors import FailedPrecondition

log = logging.getLogger(__name__)

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
MAX_RECENT = 50  # the recommendation protocol feeds at most the 50 most recent items
LOG_NAME = "events.jsonl"


@dataclass(frozen=True)
class Event:
    """One shopper event. `time` (when the shopper acted, as the caller says) and `recorded`
    (when this server appended it to the log; None before) are aware UTC datetimes."""

    user_id: str
    item_id: str
    type: str
    query: str
    time: datetime
    recorded: datetime | None = None
    # The response that showed the item (its request_id) and the 1-based position it was shown
    # at: attribution to an impression (engine.search.impressions); "" and 0: not attributed.
    request_id: str = ""
    position: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "user_id": self.user_id,
                "item_id": self.item_id,
                "type": self.type,
                "query": self.query,
                "time": self.time.isoformat(),
                **({"recorded": self.recorded.isoformat()} if self.recorded else {}),
                **({"request_id": self.request_id} if self.request_id else {}),
                **({"position": self.position} if self.position else {}),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


class EventLog:
    """Append-only JSON lines in `directory/events.jsonl`, fsynced before append() returns.

    The same file is the interactions input of the next training run (user_id, item_id, and the
    order of lines as the position), and with impressions.jsonl beside it the input of
    `aisle-learn dataset` (trainer.feedback; the format is in docs/learning.md). A torn last
    line (a crash mid-append) is skipped on read.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOG_NAME
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.read_only = not os.access(self.directory, os.W_OK)
        except OSError:
            self.read_only = True  # e.g. the events dir of a read-only index root
        if self.read_only:
            log.warning("%s is read-only: events are read, not recorded", self.directory)
        else:
            self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        """A crash mid-append can leave a partial last line; cut it so the next append does
        not glue a new record onto it. Only the unacknowledged record is lost. Under the events
        dir's file lock: a sibling worker process (aisle-serve --processes) appending at this
        moment is not cut short."""
        with log_lock(self.directory):
            if not self.path.exists():
                return
            with open(self.path, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    keep = data.rfind(b"\n") + 1
                    log.warning(
                        "%s: dropping a torn last record (%d bytes)", self.path, len(data) - keep
                    )
                    f.truncate(keep)
                    os.fsync(f.fileno())

    def append(self, events: Iterable[Event]) -> int:
        """Append ``events``, durable when this returns; their count.

        Raises:
            FailedPrecondition: the log's directory is read-only (nothing is recorded).
        """
        if self.read_only:
            raise FailedPrecondition(
                "this server's event log is on a read-only file system: events cannot be "
                "recorded here; serve a writable index root or give --events-dir"
            )
        now = datetime.now(UTC)
        lines = "".join(dataclasses.replace(e, recorded=now).to_json() + "\n" for e in events)
        if not lines:
            return 0
        # The events dir's file lock: an erasure or compaction (maybe another process) never
        # replaces the file under an append.
        with self._lock, log_lock(self.directory), open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())  # durable before the caller is acknowledged
        return lines.count("\n")

    def read(self) -> Iterator[Event]:
        """Every complete event in the log, in append order."""
        for event, _ in self.entries():
            yield event

    def entries(self, start: int = 0) -> Iterator[tuple[Event, int]]:
        """Each complete event from byte offset `start` (the end of an earlier entry, or 0)
        with the offset just past it, in append order; a torn or still-growing last line is
        left for a later read (a follower resumes from the last offset it got)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(start)
            offset = start
            for number, raw_line in enumerate(f, 1):
                if not raw_line.endswith(b"\n"):
                    if start == 0:
                        log.warning("%s:%d: skipping a torn last line", self.path, number)
                    return
                offset += len(raw_line)
                try:
                    raw = json.loads(raw_line)
                    event = Event(
                        raw["user_id"],
                        raw["item_id"],
                        raw["type"],
                        raw.get("query", ""),
                        datetime.fromisoformat(raw["time"]),
                        datetime.fromisoformat(raw["recorded"]) if "recorded" in raw else None,
                        request_id=raw.get("request_id", ""),
                        position=int(raw.get("position", 0)),
                    )
                except (ValueError, KeyError, TypeError) as error:
                    where = f"{self.path}:{number}" if start == 0 else f"{self.path}@{offset}"
                    raise ValueError(f"{where}: bad event record ({error})") from error
                yield event, offset

    def identity(self) -> tuple[int, int]:
        """(inode, size) of the log file, (0, 0) while there is none: an erasure or
        compaction replaces the file (a new inode), an append grows it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return 0, 0
        return st.st_ino, st.st_size


class UserState:
    """Each known user's most recent item ids (oldest first), at most MAX_RECENT. Thread-safe."""

    def __init__(self, histories: Mapping[str, list[str]] | None = None) -> None:
        self._recent: dict[str, deque[str]] = {}
        self._lock = threading.Lock()
        for user, items in (histories or {}).items():
            self._recent[user] = deque(items[-MAX_RECENT:], maxlen=MAX_RECENT)

    def __len__(self) -> int:
        return len(self._recent)

    def record(self, user_id: str, item_id: str) -> None:
        with self._lock:
            recent = self._recent.setdefault(user_id, deque(maxlen=MAX_RECENT))
            if recent and recent[-1] == item_id:
                return  # a repeated view of the same item adds nothing to the history
            recent.append(item_id)

    def recent(self, user_id: str) -> list[str]:
        with self._lock:
            return list(self._recent.get(user_id, ()))

    def adopt(self, previous: str, current: str) -> None:
        """Key rotation: move `previous`'s history to `current` unless that has one already."""
        with self._lock:
            if current not in self._recent and previous in self._recent:
                self._recent[current] = self._recent.pop(previous)

    def forget(self, user_ids: tuple[str, ...]) -> bool:
        """Drop these users' recent items (erasure); whether any were held."""
        with self._lock:
            return any([self._recent.pop(u, None) is not None for u in user_ids])


def now_utc() -> datetime:
    return datetime.now(UTC)
