"""Filters, boosts, sorting, facets and diversity through the gRPC API."""

from __future__ import annotations

import json

import grpc
import pytest

from aisle.v1 import retrieval_pb2, types_pb2
from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index

CATEGORIES = ["Home > Furniture > Sofas", "Home > Lighting > Lamps", "Kitchen > Cookware"]
BRANDS = ["Acme", "Globex", "Initech", "Umbrella"]


def make_records(n: int = 120) -> list[dict]:
    records = []
    for i in range(n):
        record = {
            "item_id": f"F{i:03d}",
            "title": f"item number {i} {['sofa', 'lamp', 'pan'][i % 3]}",
            "category": CATEGORIES[i % 3],
            "brand": BRANDS[i % 4],
            "rating_count": (i * 37) % 1000,
            "rating": 1.0 + (i % 5),
            "in_stock": i % 2 == 0,
        }
        if i % 10 != 0:  # every tenth item has no price: it never matches a price range
            record["price"] = float(10 + (i * 7) % 200)
        records.append(record)
    return records


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return make_records()


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir, records):
    tmp = tmp_path_factory.mktemp("filters")
    catalog = tmp / "products.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in records))
    build_index(BuildConfig(catalog=catalog, out=tmp / "index", model=tiny_model_dir, shards=3))
    server = create_server(ServerConfig(index=tmp / "index", port=0, workers=4))
    with AisleClient(f"127.0.0.1:{server.port}") as c:
        yield c
    server.stop(0)


def ids(response) -> list[str]:
    return [h.item_id for h in response.hits]


def matching(records, predicate) -> set[str]:
    return {r["item_id"] for r in records if predicate(r)}


def test_category_brand_price_stock_filters(client, records) -> None:
    f = types_pb2.Filter(
        category_prefix="Home > Furniture",
        brands=["Acme", "Initech"],
        price=types_pb2.Range(min=20, max=150),
        in_stock=True,
    )
    expected = matching(
        records,
        lambda r: (
            r["category"].startswith("Home > Furniture")
            and r["brand"] in ("Acme", "Initech")
            and "price" in r
            and 20 <= r["price"] <= 150
            and r["in_stock"]
        ),
    )
    assert expected  # the test data must have matches
    response = client.search("sofa", 1000, filter=f)
    assert set(ids(response)) == expected  # every match, and nothing else


def test_a_selective_filter_still_returns_k_hits(client, records) -> None:
    # One specific brand + narrow price band: few matches, far below the ANN candidate depth.
    f = types_pb2.Filter(brands=["Umbrella"], price=types_pb2.Range(min=100))
    expected = matching(records, lambda r: r["brand"] == "Umbrella" and r.get("price", 0) >= 100)
    k = min(5, len(expected))
    response = client.search("lamp", k, filter=f)
    assert len(response.hits) == k and set(ids(response)) <= expected


def test_attribute_ranges_and_unknown_attributes(client, records) -> None:
    f = types_pb2.Filter(
        attributes=[types_pb2.AttributeRange(name="rating", range=types_pb2.Range(min=4))]
    )
    expected = matching(records, lambda r: r["rating"] >= 4)
    assert set(ids(client.search("pan", 1000, filter=f))) == expected
    bad = types_pb2.Filter(
        attributes=[types_pb2.AttributeRange(name="colour", range=types_pb2.Range(min=1))]
    )
    with pytest.raises(grpc.RpcError) as info:
        client.search("pan", 5, filter=bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "colour" in info.value.details()


def test_bad_ranges_are_invalid(client) -> None:
    f = types_pb2.Filter(price=types_pb2.Range(min=50, max=10))
    with pytest.raises(grpc.RpcError) as info:
        client.search("pan", 5, filter=f)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filter.price" in info.value.details()


def test_excluded_ids_never_come_back(client) -> None:
    top = ids(client.search("sofa", 5))
    again = ids(client.search("sofa", 5, filter=types_pb2.Filter(exclude_item_ids=top[:2])))
    assert not set(top[:2]) & set(again)


def test_popularity_boost_reorders_by_the_signal(client, records) -> None:
    by_id = {r["item_id"]: r for r in records}
    plain = client.search("lamp", 10)
    boosted = client.search("lamp", 10, boost=types_pb2.Boost(popularity=10.0))
    assert ids(plain) != ids(boosted)
    for hit in boosted.hits:
        assert hit.score > hit.similarity  # similarity + a positive boost
    counts = [by_id[i]["rating_count"] for i in ids(boosted)[:3]]
    assert max(counts) > 700  # a weight of 10 pulls the most popular items to the top


def test_sort_by_price_within_the_relevant_set(client, records) -> None:
    response = client.search(
        "sofa", 20, sort=types_pb2.SortBy(attribute="price", descending=True), include_fields=True
    )
    prices = [h.fields["price"] for h in response.hits if "price" in h.fields]
    assert prices == sorted(prices, reverse=True) and len(prices) >= 15
    with pytest.raises(grpc.RpcError) as info:
        client.search("sofa", 5, sort=types_pb2.SortBy(attribute="title"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_facets_count_the_candidates(client, records) -> None:
    f = types_pb2.Filter(category_prefix="Kitchen")
    response = client.search("pan", 5, filter=f, facets=["category", "brand"])
    facets = {facet.field: {v.value: v.count for v in facet.values} for facet in response.facets}
    assert facets["category"] == {"Kitchen > Cookware": 40}
    assert sum(facets["brand"].values()) == 40
    with pytest.raises(grpc.RpcError) as info:
        client.search("pan", 5, facets=["colour"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_category_cap_diversifies(client) -> None:
    response = client.search(
        "item", 9, diversity=types_pb2.Diversity(max_per_category=3), include_fields=True
    )
    categories = [h.fields["category"] for h in response.hits]
    assert len(categories) == 9
    assert all(categories.count(c) == 3 for c in CATEGORIES)


def test_filters_on_similar_items_and_recommend(client) -> None:
    f = types_pb2.Filter(category_prefix="Home > Lighting")
    similar = client.similar_items("F000", 5, filter=f, include_fields=True)
    assert len(similar.hits) == 5
    assert all(h.fields["category"].startswith("Home > Lighting") for h in similar.hits)
    rec = client.recommend(["F001"], 5, filter=f, include_fields=True)
    assert all(h.fields["category"].startswith("Home > Lighting") for h in rec.hits)


def test_batch_search_with_different_filters(client) -> None:
    requests = [
        retrieval_pb2.SearchRequest(query="sofa", k=3, filter=types_pb2.Filter(brands=["Acme"])),
        retrieval_pb2.SearchRequest(query="sofa", k=3, filter=types_pb2.Filter(brands=["Globex"])),
    ]
    batch = client.batch_search(requests)
    for request, response in zip(requests, batch.responses, strict=True):
        assert ids(response) == ids(client.search("sofa", 3, filter=request.filter))
