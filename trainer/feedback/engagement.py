"""Recent engagement per item, from the server's event log: the ranker's ``engagement`` feature.

An item's engagement is the sum of its engaged events' action weights (``DEFAULT_WEIGHTS``:
click 1, add to cart 2, purchase 4; a view counts 0) recorded in the last ``days`` days. The
same rules as the training data (trainer.feedback.dataset) decide which events count: shoppers
who did not consent to training use, and erased records, are left out (an erased shopper's
events stop counting at the next read), and a torn or malformed line is skipped. Training
(``aisle-rank train --events``) and serving (the server's own events dir, re-read
periodically) read it with this one function, so the feature means the same in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.feedback.dataset import DEFAULT_WEIGHTS, event_time_of
from trainer.feedback.logs import TIMESTAMP, read_events
from trainer.feedback.privacy import allowed
from trainer.privacy.exclusions import training_exclusions

__all__ = ["ENGAGEMENT_DAYS", "ItemEngagement", "read_engagement"]

ENGAGEMENT_DAYS = 30.0


@dataclass(frozen=True)
class ItemEngagement:
    """Action-weighted engaged events per item id in a window of the event log.

    Attributes:
        counts: item id → summed action weights (items without engagement are absent).
        events: engaged events counted.
        skipped: lines or records left out (torn, malformed, no consent, erased).
        since, until: the window (``until`` is when it was read).
    """

    counts: dict[str, float]
    events: int
    skipped: int
    since: datetime
    until: datetime

    def of(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """(n,) float32 ``log1p(engagement)`` of each item id, 0 for an item with none."""
        counts = self.counts
        ids = item_ids.tolist() if isinstance(item_ids, np.ndarray) else item_ids
        return np.log1p(np.array([counts.get(i, 0.0) for i in ids], np.float64)).astype(np.float32)


def read_engagement(
    events_dir: str | Path,
    *,
    days: float = ENGAGEMENT_DAYS,
    now: datetime | None = None,
    default_use_for_training: bool = True,
) -> ItemEngagement:
    """Read ``events_dir/events.jsonl`` (a missing file is no engagement).

    Raises:
        ValueError: ``days`` is not positive.
    """
    if not days > 0:
        raise ValueError(f"engagement days must be > 0, got {days}")
    until = now or datetime.now(UTC)
    since = until - timedelta(days=days)
    events, stats = read_events(events_dir)
    skipped = sum(stats.skipped.values())
    exclusions = training_exclusions(events_dir, default_use_for_training)
    events, n = allowed(events, event_time_of(events), exclusions)
    skipped += n
    if not events.num_rows:
        return ItemEngagement({}, 0, skipped, since, until)
    when = event_time_of(events)
    inside = pc.and_(
        pc.greater_equal(when, pa.scalar(since, TIMESTAMP)),
        pc.less_equal(when, pa.scalar(until, TIMESTAMP)),
    )
    events = events.filter(pc.fill_null(inside, False))
    types = events.column("type").to_pylist()
    weight = np.fromiter((DEFAULT_WEIGHTS.get(t or "", 0.0) for t in types), np.float64)
    engaged = weight > 0
    items = np.asarray(events.column("item_id").to_pylist(), dtype=object)[engaged]
    if not len(items):
        return ItemEngagement({}, 0, skipped, since, until)
    ids, inverse = np.unique(items.astype(str), return_inverse=True)
    sums = np.bincount(inverse, weights=weight[engaged])
    counts = {str(i): float(s) for i, s in zip(ids, sums, strict=True)}
    return ItemEngagement(counts, int(engaged.sum()), skipped, since, until)
