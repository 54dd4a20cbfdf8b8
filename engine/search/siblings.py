"""Sibling worker processes of one ``aisle-serve --processes N``: what keeps them serving alike.

Each worker is a whole server (its own snapshot, live index, query batcher, users' recent items)
bound to the same port with SO_REUSEPORT, so the kernel spreads client connections across them
(engine.cluster.workers starts and restarts them). They share the index root's update log and the
events dir, both safe across processes already (file locks). What one worker changes, the others
learn from those files on their follower thread (``Follower``, every ``follow_s``, default 0.1 s;
``SearchService.follow`` is one step):

- **live updates** another worker appended to the update log (Upsert, UpdateAttributes, Delete)
  are replayed onto this worker's live index, as a Reload's sequence-number handoff does;
- **events** another worker recorded are added to the users' recent items (the follower reads
  ``events.jsonl`` on from the offset it reached); an erasure or a compaction (the file replaced,
  a new tombstone) rebuilds them from the log, so an erased shopper leaves every worker;
- **Reload** goes through this module's ``SiblingBoard``: the worker that took the call reloads,
  then announces the version it now serves (``board.json``: a generation number and the version);
  each other worker loads that version and confirms (``worker-<i>.json``); the call returns when
  every worker has confirmed, or fails with UNAVAILABLE naming those that did not.

A write is acknowledged by the worker that took it and is durable in the shared log at that
moment; another worker serves it within about one ``follow_s`` (a client's own calls share one
connection, hence one worker, so it reads its own writes at once). Consent and the engagement
feature already re-read their files by themselves.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.io import write_atomic

log = logging.getLogger(__name__)

BOARD_FILE = "board.json"
LOCK_FILE = ".board.lock"
FOLLOW_S = 0.1  # a follower's step interval
RELOAD_WAIT_S = 300.0  # how long a Reload waits for every sibling to load the version


@dataclass(frozen=True)
class WorkerSpec:
    """Worker ``index`` of ``count`` processes serving one port."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"worker must be I/N with 0 <= I < N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        """``"I/N"``.

        Raises:
            ValueError: not of that form, or I out of range.
        """
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"worker must be I/N (e.g. 0/2), got {text!r}") from None
        return cls(index, count)


class SiblingBoard:
    """The Reload protocol of the workers of one server, in files of a directory they share
    (created by the supervisor): a generation counter with the version it announces, and one
    confirmation file per worker (see the module docstring)."""

    def __init__(self, directory: str | Path, worker: WorkerSpec) -> None:
        self.directory = Path(directory)
        self.worker = worker
        if not self.directory.is_dir():
            raise ValueError(f"siblings dir {self.directory} does not exist")

    def announce(self, version: int) -> int:
        """Announce that the workers are to serve index ``version``; the new generation."""
        with open(self.directory / LOCK_FILE, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            generation = self.latest()[0] + 1
            record = {"generation": generation, "version": version, "by": self.worker.index}
            write_atomic(self.directory / BOARD_FILE, json.dumps(record))
        return generation

    def latest(self) -> tuple[int, int]:
        """(generation, version) last announced; (0, 0) before any Reload."""
        try:
            raw = json.loads((self.directory / BOARD_FILE).read_text())
        except FileNotFoundError:
            return 0, 0
        return int(raw["generation"]), int(raw["version"])

    def confirm(self, generation: int, version: int, error: str = "") -> None:
        """Record that this worker serves ``version`` for ``generation`` (or failed: ``error``)."""
        record = {"generation": generation, "version": version, "error": error, "pid": os.getpid()}
        write_atomic(self._confirmation(self.worker.index), json.dumps(record))

    def _confirmation(self, index: int) -> Path:
        return self.directory / f"worker-{index}.json"

    def problems(self, generation: int) -> list[str]:
        """What stops ``generation`` from being served by every worker: each worker that has
        not confirmed it yet, or failed to load it; [] when all serve it."""
        found = []
        for index in range(self.worker.count):
            try:
                raw = json.loads(self._confirmation(index).read_text())
            except FileNotFoundError:
                found.append(f"worker {index} has not confirmed")
                continue
            if raw["generation"] < generation:
                found.append(f"worker {index} has not confirmed")
            elif raw["generation"] == generation and raw["error"]:
                found.append(f"worker {index} failed: {raw['error']}")
        return found

    def wait(self, generation: int, timeout_s: float | None = None) -> list[str]:
        """Wait until every worker serves ``generation``; the problems left at the timeout
        (default RELOAD_WAIT_S)."""
        deadline = time.monotonic() + (RELOAD_WAIT_S if timeout_s is None else timeout_s)
        while True:
            problems = self.problems(generation)
            if not problems or time.monotonic() >= deadline:
                return problems
            time.sleep(0.02)


class Follower:
    """Runs ``step`` every ``interval_s`` on a daemon thread until ``stop``; an exception in a
    step is logged and counted (``failures``), and the next step runs as usual."""

    def __init__(self, step: Callable[[], None], interval_s: float = FOLLOW_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"follow interval must be > 0, got {interval_s}")
        self._step = step
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="aisle-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._step()
            except Exception:  # a bad step must not end following: log it, go on
                self.failures += 1
                log.exception("following the sibling workers failed (will retry)")

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
