"""Data-file errors and row readers: JSON lines, CSV and Parquet as (line, dict) pairs."""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

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
        raise DataError(path, line, f"expected a JSON object, got {json_kind(obj)}")
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


def iter_rows(path: Path) -> tuple[Iterator[tuple[int, dict[str, Any]]], bool]:
    """The (1-based line, record) pairs of any supported file, and whether the values are CSV
    strings (else JSON values). DataError for a bad file (at once) or row (when iterated)."""
    fmt = _file_format(path)
    if not path.is_file():
        raise DataError(path, None, "no such file")
    if fmt == "jsonl":
        return _iter_jsonl(path), False
    if fmt == "csv":
        return _iter_csv(path), True
    return _iter_parquet(path), False


def header_columns(path: Path) -> list[str] | None:
    """The column names a CSV header or a Parquet schema declares; None for JSON lines (each
    record names its own fields) or an empty CSV."""
    fmt = _file_format(path)
    if fmt == "parquet":
        return list(_open_parquet(path).schema_arrow.names)
    if fmt == "csv":
        try:
            with _open_text(path, "utf-8-sig", newline="") as f:
                return next(csv.reader(f), None)
        except (UnicodeDecodeError, csv.Error, OSError, EOFError):
            return None  # the row reader reports it, with its line
    return None


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


def json_kind(value: Any) -> str:
    """A JSON value's kind for messages: "an object", "a list", else its type's name."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
