"""The item catalog: record validation, Arrow schema and table, and the reader."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from trainer.data.fields import (
    EXTRA_TYPES,
    KIND_WORDS,
    KNOWN_FIELDS,
    BadValue,
    infer_text_column,
    required_field,
    scalar_kind,
    to_str,
)
from trainer.data.rows import DataError, header_columns, iter_rows

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Catalog


@dataclass(frozen=True)
class Catalog:
    """The item catalog: one row per item, in file order.

    Columns: ``item_id`` and ``title`` first, then the known fields present in the file in
    ``KNOWN_FIELDS`` order, then extra attributes in order of first appearance. Known fields
    have their declared Arrow type; extras are int64, float64, bool or string.
    """

    table: pa.Table
    path: str

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def item_ids(self) -> list[str]:
        """Item ids in row order, ``(n_items,)``."""
        return self.table.column("item_id").to_pylist()

    @property
    def attribute_names(self) -> list[str]:
        """Every column name except ``item_id``."""
        return [name for name in self.table.column_names if name != "item_id"]

    def record(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict, null values omitted."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for a catalog of {n} items")
        row = self.table.slice(i % n, 1).to_pylist()[0]
        return {k: v for k, v in row.items() if v is not None}

    def records(self) -> Iterator[dict[str, Any]]:
        """All rows as dicts (null values omitted), in file order."""
        for batch in self.table.to_batches():
            for row in batch.to_pylist():
                yield {k: v for k, v in row.items() if v is not None}


def catalog_item_id(
    obj: Mapping[str, Any], path: str | Path, line: int, *, text: bool = False
) -> str:
    """The record's ``item_id``, checked: present, a string, not blank.

    Raises:
        DataError: with ``field="item_id"``.
    """
    return required_field(path, line, obj, "item_id", to_str, text)


def extra_kind_problem(
    extra_kind: Mapping[str, tuple[str, int]], name: str, kind: str
) -> str | None:
    """Why a ``kind`` value of extra attribute ``name`` clashes with earlier lines, or None.

    Args:
        extra_kind: extra attribute → (kind, line that set it), as ``note_extra_kinds`` keeps it.
        name: the attribute.
        kind: its kind on this line: "int", "float", "bool" or "str".
    """
    previous = extra_kind.get(name)
    if previous is None or previous[0] == kind or {previous[0], kind} == {"int", "float"}:
        return None  # integers and numbers mix (into float64)
    return (
        f"is {KIND_WORDS[kind]} here but {KIND_WORDS[previous[0]]} on line {previous[1]}; "
        "a column must have one type"
    )


def note_extra_kinds(
    extra_kind: dict[str, tuple[str, int]], kinds: Mapping[str, str], line: int
) -> None:
    """Fold the extra-attribute kinds of an accepted record into ``extra_kind`` (in place).

    An attribute keeps the kind it first had, except that integers turn into numbers at the
    first number: ``extra_kind`` then names the line of that number.

    Args:
        extra_kind: extra attribute → (kind, line that set it).
        kinds: the record's attribute → kind, as ``validate_catalog_record`` returns them.
        line: the record's 1-based line.
    """
    for name, kind in kinds.items():
        previous = extra_kind.get(name)
        if previous is None or previous[0] == "int" and kind == "float":
            extra_kind[name] = (kind, line)


def validate_catalog_record(
    obj: Mapping[str, Any],
    path: str | Path,
    line: int,
    *,
    text: bool = False,
    first_line_of: Mapping[str, int] | None = None,
    extra_kind: Mapping[str, tuple[str, int]] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Check one catalog record: the rules ``read_catalog`` and the Spark reader share.

    The checks, in order (the first failure is raised): ``item_id`` (``catalog_item_id``);
    that it is not in ``first_line_of``; then each field in the record's key order: a known
    field must convert to its declared type (``KNOWN_FIELDS``; ``price`` and ``rating_count``
    >= 0), an extra attribute must be a scalar of a kind that fits ``extra_kind``; then
    ``title`` must be present and not blank. Null values are skipped.

    Args:
        obj: the record as read: a JSON object or Parquet row (CSV: strings, None if empty).
        path: the file, for the error.
        line: the record's 1-based line (Parquet: row), for the error.
        text: the values are CSV text: known fields are parsed from it; extra attributes stay
            text (``read_catalog`` types them per column once every row is in).
        first_line_of: item ids of earlier lines → the line each first appeared on; None
            skips the duplicate check.
        extra_kind: extra attribute → (kind, line that set it) over earlier lines
            (``note_extra_kinds``); None skips the one-type-per-column check.

    Returns:
        The typed record (nulls omitted) and its extra attributes' kinds ("int", "float",
        "bool", "str"; empty for CSV text), to pass to ``note_extra_kinds``.

    Raises:
        DataError: naming the path, line, field and problem.
    """
    item_id = catalog_item_id(obj, path, line, text=text)
    if first_line_of is not None and item_id in first_line_of:
        raise DataError(
            path,
            line,
            f"duplicate item_id {item_id!r} (first on line {first_line_of[item_id]})",
            field="item_id",
        )

    def bad(field: str, problem: str) -> DataError:
        return DataError(path, line, f"field {field!r} {problem} (item {item_id!r})", field=field)

    record: dict[str, Any] = {"item_id": item_id}
    kinds: dict[str, str] = {}
    for name, value in obj.items():
        if name == "item_id" or value is None:
            continue
        spec = KNOWN_FIELDS.get(name)
        try:
            if spec is not None:
                converted = spec.convert(value, text)
                if spec.check is not None:
                    spec.check(converted)
            else:
                converted = value
                if not text:
                    kind = scalar_kind(value)
                    problem = extra_kind_problem(extra_kind, name, kind) if extra_kind else None
                    if problem is not None:
                        raise BadValue(problem)
                    kinds[name] = kind
        except BadValue as e:
            raise bad(name, str(e)) from None
        record[name] = converted
    title = record.get("title")
    if title is None:
        raise DataError(
            path, line, f"missing required field 'title' (item {item_id!r})", field="title"
        )
    if not title.strip():
        raise bad("title", "is empty")
    return record, kinds


def catalog_schema(columns: Iterable[str], extra_kinds: Mapping[str, str]) -> pa.Schema:
    """The catalog table's schema.

    Args:
        columns: every field name seen, in order of first appearance.
        extra_kinds: extra attribute → "int", "float", "bool" or "str"; an attribute missing
            here was only ever null and becomes a string column.

    Returns:
        ``item_id``, ``title``, the other known fields among ``columns`` in ``KNOWN_FIELDS``
        order (with their declared types), then the extra attributes in ``columns`` order.
    """
    columns = list(columns)
    present = set(columns) | {"item_id", "title"}
    fields = [
        pa.field(name, spec.arrow_type) for name, spec in KNOWN_FIELDS.items() if name in present
    ]
    for name in columns:
        if name not in KNOWN_FIELDS:
            fields.append(pa.field(name, EXTRA_TYPES[extra_kinds.get(name, "str")]))
    return pa.schema(fields)


def catalog_table(records: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Typed records (``validate_catalog_record``; CSV extras converted) as a catalog table.

    Args:
        records: n records, nulls omitted.
        schema: from ``catalog_schema``.

    Returns:
        A table of n rows with ``schema``.
    """
    arrays = []
    for field in schema:
        values = [r.get(field.name) for r in records]
        if field.name not in KNOWN_FIELDS and pa.types.is_floating(field.type):
            # A column of integers and numbers: Arrow refuses ints it cannot hold exactly.
            values = [None if v is None else float(v) for v in values]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def read_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog file into a typed Arrow table.

    Rules (``validate_catalog_record``): ``item_id`` is a required, non-empty, unique string;
    ``title`` a required string, non-empty after stripping; known fields must have their
    declared type (see ``KNOWN_FIELDS``; ``price`` and ``rating_count`` are >= 0); any other
    field is an extra attribute whose values must all be scalars of one type (integers and
    numbers mix into float64). Missing or null values are null.

    Raises:
        DataError: naming the file, line, field and problem for the first bad row; "no items"
            for a file without any.
    """
    path = Path(path)
    rows_iter, text = iter_rows(path)
    check_catalog_columns(path)
    return _catalog_from_rows(rows_iter, path, text=text)


def check_catalog_columns(path: Path) -> None:
    """DataError when a CSV header or Parquet schema lacks item_id or title: a header problem,
    said once as one, not as "missing required field" on the first row."""
    columns = header_columns(path)
    if columns is None:
        return
    missing = [name for name in ("item_id", "title") if name not in columns]
    if missing:
        csv = path.name.endswith((".csv", ".csv.gz"))
        shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
        raise DataError(
            path,
            1 if csv else None,
            f"the {'header' if csv else 'schema'} has no {' or '.join(map(repr, missing))} "
            f"column (it has: {shown}); a catalog needs item_id and title: rename the "
            "columns that hold the product id and name",
            field=missing[0],
        )


def catalog_from_records(records: Iterable[Mapping[str, Any]], source: str) -> Catalog:
    """Validate in-memory catalog records (JSON types) with ``read_catalog``'s rules.

    Record i (1-based) is reported as line i of ``source``.

    Raises:
        DataError: as ``read_catalog``, for the first bad record.
    """
    return _catalog_from_rows(enumerate(records, 1), source, text=False)


def _catalog_from_rows(
    rows_iter: Iterable[tuple[int, Mapping[str, Any]]], path: str | Path, *, text: bool
) -> Catalog:
    """The typed catalog of (line, record) pairs; ``text``: values are CSV strings."""
    rows: list[dict[str, Any]] = []
    seen_columns: dict[str, None] = {}  # insertion-ordered set
    first_line_of: dict[str, int] = {}
    extra_kind: dict[str, tuple[str, int]] = {}  # extra field → (kind, line that set it)
    text_extras: dict[str, None] = {}

    for line, obj in rows_iter:
        for key in obj:
            seen_columns.setdefault(key, None)
        record, kinds = validate_catalog_record(
            obj, path, line, text=text, first_line_of=first_line_of, extra_kind=extra_kind
        )
        first_line_of[record["item_id"]] = line
        note_extra_kinds(extra_kind, kinds, line)
        if text:
            text_extras.update(dict.fromkeys(n for n in record if n not in KNOWN_FIELDS))
        rows.append(record)

    if not rows:
        raise DataError(path, None, "no items")

    extra_kinds = {name: kind for name, (kind, _) in extra_kind.items()}
    for name in text_extras:  # CSV: typed per column, now that every row is in
        extra_kinds[name], values = infer_text_column([r.get(name) for r in rows])
        for record, value in zip(rows, values, strict=True):
            if value is not None:
                record[name] = value
    table = catalog_table(rows, catalog_schema(seen_columns, extra_kinds))
    logger.info("read %d items with %d columns from %s", len(rows), table.num_columns, path)
    return Catalog(table=table, path=str(path))
