"""Training data honours consent and erasure, on both engines (the Spark one is slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.feedback.test_dataset import CATALOG, at, event, impression
from trainer.feedback.dataset import FeedbackConfig, build_dataset, write_dataset
from trainer.feedback.privacy import forget_dataset_users
from trainer.privacy.exclusions import CONSENT_FILE, TOMBSTONES_FILE


def logs(directory: Path) -> Path:
    """Three users buying in turn; u2 opted out of training; u1 forgotten at minute 50."""
    impressions, events = [], []
    for n in range(90):
        user = f"u{n % 3}"
        impressions.append(impression(f"r{n}", CATALOG[:4], minute=n, user=user))
        events.append(
            event(CATALOG[n % 4], "purchase", rid=f"r{n}", position=n % 4 + 1, minute=n, user=user)
        )
    directory.mkdir()
    (directory / "impressions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in impressions))
    (directory / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in events))
    consent = {"u2": {"personalization": True, "use_for_training": False, "set": at(0)}}
    (directory / CONSENT_FILE).write_text(json.dumps(consent))
    (directory / TOMBSTONES_FILE).write_text(
        json.dumps({"user_id": "u1", "forgotten": at(50)}) + "\n"
    )
    return directory


def test_opted_out_and_erased_records_stay_out(tmp_path) -> None:
    directory = logs(tmp_path / "events")
    dataset = build_dataset(directory, CATALOG)
    rows = dataset.next_items.to_pylist()
    assert {r["user_id"] for r in rows} == {"u0", "u1"}
    assert all(r["time"].isoformat() > at(50) for r in rows if r["user_id"] == "u1")
    skipped = {s["path"].rsplit("/", 1)[-1]: s["skipped"] for s in dataset.summary["logs"]}
    # u2: 30 of each; u1 up to minute 50: 17 of each.
    assert skipped["events.jsonl"]["no_training_consent_or_erased"] == 47
    assert skipped["impressions.jsonl"]["no_training_consent_or_erased"] == 47
    only_opted_in = build_dataset(
        directory, CATALOG, FeedbackConfig(default_use_for_training=False)
    )
    assert only_opted_in.next_items.num_rows == 0  # nobody opted in
    out = write_dataset(dataset, tmp_path / "round-1")
    assert forget_dataset_users(out, {"u0"}) == sum(r["user_id"] == "u0" for r in rows) > 0
    assert forget_dataset_users(out, {"u0"}) == 0


@pytest.mark.slow
def test_spark_honours_them_too(tmp_path) -> None:
    pytest.importorskip("pyspark")
    from indexer.build.spark import spark_session
    from trainer.feedback.spark import build_dataset_spark

    directory = logs(tmp_path / "events")
    local = build_dataset(directory, CATALOG)
    spark = spark_session("local[2]", "aisle-test-feedback-privacy")
    try:
        remote = build_dataset_spark(directory, CATALOG, spark=spark)
    finally:
        spark.stop()

    def key(table):
        return sorted((r["user_id"], r["item_id"], r["next_item_id"]) for r in table.to_pylist())

    assert key(remote.next_items) == key(local.next_items)
    assert remote.pairs.num_rows == local.pairs.num_rows
