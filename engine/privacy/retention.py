"""Periodic retention in a running server: ``compact`` of the events dir every N hours on a
daemon thread (``aisle-serve --retention-days D --retention-every HOURS``).

Each pass is the same compaction as ``aisle-events compact --retention-days D``: it holds the
events dir's file lock while it rewrites ``events.jsonl`` and ``impressions.jsonl``, the lock
the server's EventLog takes around each append and the impression writer around each group, so
an event acknowledged during a pass is either in the file the pass reads (and kept, being
fresh) or appended after the new file is in place; none is lost. A pass that fails (a full
disk, a permission change) is logged and retried at the next interval; the server keeps
serving. The server's in-memory recent items are not touched by a pass: they are rebuilt from
the compacted log at the next start or Reload.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

from engine.privacy.logs import Rewrite, compact
from trainer.progress import repeating

log = logging.getLogger(__name__)

HOUR_S = 3600.0


class RetentionSchedule:
    """Compacts `directory` to `retention_days` every `every_hours` until `stop()`."""

    def __init__(self, directory: str | Path, retention_days: float, every_hours: float) -> None:
        if not retention_days > 0:
            raise ValueError(f"retention days must be > 0, got {retention_days}")
        if not every_hours > 0:
            raise ValueError(f"the retention interval must be > 0 hours, got {every_hours}")
        self.directory = Path(directory)
        self.retention_days = retention_days
        self.every_hours = every_hours
        self.passes = 0  # completed passes (tests and logs)
        self.failures = 0
        self.last: Rewrite | None = None
        self._stack: ExitStack | None = None

    def run_once(self) -> None:
        """One compaction pass; errors are logged, never raised (the next pass retries)."""
        try:
            self.last = compact(self.directory, self.retention_days)
        except OSError as error:
            self.failures += 1
            log.error("retention pass over %s failed (retrying later): %s", self.directory, error)
            return
        self.passes += 1

    def start(self) -> None:
        if self._stack is not None:
            return
        stack = ExitStack()
        stack.enter_context(repeating(self.every_hours * HOUR_S, self.run_once, "aisle-retention"))
        self._stack = stack
        log.info(
            "retention: dropping events and impressions older than %g days every %g hours",
            self.retention_days,
            self.every_hours,
        )

    def stop(self) -> None:
        """Stop the thread; waits for a pass in progress to finish (it holds the file lock)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None
