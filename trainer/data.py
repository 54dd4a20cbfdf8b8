"""Data schema and readers: the catalog, labeled queries and user interactions.

Readers stream their file once, validate every row and fail with a ``DataError`` that names the
file, the 1-based line (the row for Parquet, the line of the record for CSV, header = line 1),
the field and the problem. Nothing is dropped silently. Supported files: JSON lines
(``.jsonl``, ``.jsonl.gz``, ``.json.gz``; blank lines are skipped), ``.parquet`` and
``.csv``/``.csv.gz`` (header row; an empty cell is null).

The catalog rules are public pieces (``check_data_file``, ``parse_json_line``,
``validate_catalog_record`` with ``extra_kind_problem`` and ``note_extra_kinds``,
``catalog_schema``, ``catalog_table``) so that the Spark reader (``indexer.spark_validate``)
applies the very same rules, with the same messages, on executors.

This module imports no torch, so anything may import it cheaply.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

logger = logging.getLogger(__name__)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT_TEXT = re.compile(r"[+-]?\d+")
# Text decoded with errors="surrogateescape" holds these code points exactly where the bytes were
# not valid UTF-8 (valid UTF-8 never decodes to a lone surrogate).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class DataError(ValueError):
    """Bad input file.

    The message names the file, the 1-based line (the row for Parquet) and the problem, e.g.
    ``"products.jsonl.gz:12: field 'price' must be a number, got str '12 USD' (item 'B00X')"``.

    Attributes:
        path: the file, as given to the reader.
        line: 1-based line (Parquet: row) of the problem; ``None`` for whole-file problems.
        field: the offending field, when there is one.
        problem: the message without the ``path:line:`` prefix.
    """

    def __init__(
        self, path: str | Path, line: int | None, problem: str, *, field: str | None = None
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce replays only the message, which does not fit __init__ (pickling
        # happens when errors cross process boundaries, e.g. from a DataLoader worker).
        return (_rebuild_data_error, (self.path, self.line, self.problem, self.field))


def _rebuild_data_error(path: str, line: int | None, problem: str, field: str | None) -> DataError:
    return DataError(path, line, problem, field=field)


class _Bad(Exception):
    """A field value problem; the caller adds file, line and field name."""


# ---------------------------------------------------------------------------------------------
# Rows from a file: (line, dict) pairs. `text` rows (CSV) hold strings, the others JSON values.


def _file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise DataError(
        path,
        None,
        "unsupported file type; expected .jsonl, .jsonl.gz, .json.gz (one JSON object per "
        "line), .parquet, .csv or .csv.gz",
    )


def _open_text(
    path: Path, encoding: str, newline: str | None = None, errors: str = "strict"
) -> Any:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, errors=errors, newline=newline)
    return open(path, encoding=encoding, errors=errors, newline=newline)


def parse_json_line(text: str, path: str | Path, line: int) -> dict[str, Any] | None:
    """One line of a JSON-lines file: its object, or None for a blank line.

    Args:
        text: the line decoded with ``errors="surrogateescape"`` (so a bad byte is caught on
            its own line) and ending in its line break as universal newlines give it (``"\\n"``;
            none on a last line without one): a JSON error's column counts within this text.
        path: the file, for the error.
        line: the 1-based line number, for the error.

    Raises:
        DataError: the line is not valid UTF-8, not valid JSON, or not a JSON object.
    """
    if _UNDECODABLE.search(text):
        raise DataError(path, line, "not valid UTF-8 text")
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, line, f"invalid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise DataError(path, line, f"expected a JSON object, got {_json_kind(obj)}")
    return obj


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    lineno = 0
    try:
        with _open_text(path, "utf-8", errors="surrogateescape") as f:
            for lineno, text in enumerate(f, 1):
                obj = parse_json_line(text, path, lineno)
                if obj is not None:
                    yield lineno, obj
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; EOFError: truncated .gz
        raise DataError(path, lineno + 1 if lineno else None, f"cannot read file: {e}") from e


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    line = 1
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with _open_text(path, "utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            for column in header:
                if not column.strip():
                    raise DataError(path, 1, "header has an empty column name")
            duplicates = sorted({c for c in header if header.count(c) > 1})
            if duplicates:
                raise DataError(path, 1, f"header repeats column(s) {duplicates}")
            end = reader.line_num
            for row in reader:
                # A quoted cell may span lines; report the line the record starts on.
                line, end = end + 1, reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        path, line, f"row has {len(row)} fields but the header has {len(header)}"
                    )
                yield line, {c: (v if v != "" else None) for c, v in zip(header, row, strict=True)}
    except UnicodeDecodeError:
        raise DataError(path, line, "not valid UTF-8 text") from None
    except csv.Error as e:
        raise DataError(path, line, f"malformed CSV: {e}") from None
    except (OSError, EOFError) as e:
        raise DataError(path, None, f"cannot read file: {e}") from e


def _open_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, None, f"not a readable Parquet file: {e}") from e


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    parquet_file = _open_parquet(path)
    row = 0
    for batch in parquet_file.iter_batches(batch_size=65_536):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def _iter_rows(path: Path) -> tuple[Iterator[tuple[int, dict[str, Any]]], bool]:
    """The rows of any supported file, and whether their values are CSV strings."""
    fmt = _file_format(path)
    if not path.is_file():
        raise DataError(path, None, "no such file")
    if fmt == "jsonl":
        return _iter_jsonl(path), False
    if fmt == "csv":
        return _iter_csv(path), True
    return _iter_parquet(path), False


def check_data_file(path: str | Path) -> str:
    """The checks a reader makes before it reads rows: a supported file name, an existing file
    and, for Parquet, a readable footer.

    Returns:
        The format: ``"jsonl"``, ``"parquet"`` or ``"csv"``.

    Raises:
        DataError: the same whole-file error the readers raise.
    """
    path = Path(path)
    fmt = _file_format(path)
    if not path.is_file():
        raise DataError(path, None, "no such file")
    if fmt == "parquet":
        _open_parquet(path)
    return fmt


# ---------------------------------------------------------------------------------------------
# Value converters: (value, from_text) → typed value, or raise _Bad with the problem.


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _describe(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(value).__name__} {shown}"


def _to_str(value: Any, text: bool) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_describe(value)}")
    return value


def _to_float(value: Any, text: bool) -> float:
    if text and isinstance(value, str):
        try:
            if "_" in value:  # float() accepts "1_000"; a data file should not
                raise ValueError(value)
            number = float(value.strip())
        except ValueError:
            raise _Bad(f"must be a number, got {_describe(value)}") from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"must be a number, got {_describe(value)}")
    else:
        number = float(value)
    if not math.isfinite(number):
        raise _Bad(f"must be a finite number, got {_describe(value)}")
    return number


def _to_int(value: Any, text: bool) -> int:
    if text and isinstance(value, str):
        if not _INT_TEXT.fullmatch(value.strip()):
            raise _Bad(f"must be an integer, got {_describe(value)}")
        number = int(value)
    elif isinstance(value, bool):
        raise _Bad(f"must be an integer, got {_describe(value)}")
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        # JSON writers (pandas among them) often emit 3.0 for an integer column.
        number = int(value)
    else:
        raise _Bad(f"must be an integer, got {_describe(value)}")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _Bad(f"is out of the 64-bit integer range: {number}")
    return number


def _to_bool(value: Any, text: bool) -> bool:
    if text and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
    elif isinstance(value, bool):
        return value
    raise _Bad(f"must be true or false, got {_describe(value)}")


def _to_str_list(value: Any, text: bool) -> list[str]:
    if text and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _Bad(
                f'must be a JSON array of strings such as ["a", "b"], got {_describe(value)}'
            ) from None
    if not isinstance(value, list | tuple):
        raise _Bad(f"must be a list of strings, got {_describe(value)}")
    for element in value:
        if not isinstance(element, str):
            raise _Bad(f"must be a list of strings, but holds {_describe(element)}")
    return list(value)


def _non_negative(value: float) -> None:
    if value < 0:
        raise _Bad(f"must be >= 0, got {value!r}")


@dataclass(frozen=True)
class _Field:
    convert: Callable[[Any, bool], Any]
    arrow_type: pa.DataType
    check: Callable[[Any], None] | None = None


# Declared order is the column order of the catalog table.
KNOWN_FIELDS: dict[str, _Field] = {
    "item_id": _Field(_to_str, pa.string()),
    "title": _Field(_to_str, pa.string()),
    "description": _Field(_to_str, pa.string()),
    "brand": _Field(_to_str, pa.string()),
    "category": _Field(_to_str, pa.string()),
    "bullets": _Field(_to_str_list, pa.list_(pa.string())),
    "color": _Field(_to_str, pa.string()),
    "price": _Field(_to_float, pa.float64(), _non_negative),
    "rating": _Field(_to_float, pa.float64()),
    "rating_count": _Field(_to_int, pa.int64(), _non_negative),
    "in_stock": _Field(_to_bool, pa.bool_()),
    "margin": _Field(_to_float, pa.float64()),
}

_EXTRA_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}
_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string"}


def _scalar_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Bad(f"is out of the 64-bit integer range: {value}")
        return "int"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"must be a finite number, got {_describe(value)}")
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict | list | tuple):
        raise _Bad(
            f"is {_json_kind(value)}; extra attributes must be scalars (string, number or boolean)"
        )
    raise _Bad(f"has unsupported type {type(value).__name__}; use a string, number or boolean")


def _infer_text_column(values: list[str | None]) -> tuple[str, list[Any]]:
    """Type a CSV extra column: int64, else float64, else bool ("true"/"false"), else string."""
    present = [v.strip() for v in values if v is not None]
    for kind, convert in (("int", _to_int), ("float", _to_float), ("bool", _to_bool)):
        try:
            [convert(v, True) for v in present]
        except _Bad:
            continue
        return kind, [None if v is None else convert(v, True) for v in values]
    return "str", values


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
    value = obj.get("item_id")
    if value is None:
        raise DataError(path, line, "missing required field 'item_id'", field="item_id")
    try:
        item_id = _to_str(value, text)
    except _Bad as e:
        raise DataError(path, line, f"field 'item_id' {e}", field="item_id") from None
    if not item_id.strip():
        raise DataError(path, line, "field 'item_id' is empty", field="item_id")
    return item_id


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
        f"is {_KIND_WORDS[kind]} here but {_KIND_WORDS[previous[0]]} on line {previous[1]}; "
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
                    kind = _scalar_kind(value)
                    problem = extra_kind_problem(extra_kind, name, kind) if extra_kind else None
                    if problem is not None:
                        raise _Bad(problem)
                    kinds[name] = kind
        except _Bad as e:
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
            fields.append(pa.field(name, _EXTRA_TYPES[extra_kinds.get(name, "str")]))
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
    rows_iter, text = _iter_rows(path)
    return _catalog_from_rows(rows_iter, path, text=text)


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
        extra_kinds[name], values = _infer_text_column([r.get(name) for r in rows])
        for record, value in zip(rows, values, strict=True):
            if value is not None:
                record[name] = value
    table = catalog_table(rows, catalog_schema(seen_columns, extra_kinds))
    logger.info("read %d items with %d columns from %s", len(rows), table.num_columns, path)
    return Catalog(table=table, path=str(path))


# ---------------------------------------------------------------------------------------------
# Labeled queries


@dataclass(frozen=True)
class Labels:
    """Graded relevance judgments.

    Attributes:
        queries: query_id → query text, in order of first appearance in the file.
        judgments: query_id → {item_id: grade}.
        path: the source file.
    """

    queries: dict[str, str]
    judgments: dict[str, dict[str, int]]
    path: str


def _required(
    path: Path,
    line: int,
    obj: dict[str, Any],
    name: str,
    convert: Callable[[Any, bool], Any],
    text: bool,
) -> Any:
    value = obj.get(name)
    if value is None:
        raise DataError(path, line, f"missing required field {name!r}", field=name)
    try:
        converted = convert(value, text)
    except _Bad as e:
        raise DataError(path, line, f"field {name!r} {e}", field=name) from None
    if isinstance(converted, str) and not converted.strip():
        raise DataError(path, line, f"field {name!r} is empty", field=name)
    return converted


def _add_query(
    path: Path,
    line: int,
    queries: dict[str, str],
    query_lines: dict[str, int],
    query_id: str,
    query: str,
) -> None:
    known = queries.get(query_id)
    if known is None:
        queries[query_id] = query
        query_lines[query_id] = line
    elif known != query:
        raise DataError(
            path,
            line,
            f"query_id {query_id!r} has query {query!r} here but {known!r} on line "
            f"{query_lines[query_id]}",
            field="query",
        )


def read_labels(path: str | Path, *, grades: tuple[int, ...] = (0, 1, 2, 3)) -> Labels:
    """Read graded judgments: rows with ``query_id``, ``query``, ``item_id`` and ``grade``.

    ``grade`` must be an integer in ``grades`` (a JSON float such as ``3.0`` is accepted when
    integral). Other fields (``esci_label``, ``source_rating``, ``relevance``) are ignored.
    The same judgment repeated with the same grade is kept once (and logged).

    Raises:
        DataError: a missing field, an unknown grade, a query_id with two query texts, a
            (query_id, item_id) pair judged twice with different grades, or an empty file.
    """
    if not grades or not all(isinstance(g, int) and not isinstance(g, bool) for g in grades):
        raise ValueError(f"grades must be a non-empty tuple of ints, got {grades!r}")
    path = Path(path)
    allowed = set(grades)
    rows_iter, text = _iter_rows(path)
    queries: dict[str, str] = {}
    query_lines: dict[str, int] = {}
    judgments: dict[str, dict[str, int]] = {}
    judgment_lines: dict[tuple[str, str], int] = {}
    repeats = 0
    for line, obj in rows_iter:
        query_id = _required(path, line, obj, "query_id", _to_str, text)
        query = _required(path, line, obj, "query", _to_str, text)
        item_id = _required(path, line, obj, "item_id", _to_str, text)
        grade = _required(path, line, obj, "grade", _to_int, text)
        if grade not in allowed:
            raise DataError(
                path, line, f"grade {grade} is not one of {sorted(allowed)}", field="grade"
            )
        _add_query(path, line, queries, query_lines, query_id, query)
        per_query = judgments.setdefault(query_id, {})
        previous = per_query.get(item_id)
        if previous is None:
            per_query[item_id] = grade
            judgment_lines[(query_id, item_id)] = line
        elif previous != grade:
            raise DataError(
                path,
                line,
                f"item {item_id!r} is judged {grade} for query_id {query_id!r} here but "
                f"{previous} on line {judgment_lines[(query_id, item_id)]}",
                field="grade",
            )
        else:
            repeats += 1
    if not queries:
        raise DataError(path, None, "no labels")
    if repeats:
        logger.warning("%s: %d repeated identical judgments kept once", path, repeats)
    n_judgments = sum(len(j) for j in judgments.values())
    logger.info("read %d judgments for %d queries from %s", n_judgments, len(queries), path)
    return Labels(queries=queries, judgments=judgments, path=str(path))


def read_queries(path: str | Path) -> dict[str, str]:
    """Read a query file (``queries_<split>.jsonl``): query_id → query, in file order.

    Raises:
        DataError: a missing or empty field, a query_id with two query texts, or no queries.
    """
    path = Path(path)
    rows_iter, text = _iter_rows(path)
    queries: dict[str, str] = {}
    query_lines: dict[str, int] = {}
    for line, obj in rows_iter:
        query_id = _required(path, line, obj, "query_id", _to_str, text)
        query = _required(path, line, obj, "query", _to_str, text)
        _add_query(path, line, queries, query_lines, query_id, query)
    if not queries:
        raise DataError(path, None, "no queries")
    return queries


def check_labels_against_catalog(labels: Labels, catalog: Catalog) -> None:
    """Fail if any judged item is missing from the catalog.

    Raises:
        DataError: on ``labels.path``, listing the first few unknown item ids and their count.
    """
    known = set(catalog.item_ids)
    unknown: dict[str, None] = {}
    for per_query in labels.judgments.values():
        for item_id in per_query:
            if item_id not in known:
                unknown.setdefault(item_id, None)
    if unknown:
        shown = ", ".join(repr(i) for i in list(unknown)[:5])
        more = f", ... ({len(unknown)} in all)" if len(unknown) > 5 else ""
        raise DataError(
            labels.path,
            None,
            f"{len(unknown)} judged item id(s) are not in the catalog {catalog.path}: "
            f"{shown}{more}",
            field="item_id",
        )


# ---------------------------------------------------------------------------------------------
# Interactions


@dataclass(frozen=True)
class Interactions:
    """User histories.

    Attributes:
        histories: user_id → item_ids ordered by position (users in order of first appearance).
        path: the source file.
    """

    histories: dict[str, list[str]]
    path: str


def read_interactions(path: str | Path) -> Interactions:
    """Read interactions: rows with ``user_id``, ``item_id`` and ``position`` (int >= 0).

    Positions need not start at 0 or be contiguous (a dev split holds only position n); other
    fields are ignored.

    Raises:
        DataError: a missing or mistyped field, a negative position, the same (user_id,
            position) twice, or no interactions.
    """
    path = Path(path)
    rows_iter, text = _iter_rows(path)
    by_user: dict[str, dict[int, tuple[str, int]]] = {}  # user → position → (item, line)
    for line, obj in rows_iter:
        user_id = _required(path, line, obj, "user_id", _to_str, text)
        item_id = _required(path, line, obj, "item_id", _to_str, text)
        position = _required(path, line, obj, "position", _to_int, text)
        if position < 0:
            raise DataError(
                path, line, f"field 'position' must be >= 0, got {position}", field="position"
            )
        positions = by_user.setdefault(user_id, {})
        if position in positions:
            raise DataError(
                path,
                line,
                f"user {user_id!r} has position {position} twice (also on line "
                f"{positions[position][1]})",
                field="position",
            )
        positions[position] = (item_id, line)
    if not by_user:
        raise DataError(path, None, "no interactions")
    histories = {
        user: [positions[p][0] for p in sorted(positions)] for user, positions in by_user.items()
    }
    n_events = sum(len(h) for h in histories.values())
    logger.info("read %d interactions of %d users from %s", n_events, len(histories), path)
    return Interactions(histories=histories, path=str(path))
