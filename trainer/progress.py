"""Progress a person can read on long stages: a per-batch item bar with rate and ETA, and a
heartbeat for stages that cannot count (an ONNX export, a FAISS train)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

HEARTBEAT_S = 5.0  # a silent stage says it is alive this often


class TickingBar(tqdm):
    """A tqdm bar that also redraws every HEARTBEAT_S without an update: one slow batch (a big
    model on a busy CPU) still shows the clock moving instead of a frozen line."""

    def __init__(self, *args, every_s: float = HEARTBEAT_S, **kwargs) -> None:
        self._every_s = every_s
        self._last_shown = time.monotonic()
        super().__init__(*args, **kwargs)
        self._stop_ticking = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="aisle-progress", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        # Checked four times per period, so no line is ever more than 1.25 periods old.
        while not self._stop_ticking.wait(self._every_s / 4):
            if time.monotonic() - self._last_shown >= self._every_s:
                self.refresh()

    def display(self, *args, **kwargs):
        self._last_shown = time.monotonic()
        return super().display(*args, **kwargs)

    def close(self) -> None:
        stop = getattr(self, "_stop_ticking", None)
        if stop is not None:
            stop.set()
        super().close()


def progress_bar(
    total: int, desc: str, unit: str = "item", *, every_s: float = HEARTBEAT_S
) -> tqdm:
    """A tqdm bar on stderr with count, rate and ETA. On a terminal it redraws in place; into
    a file or pipe (a CI log) it writes a new line at most every few seconds instead of
    hundreds of carriage returns; either way it redraws every HEARTBEAT_S while a slow batch
    runs."""
    interactive = sys.stderr.isatty()
    return TickingBar(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        every_s=every_s,
        mininterval=0.2 if interactive else every_s,
        ascii=not interactive,
        dynamic_ncols=interactive,
        **(
            {}
            if interactive
            else {
                "bar_format": "{desc}: {n_fmt}/{total_fmt} {unit}s "
                "[{elapsed}<{remaining}, {rate_fmt}]\n"
            }
        ),
    )


@contextmanager
def repeating(every_s: float, action: Callable[[], None], name: str) -> Iterator[None]:
    """Call `action` every `every_s` on a daemon thread (named `name`) while the block runs;
    the thread is stopped and joined when the block ends."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            action()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def heartbeat(what: str, logger: logging.Logger, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Log "`what`…" now, "`what`: still running (N s)" every `every_s` while the block runs,
    and "`what`: done in N s" at the end."""
    started = time.monotonic()
    logger.info("%s…", what)

    def beat() -> None:
        logger.info("%s: still running (%.0f s)", what, time.monotonic() - started)

    with repeating(every_s, beat, "aisle-heartbeat"):
        yield
    logger.info("%s: done in %.1f s", what, time.monotonic() - started)
