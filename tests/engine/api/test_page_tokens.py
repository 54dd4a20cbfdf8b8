"""Page tokens that decode to odd JSON are INVALID_ARGUMENT naming the field (issue 20, item 7),
on every paged RPC; in a batch the field is requests[i].page_token (item 14)."""

from __future__ import annotations

import base64

import pytest

from aisle.v1 import retrieval_pb2, retrieval_pb2_grpc
from tests.helpers import refused, violated_fields


def token(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


ODD_TOKENS = {
    "overflow": token('{"o":1e400,"v":1,"d":"x"}'),  # int(inf): OverflowError
    "deep": token("[" * 100_000 + "]" * 100_000),  # RecursionError in json
    "not an object": token("[1,2,3]"),
    "bool offset": token('{"o":true,"v":1,"d":"x"}'),
    "not base64": "!!!",
    "non-ascii": "töken",
}


@pytest.mark.parametrize("name", sorted(ODD_TOKENS))
def test_odd_page_tokens_are_invalid_on_every_paged_rpc(channel, name) -> None:
    retrieval = retrieval_pb2_grpc.RetrievalStub(channel)
    page_token = ODD_TOKENS[name]
    search = retrieval_pb2.SearchRequest(query="red sofa", k=3, page_token=page_token)
    cases = [
        (retrieval.Search, search, "page_token"),
        (
            retrieval.BatchSearch,
            retrieval_pb2.BatchSearchRequest(
                requests=[retrieval_pb2.SearchRequest(query="lamp", k=3), search]
            ),
            "requests[1].page_token",
        ),
        (
            retrieval.SimilarItems,
            retrieval_pb2.SimilarItemsRequest(item_id="SKU0001", k=3, page_token=page_token),
            "page_token",
        ),
        (
            retrieval.Recommend,
            retrieval_pb2.RecommendRequest(
                history_item_ids=["SKU0001"], k=3, page_token=page_token
            ),
            "page_token",
        ),
    ]
    for call, request, field in cases:
        assert violated_fields(refused(call, request)) == [field]
