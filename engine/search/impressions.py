"""The impression log: what the server showed, written by a bounded background writer.

Every Search, BatchSearch item, Recommend and SimilarItems response gets a ``request_id``; the
list it returned is appended to ``impressions.jsonl`` beside ``events.jsonl`` so that events
reporting that id (and a position) can be attributed to it (trainer.feedback reads both; the
line format is documented in docs/learning.md).

The guarantee differs from the event log's on purpose: events are durable when acknowledged;
impressions are asynchronous, bounded and at-most-once. The request thread only puts a record
on a bounded queue (never waits for the disk); one writer thread appends what is queued as one
group (one write per group, a group gathering for LINGER_S; an fsync at most every FSYNC_EVERY_S
and at close: a killed process loses nothing written, a machine crash at most that second).
When the queue is full the record is dropped and counted (``dropped``, the
``aisle_impressions_dropped_total`` metric, and a rate-limited log line), never blocking the
request. ``close()`` writes and fsyncs what is queued before returning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.privacy.logs import log_lock

log = logging.getLogger(__name__)

LOG_NAME = "impressions.jsonl"
DEFAULT_QUEUE = 10_000  # records; at ~0.5 KB each about 5 MB of memory at most
MAX_GROUP = 1_000  # records per write
# After the first record of a group the writer waits this long for more: at most ~20 wakeups
# and writes a second however busy the server is, instead of one per request.
LINGER_S = 0.05
# Measured: an fsync per group cost ~0.3 ms of server CPU per request (+7 %) at concurrency 8;
# impressions are at-most-once anyway, so the page cache may hold up to this much of them.
FSYNC_EVERY_S = 1.0
DROP_LOG_EVERY_S = 10.0

_CLOSE = object()


def new_request_id() -> str:
    """A unique, time-ordered id: 12 hex digits of milliseconds since the epoch, a dash, 16
    random hex digits (sorting ids sorts by time to the millisecond). The random part comes
    from ``random`` (seeded from the OS at start): unique, not secret, and without the
    system call per request that ``secrets`` makes."""
    return f"{int(time.time() * 1e3):012x}-{random.getrandbits(64):016x}"


@dataclass(frozen=True)
class Impression:
    """One result list shown. ``items[i]`` was at 1-based position ``offset + i + 1``;
    ``time`` is seconds since the epoch (when the server answered)."""

    request_id: str
    time: float
    surface: str  # search | recommend | similar
    user_id: str
    query: str
    mode: str
    model_fingerprint: str
    index_version: int
    offset: int
    k: int
    items: tuple[str, ...]
    seed_item_id: str = ""  # SimilarItems: the item whose neighbours were shown
    # Exploration (engine.search.explore): the 1-based position p of each swapped pair
    # (p, p + 1); empty when the list is in the ranker's order.
    explore: tuple[int, ...] = ()

    def to_json(self) -> str:
        record = {
            "request_id": self.request_id,
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(),
            "surface": self.surface,
            "user_id": self.user_id,
            "query": self.query,
            "mode": self.mode,
            "model_fingerprint": self.model_fingerprint,
            "index_version": self.index_version,
            "offset": self.offset,
            "k": self.k,
            "seed_item_id": self.seed_item_id,
            "items": list(self.items),
        }
        if self.explore:
            record["explore"] = {"scheme": "swap", "pairs": [[p, p + 1] for p in self.explore]}
        return json.dumps(
            record,
            ensure_ascii=False,
            separators=(",", ":"),
        )


class ImpressionWriter:
    """Appends impressions to ``directory/impressions.jsonl`` from one background thread.

    Args:
        directory: the events dir (created if missing). A read-only dir turns the writer off
            (``enabled`` False, with a warning): impressions are then not logged.
        max_queue: records waiting at most; past that ``submit`` drops and counts.
        on_drop: called once per dropped record (e.g. a Prometheus counter's ``inc``).
        scrub: applied to each record's query text before it is written (docs/privacy.md).

    Each write holds the events dir's file lock (engine.privacy.logs), and reopens the file
    when an erasure or compaction replaced it, so no record lands in a replaced file.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_queue: int = DEFAULT_QUEUE,
        on_drop: Callable[[], None] | None = None,
        linger_s: float = LINGER_S,
        scrub: Callable[[str], str] | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.path = Path(directory) / LOG_NAME
        self.dropped = 0
        self.written = 0
        self._on_drop = on_drop
        self._scrub = scrub
        self._linger_s = linger_s
        self._last_fsync = time.monotonic()
        self._last_drop_log = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.enabled = os.access(self.path.parent, os.W_OK)
        except OSError:
            self.enabled = False
        if not self.enabled:
            log.warning("%s is read-only: impressions are not logged", self.path.parent)
            self._thread = None
            return
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held until close)
        self._cut_torn_tail()
        self._thread = threading.Thread(target=self._run, name="aisle-impressions", daemon=True)
        self._thread.start()

    def _cut_torn_tail(self) -> None:
        """A crash mid-write can leave a partial last line: end it, so the next record starts
        on its own line (the reader skips the partial one as bad JSON)."""
        size = self.path.stat().st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self._file.write("\n")
                    self._file.flush()

    def submit(self, impression: Impression) -> bool:
        """Queue ``impression`` for writing; False (and counted) when it was dropped. Never
        blocks."""
        if not self.enabled or self._closed:
            return False
        try:
            self._queue.put_nowait(impression)
            return True
        except queue.Full:
            self._drop()
            return False

    def _drop(self) -> None:
        self.dropped += 1  # one writer of this count per drop; a lost increment is harmless
        if self._on_drop is not None:
            self._on_drop()
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.warning(
                "impression queue full (%d records): dropping impressions (%d dropped so far)",
                self._queue.maxsize,
                self.dropped,
            )

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is not _CLOSE and self._linger_s > 0:
                time.sleep(self._linger_s)  # let a group gather (group commit)
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _CLOSE for item in group)
            records = [item for item in group if item is not _CLOSE]
            if records:
                self._write(records)
            for _ in group:
                self._queue.task_done()
            if stop and self._queue.empty():
                return

    def _write(self, records: list[Impression]) -> None:
        if self._scrub is not None:
            records = [dataclasses.replace(r, query=self._scrub(r.query)) for r in records]
        try:
            with log_lock(self.path.parent):
                self._reopen_if_replaced()
                self._file.write("".join(r.to_json() + "\n" for r in records))
                self._file.flush()  # in the page cache: survives a kill of this process
            self.written += len(records)
            if time.monotonic() - self._last_fsync >= FSYNC_EVERY_S:
                os.fsync(self._file.fileno())
                self._last_fsync = time.monotonic()
        except OSError as error:  # a full disk: count them as dropped, keep serving
            log.error("could not write %d impressions: %s", len(records), error)
            for _ in records:
                self._drop()

    def _reopen_if_replaced(self) -> None:
        """An erasure or compaction renamed a new file over the path: append to that one."""
        try:
            replaced = os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            replaced = True
        if replaced:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held until close)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or dropped); False on timeout."""
        q = self._queue
        end = time.monotonic() + timeout_s
        with q.all_tasks_done:
            while q.unfinished_tasks:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                q.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer and close the file."""
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._queue.put(_CLOSE)  # blocks only while the queue is full, until the writer drains
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("impression writer did not finish within %.0f s", timeout_s)
            return
        try:
            os.fsync(self._file.fileno())
        except OSError as error:
            log.error("could not fsync %s: %s", self.path, error)
        self._file.close()
