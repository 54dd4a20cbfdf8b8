"""The served engagement feed: background refreshes, failed reads, settings."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from engine.search.engagement import EngagementFeed


def append(directory: Path, item: str, kind: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    record = {"user_id": "u1", "item_id": item, "type": kind,
              "time": datetime.now(UTC).isoformat()}  # fmt: skip
    with (directory / "events.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def wait_for(condition, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value is not None:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_the_feed_refreshes_in_the_background(tmp_path):
    directory = tmp_path / "events"
    append(directory, "i1", "click")
    feed = EngagementFeed(directory, refresh_s=0.05)
    try:
        first = wait_for(feed.counts)  # the first call starts it, off this thread
        assert first.counts == {"i1": 1.0}
        append(directory, "i1", "purchase")
        second = wait_for(lambda: c if (c := feed.counts()).counts != first.counts else None)
        assert second.counts == {"i1": 5.0}
        ids = np.array(["i0", "i1"], dtype=object)
        np.testing.assert_allclose(second.of(ids), [0, math.log1p(5)], rtol=1e-6)
    finally:
        feed.stop()
    assert not feed.running


def test_a_failed_read_keeps_the_last_counts(tmp_path):
    directory = tmp_path / "events"
    append(directory, "i1", "add_to_cart")
    feed = EngagementFeed(directory, refresh_s=3600)
    feed.start()  # reads on this thread
    try:
        assert feed.current is not None and feed.current.counts == {"i1": 2.0}
        (directory / "events.jsonl").unlink()
        (directory / "events.jsonl").mkdir()  # unreadable as a log
        feed.refresh()
        assert feed.current.counts == {"i1": 2.0}
    finally:
        feed.stop()


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="days > 0"):
        EngagementFeed(tmp_path, days=0)
    with pytest.raises(ValueError, match="refresh_s > 0"):
        EngagementFeed(tmp_path, refresh_s=-1)
