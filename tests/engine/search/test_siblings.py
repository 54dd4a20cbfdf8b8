"""Worker processes of one server (aisle-serve --processes) keeping each other current: live
updates, events, erasure and Reload reach every worker (engine.search.siblings).

Two real servers in this test process stand for two workers: same index root, same siblings
dir, bound to one port with SO_REUSEPORT. Most tests step the follower by hand (``follow()``)
so that what each worker sees before and after is exact."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.search import siblings
from engine.search.errors import Unavailable
from engine.search.events import Event
from engine.search.siblings import Follower, SiblingBoard, WorkerSpec
from engine.search.types import SearchQuery
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from tests.helpers import write_title_catalog

HOUR = 3600.0  # a follow interval that never fires during a test: steps are taken by hand


@pytest.fixture()
def own_root(tmp_path, index_root) -> Path:
    root = tmp_path / "index"
    shutil.copytree(index_root, root)
    return root


def start_workers(root: Path, tmp_path: Path, follow_s: float = HOUR, count: int = 2):
    board = tmp_path / "siblings"
    board.mkdir(exist_ok=True)
    servers, port = [], 0
    for index in range(count):
        config = ServerConfig(
            index=root,
            port=port,
            workers=4,
            worker=WorkerSpec(index, count),
            siblings_dir=board,
            follow_s=follow_s,
        )
        servers.append(create_server(config))
        port = servers[0].port  # the others bind the same port beside it
    return servers


def top(server, text: str) -> str:
    result = server.service.search(SearchQuery(text=text, k=1, mode="dense"))
    return result.hits[0].item_id


def test_a_write_to_one_worker_is_served_by_the_other_after_a_step(own_root, tmp_path) -> None:
    a, b = start_workers(own_root, tmp_path)
    try:
        assert a.port == b.port
        title = "violet hammock deluxe"
        seq = a.service.upsert([{"item_id": "NEW1", "title": title}])
        assert top(a, title) == "NEW1"
        assert top(b, title) != "NEW1"  # not yet: b has not read the log
        b.service.follow()
        assert top(b, title) == "NEW1"
        assert b.service.snapshot.live.seq == seq
        b.service.follow()  # nothing new: the same snapshot
        assert top(b, title) == "NEW1"
    finally:
        for server in (a, b):
            server.stop(0)


def test_deletes_and_attributes_cross_both_ways(own_root, tmp_path) -> None:
    a, b = start_workers(own_root, tmp_path)
    try:
        a.service.upsert([{"item_id": "NEW1", "title": "violet hammock deluxe"}])
        # b checks a delete against the log's newest state, even before its follower ran.
        seq, deleted, not_found = b.service.delete(["NEW1", "SKU0003"])
        assert (deleted, not_found) == (2, [])
        a.service.follow()
        assert a.service.snapshot.live.seq == seq
        assert a.service.snapshot.index.n_items == b.service.snapshot.index.n_items == 59
    finally:
        for server in (a, b):
            server.stop(0)


def test_events_and_an_erasure_reach_every_worker(own_root, tmp_path) -> None:
    a, b = start_workers(own_root, tmp_path)
    now = datetime.now(UTC)
    try:
        events = [Event("u1", f"SKU00{i:02d}", "click", "", now) for i in (1, 2, 3)]
        a.service.record_events(events[:2])
        b.service.record_events(events[2:])
        # Each worker holds its own events at once, in log order, and no event twice.
        assert a.service.users.recent("u1") == ["SKU0001", "SKU0002"]
        assert b.service.users.recent("u1") == ["SKU0001", "SKU0002", "SKU0003"]
        a.service.follow()
        assert a.service.users.recent("u1") == ["SKU0001", "SKU0002", "SKU0003"]
        b.service.follow()
        assert b.service.users.recent("u1") == ["SKU0001", "SKU0002", "SKU0003"]
        # An erasure on one worker: the other forgets the shopper at its next step.
        a.service.forget_users(("u1",))
        assert a.service.users.recent("u1") == []
        b.service.follow()
        assert b.service.users.recent("u1") == []
        b.service.record_events([Event("u2", "SKU0009", "view", "", now)])
        a.service.follow()
        assert a.service.users.recent("u2") == ["SKU0009"]
        assert a.service.users.recent("u1") == []
    finally:
        for server in (a, b):
            server.stop(0)


def test_reload_returns_once_every_worker_serves_the_version(
    own_root, tmp_path, tiny_model_dir
) -> None:
    a, b = start_workers(own_root, tmp_path, follow_s=0.05)
    try:
        first = a.service.snapshot.summary.version
        bigger = tmp_path / "bigger.jsonl"
        write_title_catalog(bigger, n=80)
        build_index(BuildConfig(catalog=bigger, out=own_root, model=tiny_model_dir, shards=2))
        previous, summary = a.service.reload()
        assert (previous, summary.version) == (first, first + 1)
        assert b.service.snapshot.summary.version == first + 1  # before the call returned
        assert b.service.snapshot.summary.item_count == 80
        # Back to the first version from the other worker.
        b.service.reload(first)
        assert a.service.snapshot.summary.version == first
        # A worker started later (a restart) serves the announced version from the start.
        c_config = ServerConfig(
            index=own_root,
            port=a.port,
            worker=WorkerSpec(1, 2),
            siblings_dir=tmp_path / "siblings",
            follow_s=HOUR,
        )
        b.stop(0)
        c = create_server(c_config)
        try:
            assert c.service.snapshot.summary.version == first
        finally:
            c.stop(0)
    finally:
        for server in (a, b):
            server.stop(0)


def test_reload_says_which_worker_did_not_follow(own_root, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(siblings, "RELOAD_WAIT_S", 0.3)
    # Three workers on the board, one of them stopped: the reload works in the two running
    # ones and is reported short.
    a, b, c = start_workers(own_root, tmp_path, follow_s=0.05, count=3)
    c.stop(0)
    try:
        with pytest.raises(Unavailable, match="worker 2 has not confirmed"):
            a.service.reload()
        assert b.service.snapshot.summary.version == a.service.snapshot.summary.version
    finally:
        for server in (a, b):
            server.stop(0)


def test_board_generations_and_confirmations(tmp_path) -> None:
    first = SiblingBoard(tmp_path, WorkerSpec(0, 2))
    second = SiblingBoard(tmp_path, WorkerSpec(1, 2))
    assert first.latest() == (0, 0)
    generation = first.announce(7)
    assert generation == 1 and second.latest() == (1, 7)
    first.confirm(1, 7)
    assert first.problems(1) == ["worker 1 has not confirmed"]
    second.confirm(1, 7, "IndexFormatError: bad checksum")
    assert first.problems(1) == ["worker 1 failed: IndexFormatError: bad checksum"]
    assert second.announce(8) == 2
    assert json.loads((tmp_path / "board.json").read_text())["by"] == 1


@pytest.mark.parametrize("text", ["2/2", "-1/2", "x", "1/0", "1/2/3"])
def test_worker_spec_refuses_what_is_not_i_of_n(text) -> None:
    with pytest.raises(ValueError, match="I/N"):
        WorkerSpec.parse(text)


def test_a_failing_follower_step_is_counted_and_retried() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("disk hiccup")

    follower = Follower(step, interval_s=0.01)
    follower.start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        follower.stop()
    assert follower.failures == 2 and len(calls) >= 4


def test_a_plain_server_cannot_take_the_workers_port(own_root, tmp_path) -> None:
    a, b = start_workers(own_root, tmp_path)
    try:
        with pytest.raises(OSError, match="could not bind"):
            create_server(ServerConfig(index=own_root, port=a.port))
    finally:
        for server in (a, b):
            server.stop(0)


@pytest.mark.parametrize(
    "extra, flag",
    [({"router": "r"}, "--router"), ({"shard": "s"}, "--shard")],
)
def test_a_worker_refuses_what_it_cannot_share(own_root, tmp_path, extra, flag) -> None:
    from engine.cluster.config import RouterConfig
    from engine.cluster.shard import ShardSpec

    values = {
        "router": RouterConfig.parse("127.0.0.1:1"),
        "shard": ShardSpec.parse("0/2"),
    }
    with pytest.raises(ValueError, match=flag):
        ServerConfig(
            index=own_root,
            worker=WorkerSpec(0, 2),
            siblings_dir=tmp_path,
            **{name: values[name] for name in extra},
        )


def test_concurrent_writes_on_both_workers_through_a_reload_lose_nothing(
    own_root, tmp_path
) -> None:
    import threading

    a, b = start_workers(own_root, tmp_path, follow_s=0.02)
    acknowledged: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(server, prefix: str) -> None:
        try:
            for i in range(15):
                item_id = f"{prefix}{i}"
                server.service.upsert([{"item_id": item_id, "title": f"thing {prefix} {i}"}])
                with lock:
                    acknowledged.append(item_id)
                if i % 5 == 4:
                    server.service.delete([f"SKU00{i:02d}"])
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(s, p)) for s, p in ((a, "A"), (b, "B"))]
    try:
        for t in threads:
            t.start()
        a.service.reload()  # while both write; returns once b serves it too
        for t in threads:
            t.join(60)
        assert not errors
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
            a.service.snapshot.live.seq != b.service.snapshot.live.seq
        ):
            time.sleep(0.02)
        for server in (a, b):
            index = server.service.snapshot.index
            assert all(server.service.snapshot.live.is_live(index.row_of(i)) for i in acknowledged)
            assert index.n_items == 60 + 30 - 3  # three deletes (each worker deleted the same)
        assert a.service.snapshot.live.seq == b.service.snapshot.live.seq
    finally:
        for server in (a, b):
            server.stop(0)
