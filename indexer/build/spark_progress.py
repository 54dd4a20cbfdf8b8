"""Progress of a Spark job a person can read: Spark's own status tracker polled from the
driver, one line every few seconds per running stage (tasks done / total, rate, ETA), instead
of silence (a Spark build printed nothing for 47 minutes) or Spark's console bar (which is off
in local mode and unreadable in a log)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trainer.progress import repeating

logger = logging.getLogger(__name__)
EVERY_S = 5.0


def stage_lines(tracker: Any, started: dict[int, float], now: float) -> list[str]:
    """One line per active stage of `tracker` (a pyspark StatusTracker); `started` remembers
    when each stage was first seen (for the rate and ETA)."""
    lines = []
    for stage_id in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(stage_id)
        if info is None:
            continue
        first_seen = started.setdefault(stage_id, now)
        done, total = info.numCompletedTasks, info.numTasks
        elapsed = now - first_seen
        line = (
            f"spark stage {stage_id} ({info.name.split(' at ')[0]}): {done}/{total} tasks done, "
            f"{info.numActiveTasks} running, {elapsed:.0f} s"
        )
        if done and total > done:
            eta = elapsed / done * (total - done)
            line += f", ETA {eta:.0f} s"
        if info.numFailedTasks:
            line += f", {info.numFailedTasks} failed (retried)"
        lines.append(line)
    return lines


@contextmanager
def spark_progress(spark: Any, every_s: float = EVERY_S) -> Iterator[None]:
    """Log the running stages of `spark`'s jobs every `every_s` while the block runs."""
    tracker = spark.sparkContext.statusTracker()
    started: dict[int, float] = {}

    def poll() -> None:
        try:
            lines = stage_lines(tracker, started, time.monotonic())
        except Exception:  # noqa: BLE001 (a progress line must never fail the build)
            logger.debug("spark progress poll failed", exc_info=True)
            return
        for line in lines:
            logger.info("%s", line)

    with repeating(every_s, poll, "aisle-spark-progress"):
        yield
