"""A round's feedback: the time split, weighted labels with and without propensity weighting,
held-back clicks with propensities from all earlier logs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from engine.learning.feedback import FeedbackWindow, build_feedback
from tests.engine.learning.test_round import write_logs
from trainer.data.labels import read_labels


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_weighted_labels_and_held_back_clicks(tmp_path, title_catalog):
    events = tmp_path / "events"
    write_logs(events, title_catalog[1], sessions=600)  # an hour ago up to 50 minutes ago
    until = datetime.now(UTC)
    out = {}
    for weighting in (True, False):
        out[weighting] = tmp_path / f"w{weighting}"
        out[weighting].mkdir()
        counts = build_feedback(
            events, title_catalog[0], FeedbackWindow(None, until), out[weighting],
            holdout_fraction=0.25, propensity_weighting=weighting, clip=10.0,
        )  # fmt: skip
        assert counts["impressions"] == 600 and counts["train_positives"] > 0
        assert counts["held_back_clicks"] > 0
    # the logs move each relevant item around, so examination is identified: theta falls
    theta = counts["propensity"]
    assert theta[0] == 1.0 and theta[-1] < 0.5
    ips = {(r["query_id"], r["item_id"]): r for r in _rows(out[True] / "train.jsonl")}
    plain = {(r["query_id"], r["item_id"]): r for r in _rows(out[False] / "train.jsonl")}
    assert ips.keys() == plain.keys()
    positives = [k for k, r in ips.items() if r["grade"] == 2]
    assert positives and all(ips[k]["weight"] >= plain[k]["weight"] - 1e-9 for k in positives)
    assert any(ips[k]["weight"] > plain[k]["weight"] * 1.5 for k in positives)
    assert all("weight" not in r for r in ips.values() if r["grade"] == 0)
    labels = read_labels(out[True] / "train.jsonl")  # a valid labels file for the trainer
    assert labels.weights
    held = _rows(out[True] / "held_back.jsonl")
    assert all(0 < h["propensity"] <= 1 and h["position"] >= 1 for h in held)

    # a later window: propensities still come from all logs before its split
    later = tmp_path / "later"
    later.mkdir()
    since = until - timedelta(minutes=55)
    counts = build_feedback(
        events, title_catalog[0], FeedbackWindow(since, until), later,
        holdout_fraction=0.25, propensity_weighting=True, clip=10.0,
    )  # fmt: skip
    assert counts["impressions"] < 600 < counts["propensity_impressions"] + 150
