"""Erasure and retention over the events dir; the EventLog shares the rewrite's file lock."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

from engine.privacy.consent import ConsentStore
from engine.privacy.logs import compact, forget, log_lock
from engine.search.events import Event, EventLog
from trainer.privacy.exclusions import read_tombstones

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def write(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def rec(user: str, days_ago: float) -> dict:
    when = (NOW - timedelta(days=days_ago)).isoformat()
    return {"user_id": user, "item_id": "i", "type": "click", "time": when, "recorded": when}


def test_retention_drops_old_events_and_impressions(tmp_path) -> None:
    write(tmp_path / "events.jsonl", [rec("a", 100), rec("a", 5), rec("b", 31)])
    write(tmp_path / "impressions.jsonl", [rec("a", 40), rec("b", 1)])
    result = compact(tmp_path, retention_days=30, now=NOW)
    assert result.removed == {"events.jsonl": 2, "impressions.jsonl": 1}
    assert [json.loads(x)["user_id"] for x in (tmp_path / "events.jsonl").open()] == ["a"]
    assert compact(tmp_path, retention_days=30, now=NOW).removed["events.jsonl"] == 0


def test_a_tombstone_keeps_erased_records_from_coming_back(tmp_path) -> None:
    write(tmp_path / "events.jsonl", [rec("a", 3), rec("b", 3)])
    assert forget(tmp_path, ("a",), now=NOW).removed["events.jsonl"] == 1
    assert read_tombstones(tmp_path) == {"a": NOW}
    # A stale copy comes back, and the user later returns with a new event.
    with (tmp_path / "events.jsonl").open("a") as f:
        f.write(json.dumps(rec("a", 2)) + "\n" + json.dumps(rec("a", -1)) + "\n")
    assert compact(tmp_path, now=NOW).removed["events.jsonl"] == 1
    users = [json.loads(x)["user_id"] for x in (tmp_path / "events.jsonl").open()]
    assert users == ["b", "a"]  # the new event after the erasure stays


def test_appends_wait_for_a_rewrite_holding_the_lock(tmp_path) -> None:
    log = EventLog(tmp_path)
    log.append([Event("a", "i", "click", "", NOW)])
    done = threading.Event()

    def append() -> None:
        log.append([Event("b", "j", "click", "", NOW)])
        done.set()

    with log_lock(tmp_path):
        thread = threading.Thread(target=append)
        thread.start()
        assert not done.wait(0.3)  # the append is held while the lock is
    thread.join(5)
    assert done.is_set() and [e.user_id for e in log.read()] == ["a", "b"]


def test_consent_changes_of_another_process_are_seen_and_kept(tmp_path) -> None:
    server, cli = ConsentStore(tmp_path), ConsentStore(tmp_path)
    server.set(("a",), personalization=False)
    assert cli.get(("a",)).personalization is False  # read back from the file
    assert cli.forget(("a",))
    assert server.get(("a",)).defaults  # the server sees the erasure...
    server.set(("b",), use_for_training=False)
    assert cli.get(("a",)).defaults and not cli.get(("b",)).use_for_training  # ...and keeps it
