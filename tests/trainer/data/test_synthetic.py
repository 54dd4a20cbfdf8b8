"""Tests for trainer.synthetic: the generated dataset is deterministic, valid and sensible."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from trainer.data.catalog import read_catalog
from trainer.data.labels import (
    check_labels_against_catalog,
    read_interactions,
    read_labels,
    read_queries,
)
from trainer.data.synthetic import main, make_catalog, make_labeled_queries, write_synthetic_dataset

FILES = [
    "products",
    "queries_train",
    "queries_dev",
    "labels_train",
    "labels_dev",
    "interactions_train",
    "interactions_dev",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_dataset(out, n_items=400, n_queries=50, n_users=60, seed=3)


def test_files_and_names(dataset: dict[str, Path]) -> None:
    assert list(dataset) == [
        "products",
        "queries_train",
        "labels_train",
        "queries_dev",
        "labels_dev",
        "interactions_train",
        "interactions_dev",
    ]
    names = {p.name for p in dataset.values()}
    assert names == {
        "products.jsonl.gz",
        "queries_train.jsonl",
        "queries_dev.jsonl",
        "labels_train.jsonl.gz",
        "labels_dev.jsonl.gz",
        "interactions_train.jsonl.gz",
        "interactions_dev.jsonl.gz",
    }
    assert not list(dataset["products"].parent.glob("*.tmp"))


def test_same_seed_same_bytes(dataset: dict[str, Path], tmp_path: Path) -> None:
    again = write_synthetic_dataset(tmp_path, n_items=400, n_queries=50, n_users=60, seed=3)
    for name in FILES:
        assert again[name].read_bytes() == dataset[name].read_bytes(), name


def test_other_seed_other_data() -> None:
    assert make_catalog(50, seed=0) != make_catalog(50, seed=1)
    assert make_catalog(50, seed=0) == make_catalog(50, seed=0)


def test_reads_back_cleanly(dataset: dict[str, Path]) -> None:
    catalog = read_catalog(dataset["products"])
    assert len(catalog) == 400
    types = catalog.table.schema
    for name in ("price", "rating", "margin"):
        assert str(types.field(name).type) == "double"
    assert str(types.field("rating_count").type) == "int64"
    assert str(types.field("in_stock").type) == "bool"
    assert {"material", "size", "style"} <= set(catalog.attribute_names)
    query_ids: set[str] = set()
    for split in ("train", "dev"):
        labels = read_labels(dataset[f"labels_{split}"])
        check_labels_against_catalog(labels, catalog)
        assert read_queries(dataset[f"queries_{split}"]) == labels.queries
        assert not query_ids & set(labels.queries)  # split by query
        query_ids |= set(labels.queries)
    assert len(query_ids) == 50
    assert len(read_labels(dataset["labels_dev"]).queries) == 10  # 80/20


def test_every_query_has_an_exact_item(dataset: dict[str, Path]) -> None:
    for split in ("train", "dev"):
        labels = read_labels(dataset[f"labels_{split}"])
        for query_id, judged in labels.judgments.items():
            assert 3 in judged.values(), (split, query_id, labels.queries[query_id])


def test_catalog_looks_like_a_shop() -> None:
    items = make_catalog(300, seed=0)
    assert len({i["item_id"] for i in items}) == 300
    assert [i["item_id"] for i in items] == sorted(i["item_id"] for i in items)
    tops = Counter(i["category"].split(" > ")[0] for i in items)
    assert len(tops) == 10
    for item in items:
        assert len(item["category"].split(" > ")) == 3
        assert item["brand"] in item["title"]
        assert item["price"] > 0 and round(item["price"], 2) == item["price"]
        assert 1.0 <= item.get("rating", 1.0) <= 5.0
        assert item["rating_count"] >= 0
        assert 0.05 <= item["margin"] <= 0.6
        assert isinstance(item["in_stock"], bool)
        assert all(isinstance(b, str) for b in item["bullets"])


def test_grades_follow_the_query_attributes() -> None:
    items = make_catalog(600, seed=1)
    by_id = {i["item_id"]: i for i in items}
    rows = make_labeled_queries(items, 40, seed=1)
    queries = {r["query_id"]: r["query"] for r in rows}
    assert len(set(queries.values())) == 40
    for row in rows:
        item = by_id[row["item_id"]]
        assert row["esci_label"] == "ESCI"[3 - row["grade"]]
        exact = [
            by_id[r["item_id"]]
            for r in rows
            if r["query_id"] == row["query_id"] and r["grade"] == 3
        ]
        if row["grade"] in (3, 2):
            assert item["category"] == exact[0]["category"]
        elif row["grade"] == 1:
            assert item["category"] != exact[0]["category"]
            assert item["category"].split(" > ")[0] == exact[0]["category"].split(" > ")[0]
        else:
            assert item["category"].split(" > ")[0] != exact[0]["category"].split(" > ")[0]
    # Some queries paraphrase the product type, so words alone do not find the items.
    paraphrased = [
        q
        for qid, q in queries.items()
        if not any(
            by_id[r["item_id"]]["category"].split(" > ")[-1].lower().rstrip("s") in q
            for r in rows
            if r["query_id"] == qid and r["grade"] == 3
        )
    ]
    assert paraphrased


def test_labeled_queries_need_synthetic_records() -> None:
    with pytest.raises(ValueError, match="not a synthetic product type"):
        make_labeled_queries([{"item_id": "a", "title": "A", "category": "Books"}], 1)


def test_interactions_split_by_position(dataset: dict[str, Path]) -> None:
    train = read_interactions(dataset["interactions_train"]).histories
    dev = read_interactions(dataset["interactions_dev"]).histories
    assert set(train) == set(dev) and len(train) == 60
    assert all(len(h) >= 3 for h in train.values())
    assert all(len(h) == 1 for h in dev.values())
    catalog = make_catalog(400, seed=3)
    top_of = {i["item_id"]: i["category"].split(" > ")[0] for i in catalog}
    # Users stay mostly within one or two top categories.
    focus = [
        sum(n for _, n in Counter(top_of[i] for i in h).most_common(2)) / len(h)
        for h in train.values()
    ]
    assert sum(focus) / len(focus) > 0.8


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code = main(["--out", str(out), "--items", "120", "--queries", "10", "--users", "5"])
    assert code == 0
    assert len(read_catalog(out / "products.jsonl.gz")) == 120
    assert len(read_queries(out / "queries_train.jsonl")) == 8
    assert main(["--out", str(out), "--queries", "1"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
