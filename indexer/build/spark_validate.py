"""Catalog validation on Spark executors, with the rules and messages of the local reader.

Spark reads the catalog (JSON lines as text lines, Parquet as rows) and each executor checks
its records with ``trainer.data.catalog.validate_catalog_record``, the function
``read_catalog`` uses.
Rules that span rows are settled without the rows on the driver: a duplicate ``item_id`` by a
shuffle on the id, an extra attribute's one-type rule from each partition's first line per
value kind. Only a few facts per partition reach the driver (the first problem, the order in
which fields first appear, kinds, counts). The problem on the earliest line is then checked
again, on an executor, with the state ``read_catalog`` would have at that line, so the
``DataError`` is the one the local reader raises for the same file, to the character.

Line numbers: a text line's number is its index within its file split
(``_metadata.file_block_start``) plus the lines of the splits before it, counted first; a
Parquet row's is ``_metadata.row_index + 1``.

CSV is read on the driver with ``read_catalog``: a quoted cell may span lines, so a CSV file
cannot be cut into lines (Spark's own CSV reader cannot split such a file either).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data.catalog import (
    Catalog,
    catalog_item_id,
    catalog_schema,
    catalog_table,
    check_catalog_columns,
    extra_kind_problem,
    note_extra_kinds,
    read_catalog,
    validate_catalog_record,
)
from trainer.data.rows import DataError, check_data_file, parse_json_line

__all__ = ["ROW", "ValidatedCatalog", "validate_catalog_spark"]

logger = logging.getLogger(__name__)

ROW = "_aisle_row"  # 0-based row of each item in file order; prefixed so no attribute clashes
_BLOCK = "_aisle_block"  # byte offset of the file split a record was read from
_INDEX = "_aisle_index"  # Parquet: 0-based row within the file
_SCAN_SCHEMA = "item_id string, line long, facts string"
_PROBLEM_SCHEMA = "line long, problem string, field string"
_BATCH_ROWS = 8192

# (block, line, record, error) of every non-blank record, in file order within each split.
Records = Callable[[Iterator[pa.RecordBatch]], Iterator[tuple[int, int, Any, DataError | None]]]


@dataclass(frozen=True)
class ValidatedCatalog:
    """A catalog that passed validation, its typed table written as Parquet by Spark.

    Attributes:
        path: the catalog file.
        dataset: Parquet directory: the typed columns (``schema``) plus ``ROW`` (int64).
        schema: the columns as ``read_catalog`` types them.
        n_items: rows.
    """

    path: str
    dataset: Path
    schema: pa.Schema
    n_items: int

    def dataframe(self, spark: Any) -> Any:
        """The validated items as a Spark DataFrame (typed columns and ``ROW``)."""
        return spark.read.parquet(_file_url(self.dataset))

    def to_catalog(self) -> Catalog:
        """The whole table on this machine, in file order: what ``read_catalog`` returns."""
        table = pq.read_table(self.dataset)
        rows = table.column(ROW).to_numpy()
        if len(rows) > 1 and not (np.diff(rows) > 0).all():
            table = table.take(np.argsort(rows, kind="stable"))
        # cast: Spark names list items "element" (Arrow: "item") and adds schema metadata.
        table = table.select(self.schema.names).cast(self.schema)
        return Catalog(table=table, path=self.path)


def validate_catalog_spark(spark: Any, path: str | Path, out: str | Path) -> ValidatedCatalog:
    """Validate a catalog on Spark and write its typed table to ``out`` (Parquet).

    Args:
        spark: the SparkSession. Executors read ``path`` and write ``out``: on a cluster both
            must be on a filesystem every node mounts.
        path: the catalog (.jsonl, .jsonl.gz, .json.gz, .parquet; .csv is read on the driver).
        out: a directory for the validated table; replaced if it exists.

    Returns:
        The validated catalog, with the rows, columns and types ``read_catalog`` gives.

    Raises:
        DataError: the one ``read_catalog(path)`` raises (same file, line, field and text).
    """
    path, out = Path(path), Path(out)
    fmt = check_data_file(path)
    check_catalog_columns(Path(path))
    if fmt == "csv":
        logger.info("%s: CSV cells may span lines; validating on the driver", path)
        return _write_on_driver(read_catalog(path), out)
    if fmt == "jsonl" and path.stat().st_size == 0:
        raise DataError(path, None, "no items")  # nothing for Spark to split
    if fmt == "jsonl":
        frame, line_counts = _text_lines(spark, path)
        records = _jsonl_records(str(path), _offsets(line_counts))
        n_lines = sum(line_counts.values())
    else:
        frame, line_counts = _parquet_rows(spark, path), None
        records = _parquet_records()
        n_lines = None

    facts, duplicate = _scan(frame, records, str(path))
    first = _first_problem_line(facts, duplicate)
    if first is not None:
        if n_lines is not None and first == n_lines and not _ends_with_line_break(path):
            # Universal newlines give read_catalog this last line without a "\n".
            records = _jsonl_records(str(path), _offsets(line_counts), unterminated=first)
        raise _recheck(frame, records, str(path), first, facts, duplicate, line_counts)
    if not facts.rows:
        raise DataError(path, None, "no items")
    extra_kinds = {name: kind for name, (kind, _) in facts.extra_kind().items()}
    columns = sorted(facts.columns, key=facts.columns.__getitem__)  # as first seen
    schema = catalog_schema(columns, extra_kinds)
    _write_typed(frame, records, str(path), schema, _offsets(facts.rows), out)
    n_items = sum(facts.rows.values())
    logger.info("validated %d items of %s on Spark", n_items, path)
    return ValidatedCatalog(path=str(path), dataset=out, schema=schema, n_items=n_items)


# ---------------------------------------------------------------------------------------------
# Reading: Spark DataFrames of the raw input, and executor-side record iterators over them.


def _file_url(path: Path) -> str:
    # Explicitly local: a cluster's default filesystem (HDFS) must not capture the path.
    return "file://" + str(Path(path).resolve())


def _text_lines(spark: Any, path: Path) -> tuple[Any, dict[int, int]]:
    """(DataFrame of raw lines and their split, lines per split), for a JSON-lines file."""
    from pyspark.sql import functions as F

    # Bytes, not strings: the checks decode them as read_catalog does (a bad byte is an error).
    frame = spark.read.text(_file_url(path)).select(
        F.col("value").cast("binary").alias("raw"),
        F.col("_metadata.file_block_start").alias(_BLOCK),
    )
    try:
        counts = {int(b): int(n) for b, n in frame.groupBy(_BLOCK).count().collect()}
    except Exception:
        # Spark cannot read the file (a corrupt .gz): the local reader gives the exact error,
        # or the bad line before the damage that it meets first. An error path only.
        read_catalog(path)
        raise
    return frame, counts


def _parquet_rows(spark: Any, path: Path) -> Any:
    from pyspark.sql import functions as F

    return spark.read.parquet(_file_url(path)).select(
        "*",
        F.col("_metadata.row_index").alias(_INDEX),
        F.col("_metadata.file_block_start").alias(_BLOCK),
    )


def _offsets(counts: dict[int, int]) -> dict[int, int]:
    """Split → how many lines (or records) the splits before it hold, splits in file order."""
    offsets, total = {}, 0
    for block in sorted(counts):
        offsets[block] = total
        total += counts[block]
    return offsets


def _jsonl_records(
    path: str, line_offsets: dict[int, int], unterminated: int | None = None
) -> Records:
    """Records of raw text lines (``_text_lines``), parsed as ``read_catalog`` parses them.

    Args:
        path: the file, for errors.
        line_offsets: split → lines before it (``_offsets``).
        unterminated: the last line, when the file does not end in a line break.
    """

    def records(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, int, Any, Any]]:
        block, index = None, 0
        for batch in batches:
            raws, blocks = batch.column("raw").to_pylist(), batch.column(_BLOCK).to_pylist()
            for raw, b in zip(raws, blocks, strict=True):
                if b != block:  # a task reads each split whole and in order
                    block, index = b, 0
                index += 1
                line = line_offsets[b] + index
                text = raw.decode("utf-8", "surrogateescape")
                if line != unterminated:
                    text += "\n"  # as universal newlines give the line to read_catalog
                try:
                    obj = parse_json_line(text, path, line)
                except DataError as e:
                    yield b, line, None, e
                    continue
                if obj is not None:
                    yield b, line, obj, None

    return records


def _parquet_records() -> Records:
    """Records of Parquet rows (``_parquet_rows``): line = row index + 1."""

    def records(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, int, Any, Any]]:
        for batch in batches:
            index, blocks = batch.column(_INDEX).to_pylist(), batch.column(_BLOCK).to_pylist()
            rows = batch.drop_columns([_INDEX, _BLOCK]).to_pylist()
            for obj, i, b in zip(rows, index, blocks, strict=True):
                yield b, i + 1, obj, None

    return records


def _ends_with_line_break(path: Path) -> bool:
    """Whether the file's last byte is a line break (a .gz is decompressed to its end)."""
    if path.name.lower().endswith(".gz"):
        last = b""
        with gzip.open(path, "rb") as f:  # only on the error path, for the last line
            while chunk := f.read(1 << 20):
                last = chunk[-1:]
        return last in (b"\n", b"\r")
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) in (b"\n", b"\r")


# ---------------------------------------------------------------------------------------------
# The scan: per-record checks on executors, a few facts per partition to the driver.


@dataclass
class _Facts:
    """What the driver learns from the scan (merged over partitions).

    rows: split → non-blank records; columns: field → (line, key position) of first sight;
    kinds: extra attribute → kind → first line with that kind; problem_line, problems: the
    earliest line with a problem of its own (not a duplicate or a kind clash), and how many.
    Only records without a problem of their own count in ``columns`` and ``kinds``: a problem
    on an earlier line wins anyway.
    """

    rows: dict[int, int] = field(default_factory=dict)
    columns: dict[str, tuple[int, int]] = field(default_factory=dict)
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    problem_line: int | None = None
    problems: int = 0

    def saw(self, obj: dict[str, Any], kinds: dict[str, str], line: int) -> None:
        for position, name in enumerate(obj):
            if name not in self.columns:
                self.columns[name] = (line, position)
        for name, kind in kinds.items():
            self.kinds.setdefault(name, {}).setdefault(kind, line)

    def merge(self, other: _Facts) -> None:
        for block, n in other.rows.items():
            self.rows[block] = self.rows.get(block, 0) + n
        for name, first in other.columns.items():
            self.columns[name] = min(first, self.columns.get(name, first))
        for name, lines in other.kinds.items():
            mine = self.kinds.setdefault(name, {})
            for kind, line in lines.items():
                mine[kind] = min(line, mine.get(kind, line))
        if other.problem_line is not None:
            self.problem_line = min(other.problem_line, self.problem_line or other.problem_line)
        self.problems += other.problems

    def to_json(self) -> str:
        return json.dumps(
            {
                "rows": list(self.rows.items()),
                "columns": self.columns,
                "kinds": self.kinds,
                "problem_line": self.problem_line,
                "problems": self.problems,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> _Facts:
        d = json.loads(text)
        columns = {name: (line, pos) for name, (line, pos) in d["columns"].items()}
        return cls(dict(d["rows"]), columns, d["kinds"], d["problem_line"], d["problems"])

    def extra_kind(self, before: int | None = None) -> dict[str, tuple[str, int]]:
        """``read_catalog``'s extra_kind state after the lines before ``before`` (all lines:
        None): each kind's first line, replayed in line order, is all it depends on."""
        state: dict[str, tuple[str, int]] = {}
        for name, lines in self.kinds.items():
            for kind, line in sorted(lines.items(), key=lambda kv: kv[1]):
                if before is None or line < before:
                    note_extra_kinds(state, {name: kind}, line)
        return state

    def kind_clash_line(self) -> int | None:
        """The first line whose extra attribute clashes with the kind of earlier lines."""
        clash = None
        for name, lines in self.kinds.items():
            state: dict[str, tuple[str, int]] = {}
            for kind, line in sorted(lines.items(), key=lambda kv: kv[1]):
                if extra_kind_problem(state, name, kind) is not None:
                    clash = line if clash is None else min(clash, line)
                    break
                note_extra_kinds(state, {name: kind}, line)
        return clash


def _scan_partition(records: Records, path: str) -> Callable[..., Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of the scan: (item_id, line) of every record with a valid
    id, for the duplicate check, then one row holding the partition's facts as JSON."""

    def scan(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        facts = _Facts()
        ids: list[str] = []
        lines: list[int] = []
        for block, line, obj, error in records(batches):
            facts.rows[block] = facts.rows.get(block, 0) + 1
            if error is None:
                try:
                    # The id first: read_catalog checks duplicates before the other fields.
                    ids.append(catalog_item_id(obj, path, line))
                    lines.append(line)
                    _, kinds = validate_catalog_record(obj, path, line)
                    facts.saw(obj, kinds, line)
                except DataError as e:
                    error = e
            if error is not None:
                facts.problems += 1
                if facts.problem_line is None or line < facts.problem_line:
                    facts.problem_line = line
            if len(ids) >= _BATCH_ROWS:
                yield _id_batch(ids, lines)
                ids, lines = [], []
        if ids:
            yield _id_batch(ids, lines)
        yield pa.RecordBatch.from_pydict(
            {"item_id": [None], "line": [None], "facts": [facts.to_json()]},
            schema=pa.schema(
                [("item_id", pa.string()), ("line", pa.int64()), ("facts", pa.string())]
            ),
        )

    return scan


def _id_batch(ids: list[str], lines: list[int]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.string()), pa.array(lines, pa.int64()), pa.nulls(len(ids), pa.string())],
        names=["item_id", "line", "facts"],
    )


def _scan(frame: Any, records: Records, path: str) -> tuple[_Facts, tuple[int, int] | None]:
    """(merged facts, (line, first line) of the earliest repeated item id or None)."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    scanned = frame.mapInArrow(_scan_partition(records, path), _SCAN_SCHEMA)
    scanned = scanned.persist(StorageLevel.MEMORY_AND_DISK)  # read twice: facts, then ids
    try:
        facts = _Facts()
        for (text,) in scanned.where(F.col("facts").isNotNull()).select("facts").collect():
            facts.merge(_Facts.from_json(text))
        ids = scanned.where(F.col("item_id").isNotNull())
        first = F.min("line").over(Window.partitionBy("item_id"))
        (n_repeats, earliest) = (
            ids.withColumn("first", first)
            .where(F.col("line") > F.col("first"))
            .agg(F.count("*"), F.min(F.struct("line", "first")))
            .collect()[0]
        )
    finally:
        scanned.unpersist()
    duplicate = (earliest["line"], earliest["first"]) if earliest is not None else None
    if facts.problems or n_repeats:
        logger.warning(
            "%s: %d bad record(s) and %d repeated item id(s); raising the first",
            path,
            facts.problems,
            n_repeats,
        )
    return facts, duplicate


def _first_problem_line(facts: _Facts, duplicate: tuple[int, int] | None) -> int | None:
    candidates = [facts.problem_line, facts.kind_clash_line(), duplicate and duplicate[0]]
    lines = [line for line in candidates if line is not None]
    return min(lines) if lines else None


def _recheck(
    frame: Any,
    records: Records,
    path: str,
    line: int,
    facts: _Facts,
    duplicate: tuple[int, int] | None,
    line_counts: dict[int, int] | None,
) -> DataError:
    """The DataError of ``line``, checked with read_catalog's state there: every line before
    it is valid, so that state is the ids seen (only this line's id matters) and the kinds."""
    from pyspark.sql import functions as F

    extra_kind = facts.extra_kind(before=line)
    first_line = duplicate[1] if duplicate is not None and duplicate[0] == line else None

    def check(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for _, at, obj, error in records(batches):
            if at != line:
                continue
            if error is None:
                first_line_of = {obj["item_id"]: first_line} if first_line is not None else {}
                try:
                    validate_catalog_record(
                        obj, path, at, first_line_of=first_line_of, extra_kind=extra_kind
                    )
                except DataError as e:
                    error = e
            if error is not None:
                yield pa.RecordBatch.from_pylist(
                    [{"line": at, "problem": error.problem, "field": error.field}],
                    schema=pa.schema(
                        [("line", pa.int64()), ("problem", pa.string()), ("field", pa.string())]
                    ),
                )

    if line_counts is not None:  # the split holding the line
        offsets = _offsets(line_counts)
        block = max(b for b, offset in offsets.items() if offset < line)
        subset = frame.where(F.col(_BLOCK) == block)
    else:
        subset = frame.where(F.col(_INDEX) == line - 1)
    found = subset.mapInArrow(check, _PROBLEM_SCHEMA).collect()
    if not found:
        raise RuntimeError(
            f"{path}:{line}: the Spark scan found a problem here that a second check does not "
            "reproduce; did the file change during the build?"
        )
    return DataError(path, line, found[0]["problem"], field=found[0]["field"])


# ---------------------------------------------------------------------------------------------
# Writing the typed table.


def _write_typed(
    frame: Any,
    records: Records,
    path: str,
    schema: pa.Schema,
    row_offsets: dict[int, int],
    out: Path,
) -> None:
    from pyspark.sql.pandas.types import from_arrow_schema

    out_schema = schema.append(pa.field(ROW, pa.int64()))

    def typed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        block, index = None, 0
        chunk: list[dict[str, Any]] = []
        rows: list[int] = []
        for b, line, obj, error in records(batches):
            if error is not None:
                raise error  # valid in the scan: the file changed since
            if b != block:
                block, index = b, 0
            chunk.append(validate_catalog_record(obj, path, line)[0])
            rows.append(row_offsets[b] + index)
            index += 1
            if len(chunk) >= _BATCH_ROWS:
                yield from _typed_batches(chunk, rows, schema, out_schema)
                chunk, rows = [], []
        if chunk:
            yield from _typed_batches(chunk, rows, schema, out_schema)

    out.parent.mkdir(parents=True, exist_ok=True)
    (
        frame.mapInArrow(typed, from_arrow_schema(out_schema))
        .write.mode("overwrite")
        .parquet(_file_url(out))
    )


def _typed_batches(
    chunk: list[dict[str, Any]], rows: list[int], schema: pa.Schema, out_schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    table = catalog_table(chunk, schema).append_column(ROW, pa.array(rows, pa.int64()))
    yield from table.cast(out_schema).to_batches()


def _write_on_driver(catalog: Catalog, out: Path) -> ValidatedCatalog:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    rows = pa.array(np.arange(len(catalog), dtype=np.int64))
    pq.write_table(catalog.table.append_column(ROW, rows), out / "part-00000.parquet")
    return ValidatedCatalog(
        path=catalog.path, dataset=out, schema=catalog.table.schema, n_items=len(catalog)
    )
