"""Fixtures of the gRPC edge tests: a server on a private index copy, raw stubs' helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from engine.api.interceptor import MAX_MESSAGE_CHARS
from engine.server import ServerConfig, create_server


@pytest.fixture(scope="module")
def edge_root(tmp_path_factory, index_root) -> Path:
    """A private copy of the shared index root: a write that slips through lands here."""
    root = tmp_path_factory.mktemp("edge") / "index"
    shutil.copytree(index_root, root)
    return root


@pytest.fixture(scope="module")
def edge_server(edge_root):
    server = create_server(ServerConfig(index=edge_root, port=0, workers=4))
    yield server
    server.stop(0)


@pytest.fixture()
def channel(edge_server):
    with grpc.insecure_channel(f"127.0.0.1:{edge_server.port}") as ch:
        yield ch


def violated_fields(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


def refused(call, request, code=grpc.StatusCode.INVALID_ARGUMENT) -> grpc.RpcError:
    error = pytest.raises(grpc.RpcError, call, request, timeout=10).value
    assert error.code() == code, (error.code(), error.details()[:300])
    assert len(error.details()) <= MAX_MESSAGE_CHARS
    return error
