"""Two live indexes writing one root's update log, as the worker processes of
``aisle-serve --processes`` do: every record applied by both, in seq order, whoever wrote it.

Two ``LiveIndex.open`` in one test process stand for two processes: each has its own UpdateLog
with its own file descriptors, and flock serialises appends across open files as across
processes."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.live.index import LiveIndex
from indexer.storage.update_log import UpdateLog
from tests.helpers import live_state, unit


@pytest.fixture()
def pair(flat_root_copy):
    a, b = LiveIndex.open(flat_root_copy), LiveIndex.open(flat_root_copy)
    yield a, b
    a.close()
    b.close()


def test_interleaved_writers_apply_every_record_in_seq_order(pair) -> None:
    a, b = pair
    a.upsert([{"item_id": "A1", "title": "red kettle"}], unit(1, a.dim, 1))
    # b has not read a's record: its own write lands at seq 2 and applies seq 1 first.
    seq = b.upsert([{"item_id": "B1", "title": "blue kettle"}], unit(1, b.dim, 2))
    assert seq == 2 and b.seq == 2
    assert {"A1", "B1"} <= set(live_state(b))
    # An attribute change and a delete of items the other wrote: checked against the log's
    # newest state, not refused as unknown.
    a.update_attributes({"B1": {"price": 3.5}})
    _, not_found = b.delete(["A1", "NOPE"])
    assert not_found == ["NOPE"]
    # b read a's attribute change before its delete; a takes in the delete.
    assert b.catch_up() == 0 and a.catch_up() == 1
    assert a.seq == b.seq == 4
    assert live_state(a) == live_state(b)
    assert "A1" not in live_state(a) and live_state(a)["B1"]["price"] == 3.5
    # The same rows answer the same searches in both.
    xq = unit(3, a.dim, 9)
    for (da, ia), (db, ib) in zip([a.search(xq, 5)], [b.search(xq, 5)], strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_allclose(da, db)


def test_a_lone_writer_never_reads_its_own_records_back(flat_root_copy, monkeypatch) -> None:
    reads = []
    original = UpdateLog.records

    def counted(self, after=0):
        reads.append(after)
        return original(self, after)

    live = LiveIndex.open(flat_root_copy)
    try:
        monkeypatch.setattr(UpdateLog, "records", counted)
        for i in range(5):
            live.upsert([{"item_id": f"N{i}", "title": f"item {i}"}], unit(1, live.dim, i))
            live.update_attributes({f"N{i}": {"price": float(i)}})
        live.delete(["N0"])
        assert live.catch_up() == 0
        assert reads == []  # the log's stamp said nothing else was written
        other = LiveIndex.open(flat_root_copy)  # (its replay reads the log)
        other.upsert([{"item_id": "X", "title": "x"}], unit(1, live.dim, 7))
        other.close()
        reads.clear()
        assert live.catch_up() == 1 and reads == [live.seq - 1]
    finally:
        live.close()
