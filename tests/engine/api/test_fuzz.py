"""Property-based fuzzing of every public RPC against a real server on 127.0.0.1: whatever a
caller sends (a well-formed message with any field values, or any bytes at all), the answer is
OK or a client error, never INTERNAL or UNKNOWN, and always within the deadline (no hang).

AISLE_FUZZ_EXAMPLES scales the run (default 100 per RPC, a few seconds each, derandomized so
`make test` is repeatable); a larger value also draws fresh random cases."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from aisle.v1 import events_pb2, index_admin_pb2, retrieval_pb2
from engine.api.interceptor import MAX_MESSAGE_CHARS
from engine.server import ServerConfig, create_server

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

EXAMPLES = int(os.environ.get("AISLE_FUZZ_EXAMPLES", "100"))
DEADLINE_S = 20.0  # far above any answer here: hitting it means the server hung
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,  # the gRPC deadline is the hang check; hypothesis's would flake on a slow CI
    derandomize=EXAMPLES <= 100,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
RPCS = {
    "Retrieval/Search": retrieval_pb2.SearchRequest,
    "Retrieval/BatchSearch": retrieval_pb2.BatchSearchRequest,
    "Retrieval/Recommend": retrieval_pb2.RecommendRequest,
    "Retrieval/SimilarItems": retrieval_pb2.SimilarItemsRequest,
    "Retrieval/Embed": retrieval_pb2.EmbedRequest,
    "IndexAdmin/Upsert": index_admin_pb2.UpsertRequest,
    "IndexAdmin/Delete": index_admin_pb2.DeleteRequest,
    "IndexAdmin/Reload": index_admin_pb2.ReloadRequest,
    "IndexAdmin/Status": index_admin_pb2.StatusRequest,
    "Events/Record": events_pb2.RecordRequest,
}
# Strings a server knows (so fuzzed requests also reach the search, not only the validation).
KNOWN = ["red sofa", "lamp", "SKU0001", "SKU0002", "u1", "price", "brand", "category", "view"]
INT_EDGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def scalars(fd: FieldDescriptor) -> st.SearchStrategy:
    """Values for one non-message field: mostly plausible, sometimes extreme."""
    if fd.type == FieldDescriptor.TYPE_STRING:
        return st.one_of(
            st.sampled_from(KNOWN),
            st.text(max_size=40),
            st.sampled_from(["", " ", "x" * 5000, "é" * 300, "\x00", "SKU0001" * 50]),
        )
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type == FieldDescriptor.TYPE_ENUM:
        defined = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(defined), st.integers(-(2**31), 2**31 - 1))
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if fd.type == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from([0.0, 0.3, 1.0, 5.0]), st.floats(width=width))
    lo, hi = INT_EDGES.get(fd.type, (-(2**31), 2**31 - 1))
    return st.one_of(st.integers(0, 12), st.integers(max(lo, 0), 1200), st.sampled_from([lo, hi]))


@st.composite
def fill(draw, message: Message, depth: int = 0, odds: int = 2) -> Message:
    """Set a random subset (each field with chance 1/`odds`) of `message`'s fields, nested
    messages to depth 4, in place."""
    for fd in message.DESCRIPTOR.fields:
        if draw(st.integers(0, odds - 1)):
            continue
        field = getattr(message, fd.name)
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        if is_message and fd.message_type.GetOptions().map_entry:
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            for _ in range(draw(st.integers(0, 2 if depth < 4 else 0))):
                key = draw(scalars(key_fd))
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    draw(fill(field[key], depth + 1))
                else:
                    field[key] = draw(scalars(value_fd))
        elif fd.is_repeated:
            for _ in range(draw(st.integers(0, 3 if depth < 4 else 0))):
                if is_message:
                    draw(fill(field.add(), depth + 1))
                else:
                    field.append(draw(scalars(fd)))
        elif is_message:
            if depth < 4:
                field.SetInParent()
                draw(fill(field, depth + 1))
        else:
            setattr(message, fd.name, draw(scalars(fd)))
    return message


def _item(item_id: str) -> index_admin_pb2.Item:
    item = index_admin_pb2.Item(item_id=item_id)
    item.fields.update({"title": "a blue lamp", "brand": "acme", "price": 9.5})
    return item


# A valid request per RPC: mutating a few of its fields reaches the search behind validation.
BASES = {
    "Retrieval/Search": retrieval_pb2.SearchRequest(query="red sofa", k=5, facets=["brand"]),
    "Retrieval/BatchSearch": retrieval_pb2.BatchSearchRequest(
        requests=[retrieval_pb2.SearchRequest(query="lamp", k=3)] * 2
    ),
    "Retrieval/Recommend": retrieval_pb2.RecommendRequest(history_item_ids=["SKU0001"], k=5),
    "Retrieval/SimilarItems": retrieval_pb2.SimilarItemsRequest(item_id="SKU0001", k=5),
    "Retrieval/Embed": retrieval_pb2.EmbedRequest(texts=["red sofa"]),
    "IndexAdmin/Upsert": index_admin_pb2.UpsertRequest(items=[_item("FUZZ1")]),
    "IndexAdmin/Delete": index_admin_pb2.DeleteRequest(item_ids=["FUZZ1"]),
    "IndexAdmin/Reload": index_admin_pb2.ReloadRequest(),
    "IndexAdmin/Status": index_admin_pb2.StatusRequest(),
    "Events/Record": events_pb2.RecordRequest(
        events=[events_pb2.Event(user_id="u1", item_id="SKU0001", type=1)]
    ),
}


@st.composite
def requests(draw, method: str) -> Message:
    """A fuzzed request of `method`: built from nothing, or a valid one with a few changes."""
    if draw(st.booleans()):
        return draw(fill(RPCS[method]()))
    request = RPCS[method]()
    request.CopyFrom(BASES[method])
    return draw(fill(request, odds=6))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, index_root):
    root = tmp_path_factory.mktemp("fuzz") / "index"
    shutil.copytree(index_root, root)  # Upsert, Delete and Reload change it
    server = create_server(ServerConfig(index=root, port=0, workers=4))
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_server):
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_server.port}") as channel:
        yield channel


CODES: Counter = Counter()  # every answer of this module, for the summary line


def check(call, payload) -> None:
    """One call: OK or a client error with a short message; INTERNAL, UNKNOWN or a hang fail."""
    try:
        call(payload, timeout=DEADLINE_S)
        CODES["OK"] += 1
    except grpc.RpcError as error:
        code = error.code()
        CODES[code.name] += 1
        assert code not in SERVER_FAULTS, (code, error.details())
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "the server did not answer in time"
        assert len(error.details() or "") <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize("method", sorted(RPCS))
def test_fuzzed_messages_never_fault(fuzz_channel, method) -> None:
    request_type = RPCS[method]
    call = fuzz_channel.unary_unary(
        f"/aisle.v1.{method}", request_serializer=request_type.SerializeToString
    )

    @SETTINGS
    @hypothesis.given(requests(method))
    def one(request: Message) -> None:
        check(call, request)

    one()


@pytest.mark.parametrize("method", sorted(RPCS))
def test_fuzzed_bytes_never_fault(fuzz_channel, method) -> None:
    """Arbitrary bytes, and valid messages with bytes flipped, cut or appended."""
    call = fuzz_channel.unary_unary(f"/aisle.v1.{method}")  # raw bytes in and out

    @st.composite
    def mangled(draw) -> bytes:
        data = draw(requests(method)).SerializeToString()
        if data and draw(st.booleans()):
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
        return data[: draw(st.integers(0, len(data)))] + draw(st.binary(max_size=8))

    @SETTINGS
    @hypothesis.given(st.one_of(st.binary(max_size=200), mangled()))
    def one(payload: bytes) -> None:
        check(call, payload)

    one()


def test_zz_report_the_cases(capsys) -> None:
    """Not a check: prints how many calls the fuzz tests made, by status code (`-s` shows it)."""
    with capsys.disabled():
        print(f"\nfuzz: {sum(CODES.values())} calls, by code: {dict(CODES.most_common())}")
