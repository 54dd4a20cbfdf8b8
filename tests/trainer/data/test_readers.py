"""Tests for trainer.data: catalog, labels, queries and interactions readers."""

from __future__ import annotations

import csv
import gzip
import json
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.data.catalog import Catalog, read_catalog
from trainer.data.labels import (
    check_labels_against_catalog,
    read_interactions,
    read_labels,
    read_queries,
)
from trainer.data.rows import DataError

ITEMS: list[dict[str, Any]] = [
    {
        "item_id": "B001",
        "title": "Acme Red Velvet Sofa",
        "description": "A <b>soft</b> sofa.",
        "brand": "Acme",
        "category": "Home > Furniture > Sofas",
        "bullets": ["Hardwood frame", "Washable covers"],
        "color": "Red",
        "price": 649.99,
        "rating": 4.5,
        "rating_count": 120,
        "in_stock": True,
        "margin": 0.3,
    },
    {"item_id": "B002", "title": "Ironforge Cast Iron Skillet", "price": 35, "in_stock": False},
    {"item_id": "B003", "title": "Voltra Headphones", "bullets": [], "rating_count": 0},
]


def _line(obj: Any) -> str:
    return obj if isinstance(obj, str) else json.dumps(obj)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write dicts (as JSON) or raw strings, one per line; gzipped when the name ends in .gz."""
    text = "".join(_line(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def catalog_error(tmp_path: Path, rows: list[Any], name: str = "products.jsonl") -> DataError:
    path = write_jsonl(tmp_path / name, rows)
    with pytest.raises(DataError) as info:
        read_catalog(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:")
    return info.value


# --- round trips --------------------------------------------------------------------------------


def _check_round_trip(catalog: Catalog) -> None:
    assert len(catalog) == len(ITEMS)
    assert catalog.item_ids == ["B001", "B002", "B003"]
    # Ints given for a float field come back as floats; everything else unchanged.
    expected = [dict(r, price=float(r["price"])) if "price" in r else r for r in ITEMS]
    assert list(catalog.records()) == expected
    assert catalog.record(1) == expected[1]
    assert catalog.record(-1) == expected[2]
    schema = catalog.table.schema
    assert schema.field("price").type == pa.float64()
    assert schema.field("rating_count").type == pa.int64()
    assert schema.field("in_stock").type == pa.bool_()
    assert schema.field("bullets").type == pa.list_(pa.string())
    assert catalog.attribute_names == [n for n in schema.names if n != "item_id"]
    assert catalog.attribute_names[0] == "title"


@pytest.mark.parametrize("name", ["products.jsonl", "products.jsonl.gz", "products.json.gz"])
def test_round_trip_jsonl(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path / name, ITEMS)
    catalog = read_catalog(str(path))
    assert catalog.path == str(path)
    _check_round_trip(catalog)


def test_round_trip_parquet(tmp_path: Path) -> None:
    first = read_catalog(write_jsonl(tmp_path / "products.jsonl", ITEMS))
    path = tmp_path / "products.parquet"
    pq.write_table(first.table, path)
    _check_round_trip(read_catalog(path))


@pytest.mark.parametrize("name", ["products.csv", "products.csv.gz"])
def test_round_trip_csv(tmp_path: Path, name: str) -> None:
    columns = list(ITEMS[0])
    path = tmp_path / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for item in ITEMS:
            cells = []
            for c in columns:
                value = item.get(c)
                if value is None:
                    cells.append("")
                elif c == "bullets":
                    cells.append(json.dumps(value))
                elif isinstance(value, bool):
                    cells.append(str(value).lower())
                else:
                    cells.append(str(value))
            writer.writerow(cells)
    catalog = read_catalog(path)
    assert len(catalog) == 3
    assert catalog.record(0) == ITEMS[0]
    # CSV has every column on every row: empty cells are null, so records omit them.
    assert catalog.record(1) == {
        "item_id": "B002",
        "title": "Ironforge Cast Iron Skillet",
        "price": 35.0,
        "in_stock": False,
    }
    assert catalog.record(2)["bullets"] == []


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "products.jsonl", ["", ITEMS[1], "   ", ITEMS[2], ""])
    assert read_catalog(path).item_ids == ["B002", "B003"]


def test_typed_extra_attributes(tmp_path: Path) -> None:
    rows = [
        {"item_id": "a", "title": "A", "pack": 2, "weight": 1, "vegan": True, "size": "L"},
        {"item_id": "b", "title": "B", "pack": 3, "weight": 2.5, "vegan": False, "note": None},
        {"item_id": "c", "title": "C"},
    ]
    catalog = read_catalog(write_jsonl(tmp_path / "p.jsonl", rows))
    schema = catalog.table.schema
    assert schema.field("pack").type == pa.int64()
    assert schema.field("weight").type == pa.float64()  # int + float mix
    assert schema.field("vegan").type == pa.bool_()
    assert schema.field("size").type == pa.string()
    assert schema.field("note").type == pa.string()  # only ever null
    assert catalog.attribute_names == ["title", "pack", "weight", "vegan", "size", "note"]
    assert catalog.record(0) == {
        "item_id": "a",
        "title": "A",
        "pack": 2,
        "weight": 1.0,
        "vegan": True,
        "size": "L",
    }
    assert catalog.record(2) == {"item_id": "c", "title": "C"}


def test_csv_extra_columns_are_inferred(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        "item_id,title,pack,weight,vegan,size\na,A,2,1,true,10\nb,B,,2.5,FALSE,L\nc,C,-4,,,\n",
        encoding="utf-8",
    )
    catalog = read_catalog(path)
    schema = catalog.table.schema
    assert [schema.field(n).type for n in ("pack", "weight", "vegan", "size")] == [
        pa.int64(),
        pa.float64(),
        pa.bool_(),
        pa.string(),
    ]
    assert catalog.record(1) == {
        "item_id": "b",
        "title": "B",
        "weight": 2.5,
        "vegan": False,
        "size": "L",
    }
    assert catalog.record(2) == {"item_id": "c", "title": "C", "pack": -4}


# --- catalog errors: one per bad input -----------------------------------------------------------


def test_missing_item_id(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [ITEMS[0], {"title": "No id"}])
    assert (e.line, e.field) == (2, "item_id")
    assert "missing required field 'item_id'" in str(e)


def test_empty_item_id(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "  ", "title": "Blank id"}])
    assert (e.line, e.field) == (1, "item_id")
    assert "field 'item_id' is empty" in str(e)


def test_duplicate_item_id_names_both_lines(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [ITEMS[0], ITEMS[1], dict(ITEMS[2], item_id="B001")])
    assert (e.line, e.field) == (3, "item_id")
    assert str(e).startswith(f"{e.path}:3: duplicate item_id 'B001' (first on line 1)")


def test_missing_title(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "B9", "brand": "Acme"}])
    assert (e.line, e.field) == (1, "title")
    assert "missing required field 'title' (item 'B9')" in str(e)


def test_empty_title(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [ITEMS[0], {"item_id": "B9", "title": " \t"}])
    assert (e.line, e.field) == (2, "title")
    assert "field 'title' is empty (item 'B9')" in str(e)


def test_price_not_a_number(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "B9", "title": "T", "price": "abc"}])
    assert (e.line, e.field) == (1, "price")
    assert str(e) == f"{e.path}:1: field 'price' must be a number, got str 'abc' (item 'B9')"


def test_rating_count_not_an_integer(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "B9", "title": "T", "rating_count": 3.5}])
    assert (e.line, e.field) == (1, "rating_count")
    assert "must be an integer, got float 3.5" in str(e)


def test_rating_count_integral_float_is_accepted(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"item_id": "B9", "title": "T", "rating_count": 3.0}])
    assert read_catalog(path).record(0)["rating_count"] == 3


def test_in_stock_not_a_bool(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "B9", "title": "T", "in_stock": "maybe"}])
    assert (e.line, e.field) == (1, "in_stock")
    assert "must be true or false, got str 'maybe'" in str(e)


def test_negative_price(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "B9", "title": "T", "price": -1.5}])
    assert (e.line, e.field) == (1, "price")
    assert "field 'price' must be >= 0, got -1.5 (item 'B9')" in str(e)


def test_bool_is_not_a_number(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "B9", "title": "T", "price": True}])
    assert e.field == "price"


def test_bullets_must_be_strings(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "B9", "title": "T", "bullets": ["ok", 3]}])
    assert (e.line, e.field) == (1, "bullets")


def test_invalid_json(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [ITEMS[0], '{"item_id": "B9", "title": '])
    assert e.line == 2
    assert "invalid JSON" in str(e)


def test_line_not_an_object(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [ITEMS[0], "", '["B9", "T"]'])
    assert e.line == 3
    assert "expected a JSON object, got a list" in str(e)


def test_extra_column_with_mixed_types(tmp_path: Path) -> None:
    rows = [
        {"item_id": "a", "title": "A", "pack": 2},
        {"item_id": "b", "title": "B", "pack": 2.5},
        {"item_id": "c", "title": "C", "pack": "two"},
    ]
    e = catalog_error(tmp_path, rows)
    assert (e.line, e.field) == (3, "pack")
    assert "is a string here but a number on line 2" in str(e)


def test_extra_nested_object(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "a", "title": "A", "dims": {"w": 1}}])
    assert (e.line, e.field) == (1, "dims")
    assert "is an object; extra attributes must be scalars" in str(e)


def test_extra_list(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "a", "title": "A", "tags": ["x"]}])
    assert (e.line, e.field) == (1, "tags")
    assert "is a list" in str(e)


def test_empty_file_has_no_items(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, ["", "  "])
    assert e.line is None
    assert str(e) == f"{e.path}: no items"


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "products.xml"
    path.write_text("<items/>")
    with pytest.raises(DataError, match="unsupported file type"):
        read_catalog(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_catalog(tmp_path / "nope.jsonl")


def test_bad_gzip(tmp_path: Path) -> None:
    path = tmp_path / "products.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read file"):
        read_catalog(path)


def test_csv_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("item_id,title,price,in_stock\na,A,12 USD,true\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_catalog(path)
    assert (info.value.line, info.value.field) == (2, "price")  # header is line 1
    assert "must be a number, got str '12 USD' (item 'a')" in str(info.value)


def test_csv_wrong_number_of_fields(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("item_id,title\na,A\nb,B,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p\.csv:3: row has 3 fields but the header has 2"):
        read_catalog(path)


def test_parquet_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    table = pa.table({"item_id": ["a", "b", "a"], "title": ["A", "B", "C"]})
    pq.write_table(table, path)
    with pytest.raises(DataError) as info:
        read_catalog(path)
    assert info.value.line == 3
    assert "duplicate item_id 'a' (first on line 1)" in str(info.value)
    pq.write_table(pa.table({"item_id": ["a"], "title": ["A"], "price": ["cheap"]}), path)
    with pytest.raises(DataError, match="field 'price' must be a number"):
        read_catalog(path)


def test_data_error_pickles(tmp_path: Path) -> None:
    e = catalog_error(tmp_path, [{"item_id": "B9", "title": "T", "price": "abc"}])
    copy = pickle.loads(pickle.dumps(e))
    assert (str(copy), copy.path, copy.line, copy.field) == (str(e), e.path, e.line, e.field)
    assert isinstance(copy, ValueError)


# --- labels and queries ---------------------------------------------------------------------------


def label(qid: str, query: str, item: str, grade: Any, **extra: Any) -> dict[str, Any]:
    return {"query_id": qid, "query": query, "item_id": item, "grade": grade, **extra}


def labels_error(tmp_path: Path, rows: list[Any], **kwargs: Any) -> DataError:
    path = write_jsonl(tmp_path / "labels.jsonl.gz", rows)
    with pytest.raises(DataError) as info:
        read_labels(path, **kwargs)
    assert str(info.value).startswith(f"{path}:")
    return info.value


def test_read_labels(tmp_path: Path) -> None:
    rows = [
        label("7", "red sofa", "B001", 3, esci_label="E", source_rating=100.0),
        label("7", "red sofa", "B002", 0, esci_label="I"),
        label("2", "skillet", "B002", 2.0, relevance=2.5),
        label("7", "red sofa", "B001", 3),  # an identical repeat is kept once
    ]
    labels = read_labels(write_jsonl(tmp_path / "labels.jsonl.gz", rows))
    assert list(labels.queries.items()) == [("7", "red sofa"), ("2", "skillet")]
    assert labels.judgments == {"7": {"B001": 3, "B002": 0}, "2": {"B002": 2}}


def test_labels_unknown_grade(tmp_path: Path) -> None:
    e = labels_error(tmp_path, [label("1", "q", "a", 2), label("1", "q", "b", 3)], grades=(0, 1, 2))
    assert (e.line, e.field) == (2, "grade")
    assert "grade 3 is not one of [0, 1, 2]" in str(e)


def test_labels_fractional_grade(tmp_path: Path) -> None:
    e = labels_error(tmp_path, [label("1", "q", "a", 2.5)])
    assert (e.line, e.field) == (1, "grade")
    assert "must be an integer" in str(e)


@pytest.mark.parametrize("missing", ["query_id", "query", "item_id", "grade"])
def test_labels_missing_field(tmp_path: Path, missing: str) -> None:
    row = label("1", "q", "a", 1)
    del row[missing]
    e = labels_error(tmp_path, [label("1", "q", "b", 1), row])
    assert (e.line, e.field) == (2, missing)
    assert f"missing required field '{missing}'" in str(e)


def test_labels_query_id_with_two_texts(tmp_path: Path) -> None:
    e = labels_error(tmp_path, [label("1", "red sofa", "a", 3), label("1", "blue sofa", "b", 3)])
    assert (e.line, e.field) == (2, "query")
    assert "query_id '1' has query 'blue sofa' here but 'red sofa' on line 1" in str(e)


def test_labels_conflicting_grades(tmp_path: Path) -> None:
    rows = [label("1", "q", "a", 3), label("1", "q", "b", 0), label("1", "q", "a", 2)]
    e = labels_error(tmp_path, rows)
    assert (e.line, e.field) == (3, "grade")
    assert "item 'a' is judged 2 for query_id '1' here but 3 on line 1" in str(e)


def test_labels_empty_file(tmp_path: Path) -> None:
    e = labels_error(tmp_path, [""])
    assert str(e).endswith(": no labels")


def test_read_queries(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "queries_dev.jsonl",
        [{"query_id": "9", "query": "b"}, {"query_id": "3", "query": "a"}],
    )
    assert list(read_queries(path).items()) == [("9", "b"), ("3", "a")]
    write_jsonl(path, [{"query_id": "9", "query": "b"}, {"query_id": "9", "query": "c"}])
    with pytest.raises(DataError, match=r"queries_dev\.jsonl:2: query_id '9'"):
        read_queries(path)
    write_jsonl(path, [{"query_id": "9", "query": " "}])
    with pytest.raises(DataError, match="field 'query' is empty"):
        read_queries(path)


def test_check_labels_against_catalog(tmp_path: Path) -> None:
    catalog = read_catalog(write_jsonl(tmp_path / "products.jsonl", ITEMS))
    rows = [label("1", "q", "B001", 3)] + [label("2", "r", f"X{i}", 0) for i in range(7)]
    labels = read_labels(write_jsonl(tmp_path / "labels.jsonl", rows))
    with pytest.raises(DataError) as info:
        check_labels_against_catalog(labels, catalog)
    message = str(info.value)
    assert message.startswith(f"{labels.path}: 7 judged item id(s) are not in the catalog")
    assert "'X0', 'X1', 'X2', 'X3', 'X4', ... (7 in all)" in message
    good = read_labels(write_jsonl(tmp_path / "good.jsonl", rows[:1]))
    check_labels_against_catalog(good, catalog)


# --- interactions -------------------------------------------------------------------------------


def test_read_interactions_orders_by_position(tmp_path: Path) -> None:
    rows = [
        {"user_id": "u2", "item_id": "c", "position": 1},
        {"user_id": "u1", "item_id": "x", "position": 5},
        {"user_id": "u2", "item_id": "a", "position": 0, "timestamp": 17},
        {"user_id": "u2", "item_id": "c", "position": 2},
    ]
    interactions = read_interactions(write_jsonl(tmp_path / "inter.jsonl.gz", rows))
    assert interactions.histories == {"u2": ["a", "c", "c"], "u1": ["x"]}
    assert list(interactions.histories) == ["u2", "u1"]


def test_interactions_duplicate_position(tmp_path: Path) -> None:
    rows = [
        {"user_id": "u1", "item_id": "a", "position": 0},
        {"user_id": "u2", "item_id": "a", "position": 0},
        {"user_id": "u1", "item_id": "b", "position": 0},
    ]
    path = write_jsonl(tmp_path / "inter.jsonl", rows)
    with pytest.raises(DataError) as info:
        read_interactions(path)
    assert (info.value.line, info.value.field) == (3, "position")
    assert "user 'u1' has position 0 twice (also on line 1)" in str(info.value)


def test_interactions_bad_position(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "inter.jsonl", [{"user_id": "u", "item_id": "a", "position": -1}])
    with pytest.raises(DataError, match=r"inter\.jsonl:1: field 'position' must be >= 0"):
        read_interactions(path)
    write_jsonl(path, [{"user_id": "u", "item_id": "a"}])
    with pytest.raises(DataError, match="missing required field 'position'"):
        read_interactions(path)
    write_jsonl(path, [])
    with pytest.raises(DataError, match="no interactions"):
        read_interactions(path)
