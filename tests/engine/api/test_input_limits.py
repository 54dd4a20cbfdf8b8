"""Input at the gRPC edge (issue 20, items 7-11, 13, 14): every odd request is a client error
that names the field, echoes at most a short piece of the input and no server path."""

from __future__ import annotations

import errno
import math

import grpc
import pytest
from google.protobuf import timestamp_pb2

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
    index_admin_pb2,
    index_admin_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from engine.api.interceptor import ServingInterceptor
from indexer.storage.update_log import UpdateLog
from tests.helpers import refused, violated_fields

TOKEN = "edge-admin-token-0123456789"


def test_event_time_outside_the_timestamp_range(channel) -> None:
    events = events_pb2_grpc.EventsStub(channel)
    for seconds, nanos in ((10**13, 0), (-(10**13), 0), (0, -1)):
        event = events_pb2.Event(
            user_id="u1",
            item_id="SKU0001",
            type=events_pb2.EVENT_TYPE_VIEW,
            time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        )
        error = refused(events.Record, events_pb2.RecordRequest(events=[event]))
        assert violated_fields(error) == ["events[0].time"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_in_upsert_fields(channel, edge_server, value) -> None:
    admin = index_admin_pb2_grpc.IndexAdminStub(channel)
    item = index_admin_pb2.Item(item_id="NAN1")
    item.fields.update({"title": "lamp", "price": 1.0, "attrs": {"weight": [1.0, value]}})
    before = edge_server.service.pending_updates()
    error = refused(admin.Upsert, index_admin_pb2.UpsertRequest(items=[item]))
    assert violated_fields(error) == ["items[0].fields['attrs']['weight'][1]"]
    assert edge_server.service.pending_updates() == before


def test_non_ascii_authorization_header_is_unauthenticated() -> None:
    """Unit level: a Python client cannot send such a header, any HTTP/2 client can."""

    class Aborted(Exception):
        pass

    class Context:
        status = None

        def abort_with_status(self, status):
            self.status = status
            raise Aborted

        def code(self):
            return None

        def peer(self):
            return "ipv4:127.0.0.1:1"

    class Details:
        method = "/aisle.v1.IndexAdmin/Status"
        invocation_metadata = (("authorization", "Bearer tökén-ñ-\u202e"),)

    interceptor = ServingInterceptor(admin_token=TOKEN)
    handler = interceptor.intercept_service(
        lambda details: grpc.unary_unary_rpc_method_handler(lambda request, context: "ok"),
        Details(),
    )
    context = Context()
    with pytest.raises(Aborted):
        handler.unary_unary(index_admin_pb2.StatusRequest(), context)
    assert context.status.code == grpc.StatusCode.UNAUTHENTICATED


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (numbers < 16, payloads of any size)."""
    size, varint = len(payload), b""
    while True:
        byte = size & 0x7F
        size >>= 7
        if size:
            varint += bytes([byte | 0x80])
        else:
            varint += bytes([byte])
            break
    return bytes([number << 3 | 2]) + varint + payload


def deep_struct_upsert(depth: int) -> bytes:
    """An UpsertRequest whose item's fields nest `depth` lists deep (over protobuf's limit)."""
    value = b""
    for _ in range(depth):
        value = _field(6, _field(1, value))  # Value.list_value → ListValue.values
    struct = _field(1, _field(1, b"a") + _field(2, value))  # Struct.fields["a"]
    return _field(1, _field(1, b"X1") + _field(2, struct))  # UpsertRequest.items[0]


MALFORMED = {
    "Retrieval/Search": [b"\xff\xff\xff\xff", b"\x0a\x05ab", _field(1, b"\xc3\x28")],
    "Retrieval/Embed": [_field(1, b"\xff\xfe")],
    "IndexAdmin/Upsert": [deep_struct_upsert(200), b"\x0a\xff\xff\xff\xff\x0f"],
    "Events/Record": [b"\x0a"],
}


def test_malformed_request_bytes_are_invalid_argument_and_counted(channel, edge_server) -> None:
    registry = edge_server.metrics.registry
    sent = 0
    for method, payloads in MALFORMED.items():
        call = channel.unary_unary(f"/aisle.v1.{method}")  # raw bytes in, raw bytes out
        for payload in payloads:
            error = pytest.raises(grpc.RpcError, call, payload, timeout=10).value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error.details())
            assert violated_fields(error) == ["request"]
            sent += 1
    counted = sum(
        registry.get_sample_value(
            "aisle_requests_total",
            {"method": method.split("/")[1], "code": "INVALID_ARGUMENT"},
        )
        or 0
        for method in MALFORMED
    )
    assert counted >= sent


@pytest.mark.parametrize(
    ("number", "code", "says"),
    [
        (errno.ENOSPC, grpc.StatusCode.RESOURCE_EXHAUSTED, "disk is full: nothing was written"),
        (errno.EDQUOT, grpc.StatusCode.RESOURCE_EXHAUSTED, "disk is full: nothing was written"),
        (errno.EROFS, grpc.StatusCode.FAILED_PRECONDITION, "read-only"),
    ],
)
def test_a_full_disk_on_upsert_is_a_client_visible_status(
    channel, edge_server, edge_root, monkeypatch, number, code, says
) -> None:
    def full(*args, **kwargs):
        raise OSError(number, "disk trouble", str(edge_root / "updates" / "00001.log"))

    monkeypatch.setattr(UpdateLog, "_append", full)
    admin = index_admin_pb2_grpc.IndexAdminStub(channel)
    item = index_admin_pb2.Item(item_id="FULL1")
    item.fields.update({"title": "a lamp for a full disk"})
    before = edge_server.service.pending_updates()
    for call, request in (
        (admin.Upsert, index_admin_pb2.UpsertRequest(items=[item])),
        (admin.Delete, index_admin_pb2.DeleteRequest(item_ids=["SKU0002"])),
    ):
        error = refused(call, request, code)
        assert says in error.details()
        assert str(edge_root) not in error.details() and "/" not in error.details()
    monkeypatch.undo()
    assert edge_server.service.pending_updates() == before  # nothing acknowledged
    retrieval = retrieval_pb2_grpc.RetrievalStub(channel)
    refused(
        retrieval.SimilarItems,
        retrieval_pb2.SimilarItemsRequest(item_id="FULL1", k=1),
        grpc.StatusCode.NOT_FOUND,
    )
    assert retrieval.SimilarItems(
        retrieval_pb2.SimilarItemsRequest(item_id="SKU0002", k=1), timeout=10
    ).hits


def test_echoed_input_is_bounded_and_paths_are_not_shown(channel, edge_root) -> None:
    retrieval = retrieval_pb2_grpc.RetrievalStub(channel)
    events = events_pb2_grpc.EventsStub(channel)
    admin = index_admin_pb2_grpc.IndexAdminStub(channel)
    huge = "x" * 100_000
    refused(retrieval.SimilarItems, retrieval_pb2.SimilarItemsRequest(item_id=huge, k=1))
    long_id = "y" * 250  # within the id limit, longer than an echo may be
    error = refused(
        events.Record,
        events_pb2.RecordRequest(events=[events_pb2.Event(user_id="u", item_id=long_id, type=1)]),
        grpc.StatusCode.NOT_FOUND,
    )
    assert long_id not in error.details() and "y" * 200 in error.details()
    error = refused(
        retrieval.Search,
        retrieval_pb2.SearchRequest(query="lamp", k=3, filter={"category_prefix": huge}),
    )
    assert violated_fields(error) == ["filter.category_prefix"]
    error = refused(
        admin.Reload, index_admin_pb2.ReloadRequest(version=99), grpc.StatusCode.NOT_FOUND
    )
    assert str(edge_root) not in error.details() and "/tmp" not in error.details()
    assert "99" in error.details()


def test_item_field_values_are_bounded(channel, edge_server) -> None:
    admin = index_admin_pb2_grpc.IndexAdminStub(channel)
    before = edge_server.service.pending_updates()
    big = index_admin_pb2.Item(item_id="BIG1")
    big.fields.update({"title": "lamp", "description": "d" * 10_000_000})
    error = refused(admin.Upsert, index_admin_pb2.UpsertRequest(items=[big]))
    assert violated_fields(error) == ["items[0].fields['description']"]
    many = index_admin_pb2.Item(item_id="BIG2")
    many.fields.update({"title": "lamp", **{f"f{i}": "v" * 10_000 for i in range(10)}})
    error = refused(admin.Upsert, index_admin_pb2.UpsertRequest(items=[many]))
    assert violated_fields(error) == ["items[0].fields"]
    assert edge_server.service.pending_updates() == before


def test_undefined_enum_values_are_refused(channel) -> None:
    retrieval = retrieval_pb2_grpc.RetrievalStub(channel)
    admin = index_admin_pb2_grpc.IndexAdminStub(channel)
    error = refused(retrieval.Embed, retrieval_pb2.EmbedRequest(texts=["lamp"], kind=99))
    assert violated_fields(error) == ["kind"]
    item = index_admin_pb2.Item(item_id="ENUM1")
    item.fields.update({"title": "lamp"})
    error = refused(admin.Upsert, index_admin_pb2.UpsertRequest(items=[item], mode=99))
    assert violated_fields(error) == ["mode"]
    batch = retrieval_pb2.BatchSearchRequest(
        requests=[
            retrieval_pb2.SearchRequest(query="lamp", k=3),
            retrieval_pb2.SearchRequest(query="lamp", k=3, mode=42),
        ]
    )
    assert violated_fields(refused(retrieval.BatchSearch, batch)) == ["requests[1].mode"]


def test_popularity_fallback_similarity_is_finite(channel) -> None:
    retrieval = retrieval_pb2_grpc.RetrievalStub(channel)
    reply = retrieval.Recommend(
        retrieval_pb2.RecommendRequest(user_id="nobody-we-know", k=5), timeout=10
    )
    assert reply.popularity_fallback and reply.hits
    assert all(hit.similarity == 0.0 for hit in reply.hits)


def test_a_reply_over_the_send_limit_is_resource_exhausted() -> None:
    class Aborted(Exception):
        pass

    class Context:
        status = None

        def abort_with_status(self, status):
            self.status = status
            raise Aborted

        def code(self):
            return None

    class Details:
        method = "/aisle.v1.Retrieval/Search"
        invocation_metadata = ()

    big = retrieval_pb2.SearchResponse(next_page_token="t" * 10_000)
    interceptor = ServingInterceptor(max_response_bytes=1000)
    handler = interceptor.intercept_service(
        lambda details: grpc.unary_unary_rpc_method_handler(lambda request, context: big),
        Details(),
    )
    context = Context()
    with pytest.raises(Aborted):
        handler.unary_unary(retrieval_pb2.SearchRequest(), context)
    assert context.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
