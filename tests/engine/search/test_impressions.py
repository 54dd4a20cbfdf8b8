"""Impressions: every response has a request_id, the list it showed lands in impressions.jsonl
(from a real server), events carry request_id/position, a full writer queue drops and counts
without blocking, and a kill -9 after an acknowledged Record loses nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from aisle.v1 import events_pb2, retrieval_pb2
from engine.client import AisleClient
from engine.search import impressions as impressions_module
from engine.search.events import LOG_NAME, EventLog
from engine.search.impressions import Impression, ImpressionWriter, new_request_id
from engine.server import ServerConfig, create_server
from tests.helpers import violated_fields
from trainer.feedback.logs import read_impressions


@pytest.fixture()
def own_root(tmp_path, index_root):
    root = tmp_path / "index"
    shutil.copytree(index_root, root)
    shutil.rmtree(root / "events", ignore_errors=True)  # the shared root's, from other tests
    return root


def shown(response) -> list[str]:
    return [hit.item_id for hit in response.hits]


def test_a_real_server_logs_what_each_response_showed(own_root: Path) -> None:
    server = create_server(ServerConfig(index=own_root, port=0, workers=4))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            first = client.search("desk", 3, user_id="u1")
            second = client.search("desk", 3, user_id="u1", page_token=first.next_page_token)
            batch = client.batch_search(
                [
                    retrieval_pb2.SearchRequest(query="lamp", k=2),
                    retrieval_pb2.SearchRequest(query="chair", k=4, user_id="u2"),
                ]
            )
            recommended = client.recommend(k=5, user_id="u3")
            similar = client.similar_items(first.hits[0].item_id, k=4)
    finally:
        server.stop(0)  # flushes the writer
    responses = [first, second, *batch.responses, recommended, similar]
    ids = [r.request_id for r in responses]
    assert all(ids) and len(set(ids)) == len(ids)
    table, stats = read_impressions(own_root / "events")
    assert stats.skipped == {}
    logged = {row["request_id"]: row for row in table.to_pylist()}
    assert set(logged) == set(ids)  # and the warm-up left none
    for response in responses:
        row = logged[response.request_id]
        assert row["items"] == shown(response)
        assert row["index_version"] == response.index.version
        assert row["model_fingerprint"] == response.index.model_fingerprint
    assert logged[first.request_id]["offset"] == 0
    assert logged[second.request_id]["offset"] == 3  # page 2 starts at position 4
    assert logged[first.request_id]["user_id"] == "u1"
    assert logged[first.request_id]["query"] == "desk"
    assert [logged[r.request_id]["surface"] for r in responses] == [
        "search", "search", "search", "search", "recommend", "similar"
    ]  # fmt: skip
    assert logged[batch.responses[1].request_id]["user_id"] == "u2"
    assert logged[recommended.request_id]["user_id"] == "u3"
    assert logged[recommended.request_id]["mode"] == "popular"  # an unknown user
    assert logged[similar.request_id]["seed_item_id"] == first.hits[0].item_id
    millis = [i.split("-")[0] for i in ids]
    assert millis == sorted(millis)  # time-ordered ids (one client, one after another)


def test_impressions_off_still_gives_request_ids(own_root: Path) -> None:
    server = create_server(ServerConfig(index=own_root, port=0, workers=2, impressions=False))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.search("desk", 3).request_id
    finally:
        server.stop(0)
    assert not (own_root / "events" / "impressions.jsonl").exists()


def impression(n: int) -> Impression:
    return Impression(new_request_id(), time.time(), "search", "u", f"q{n}", "dense", "m", 1, 0,
                      2, ("a", "b"))  # fmt: skip


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path, monkeypatch) -> None:
    release = threading.Event()
    in_fsync = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # the disk stalls: the writer thread waits here
        if threading.current_thread().name == "aisle-impressions":
            in_fsync.set()
            release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    monkeypatch.setattr(impressions_module, "FSYNC_EVERY_S", 0.0)  # every group fsyncs
    drops = []
    writer = ImpressionWriter(tmp_path, max_queue=3, on_drop=lambda: drops.append(1))
    assert writer.submit(impression(0))
    assert in_fsync.wait(10)  # the writer holds record 0 and is stuck on the disk
    outcomes: list[bool] = []
    submitter = threading.Thread(
        target=lambda: outcomes.extend(writer.submit(impression(n)) for n in range(1, 11))
    )
    submitter.start()
    submitter.join(10)
    assert not submitter.is_alive()  # the request side returned with the disk still stuck
    assert outcomes == [True] * 3 + [False] * 7
    assert writer.dropped == 7 and len(drops) == 7
    release.set()
    writer.close()
    lines = (tmp_path / "impressions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and writer.written == 4  # 1 + the 3 queued; what was dropped counted


def test_close_writes_what_is_queued_and_a_torn_tail_is_ended(tmp_path) -> None:
    (tmp_path / "impressions.jsonl").write_text('{"request_id": "torn')
    writer = ImpressionWriter(tmp_path)
    for n in range(50):
        writer.submit(impression(n))
    writer.close()
    table, stats = read_impressions(tmp_path)
    assert table.num_rows == 50 and stats.skipped == {"bad_json": 1}
    assert not writer.submit(impression(99))  # closed


def test_the_server_counts_drops_in_a_metric(own_root, monkeypatch) -> None:
    monkeypatch.setattr(impressions_module, "DEFAULT_QUEUE", 1)
    server = create_server(ServerConfig(index=own_root, port=0, workers=2))
    assert server.service.impressions is not None
    real_submit = server.service.impressions.submit
    blocked = threading.Event()

    def refuse(imp):  # as a full queue answers
        server.service.impressions._drop()
        blocked.set()
        return False

    monkeypatch.setattr(server.service.impressions, "submit", refuse)
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.search("desk", 2).hits
            client.search("lamp", 2)
        value = server.metrics.registry.get_sample_value("aisle_impressions_dropped_total")
        assert blocked.is_set() and value == 2.0
    finally:
        monkeypatch.setattr(server.service.impressions, "submit", real_submit)
        server.stop(0)


def test_events_carry_request_id_and_position(own_root: Path) -> None:
    server = create_server(ServerConfig(index=own_root, port=0, workers=2))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            response = client.search("desk", 3, user_id="u1")
            hit = response.hits[1]
            recorded = client.record_events(
                [
                    events_pb2.Event(
                        user_id="u1",
                        item_id=hit.item_id,
                        type=events_pb2.EVENT_TYPE_CLICK,
                        query="desk",
                        request_id=response.request_id,
                        position=2,
                    )
                ]
            )
            assert recorded.recorded == 1
            for field, value in (("position", -1), ("position", 10_001), ("request_id", "x" * 65)):
                bad = events_pb2.Event(
                    user_id="u1", item_id=hit.item_id, type=events_pb2.EVENT_TYPE_CLICK,
                    **{field: value},
                )  # fmt: skip
                with pytest.raises(grpc.RpcError) as caught:
                    client.record_events([bad])
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert violated_fields(caught.value) == [f"events[0].{field}"]
    finally:
        server.stop(0)
    (event,) = list(EventLog(own_root / "events").read())
    assert (event.request_id, event.position) == (response.request_id, 2)
    assert event.item_id == hit.item_id


@pytest.mark.slow  # a server subprocess (imports torch, loads the model)
def test_kill_9_after_an_acknowledged_record_loses_nothing(own_root: Path, tmp_path) -> None:
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli.serve", "--index", str(own_root), "--port", "0",
         "--port-file", str(port_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        with AisleClient(f"127.0.0.1:{port_file.read_text().strip()}") as client:
            response = client.search("desk", 3, user_id="u1")
            events = [
                events_pb2.Event(
                    user_id="u1", item_id=hit.item_id, type=events_pb2.EVENT_TYPE_PURCHASE,
                    request_id=response.request_id, position=i + 1,
                )
                for i, hit in enumerate(response.hits)
            ]  # fmt: skip
            assert client.record_events(events).recorded == 3
        process.send_signal(signal.SIGKILL)  # no drain, no flush: only what is on disk stays
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    logged = list(EventLog(own_root / "events").read())
    assert [(e.item_id, e.request_id, e.position) for e in logged] == [
        (hit.item_id, response.request_id, i + 1) for i, hit in enumerate(response.hits)
    ]
    # impressions are at-most-once: whatever reached the disk reads cleanly
    table, _ = read_impressions(own_root / "events")
    assert set(table.column("request_id").to_pylist()) <= {response.request_id}
    assert LOG_NAME == "events.jsonl"
