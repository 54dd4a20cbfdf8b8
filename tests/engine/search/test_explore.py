"""Exploration by adjacent swaps (engine.search.explore): the draw is a function of the request
id, swaps stay inside a page, explain and sort are never explored, and a real server's explored
responses are the ranker's list with exactly the logged pairs swapped."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from aisle.v1 import types_pb2
from engine.client import AisleClient
from engine.search.explore import MAX_SHARE, Explorer, swap_pairs
from engine.search.types import Hit, IndexSummary, SearchQuery, SearchResult
from engine.server import ServerConfig, create_server
from trainer.feedback.logs import read_impressions


def test_the_draw_is_a_function_of_the_request_id() -> None:
    ids = [f"req-{i}" for i in range(4000)]
    first = [swap_pairs(r, 0.2, 0, 10) for r in ids]
    assert first == [swap_pairs(r, 0.2, 0, 10) for r in ids]
    explored = [p for p in first if p]
    share = len(explored) / len(ids)
    assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(ids))
    # all adjacent pairs from the first or the second hit, both kinds drawn
    assert {p for p in explored} == {(1, 3, 5, 7, 9), (2, 4, 6, 8)}
    assert not any(swap_pairs(r, 0.0, 0, 10) for r in ids)


def test_pairs_stay_inside_the_page() -> None:
    for i in range(200):
        pairs = swap_pairs(f"r{i}", MAX_SHARE, 20, 7)  # positions 21..27
        assert all(21 <= p and p + 1 <= 27 for p in pairs)
    assert swap_pairs("any", MAX_SHARE, 0, 1) == ()  # one hit: nothing to swap


@pytest.mark.parametrize("share", [-0.1, 0.51, 1.0, float("nan"), True, "0.2"])
def test_bad_shares_are_refused(share) -> None:
    with pytest.raises(ValueError, match="explore share"):
        Explorer(share)


def test_a_server_refuses_a_bad_share(index_root: Path) -> None:
    with pytest.raises(ValueError, match="explore share must be between 0 and 0.5"):
        ServerConfig(index=index_root, explore_share=0.6)


def _result(n: int) -> SearchResult:
    hits = [Hit(i, f"I{i}", 1.0 - i / 10, 0.5) for i in range(n)]
    return SearchResult(hits, False, IndexSummary(1, "fp", n, 1, "Flat"), {})


@pytest.mark.parametrize(
    "query", [SearchQuery("x", 6, explain=True), SearchQuery("x", 6, sort_attribute="price")]
)
def test_explain_and_sort_are_never_explored(query: SearchQuery) -> None:
    counted = []
    explorer = Explorer(MAX_SHARE, on_explore=lambda: counted.append(1))
    result = _result(6)
    for i in range(100):
        out, pairs = explorer.explore(f"r{i}", query, result)
        assert out is result and pairs == ()
    assert not counted


def test_an_explored_page_is_the_ranked_page_with_the_pairs_swapped() -> None:
    counted = []
    explorer = Explorer(MAX_SHARE, on_explore=lambda: counted.append(1))
    result = _result(5)
    seen = 0
    for i in range(100):
        out, pairs = explorer.explore(f"r{i}", SearchQuery("x", 5, offset=10), result)
        expected = [h.item_id for h in result.hits]
        for p in pairs:
            j = p - 11
            expected[j], expected[j + 1] = expected[j + 1], expected[j]
        assert [h.item_id for h in out.hits] == expected
        assert sorted(h.item_id for h in out.hits) == sorted(h.item_id for h in result.hits)
        seen += bool(pairs)
    assert seen == len(counted) > 20


def test_a_real_server_explores_consistently_and_logs_the_swaps(
    flat_root: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    plain = create_server(ServerConfig(index=flat_root, port=0, workers=2, events_dir=events))
    try:
        with AisleClient(f"127.0.0.1:{plain.port}") as client:
            ranked = [h.item_id for h in client.search("oak desk", 8).hits]
            sorted_ = client.search(
                "oak desk", 8, sort=types_pb2.SortBy(attribute="price")
            )  # reference for the sorted request
    finally:
        plain.stop(0)
    server = create_server(
        ServerConfig(index=flat_root, port=0, workers=2, events_dir=events, explore_share=0.5)
    )
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            lists = {}
            for _ in range(30):
                first = client.search("oak desk", 4)
                second = client.search("oak desk", 4, page_token=first.next_page_token)
                lists[first.request_id] = [h.item_id for h in first.hits]
                lists[second.request_id] = [h.item_id for h in second.hits]
                # each page holds the ranker's items for it, whatever either page drew
                assert sorted(lists[first.request_id]) == sorted(ranked[:4])
                assert sorted(lists[second.request_id]) == sorted(ranked[4:8])
                by_price = client.search("oak desk", 8, sort=types_pb2.SortBy(attribute="price"))
                assert [h.item_id for h in by_price.hits] == [h.item_id for h in sorted_.hits]
                lists[by_price.request_id] = None
            explored = server.metrics.registry.get_sample_value("aisle_explored_responses_total")
    finally:
        server.stop(0)
    table, _ = read_impressions(events)
    rows = {r["request_id"]: r for r in table.to_pylist() if r["request_id"] in lists}
    assert len(rows) == len(lists)
    n_explored = 0
    for request_id, row in rows.items():
        if lists[request_id] is None:  # an explicit sort: never explored
            assert row["explore"] is None
            continue
        offset = row["offset"]
        expected = list(ranked[offset : offset + 4])
        if row["explore"] is not None:
            n_explored += 1
            assert row["explore"]["scheme"] == "swap"
            for p, q in row["explore"]["pairs"]:
                assert q == p + 1 and offset < p < offset + 4
                expected[p - 1 - offset], expected[q - 1 - offset] = (
                    expected[q - 1 - offset],
                    expected[p - 1 - offset],
                )
        assert row["items"] == expected == lists[request_id]
    assert n_explored == explored > 0
