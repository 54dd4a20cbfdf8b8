"""Tests for catalog validation on Spark (local[2]): the local reader's errors, to the character."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark")

from indexer.build.spark import spark_session  # noqa: E402
from indexer.build.spark_validate import ROW, validate_catalog_spark  # noqa: E402
from trainer.data.catalog import read_catalog  # noqa: E402
from trainer.data.rows import DataError  # noqa: E402

# Tiny file splits, so a 60-line catalog is read by ~10 tasks and cross-row rules (duplicate
# ids, one type per attribute, line numbers) are checked across partitions.
_SPLIT_CONF = {
    "spark.sql.files.maxPartitionBytes": "400",
    "spark.sql.files.openCostInBytes": "1",
    "spark.sql.shuffle.partitions": "4",
}


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module, with tiny file splits."""
    session = spark_session("local[2]", "aisle-test")
    before = {key: session.conf.get(key, None) for key in _SPLIT_CONF}
    for key, value in _SPLIT_CONF.items():
        session.conf.set(key, value)
    yield session
    for key, value in before.items():
        if value is None:
            session.conf.unset(key)
        else:
            session.conf.set(key, value)
    session.stop()


def _item(i: int) -> dict:
    item = {"item_id": f"SKU{i:03d}", "title": f"red lamp model {i}"}
    if i % 3:
        item["price"] = round(1.5 * i, 2)
    if i % 4 == 0:
        item["bullets"] = ["bright", f"model {i}"]
    item["size"] = i if i % 5 else i + 0.5  # an extra attribute mixing ints and numbers
    if i % 2:
        item["material"] = None  # only ever null: a string column
    return item


def _lines(n: int = 60) -> list[str]:
    return [json.dumps(_item(i)) for i in range(n)]


def _write(path: Path, lines: list[str], end: str = "\n") -> Path:
    """Lines joined by newlines; a lone surrogate U+DCxx in a line is written as the bad byte
    0xxx (surrogateescape)."""
    data = ("\n".join(lines) + end).encode("utf-8", "surrogateescape")
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _insert(lines: list[str], at: int, *new: str) -> list[str]:
    return lines[:at] + list(new) + lines[at:]


def _assert_same_error(spark, path: Path, tmp_path: Path) -> DataError:
    with pytest.raises(DataError) as local:
        read_catalog(path)
    with pytest.raises(DataError) as remote:
        validate_catalog_spark(spark, path, tmp_path / "validated")
    assert str(remote.value) == str(local.value)
    assert (remote.value.line, remote.value.field) == (local.value.line, local.value.field)
    return remote.value


BAD_JSONL = {
    "missing id": _insert(_lines(), 37, json.dumps({"title": "no id"})),
    "id not a string": _insert(_lines(), 12, json.dumps({"item_id": 5, "title": "x"})),
    "blank id": _insert(_lines(), 44, json.dumps({"item_id": "  ", "title": "x"})),
    "duplicate id across partitions": _insert(
        _lines(), 52, json.dumps({"item_id": "SKU002", "title": "again"})
    ),
    "duplicate beats a later bad field": _insert(
        _lines(), 52, json.dumps({"item_id": "SKU002", "title": "x", "price": "12 USD"})
    ),
    "empty title": _insert(_lines(), 30, json.dumps({"item_id": "Z", "title": " "})),
    "missing title": _insert(_lines(), 30, json.dumps({"item_id": "Z", "price": 3})),
    "price not a number": _insert(
        _lines(), 25, json.dumps({"item_id": "Z", "title": "x", "price": "12 USD"})
    ),
    "negative price": _insert(
        _lines(), 25, json.dumps({"item_id": "Z", "title": "x", "price": -1})
    ),
    "bullets hold a number": _insert(
        _lines(), 8, json.dumps({"item_id": "Z", "title": "x", "bullets": ["a", 1]})
    ),
    "extra attribute is a list": _insert(
        _lines(), 8, json.dumps({"item_id": "Z", "title": "x", "tags": ["a"]})
    ),
    # 'size' is a number from line 1 (0.5): the clash names that line.
    "attribute type clash across partitions": _insert(
        _lines(), 48, json.dumps({"item_id": "Z", "title": "x", "size": "XL"})
    ),
    # 'weight' is an integer on line 3, a number on line 41: the clash on 56 names line 41.
    "clash after ints turn into numbers": _insert(
        _insert(
            _insert(_lines(), 2, json.dumps({"item_id": "W1", "title": "w", "weight": 2})),
            40,
            json.dumps({"item_id": "W2", "title": "w", "weight": 2.5}),
        ),
        55,
        json.dumps({"item_id": "W3", "title": "w", "weight": True}),
    ),
    # The first problem in the file wins, though the clash is found on another partition.
    "earliest of several problems": _insert(
        _insert(_lines(), 10, json.dumps({"item_id": "Z", "title": "x", "size": "XL"})),
        45,
        json.dumps({"item_id": "Y", "title": ""}),
    ),
    "bad JSON line": _insert(_lines(), 33, '{"item_id": "Z", "title": "x"'),
    "not an object": _insert(_lines(), 33, '["Z", "x"]'),
    "bad byte": _insert(_lines(), 41, '{"item_id": "Z", "title": "caf\udcc3"}'),
    "blank lines shift line numbers": _insert(
        _insert(_lines(), 5, "", "   ", ""), 50, json.dumps({"item_id": "Z"})
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_bad_jsonl_same_error_as_local_reader(spark, tmp_path, case):
    path = _write(tmp_path / "products.jsonl", BAD_JSONL[case])
    _assert_same_error(spark, path, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["duplicate id across partitions", "bad JSON line", "bad byte"])
def test_bad_jsonl_gz_same_error(spark, tmp_path, case):
    path = _write(tmp_path / "products.jsonl.gz", BAD_JSONL[case])
    _assert_same_error(spark, path, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("end", ["", "\n"])
def test_bad_last_line_column(spark, tmp_path, end):
    # json counts the column within the line as read: with or without its line break.
    path = _write(tmp_path / "products.jsonl", _lines() + ['{"item_id": "Z"'], end=end)
    error = _assert_same_error(spark, path, tmp_path)
    assert error.line == 61


@pytest.mark.slow
@pytest.mark.parametrize("lines", [[], ["", "  "]], ids=["empty", "blank"])
def test_no_items(spark, tmp_path, lines):
    path = _write(tmp_path / "products.jsonl", lines)
    error = _assert_same_error(spark, path, tmp_path)
    assert error.problem == "no items"


def test_file_errors_before_spark(spark, tmp_path):
    for path in (tmp_path / "missing.jsonl", _write(tmp_path / "items.txt", _lines(3))):
        _assert_same_error(spark, path, tmp_path)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    _assert_same_error(spark, tmp_path / "broken.parquet", tmp_path)


def test_bad_byte_line_is_exact_in_local_reader(tmp_path):
    # The local reader decodes line by line, so the error names the line of the bad byte.
    path = _write(tmp_path / "products.jsonl", BAD_JSONL["bad byte"])
    with pytest.raises(DataError, match=r":42: not valid UTF-8 text$"):
        read_catalog(path)


def _assert_same_table(spark, path: Path, tmp_path: Path) -> None:
    local = read_catalog(path)
    validated = validate_catalog_spark(spark, path, tmp_path / "validated")
    assert validated.n_items == len(local)
    catalog = validated.to_catalog()
    assert catalog.table.schema == local.table.schema
    assert catalog.table.equals(local.table)
    assert catalog.path == local.path
    frame = validated.dataframe(spark).toPandas().sort_values(ROW)
    assert frame[ROW].tolist() == list(range(len(local)))
    assert frame["item_id"].tolist() == local.item_ids


@pytest.mark.slow
def test_good_jsonl_same_table(spark, tmp_path):
    lines = _insert(_insert(_lines(), 7, "", " "), 30, json.dumps({"item_id": "N", "title": "n"}))
    _assert_same_table(spark, _write(tmp_path / "products.jsonl", lines, end=""), tmp_path)


@pytest.mark.slow
def test_good_jsonl_gz_same_table(spark, tmp_path):
    _assert_same_table(spark, _write(tmp_path / "products.jsonl.gz", _lines()), tmp_path)


@pytest.mark.slow
def test_good_csv_same_table(spark, tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("item_id,title,price,size\na,A,1.5,3\nb,B,,4\n", encoding="utf-8")
    _assert_same_table(spark, path, tmp_path)


def _parquet(path: Path, items: list[dict]) -> Path:
    names = dict.fromkeys(name for item in items for name in item)  # from_pylist: row 0's only
    table = pa.table({name: [item.get(name) for item in items] for name in names})
    pq.write_table(table, path, row_group_size=7)
    return path


@pytest.mark.slow
def test_good_parquet_same_table(spark, tmp_path):
    _assert_same_table(
        spark, _parquet(tmp_path / "products.parquet", [_item(i) for i in range(60)]), tmp_path
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["duplicate id across row groups", "null title", "negative price", "id not a string"],
)
def test_bad_parquet_same_error(spark, tmp_path, case):
    items = [_item(i) for i in range(60)]
    if case == "duplicate id across row groups":
        items[50]["item_id"] = items[3]["item_id"]
    elif case == "null title":
        items[33]["title"] = None
    elif case == "negative price":
        items[41]["price"] = -2.0
    else:
        for i, item in enumerate(items):
            item["item_id"] = i
    path = _parquet(tmp_path / "products.parquet", items)
    _assert_same_error(spark, path, tmp_path)
