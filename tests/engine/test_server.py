"""End to end through a real gRPC server on 127.0.0.1 (port 0) with a real index and tiny BERT."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from aisle.v1 import retrieval_pb2, types_pb2
from tests.helpers import violated_fields
from trainer.encoder.load import load_encoder


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def bad_fields(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [v.field for v in bad_request.field_violations]
    return fields


def test_health_is_serving_once_loaded(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "aisle.v1.Retrieval"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_search_finds_the_item_whose_title_is_the_query(client, title_catalog) -> None:
    _, records = title_catalog
    for record in records[::7]:
        response = client.search(record["title"], 5, include_fields=True)
        assert len(response.hits) == 5
        assert response.hits[0].item_id == record["item_id"]
        assert response.hits[0].fields["title"] == record["title"]
        assert response.hits[0].score == pytest.approx(1.0, abs=1e-4)
        scores = [h.score for h in response.hits]
        assert scores == sorted(scores, reverse=True)
        assert response.index.item_count == len(records)
        assert response.index.shard_count == 2
        assert response.timings.total_ms > 0


def test_scores_equal_the_encoder_cosine(client, title_catalog, tiny_model_dir) -> None:
    _, records = title_catalog
    by_id = {r["item_id"]: r["title"] for r in records}
    encoder = load_encoder(tiny_model_dir)
    xq = encoder.encode_queries(["blue lamp"])[0]
    dense = client.search("blue lamp", 10, mode=retrieval_pb2.SEARCH_MODE_DENSE)
    assert dense.mode == retrieval_pb2.SEARCH_MODE_DENSE
    xb = encoder.encode_items([by_id[h.item_id] for h in dense.hits])
    np.testing.assert_allclose([h.score for h in dense.hits], xb @ xq, atol=1e-4)
    # Hybrid (the default here: the index has a lexical channel) fuses the scores, while the
    # similarity stays the exact cosine.
    hybrid = client.search("blue lamp", 10)
    assert hybrid.mode == retrieval_pb2.SEARCH_MODE_HYBRID
    xb = encoder.encode_items([by_id[h.item_id] for h in hybrid.hits])
    np.testing.assert_allclose([h.similarity for h in hybrid.hits], xb @ xq, atol=1e-4)


def test_pages_continue_the_ranking(client) -> None:
    full = client.search("green chair", 12)
    first = client.search("green chair", 5)
    second = client.search("green chair", 5, page_token=first.next_page_token)
    third = client.search("green chair", 5, page_token=second.next_page_token)
    paged = [h.item_id for h in (*first.hits, *second.hits, *third.hits)][:12]
    assert paged == [h.item_id for h in full.hits]
    # The end of the catalog has no next page.
    last = client.search("green chair", 1000)
    assert len(last.hits) == 60 and last.next_page_token == ""


def test_a_page_token_only_fits_its_own_request(client) -> None:
    first = client.search("green chair", 5)
    error = rpc_error(lambda: client.search("red sofa", 5, page_token=first.next_page_token))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["page_token"]
    error = rpc_error(lambda: client.search("red sofa", 5, page_token="garbage!"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query": "", "k": 5}, "query"),
        ({"query": "   ", "k": 5}, "query"),
        ({"query": "x" * 1001, "k": 5}, "query"),
        ({"query": "sofa", "k": 0}, "k"),
        ({"query": "sofa", "k": 1001}, "k"),
        ({"query": "sofa", "k": 5, "personalization_weight": 1.5}, "personalization_weight"),
        ({"query": "sofa", "k": 5, "effort": types_pb2.SearchEffort(nprobe=-1)}, "effort.nprobe"),
    ],
)
def test_bad_search_requests_are_invalid_argument(client, kwargs, field) -> None:
    query, k = kwargs.pop("query"), kwargs.pop("k")
    error = rpc_error(lambda: client.search(query, k, **kwargs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_fields(error)
    assert field in error.details()


def test_lexical_mode_ranks_by_bm25(client, title_catalog) -> None:
    _, records = title_catalog
    response = client.search("kettle model 31", 5, mode=retrieval_pb2.SEARCH_MODE_LEXICAL)
    assert response.mode == retrieval_pb2.SEARCH_MODE_LEXICAL
    titles = {r["item_id"]: r["title"] for r in records}
    assert titles[response.hits[0].item_id].endswith("model 31")  # the rare term wins
    scores = [h.score for h in response.hits]
    assert scores == sorted(scores, reverse=True)


def test_unknown_item_ids_are_not_found(client) -> None:
    error = rpc_error(lambda: client.similar_items("NOPE", 5))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "NOPE" in error.details()
    error = rpc_error(lambda: client.search("sofa", 5, recent_item_ids=["NOPE"]))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_batch_search_equals_single_searches(client) -> None:
    queries = ["red sofa", "black kettle", "white rug"]
    batch = client.batch_search([retrieval_pb2.SearchRequest(query=q, k=4) for q in queries])
    assert len(batch.responses) == 3
    for q, response in zip(queries, batch.responses, strict=True):
        single = client.search(q, 4)
        assert [h.item_id for h in response.hits] == [h.item_id for h in single.hits]
        np.testing.assert_allclose(
            [h.score for h in response.hits], [h.score for h in single.hits], atol=1e-5
        )
    error = rpc_error(
        lambda: client.batch_search(
            [
                retrieval_pb2.SearchRequest(query="a", k=3),
                retrieval_pb2.SearchRequest(query="", k=3),
            ]
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].query" in bad_fields(error)


def test_similar_items_leaves_out_the_item_itself(client) -> None:
    response = client.similar_items("SKU0003", 5)
    ids = [h.item_id for h in response.hits]
    assert len(ids) == 5 and "SKU0003" not in ids
    assert all(-1.0001 <= h.similarity <= 1.0001 for h in response.hits)


def test_recommend_from_history_excludes_seen_items(client) -> None:
    history = ["SKU0001", "SKU0002"]
    response = client.recommend(history, 5)
    assert len(response.hits) == 5
    assert not set(history) & {h.item_id for h in response.hits}
    with_seen = client.recommend(history, 60, include_seen=True)
    assert set(history) <= {h.item_id for h in with_seen.hits}


def test_personalization_blends_recent_items(client) -> None:
    dense = retrieval_pb2.SEARCH_MODE_DENSE  # personalisation moves the dense channel
    plain = client.search("desk", 10, mode=dense)
    personal = client.search(
        "desk", 10, recent_item_ids=["SKU0007"], personalization_weight=0.9, mode=dense
    )
    assert personal.personalized and not plain.personalized
    assert personal.hits[0].item_id == "SKU0007"


def test_embed_matches_the_serving_encoder(client, tiny_model_dir) -> None:
    response = client.embed(["red sofa", "blue lamp"])
    assert response.dim == 32 and len(response.embeddings) == 2
    expected = load_encoder(tiny_model_dir).encode_queries(["red sofa", "blue lamp"])
    np.testing.assert_allclose([list(e.values) for e in response.embeddings], expected, atol=1e-5)
    error = rpc_error(lambda: client.embed([]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_reports_the_served_index(client) -> None:
    status = client.status()
    assert status.index.item_count == 60
    assert [s.item_count for s in status.shards] == [
        s.item_count for s in sorted(status.shards, key=lambda s: s.shard)
    ]
    assert sum(s.item_count for s in status.shards) == 60
    assert list(status.available_versions) == [status.index.version]


def test_unexpected_errors_become_internal(client, server, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(server.service, "search_batch", boom)
    error = rpc_error(lambda: client.search("sofa", 3))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "bug" not in error.details()  # internals stay in the server log


def test_batch_search_errors_found_while_searching_name_the_request(client) -> None:
    # Errors the search itself finds (not the request's validation) name requests[i] too.
    ok = retrieval_pb2.SearchRequest(query="red sofa", k=3)
    bad_sort = retrieval_pb2.SearchRequest(
        query="red sofa", k=3, sort=types_pb2.SortBy(attribute="nope")
    )
    error = rpc_error(lambda: client.batch_search([ok, bad_sort]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["requests[1].sort.attribute"]
    unknown = retrieval_pb2.SearchRequest(query="red sofa", k=3, recent_item_ids=["NOPE"])
    error = rpc_error(lambda: client.batch_search([unknown, ok]))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("requests[0]:") and "NOPE" in error.details()
    # A single Search names the field as before.
    error = rpc_error(lambda: client.search("red sofa", 3, sort=types_pb2.SortBy(attribute="x")))
    assert violated_fields(error) == ["sort.attribute"]
