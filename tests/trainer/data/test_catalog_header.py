"""A catalog whose header (CSV) or schema (Parquet) lacks item_id or title is a header problem,
reported once at line 1, not as a missing field on the first row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.data.catalog import read_catalog
from trainer.data.rows import DataError


def test_csv_without_title_is_a_header_problem(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("item_id,name,price\nA1,red sofa,3\nA2,blue lamp,4\n")
    with pytest.raises(DataError) as info:
        read_catalog(path)
    message = str(info.value)
    assert f"{path}:1:" in message
    assert "header has no 'title' column (it has: item_id, name, price)" in message
    assert "rename" in message


def test_parquet_without_item_id_names_the_schema(tmp_path):
    path = tmp_path / "products.parquet"
    pq.write_table(pa.table({"sku": ["A"], "title": ["red sofa"]}), path)
    with pytest.raises(DataError, match="schema has no 'item_id' column"):
        read_catalog(path)


def test_csv_with_both_columns_still_reads(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("title,item_id\nred sofa,A1\n")
    assert read_catalog(path).item_ids == ["A1"]
