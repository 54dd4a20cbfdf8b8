"""Hybrid retrieval through the API: modes, fusion settings, price understanding, live BM25."""

from __future__ import annotations

import json
import shutil

import grpc
import pytest
from google.protobuf import struct_pb2

from aisle.v1 import index_admin_pb2, index_admin_pb2_grpc, retrieval_pb2
from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index

HYBRID, DENSE, LEXICAL = (
    retrieval_pb2.SEARCH_MODE_HYBRID,
    retrieval_pb2.SEARCH_MODE_DENSE,
    retrieval_pb2.SEARCH_MODE_LEXICAL,
)


def records(n: int = 80) -> list[dict]:
    nouns = ["sofa", "lamp", "kettle", "drill"]
    return [
        {
            "item_id": f"H{i:03d}",
            "title": f"{['acme', 'zenith', 'orbit'][i % 3]} {nouns[i % 4]} series {i}",
            "price": float(5 + (i * 13) % 300),
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def roots(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("hybrid")
    catalog = tmp / "products.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in records()))
    out = {}
    for name, lexical in (("with", True), ("without", False)):
        build_index(
            BuildConfig(
                catalog=catalog,
                out=tmp / name,
                model=tiny_model_dir,
                shards=2,
                lexical=lexical,
            )
        )
        out[name] = tmp / name
    return out


@pytest.fixture()
def server(roots, tmp_path):
    root = tmp_path / "index"
    shutil.copytree(roots["with"], root)
    srv = create_server(ServerConfig(index=root, port=0))
    yield srv
    srv.stop(0)


def ids(response) -> list[str]:
    return [h.item_id for h in response.hits]


def test_price_expressions_become_filters_and_are_reported(server) -> None:
    by_id = {r["item_id"]: r for r in records()}
    with AisleClient(f"127.0.0.1:{server.port}") as client:
        response = client.search("orbit kettle under $50", 20)
        assert response.parsed_query.text == "orbit kettle"
        assert response.parsed_query.price.max == 50 and not response.parsed_query.price.HasField(
            "min"
        )
        assert response.hits and all(by_id[i]["price"] <= 50 for i in ids(response))
        literal = client.search("orbit kettle under $50", 20, disable_query_parsing=True)
        assert not literal.HasField("parsed_query")
        assert any(by_id[i]["price"] > 50 for i in ids(literal))


def test_modes_and_fusion_settings(server) -> None:
    with AisleClient(f"127.0.0.1:{server.port}") as client:
        query = "zenith drill series 7"
        for mode in (DENSE, LEXICAL, HYBRID):
            assert client.search(query, 5, mode=mode).mode == mode
        assert client.search(query, 5).mode == HYBRID  # the default with a lexical index
        rrf = client.search(
            query, 10, fusion=retrieval_pb2.Fusion(method=retrieval_pb2.FUSION_METHOD_RRF)
        )
        only_dense = client.search(
            query,
            10,
            fusion=retrieval_pb2.Fusion(method=retrieval_pb2.FUSION_METHOD_BLEND, dense_weight=1),
        )
        dense = client.search(query, 10, mode=DENSE)
        assert ids(only_dense)[:5] == ids(dense)[:5]  # all weight on the dense channel
        assert len(rrf.hits) == 10
        with pytest.raises(grpc.RpcError) as info:
            client.search(query, 5, fusion=retrieval_pb2.Fusion(dense_weight=1.5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "fusion.dense_weight" in info.value.details()


def test_lexical_mode_needs_a_lexical_index(roots) -> None:
    server = create_server(ServerConfig(index=roots["without"], port=0))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.search("acme sofa", 5).mode == DENSE  # the default falls back
            with pytest.raises(grpc.RpcError) as info:
                client.search("acme sofa", 5, mode=LEXICAL)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "lexical" in info.value.details()
    finally:
        server.stop(0)


def test_upserts_and_deletes_reach_the_lexical_channel(server) -> None:
    fields = struct_pb2.Struct()
    fields.update({"title": "quokka hammock", "price": 42.0})
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        admin = index_admin_pb2_grpc.IndexAdminStub(channel)
        admin.Upsert(
            index_admin_pb2.UpsertRequest(
                items=[index_admin_pb2.Item(item_id="NEWQ", fields=fields)]
            ),
            timeout=30,
        )
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert ids(client.search("quokka", 3, mode=LEXICAL))[:1] == ["NEWQ"]
            admin.Delete(index_admin_pb2.DeleteRequest(item_ids=["NEWQ", "H005"]), timeout=30)
            assert "NEWQ" not in ids(client.search("quokka", 3, mode=LEXICAL))
            assert "H005" not in ids(client.search("series 5", 10, mode=LEXICAL))


def test_a_restart_replays_upserts_into_the_lexical_channel(server) -> None:
    fields = struct_pb2.Struct()
    fields.update({"title": "wombat lantern", "price": 12.0})
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        index_admin_pb2_grpc.IndexAdminStub(channel).Upsert(
            index_admin_pb2.UpsertRequest(
                items=[index_admin_pb2.Item(item_id="NEWW", fields=fields)]
            ),
            timeout=30,
        )
    root = server.config.index
    server.stop(0)
    again = create_server(ServerConfig(index=root, port=0))
    try:
        with AisleClient(f"127.0.0.1:{again.port}") as client:
            assert ids(client.search("wombat", 3, mode=LEXICAL))[:1] == ["NEWW"]
    finally:
        again.stop(0)
