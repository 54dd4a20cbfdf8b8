"""The ranking stage's engagement feature, served: the server's own event log, re-read in the
background.

``EngagementFeed`` reads ``trainer.feedback.engagement.read_engagement`` over the server's
events dir (the same function ``aisle-rank train --events`` uses, so the feature means the same
in training and serving) when started (before the server says SERVING), then every
``refresh_s`` seconds on a daemon thread; a failed read is logged and the previous counts
stay. The server starts it when the version it serves has a ranker; when a Reload brings the
first ranker, the first ranked search starts it in the background and the feature is missing
(NaN) until that read completes, as for a server with no event log.
A ranked search takes the counts of the moment (``counts``) and looks up its candidates' item
ids in them: a dict lookup per candidate, nothing per snapshot, so Upserts and Reloads cost
nothing here.
An erasure re-reads the log at once (``SearchService.forget_users``); a consent change counts
from the next refresh.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from trainer.feedback.engagement import ENGAGEMENT_DAYS, ItemEngagement, read_engagement

__all__ = ["EngagementFeed"]

log = logging.getLogger(__name__)


class EngagementFeed:
    """Per-item recent engagement from ``events_dir``, refreshed every ``refresh_s`` seconds."""

    def __init__(
        self,
        events_dir: Path,
        *,
        days: float = ENGAGEMENT_DAYS,
        refresh_s: float = 300.0,
        default_use_for_training: bool = True,
    ) -> None:
        if not days > 0 or not refresh_s > 0:
            raise ValueError(f"need days > 0 and refresh_s > 0, got {days}, {refresh_s}")
        self.events_dir = events_dir
        self.days = days
        self.refresh_s = refresh_s
        self._default_use = default_use_for_training
        self._current: ItemEngagement | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Read the event log now; on failure keep the previous counts (logged)."""
        t = time.perf_counter()
        try:
            current = read_engagement(
                self.events_dir, days=self.days, default_use_for_training=self._default_use
            )
        except (OSError, ValueError) as error:
            log.error("engagement: reading %s failed, keeping the last counts: %s",
                      self.events_dir, error)  # fmt: skip
            return
        self._current = current  # one reference swap: readers see the old or the new counts
        log.info(
            "engagement: %d engaged events on %d items in the last %g days (%.0f ms)",
            current.events, len(current.counts), self.days, (time.perf_counter() - t) * 1e3,
        )  # fmt: skip

    def start(self, *, read_now: bool = True) -> None:
        """Read the log (now, on this thread, when ``read_now``; else first thing on the
        background thread) and then every ``refresh_s`` on a daemon thread, until ``stop``."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, args=(not read_now,), name="aisle-engagement", daemon=True
            )
        if read_now:
            self.refresh()
        self._thread.start()

    def _run(self, read_first: bool) -> None:
        if read_first:
            self.refresh()
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    @property
    def current(self) -> ItemEngagement | None:
        """The counts of the last successful read (None before it)."""
        return self._current

    @property
    def running(self) -> bool:
        """Whether the refresh thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def counts(self) -> ItemEngagement | None:
        """The counts of the moment, or None before the first read (which this starts in the
        background: a Reload that brings a first ranker does not stall a search on it)."""
        if self._thread is None:
            self.start(read_now=False)
        return self._current
