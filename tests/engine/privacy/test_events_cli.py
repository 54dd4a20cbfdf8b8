"""`aisle-events` and the privacy flags of `aisle-serve`: retention, and clear errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from engine.cli import events, serve


def test_compact_drops_records_past_retention(tmp_path, capsys) -> None:
    old = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    new = datetime.now(UTC).isoformat()
    log = tmp_path / "events" / "events.jsonl"
    log.parent.mkdir()
    log.write_text(
        "".join(
            json.dumps({"user_id": u, "item_id": "i", "type": "click", "time": t, "recorded": t})
            + "\n"
            for u, t in (("a", old), ("b", new))
        )
    )
    assert events.main(["compact", "--index", str(tmp_path), "--retention-days", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"]["events.jsonl"] == 1
    assert [json.loads(x)["user_id"] for x in log.open()] == ["b"]


def test_bad_arguments_are_clear_errors(tmp_path, capsys) -> None:
    assert events.main(["compact"]) == 2
    assert "give --index or --events-dir" in capsys.readouterr().err
    args = ["compact", "--events-dir", str(tmp_path), "--retention-days", "0"]
    assert events.main(args) == 2
    assert "retention days must be > 0" in capsys.readouterr().err
    assert events.main(["forget", "--events-dir", str(tmp_path), "--user", "x" * 300]) == 2
    assert "--user must be 1 to 256" in capsys.readouterr().err
    keys = tmp_path / "keys"
    keys.write_text("k1:short\n")
    args = ["forget", "--events-dir", str(tmp_path), "--user", "u", "--user-keys-file", str(keys)]
    assert events.main(args) == 2
    assert "at least 16" in capsys.readouterr().err


def test_serve_refuses_bad_privacy_flags(index_root, capsys) -> None:
    assert serve.main(["--index", str(index_root), "--scrub-queries", "ssn"]) == 2
    assert "unknown query scrubbing" in capsys.readouterr().err
