"""The dataset builder against hand-made logs: attribution, skip-above negatives, weights,
propensities, purchase sequences, windows, and bad or partial logs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from trainer.feedback.dataset import (
    FeedbackConfig,
    build_dataset,
    read_dataset,
    write_dataset,
)
from trainer.feedback.logs import read_events, read_impressions

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CATALOG = [f"i{n}" for n in range(10)]


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def impression(
    rid: str,
    items: list[str],
    *,
    query: str = "shoes",
    offset: int = 0,
    minute: float = 0,
    surface: str = "search",
    user: str = "u1",
) -> dict:
    return {
        "request_id": rid,
        "time": at(minute),
        "surface": surface,
        "user_id": user,
        "query": query,
        "mode": "dense",
        "model_fingerprint": "m",
        "index_version": 1,
        "offset": offset,
        "k": len(items),
        "seed_item_id": "",
        "items": items,
    }


def event(
    item: str, kind: str, *, rid: str = "", position: int = 0, minute: float = 1, user: str = "u1"
) -> dict:
    out = {
        "user_id": user,
        "item_id": item,
        "type": kind,
        "query": "shoes",
        "time": at(minute),
        "recorded": at(minute),
    }
    if rid:
        out["request_id"] = rid
        out["position"] = position
    return out


def write_logs(
    directory: Path,
    impressions: list[dict],
    events: list[dict],
    *,
    impressions_tail: str = "",
    events_tail: str = "",
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "impressions.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in impressions) + impressions_tail
    )
    (directory / "events.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in events) + events_tail
    )
    return directory


def rows_by_item(pairs, query: str = "shoes") -> dict[str, dict]:
    return {r["item_id"]: r for r in pairs.to_pylist() if r["query"] == query}


def test_attribution_skip_above_negatives_and_action_weights(tmp_path: Path) -> None:
    logs = write_logs(
        tmp_path / "events",
        [
            impression("r1", ["i0", "i1", "i2", "i3", "i4"]),
            # page 2 of another search: positions 6..8
            impression("r2", ["i5", "i6", "i7"], offset=5, minute=2),
        ],
        [
            event("i2", "click", rid="r1", position=3),
            event("i2", "add_to_cart", rid="r1", position=3, minute=2),
            event("i7", "purchase", rid="r2", position=8, minute=3),
            event("i9", "click"),  # not attributed: counted, used for nothing but sequences
        ],
    )
    config = FeedbackConfig(clip=1.0)  # no propensity weighting: weights are the raw gains
    data = build_dataset(logs, CATALOG, config)
    rows = rows_by_item(data.pairs)
    # i2: strongest action add_to_cart (2) at position 3, one click and one add-to-cart
    assert rows["i2"]["label"] == 2.0 and rows["i2"]["position"] == 3
    assert rows["i2"]["clicks"] == 1 and rows["i2"]["add_to_carts"] == 1
    assert rows["i2"]["weight"] == 2.0 and rows["i2"]["ipw"] == 1.0
    # shown above the engaged i2 and not engaged: skip-above negatives; i3, i4 below: nothing
    assert rows["i0"]["label"] == 0 and rows["i0"]["skips"] == 1 and rows["i0"]["position"] == 1
    assert rows["i1"]["label"] == 0 and rows["i1"]["skips"] == 1
    assert "i3" not in rows and "i4" not in rows
    # page 2: the purchase at position 8 makes i5 and i6 (positions 6, 7) negatives
    assert rows["i7"]["label"] == 4.0 and rows["i7"]["position"] == 8
    assert rows["i5"]["position"] == 6 and rows["i6"]["position"] == 7
    assert data.summary["events_attributed"] == 3
    assert data.summary["skipped"]["unattributed_events"] == 1
    assert data.summary["positives"] == 2 and data.summary["negatives"] == 4


def test_custom_weights_and_inverse_propensity(tmp_path: Path) -> None:
    # Many lists of the same 3 items in rotating order, clicks only at position 1 for i0 and
    # at deeper positions for the others: the deeper click gets the larger weight.
    impressions, events = [], []
    orders = [["i0", "i1", "i2"], ["i1", "i2", "i0"], ["i2", "i0", "i1"]]
    rng = np.random.default_rng(0)
    theta = [1.0, 0.5, 0.25]
    for n in range(600):
        order = orders[n % 3]
        impressions.append(impression(f"r{n}", order, minute=n / 100))
        for pos, item in enumerate(order, 1):
            if rng.random() < theta[pos - 1] * 0.6:
                events.append(event(item, "click", rid=f"r{n}", position=pos, minute=n / 100))
    logs = write_logs(tmp_path / "events", impressions, events)
    data = build_dataset(logs, CATALOG, FeedbackConfig(weights={"click": 3.0}, clip=10))
    curve = data.propensities.by_position
    np.testing.assert_allclose(curve, theta, atol=0.12)
    rows = rows_by_item(data.pairs)
    for row in rows.values():
        assert row["label"] == 3.0
        # each engagement weighs 3 × 1/propensity at its position; the mean ipw is above 1
        assert row["weight"] == pytest.approx(3.0 * row["ipw"] * row["clicks"], rel=1e-6)
        assert 1.0 < row["ipw"] <= 10.0


def test_bad_and_partial_logs_are_counted_and_skipped(tmp_path: Path) -> None:
    logs = write_logs(
        tmp_path / "events",
        [impression("r1", ["i0", "i1", "nope"]), impression("r2", ["i3"])],
        [
            event("i1", "click", rid="r1", position=2),
            event("zz", "click", rid="r1", position=9),  # unknown item id
            event("i5", "click", rid="gone", position=1),  # no such impression
            event("i4", "click", rid="r1", position=1),  # not in that list
            event("i0", "teleport", rid="r1", position=1),  # unknown type
        ],
        impressions_tail='{"request_id": "r3", "time": "2026-12-01T1',  # torn last line
        events_tail='{"user_id": "u1", "item',
    )
    # a line of garbage and a record with the wrong types, in the middle
    path = logs / "impressions.jsonl"
    text = path.read_text().split("\n")
    text.insert(1, "this is not json")
    text.insert(1, json.dumps({**impression("r4", ["i0"]), "offset": "zero"}))
    text.insert(1, json.dumps({"time": at(0), "items": ["i0"]}))  # no request_id
    path.write_text("\n".join(text))
    data = build_dataset(logs, CATALOG)
    s = data.summary
    assert s["impressions"] == 2
    assert s["events_attributed"] == 1
    assert s["skipped"]["unknown_item"] == 1
    assert s["skipped"]["unknown_event_type"] == 1
    assert s["skipped"]["event_without_impression"] == 1
    assert s["skipped"]["event_item_not_in_impression"] == 1
    assert s["skipped"]["shown_unknown_item"] == 1
    assert s["impressions_without_events"] == 1  # r2
    imp_log, ev_log = s["logs"]
    assert imp_log["skipped"] == {"torn_last_line": 1, "bad_json": 2, "missing_field": 1}
    assert ev_log["skipped"] == {"torn_last_line": 1}
    assert rows_by_item(data.pairs)["i1"]["label"] == 1.0


def test_old_event_logs_without_attribution_fields_read(tmp_path: Path) -> None:
    directory = tmp_path / "events"
    directory.mkdir()
    (directory / "events.jsonl").write_text(
        json.dumps({"user_id": "u", "item_id": "i1", "type": "view", "query": "", "time": at(0)})
        + "\n"
    )
    events, stats = read_events(directory)
    assert events.num_rows == 1 and events.column("request_id").to_pylist() == [None]
    impressions, _ = read_impressions(directory)  # no file: empty
    assert impressions.num_rows == 0
    data = build_dataset(directory, None)
    assert data.pairs.num_rows == 0 and data.summary["events"] == 1


def test_purchase_sequences_become_next_item_pairs(tmp_path: Path) -> None:
    logs = write_logs(
        tmp_path / "events",
        [],
        [
            event("i1", "purchase", user="a", minute=1),
            event("i5", "purchase", user="b", minute=2),
            event("i2", "purchase", user="a", minute=3),
            event("i2", "purchase", user="a", minute=4),  # a repeat: no pair
            event("i3", "click", user="a", minute=5),  # not a purchase
            event("i4", "purchase", user="a", minute=6),
        ],
    )
    data = build_dataset(logs, CATALOG)
    pairs = [(r["user_id"], r["item_id"], r["next_item_id"]) for r in data.next_items.to_pylist()]
    assert pairs == [("a", "i1", "i2"), ("a", "i2", "i4")]


def test_window_by_recorded_time(tmp_path: Path) -> None:
    logs = write_logs(
        tmp_path / "events",
        [impression("r1", ["i0", "i1"], minute=0), impression("r2", ["i0", "i1"], minute=60)],
        [
            event("i1", "click", rid="r1", position=2, minute=1),
            event("i1", "click", rid="r2", position=2, minute=61),
        ],
    )
    config = FeedbackConfig(since=T0 + timedelta(minutes=30))
    data = build_dataset(logs, CATALOG, config)
    assert data.summary["impressions"] == 1 and data.summary["events_attributed"] == 1
    with pytest.raises(ValueError, match="timezone"):
        FeedbackConfig(since=datetime(2026, 1, 1))


def test_write_dataset_is_atomic_and_replaces(tmp_path: Path) -> None:
    logs = write_logs(
        tmp_path / "events",
        [impression("r1", ["i0", "i1"])],
        [event("i1", "click", rid="r1", position=2)],
    )
    out = tmp_path / "dataset"
    data = build_dataset(logs, CATALOG)
    write_dataset(data, out)
    write_dataset(data, out)  # replaces the previous one
    pairs, next_items, propensity, summary = read_dataset(out)
    assert pairs.num_rows == 2 and summary["positives"] == 1
    assert propensity["by_position"][0] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "events"]  # no temp dirs
    assert pq.read_schema(out / "pairs.parquet").names[:3] == ["query", "item_id", "label"]


def test_explored_lists_are_counted_and_old_lines_still_read(tmp_path: Path) -> None:
    explored = impression("r2", ["i2", "i1", "i3"], minute=1)
    explored["explore"] = {"scheme": "swap", "pairs": [[1, 2]]}
    old = impression("r3", ["i1", "i2", "i3"], minute=2)
    del old["seed_item_id"]  # a line from before a field existed
    directory = write_logs(
        tmp_path / "events",
        [impression("r1", ["i1", "i2", "i3"]), explored, old],
        [
            event("i1", "click", rid="r1", position=1),
            event("i1", "click", rid="r2", position=2, minute=2),
            event("i1", "click", rid="r3", position=1, minute=3),
        ],
    )
    table, stats = read_impressions(directory)
    assert table.num_rows == 3 and not stats.skipped
    assert table.column("explore").to_pylist()[1] == {"scheme": "swap", "pairs": [[1, 2]]}
    dataset = build_dataset(directory, CATALOG, FeedbackConfig())
    assert dataset.summary["impressions"] == 3
    assert dataset.summary["explored_impressions"] == 1
    # i1 engaged at positions 1 and 2 for the same query: position 2 is identified
    assert dataset.summary["propensity_identifiable"] is True
    assert dataset.propensities.to_json()["identified_positions"] == 2
