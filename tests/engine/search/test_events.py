"""Events.Record, user state, and Recommend / Search by user id."""

from __future__ import annotations

import shutil

import grpc
import pytest
from google.protobuf import timestamp_pb2

from aisle.v1 import events_pb2, events_pb2_grpc
from engine.client import AisleClient
from engine.search.events import LOG_NAME, EventLog
from engine.server import ServerConfig, create_server


@pytest.fixture()
def own_root(tmp_path, index_root):
    root = tmp_path / "index"
    shutil.copytree(index_root, root)
    return root


def record(address: str, *events: events_pb2.Event) -> events_pb2.RecordResponse:
    with grpc.insecure_channel(address) as channel:
        stub = events_pb2_grpc.EventsStub(channel)
        return stub.Record(events_pb2.RecordRequest(events=list(events)), timeout=5)


def click(user: str, item: str, **kw) -> events_pb2.Event:
    return events_pb2.Event(user_id=user, item_id=item, type=events_pb2.EVENT_TYPE_CLICK, **kw)


def test_events_personalise_recommendations_at_once(own_root) -> None:
    server = create_server(ServerConfig(index=own_root, port=0))
    address = f"127.0.0.1:{server.port}"
    try:
        with AisleClient(address) as client:
            cold = client.recommend(k=5, user_id="u1")
            assert cold.popularity_fallback and len(cold.hits) == 5
            assert record(address, click("u1", "SKU0004"), click("u1", "SKU0010")).recorded == 2
            warm = client.recommend(k=5, user_id="u1")
            assert not warm.popularity_fallback
            ids = [h.item_id for h in warm.hits]
            assert len(ids) == 5 and not {"SKU0004", "SKU0010"} & set(ids)  # seen items left out
            same = client.recommend(["SKU0004", "SKU0010"], k=5)
            assert [h.item_id for h in same.hits] == ids  # the user is their recent items
            seen = client.recommend(k=60, user_id="u1", include_seen=True)
            assert {"SKU0004", "SKU0010"} <= {h.item_id for h in seen.hits}
            personal = client.search("desk", 5, user_id="u1", personalization_weight=0.9)
            assert personal.personalized
            stranger = client.search("desk", 5, user_id="nobody")
            assert not stranger.personalized and len(stranger.hits) == 5
    finally:
        server.stop(0)
    lines = (own_root / "events" / LOG_NAME).read_text().splitlines()
    assert len(lines) == 2 and '"user_id":"u1"' in lines[0] and '"type":"click"' in lines[0]


def test_user_state_survives_a_restart(own_root) -> None:
    server = create_server(ServerConfig(index=own_root, port=0))
    address = f"127.0.0.1:{server.port}"
    when = timestamp_pb2.Timestamp()
    when.GetCurrentTime()
    record(address, click("u2", "SKU0020", time=when, query="grey table"))
    with AisleClient(address) as client:
        before = [h.item_id for h in client.recommend(k=5, user_id="u2").hits]
    server.stop(0)
    server = create_server(ServerConfig(index=own_root, port=0))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            after = client.recommend(k=5, user_id="u2")
            assert not after.popularity_fallback
            assert [h.item_id for h in after.hits] == before
    finally:
        server.stop(0)
    events = list(EventLog(own_root / "events").read())
    assert events[0].query == "grey table"


def test_bad_events_are_refused_whole(own_root) -> None:
    server = create_server(ServerConfig(index=own_root, port=0))
    address = f"127.0.0.1:{server.port}"
    try:
        with pytest.raises(grpc.RpcError) as info:
            record(
                address, click("u3", "SKU0001"), events_pb2.Event(user_id="u3", item_id="SKU0002")
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "events[1].type" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            record(address, click("u3", "SKU0001"), click("u3", "NOPE"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            record(address, click("", "SKU0001"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not (own_root / "events" / LOG_NAME).exists()  # nothing half-recorded
    finally:
        server.stop(0)


def test_a_bare_version_dir_needs_an_events_dir(own_root, tmp_path) -> None:
    version_dir = own_root / "versions" / (own_root / "CURRENT").read_text().strip()
    server = create_server(ServerConfig(index=version_dir, port=0))
    try:
        with pytest.raises(grpc.RpcError) as info:
            record(f"127.0.0.1:{server.port}", click("u4", "SKU0001"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--events-dir" in info.value.details()
    finally:
        server.stop(0)
    server = create_server(ServerConfig(index=version_dir, port=0, events_dir=tmp_path / "ev"))
    try:
        assert record(f"127.0.0.1:{server.port}", click("u4", "SKU0001")).recorded == 1
    finally:
        server.stop(0)


def test_torn_last_line_is_skipped(tmp_path) -> None:
    log = EventLog(tmp_path)
    (tmp_path / LOG_NAME).write_text(
        '{"user_id":"a","item_id":"x","type":"view","query":"","time":"2026-01-01T00:00:00+00:00"}\n'
        '{"user_id":"a","item_id":"y","ty'
    )
    assert [e.item_id for e in log.read()] == ["x"]


def test_an_append_after_a_torn_line_keeps_the_log_readable(tmp_path) -> None:
    (tmp_path / LOG_NAME).write_text(
        '{"user_id":"a","item_id":"x","type":"view","query":"","time":"2026-01-01T00:00:00+00:00"}\n'
        '{"user_id":"a","item_id":"y","ty'
    )
    log = EventLog(tmp_path)  # opening it repairs the tail
    from engine.search.events import Event, now_utc

    log.append([Event("a", "z", "click", "", now_utc())])
    assert [e.item_id for e in log.read()] == ["x", "z"]


def test_an_event_dated_before_the_build_stays_after_a_reload(own_root) -> None:
    # The caller's time may be earlier than the version's build; what counts for the replay
    # on a reload or restart is when the server recorded the event.
    old = timestamp_pb2.Timestamp(seconds=946_684_800)  # 2000-01-01, before any build
    server = create_server(ServerConfig(index=own_root, port=0))
    address = f"127.0.0.1:{server.port}"
    try:
        record(address, click("u7", "SKU0005", time=old))
        with AisleClient(address) as client:
            assert not client.recommend(k=3, user_id="u7").popularity_fallback
            client.reload()
            assert not client.recommend(k=3, user_id="u7").popularity_fallback
    finally:
        server.stop(0)
    again = create_server(ServerConfig(index=own_root, port=0))
    try:
        with AisleClient(f"127.0.0.1:{again.port}") as client:
            assert not client.recommend(k=3, user_id="u7").popularity_fallback
    finally:
        again.stop(0)
    line = (own_root / "events" / LOG_NAME).read_text().splitlines()[-1]
    assert '"time":"2000-01-01T00:00:00+00:00"' in line and '"recorded":' in line
