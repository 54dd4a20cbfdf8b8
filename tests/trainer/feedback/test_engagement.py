"""The ranker's engagement feature read from hand-made event logs: action weights, the window,
consent and erasure, torn lines, and the per-row values."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.feedback.test_dataset import T0, event
from trainer.feedback.engagement import read_engagement
from trainer.privacy.exclusions import CONSENT_FILE, TOMBSTONES_FILE

NOW = T0 + timedelta(days=1)


def write_events(directory: Path, events: list[dict], tail: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + tail)
    return directory


def test_weights_by_action_and_views_do_not_count(tmp_path: Path) -> None:
    directory = write_events(
        tmp_path / "events",
        [
            event("i0", "click"),
            event("i0", "click", minute=2),
            event("i0", "purchase", minute=3),
            event("i1", "add_to_cart"),
            event("i2", "view"),
        ],
    )
    e = read_engagement(directory, now=NOW)
    assert e.counts == {"i0": 6.0, "i1": 2.0}  # 1 + 1 + 4; 2; a view is not engagement
    assert e.events == 4 and e.skipped == 0
    values = e.of(["i1", "i9", "i0", "i2"])
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, [math.log1p(2), 0, math.log1p(6), 0], rtol=1e-6)


def test_the_window_counts_only_recent_events(tmp_path: Path) -> None:
    minutes_per_day = 24 * 60
    directory = write_events(
        tmp_path / "events",
        [
            event("i0", "purchase", minute=-40 * minutes_per_day),  # 41 days before NOW
            event("i0", "click", minute=-5 * minutes_per_day),  # 6 days before
            event("i1", "click", minute=2 * minutes_per_day),  # after NOW: not yet
        ],
    )
    assert read_engagement(directory, now=NOW).counts == {"i0": 1.0}
    assert read_engagement(directory, now=NOW, days=60).counts == {"i0": 5.0}
    assert read_engagement(directory, now=NOW, days=3).counts == {}
    with pytest.raises(ValueError, match="days must be > 0"):
        read_engagement(directory, days=0)


def test_opted_out_and_erased_shoppers_do_not_count(tmp_path: Path) -> None:
    directory = write_events(
        tmp_path / "events",
        [
            event("i0", "click", user="u1"),
            event("i0", "click", user="u2"),  # opted out of training use
            event("i1", "purchase", user="u3", minute=1),  # erased at minute 5
            event("i1", "click", user="u3", minute=9),  # after the erasure: counts
            event("i2", "click", user=""),  # anonymous: belongs to no shopper
        ],
    )
    consent = {"u2": {"personalization": True, "use_for_training": False, "set": T0.isoformat()}}
    (directory / CONSENT_FILE).write_text(json.dumps(consent))
    forgotten = (T0 + timedelta(minutes=5)).isoformat()
    (directory / TOMBSTONES_FILE).write_text(
        json.dumps({"user_id": "u3", "forgotten": forgotten}) + "\n"
    )
    e = read_engagement(directory, now=NOW)
    assert e.counts == {"i0": 1.0, "i1": 1.0, "i2": 1.0}
    assert e.skipped == 2
    # a deployment whose default is "no training use": only shoppers who opted in count (none)
    assert read_engagement(directory, now=NOW, default_use_for_training=False).counts == {"i2": 1.0}


def test_torn_and_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    directory = write_events(
        tmp_path / "events",
        [event("i0", "click")],
        tail='not json\n{"user_id": "u1", "item_id": "i0", "type": "purch',
    )
    e = read_engagement(directory, now=NOW)
    assert e.counts == {"i0": 1.0}
    assert e.skipped == 2


def test_no_log_is_no_engagement(tmp_path: Path) -> None:
    e = read_engagement(tmp_path, now=NOW)
    assert e.counts == {} and e.events == 0
    assert e.of(np.array(["i0", "i1"], dtype=object)).tolist() == [0.0, 0.0]
