"""The ledger: append-only, durable lines; a torn last line is skipped and cut."""

from __future__ import annotations

from engine.learning import ledger


def test_append_read_and_torn_tail(tmp_path):
    ledger.append(tmp_path, {"kind": "round", "round": 1})
    ledger.append(tmp_path, {"kind": "rollback", "to_version": 1})
    with open(ledger.ledger_path(tmp_path), "a", encoding="utf-8") as f:
        f.write('{"kind": "round", "rou')  # a crash mid-append
    assert ledger.read(tmp_path) == [
        {"kind": "round", "round": 1},
        {"kind": "rollback", "to_version": 1},
    ]
    assert ledger.rounds(tmp_path) == [{"kind": "round", "round": 1}]
    ledger.append(tmp_path, {"kind": "round", "round": 2})
    assert [r.get("round") for r in ledger.read(tmp_path)] == [1, None, 2]
    assert ledger.ledger_path(tmp_path).read_text().count("\n") == 3


def test_no_ledger_is_empty(tmp_path):
    assert ledger.read(tmp_path) == [] and ledger.rounds(tmp_path) == []
