"""A read-only index root is served read-only: searches work, live updates get
FAILED_PRECONDITION with a clear message, and nothing is written (issue 20 item 15).

Tests run as root, and root may write a chmod-ed dir; so the read-only root is simulated where
the server asks: ``os.access(..., W_OK)`` answers False for it and opening a file under it for
writing fails with EROFS, as on a read-only mount even for root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from aisle.v1 import events_pb2, events_pb2_grpc
from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from indexer.live.index import LiveIndex, root_is_writable
from tests.helpers import Admin, item


@pytest.fixture()
def read_only_root(tmp_path: Path, index_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = Path(shutil.copytree(index_root, tmp_path / "index"))
    with serving(root) as port:  # one logged update, so a read-only replay has work
        Admin(port).upsert(item("logged", title="logged before read-only"))
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).resolve().is_relative_to(root.resolve()):
            return False
        return real_access(path, mode, *args, **kwargs)

    real_open = os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def open_(path, flags, *args, **kwargs):
        if flags & writing and Path(path).resolve().is_relative_to(root.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "open", open_)  # as a read-only mount answers, even root
    return root


@contextlib.contextmanager
def serving(root: Path) -> Iterator[int]:
    """The port of a server on 127.0.0.1 serving ``root``, stopped on exit."""
    server = create_server(ServerConfig(index=root, port=0, workers=2))
    try:
        yield server.port
    finally:
        server.stop(0)


def log_files(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (root / "updates").iterdir()}


def test_a_read_only_root_serves_searches_and_refuses_updates(read_only_root: Path) -> None:
    root = read_only_root
    assert not root_is_writable(root)
    before = log_files(root)
    with serving(root) as port, AisleClient(f"127.0.0.1:{port}") as client:
        assert client.search("logged", k=5).hits  # the log was replayed
        client.similar_items("logged", k=1)
        for call in (
            lambda: Admin(port).upsert(item("new", title="new item")),
            lambda: Admin(port).delete("logged"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "read-only index root" in caught.value.details()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            record = events_pb2_grpc.EventsStub(channel).Record
            event = events_pb2.Event(
                user_id="u1", item_id="logged", type=events_pb2.EVENT_TYPE_CLICK
            )
            with pytest.raises(grpc.RpcError) as caught:
                record(events_pb2.RecordRequest(events=[event]), timeout=10)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "read-only" in caught.value.details()
        client.reload()
        client.similar_items("logged", k=1)
    assert log_files(root) == before
    assert not (root / "events" / "events.jsonl").exists()


def test_a_read_only_live_index_refuses_every_update(read_only_root: Path) -> None:
    with LiveIndex.open(read_only_root) as live:
        assert live.read_only and live.row_of("logged") >= 0
        for update in (
            lambda: live.delete(["logged"]),
            lambda: live.update_attributes({"logged": {"title": "x"}}),
        ):
            with pytest.raises(PermissionError, match="read-only"):
                update()
