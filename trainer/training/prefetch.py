"""Batches built off the critical path: a thread runs the ``BatchFeed`` ahead of the steps.

Token ids are ready up front (the trainer tokenises every text once), so a batch is NumPy work:
drawing rows, hard negatives, masks, padding (and, with gradient caching, the length-sorted
mini-batches). The thread keeps ``depth`` batches queued while the step computes. The batches
are the feed's, in the feed's order: the same with and without the thread.

Each queued batch carries the feed's state after it, so a checkpoint records where the
*consumed* batches end, not the prefetched ones. When the data a batch is built from changes
(hard negatives re-mined, an item bank refreshed), ``invalidate`` drops the queue and rewinds
the feed to the consumed position, so the next batches are built from the new data exactly as
without prefetching.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Mapping
from typing import Any

from trainer.training.batches import Batch
from trainer.training.feed import BatchFeed

_POLL_S = 0.1


class Prefetcher:
    """``BatchFeed``'s interface (``next``, ``state``, ``restore``) with a builder thread.

    The thread starts at the first ``next`` and stops at ``close`` (or ``invalidate``); an
    exception in it is raised by the ``next`` that would have returned its batch.
    """

    def __init__(self, feed: BatchFeed, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.feed = feed
        self.depth = depth
        self._consumed = copy.deepcopy(feed.state())
        self._queue: queue.Queue[tuple[str, Batch, dict[str, Any]] | BaseException] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def next(self) -> tuple[str, Batch]:
        """The next micro-batch and its dataset's name, as ``BatchFeed.next``."""
        if self._thread is None:
            self._start()
        assert self._queue is not None
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._join()
            raise item
        name, batch, state = item
        self._consumed = state
        return name, batch

    def state(self) -> dict[str, Any]:
        """The feed's state after the last batch ``next`` returned."""
        return copy.deepcopy(self._consumed)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's state (drops anything queued)."""
        self._join()
        self.feed.restore(state)
        self._consumed = copy.deepcopy(self.feed.state())

    def invalidate(self) -> None:
        """The data behind the batches changed: drop the queue, rewind to the consumed batch."""
        if self._thread is None:
            return
        self._join()
        self.feed.restore(self._consumed)

    def close(self) -> None:
        """Stop the thread (the feed is left wherever the thread got to)."""
        self._join()

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(
            target=self._work, args=(self._queue,), name="aisle-batches", daemon=True
        )
        self._thread.start()

    def _work(self, out: queue.Queue) -> None:
        while not self._stop.is_set():
            try:
                name, batch = self.feed.next()
                item: Any = (name, batch, copy.deepcopy(self.feed.state()))
            except BaseException as exc:  # handed to the consumer, which raises it
                item = exc
            while not self._stop.is_set():
                try:
                    out.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def _join(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._queue = None
