"""Tests for the durable update log: round trip, torn records, corruption, segments, concurrency."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from indexer.storage.log_record import UpdateLogError
from indexer.storage.manifest import SCHEMA_VERSION, Manifest, ShardInfo, save_manifest
from indexer.storage.update_log import UpdateLog, truncate_applied

DIM = 4


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def segment(root: Path) -> Path:
    (path,) = sorted((root / "updates").glob("log.*.jsonl"))[-1:]
    return path


def fake_version(root: Path, version: int, applied_seq: int) -> None:
    """A published version dir holding only a manifest (enough for the log's bookkeeping)."""
    directory = root / "versions" / str(version)
    directory.mkdir(parents=True)
    names = ("shard_000.faiss", "shard_000.vectors.npy", "shard_000.rows.npy")
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        version=version,
        created_at="2024-01-01T00:00:00+00:00",
        model_fingerprint="m",
        model_path="/m",
        dim=DIM,
        metric="inner_product",
        factory="Flat",
        n_items=0,
        n_shards=1,
        shards=(ShardInfo(0, 0, *names),),
        files={name: "0" * 64 for name in names},
        applied_seq=applied_seq,
    )
    save_manifest(manifest, directory / "manifest.json")


def test_round_trip_of_every_op(tmp_path):
    xb = vectors(2)
    items = [{"item_id": "A", "title": "lamp", "price": 2.5}, {"item_id": "é", "title": "mug"}]
    with UpdateLog(tmp_path) as log:
        assert log.records() == [] and log.last_seq == 0
        assert log.append_upsert(items, xb, "fp") == 1
        assert log.append_delete(["A", "B"]) == 2
        assert log.append_attributes({"é": {"price": 3.0, "in_stock": None}}) == 3
    records = UpdateLog(tmp_path).records()  # a fresh reader, as after a restart
    assert [r.seq for r in records] == [1, 2, 3]
    assert [r.op for r in records] == ["upsert", "delete", "attributes"]
    upsert, delete, attributes = records
    assert list(upsert.items) == items and upsert.fingerprint == "fp"
    np.testing.assert_array_equal(upsert.vectors, xb)  # bit-exact: replay is deterministic
    assert upsert.vectors.dtype == np.float32
    assert delete.item_ids == ("A", "B")
    assert attributes.attributes == {"é": {"price": 3.0, "in_stock": None}}
    assert all(r.time for r in records)
    assert [r.seq for r in UpdateLog(tmp_path).records(after=2)] == [3]
    # One JSON object per line, with its seq and checksum.
    lines = segment(tmp_path).read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]
    assert all("crc" in json.loads(line) for line in lines)


def test_seq_continues_across_instances(tmp_path):
    with UpdateLog(tmp_path) as log:
        log.append_delete(["A"])
    with UpdateLog(tmp_path) as log:
        assert log.append_delete(["B"]) == 2
        assert log.last_seq == 2


def test_bad_appends_are_refused_and_log_nothing(tmp_path):
    log = UpdateLog(tmp_path)
    with pytest.raises(ValueError, match="one vector per item"):
        log.append_upsert([{"item_id": "A", "title": "t"}], vectors(2), "fp")
    with pytest.raises(ValueError, match="non-empty string"):
        log.append_delete([""])
    with pytest.raises(ValueError, match="without any item"):
        log.append_attributes({})
    assert log.records() == []


@pytest.mark.parametrize("tail", [b'{"seq": 3, "op": "del', b'{"seq":3,"op":"delete","crc":1}\n'])
def test_torn_last_record_is_ignored_then_cut_off(tmp_path, tail, caplog):
    with UpdateLog(tmp_path) as log:
        log.append_delete(["A"])
        log.append_delete(["B"])
    path = segment(tmp_path)
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)  # what a crash in the middle of an append leaves behind
    with caplog.at_level(logging.WARNING, logger="indexer.storage.update_log"):
        assert [r.seq for r in UpdateLog(tmp_path).records()] == [1, 2]
    assert "torn" in caplog.text
    with UpdateLog(tmp_path) as log:
        assert log.append_delete(["C"]) == 3  # the torn record's seq was never acknowledged
    assert path.read_bytes().startswith(good)
    assert [r.item_ids for r in UpdateLog(tmp_path).records()] == [("A",), ("B",), ("C",)]


def test_corruption_before_the_end_is_an_error_naming_the_line(tmp_path):
    with UpdateLog(tmp_path) as log:
        for item_id in "ABC":
            log.append_delete([item_id])
    path = segment(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"B"', b'"X"')  # valid JSON, wrong checksum
    path.write_bytes(b"".join(lines))
    with pytest.raises(UpdateLogError, match=rf"{path.name}:2: checksum mismatch"):
        UpdateLog(tmp_path).records()
    with pytest.raises(UpdateLogError):
        UpdateLog(tmp_path).append_delete(["D"])  # the writer reads the tail too: no new seq


def test_rotate_and_truncate_segments(tmp_path):
    log = UpdateLog(tmp_path)
    assert log.rotate() is None  # nothing in the active segment yet
    log.append_delete(["A"])
    log.append_delete(["B"])
    assert log.rotate().name == "log.000000000003.jsonl"
    log.append_delete(["C"])
    assert [start for start, _ in log.segments()] == [1, 3]
    assert [r.seq for r in log.records(after=0)] == [1, 2, 3]
    assert [r.seq for r in log.records(after=2)] == [3]
    assert log.truncate(1) == []  # seq 2 is still needed
    assert [p.name for p in log.truncate(2)] == ["log.000000000001.jsonl"]
    assert log.truncate(10) == []  # the active segment always stays
    assert [r.seq for r in log.records()] == [3]
    assert log.append_delete(["D"]) == 4
    log.close()


def test_truncate_applied_keeps_what_the_oldest_kept_version_needs(tmp_path):
    log = UpdateLog(tmp_path)
    for item_id in "AB":
        log.append_delete([item_id])
    log.rotate()
    for item_id in "CD":
        log.append_delete([item_id])
    log.rotate()
    log.append_delete(["E"])
    fake_version(tmp_path, 1, applied_seq=1)
    fake_version(tmp_path, 2, applied_seq=4)
    assert truncate_applied(tmp_path) == []  # version 1 still needs seq 2..
    (tmp_path / "versions" / "1" / "manifest.json").unlink()
    (tmp_path / "versions" / "1").rmdir()
    assert [p.name for p in truncate_applied(tmp_path)] == [
        "log.000000000001.jsonl",
        "log.000000000003.jsonl",
    ]
    assert [r.seq for r in log.records()] == [5]


def test_a_fresh_log_numbers_after_every_folded_update(tmp_path):
    fake_version(tmp_path, 1, applied_seq=41)  # e.g. the updates dir was deleted by hand
    with UpdateLog(tmp_path) as log:
        assert log.append_delete(["A"]) == 42
    assert segment(tmp_path).name == "log.000000000042.jsonl"


def test_threads_append_without_losing_or_reusing_seqs(tmp_path):
    log = UpdateLog(tmp_path)
    other = UpdateLog(tmp_path)  # a second writer object (another LiveIndex, say)
    seqs: list[int] = []

    def work(writer: UpdateLog, t: int) -> None:
        for i in range(15):
            seqs.append(writer.append_delete([f"t{t}-{i}"]))

    threads = [threading.Thread(target=work, args=(log if t % 2 else other, t)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seqs) == list(range(1, 61))
    records = UpdateLog(tmp_path).records()
    assert [r.seq for r in records] == list(range(1, 61))
    assert len({r.item_ids for r in records}) == 60
    log.close()
    other.close()


_APPENDER = """
import sys
from indexer.storage.update_log import UpdateLog
log = UpdateLog(sys.argv[1])
for i in range(20):
    log.append_delete([f"{sys.argv[2]}-{i}"])
"""


def test_processes_append_to_one_log(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path), name])
        for name in ("p", "q")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    records = UpdateLog(tmp_path).records()
    assert [r.seq for r in records] == list(range(1, 41))
    assert {r.item_ids[0][0] for r in records} == {"p", "q"}


def three_deletes(root: Path, rotate_after: int | None = None) -> None:
    with UpdateLog(root) as log:
        for i, item_id in enumerate("ABC", 1):
            log.append_delete([item_id])
            if i == rotate_after:
                log.rotate()


def test_a_record_missing_from_the_middle_of_a_segment_is_refused(tmp_path):
    three_deletes(tmp_path)
    path = segment(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[2])  # seq 2 gone: its line is whole, but missing
    with pytest.raises(UpdateLogError) as error:
        UpdateLog(tmp_path).records()
    message = str(error.value)
    assert str(path) in message and "seq 2 is missing" in message
    assert f"aisle-index repair-log {tmp_path} --truncate-at 2" in message
    with pytest.raises(UpdateLogError, match="--truncate-at 2"):
        UpdateLog(tmp_path).append_delete(["D"])  # no new seq after the gap either


@pytest.mark.parametrize("damage", ["checksum", "torn", "removed"])
def test_a_damaged_last_record_of_an_older_segment_is_refused(tmp_path, damage):
    three_deletes(tmp_path, rotate_after=2)  # segments: seq 1..2, seq 3..
    older = sorted((tmp_path / "updates").glob("log.*.jsonl"))[0]
    lines = older.read_bytes().splitlines(keepends=True)
    if damage == "checksum":
        lines[1] = lines[1].replace(b'"B"', b'"X"')
    elif damage == "torn":
        lines[1] = lines[1][:20]
    else:
        lines.pop()
    older.write_bytes(b"".join(lines))
    with pytest.raises(UpdateLogError) as error:
        UpdateLog(tmp_path).records()
    message = str(error.value)
    assert str(older) in message and "seq 2" in message and "--truncate-at 2" in message
    assert [r.seq for r in UpdateLog(tmp_path).records(after=2)] == [3]  # folded: not read


def test_a_torn_last_record_of_the_newest_segment_is_dropped_as_unacknowledged(tmp_path, caplog):
    three_deletes(tmp_path, rotate_after=2)
    with open(segment(tmp_path), "ab") as f:
        f.write(b'{"seq":4,"op":"del')
    with caplog.at_level(logging.WARNING, logger="indexer.storage.update_log"):
        assert [r.seq for r in UpdateLog(tmp_path).records()] == [1, 2, 3]
    assert "torn last record (line 2, it would have been seq 4)" in caplog.text
    assert "before it was acknowledged" in caplog.text


def test_repair_moves_the_damaged_tail_aside_and_the_log_opens(tmp_path):
    three_deletes(tmp_path, rotate_after=1)  # segments: seq 1, seq 2..3
    path = segment(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0].replace(b'"B"', b'"X"') + lines[1])  # seq 2 damaged
    original = path.read_bytes()
    log = UpdateLog(tmp_path)
    with pytest.raises(ValueError, match="seq 2 is damaged or missing too; use --truncate-at 2"):
        log.repair(3)
    quarantine, end = log.repair(2)
    assert end == 1 and quarantine.parent == tmp_path / "updates" / "quarantine"
    assert (quarantine / path.name).read_bytes() == original  # moved aside, not deleted
    assert [r.seq for r in log.records()] == [1]
    assert log.append_delete(["D"]) == 2
    assert [r.item_ids for r in UpdateLog(tmp_path).records()] == [("A",), ("D",)]
    log.close()


def test_repair_never_reuses_a_seq_a_version_folded_in(tmp_path):
    three_deletes(tmp_path)
    fake_version(tmp_path, 1, applied_seq=3)
    path = segment(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[2])
    with UpdateLog(tmp_path) as log:
        quarantine, end = log.repair(2)
        assert end == 3 and log.truncated()[0] == 3  # seq 2..3 live on in version 1 only
        assert sorted(p.name for p in quarantine.iterdir()) == ["log.000000000001.jsonl"]
        assert log.records() == []  # a full read (a build) sees no gap
        assert log.append_delete(["D"]) == 4  # after every folded seq
        assert [r.seq for r in log.records()] == [4]
