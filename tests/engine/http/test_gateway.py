"""The HTTP/JSON gateway answers what gRPC answers, through the same servicers and interceptor."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time

import grpc
import httpx
import pytest
from google.protobuf import json_format

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
    index_admin_pb2,
    index_admin_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from engine.http.app import to_json
from engine.server import ServerConfig, create_server

TOKEN = "t" * 24
# What legitimately differs between two calls of the same request.
PER_CALL = {"timings", "request_id", "uptime_s"}


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory, index_root):
    root = tmp_path_factory.mktemp("gw") / "index"
    shutil.copytree(index_root, root)
    server = create_server(ServerConfig(index=root, port=0, http_port=0, workers=4))
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def protected_server(index_root):
    server = create_server(
        ServerConfig(
            index=index_root,
            port=0,
            http_port=0,
            workers=2,
            admin_token=TOKEN,
            protect_reads=True,
        )
    )
    yield server
    server.stop(0)


def _stable(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in PER_CALL}


def _http(server) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30)


SEARCHES = [
    {"query": "red sofa", "k": 5},
    {"query": "blue lamp", "k": 3, "include_fields": True, "facets": ["brand", "category"]},
    {"query": "chair", "k": 4, "mode": "SEARCH_MODE_DENSE", "include_fields": True},
    {"query": "green table", "k": 4, "mode": "SEARCH_MODE_LEXICAL"},
    {"query": "sofa", "k": 2, "filter": {"exclude_item_ids": ["SKU0000"]}},
]


@pytest.mark.parametrize("body", SEARCHES, ids=lambda b: b["query"])
def test_search_equals_grpc(gateway_server, body):
    with grpc.insecure_channel(f"127.0.0.1:{gateway_server.port}") as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        expected = stub.Search(json_format.ParseDict(body, retrieval_pb2.SearchRequest()))
    with _http(gateway_server) as http:
        answer = http.post("/v1/search", json=body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["hits"], "a search that finds nothing proves nothing"
    assert _stable(got) == _stable(to_json(expected))
    assert set(got["timings"]) == set(to_json(expected)["timings"])


def test_recommend_similar_status_events_equal_grpc(gateway_server):
    with grpc.insecure_channel(f"127.0.0.1:{gateway_server.port}") as channel:
        retrieval = retrieval_pb2_grpc.RetrievalStub(channel)
        admin = index_admin_pb2_grpc.IndexAdminStub(channel)
        events = events_pb2_grpc.EventsStub(channel)
        recommend = {"history_item_ids": ["SKU0001", "SKU0002"], "k": 4, "include_fields": True}
        similar = {"item_id": "SKU0003", "k": 5}
        event = {
            "events": [
                {
                    "user_id": "u1",
                    "item_id": "SKU0003",
                    "type": "EVENT_TYPE_CLICK",
                    "query": "sofa",
                    "time": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
                    "position": 2,
                }
            ]
        }
        expected = {
            "/v1/recommend": retrieval.Recommend(
                json_format.ParseDict(recommend, retrieval_pb2.RecommendRequest())
            ),
            "/v1/similar": retrieval.SimilarItems(
                json_format.ParseDict(similar, retrieval_pb2.SimilarItemsRequest())
            ),
            "/v1/events": events.Record(json_format.ParseDict(event, events_pb2.RecordRequest())),
        }
        status = admin.Status(index_admin_pb2.StatusRequest())
    bodies = {"/v1/recommend": recommend, "/v1/similar": similar, "/v1/events": event}
    with _http(gateway_server) as http:
        for path, body in bodies.items():
            answer = http.post(path, json=body)
            assert answer.status_code == 200, (path, answer.text)
            assert _stable(answer.json()) == _stable(to_json(expected[path])), path
        got_status = http.get("/v1/status").json()
    assert expected["/v1/similar"].hits and expected["/v1/events"].recorded == 1
    assert _stable(got_status) == _stable(to_json(status))


def test_errors_carry_the_grpc_code_message_and_fields(gateway_server):
    with grpc.insecure_channel(f"127.0.0.1:{gateway_server.port}") as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        with pytest.raises(grpc.RpcError) as grpc_error:
            stub.Search(retrieval_pb2.SearchRequest(query="sofa", k=0))
    with _http(gateway_server) as http:
        answer = http.post("/v1/search", json={"query": "sofa", "k": 0})
        assert answer.status_code == 400
        assert answer.json()["code"] == "INVALID_ARGUMENT"
        assert answer.json()["message"] == grpc_error.value.details()
        assert answer.json()["field_violations"][0]["field"] == "k"
        missing = http.post("/v1/similar", json={"item_id": "NOPE", "k": 3})
        assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
        unknown = http.post("/v1/search", json={"quer": "typo"})
        assert unknown.status_code == 400 and "quer" in unknown.json()["message"]
        not_json = http.post("/v1/search", content=b"{not json")
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["message"]
        bad_enum = http.post("/v1/search", json={"query": "x", "mode": "SEARCH_MODE_FAST"})
        assert bad_enum.status_code == 400
        bad_deadline = http.post(
            "/v1/search", json={"query": "x"}, headers={"x-aisle-timeout-ms": "soon"}
        )
        assert bad_deadline.status_code == 400
        assert "x-aisle-timeout-ms" in bad_deadline.json()["message"]


def test_health_probes_and_openapi(gateway_server):
    with _http(gateway_server) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
        document = http.get("/openapi.json").json()
    for path in ("/v1/search", "/v1/recommend", "/v1/similar", "/v1/events"):
        assert "post" in document["paths"][path], path
    assert "get" in document["paths"]["/v1/status"]
    schemas = document["components"]["schemas"]
    search = schemas["aisle.v1.SearchRequest"]["properties"]
    # generated from the descriptors: every field of the proto, enums by name
    assert set(search) == {f.name for f in retrieval_pb2.SearchRequest.DESCRIPTOR.fields}
    assert "SEARCH_MODE_RANKED" in search["mode"]["enum"]
    assert "aisle.v1.Explanation" in schemas


def test_token_is_honoured_as_on_grpc(protected_server):
    with _http(protected_server) as http:
        refused = http.post("/v1/search", json={"query": "sofa", "k": 2})
        assert refused.status_code == 401 and refused.json()["code"] == "UNAUTHENTICATED"
        assert http.get("/v1/status").status_code == 401
        wrong = http.post(
            "/v1/search", json={"query": "sofa"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http.post("/v1/search", json={"query": "sofa", "k": 2}, headers=auth).json()["hits"]
        assert http.get("/v1/status", headers=auth).status_code == 200
        assert http.get("/healthz").status_code == 200  # probes need no token


def test_readyz_turns_503_while_draining(index_root):
    server = create_server(ServerConfig(index=index_root, port=0, http_port=0, workers=2))
    stopping = threading.Thread(target=server.stop, kwargs={"drain_s": 3.0})
    with _http(server) as http:
        assert http.get("/readyz").status_code == 200
        stopping.start()  # health NOT_SERVING, listeners still open for the drain window
        deadline = time.monotonic() + 2.5
        codes = []
        while time.monotonic() < deadline and 503 not in codes:
            codes.append(http.get("/readyz").status_code)
            time.sleep(0.05)
    stopping.join()
    assert 503 in codes


def test_http_port_in_use_is_a_clear_error(gateway_server, index_root):
    with pytest.raises(OSError, match="--http-port"):
        create_server(ServerConfig(index=index_root, port=0, http_port=gateway_server.http_port))
