"""Reading the server's impression and event logs (JSON lines) into Arrow tables, tolerantly.

The two files are a documented contract between engine/ (which writes them) and this package
(which reads them without importing engine): docs/learning.md, "Log formats".

``impressions.jsonl``, one line per result list the server returned::

    {"request_id": "0190f3c2a1b2-5f3e9a0c1d2e4b6f", "time": "2026-12-04T23:33:48.123456+00:00",
     "surface": "search", "user_id": "u1", "query": "red shoes", "mode": "hybrid",
     "model_fingerprint": "…", "index_version": 3, "offset": 0, "k": 10,
     "seed_item_id": "", "items": ["B0…", "B1…"]}

``items[i]`` was shown at position ``offset + i + 1`` (1-based, across pages). An explored list
(``aisle-serve --explore-share``) also has ``"explore": {"scheme": "swap", "pairs": [[p, p + 1],
…]}``: the adjacent positions swapped from the ranker's order (``items`` is what was shown).

``events.jsonl``, one line per shopper event (the durable log of Events.Record)::

    {"user_id": "u1", "item_id": "B1…", "type": "click", "query": "red shoes",
     "time": "…", "recorded": "…", "request_id": "0190f3c2a1b2-…", "position": 2}

``recorded`` (when the server appended it) is absent in very old logs; ``request_id`` and
``position`` are absent when the caller did not attribute the event.

A torn last line (a crash mid-append), a line that is not JSON or has the wrong types, and a
line missing a required field are counted and skipped, never fatal.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

log = logging.getLogger(__name__)

IMPRESSIONS_FILE = "impressions.jsonl"
EVENTS_FILE = "events.jsonl"

TIMESTAMP = pa.timestamp("us", tz="UTC")

IMPRESSION_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("time", TIMESTAMP),
        ("surface", pa.string()),
        ("user_id", pa.string()),
        ("query", pa.string()),
        ("mode", pa.string()),
        ("model_fingerprint", pa.string()),
        ("index_version", pa.int64()),
        ("offset", pa.int64()),
        ("k", pa.int64()),
        ("seed_item_id", pa.string()),
        ("items", pa.list_(pa.string())),
        # absent in logs older than exploration, and on lists shown in the ranker's order
        (
            "explore",
            pa.struct([("scheme", pa.string()), ("pairs", pa.list_(pa.list_(pa.int64())))]),
        ),
    ]
)
IMPRESSION_REQUIRED = ("request_id", "time", "items")

EVENT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("type", pa.string()),
        ("query", pa.string()),
        ("time", TIMESTAMP),
        ("recorded", TIMESTAMP),
        ("request_id", pa.string()),
        ("position", pa.int64()),
    ]
)
EVENT_REQUIRED = ("user_id", "item_id", "type", "time")


@dataclass
class LogStats:
    """What reading one log file kept and skipped."""

    path: str
    lines: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n


def read_log(
    path: str | Path, schema: pa.Schema, required: tuple[str, ...]
) -> tuple[pa.Table, LogStats]:
    """Every good record of a JSON-lines log as a table with ``schema`` (absent optional fields
    are null; unknown fields are ignored), and the counts of what was skipped and why.

    A missing file reads as an empty table. Parsing runs in Arrow's JSON reader; when a block
    holds a bad line the block is bisected until the bad lines are isolated, so one bad line in
    a million costs a few dozen extra parses, not a Python loop over every line.
    """
    path = Path(path)
    stats = LogStats(str(path))
    if not path.exists():
        return schema.empty_table(), stats
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        stats.skip("torn_last_line")
        log.warning("%s: skipping a torn last line (%d bytes)", path, len(data) - keep)
        data = data[:keep]
    lines = data.splitlines(keepends=True)
    blank = sum(1 for line in lines if not line.strip())
    if blank:
        lines = [line for line in lines if line.strip()]
        stats.skip("blank_line", blank)
    stats.lines = len(lines) + blank + stats.skipped.get("torn_last_line", 0)
    tables: list[pa.Table] = []
    bad = _parse(lines, schema, tables)
    stats.skip("bad_json", bad)
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    missing = None
    for name in required:
        null = pc.is_null(table.column(name))
        missing = null if missing is None else pc.or_(missing, null)
    if missing is not None and table.num_rows:
        n_missing = pc.sum(pc.cast(missing, pa.int64())).as_py() or 0
        if n_missing:
            stats.skip("missing_field", n_missing)
            table = table.filter(pc.invert(missing))
    stats.kept = table.num_rows
    if stats.skipped:
        log.warning("%s: kept %d records, skipped %s", path, stats.kept, stats.skipped)
    return table, stats


def _parse(lines: list[bytes], schema: pa.Schema, out: list[pa.Table]) -> int:
    """Parse ``lines`` into ``out`` (tables in line order); the number of bad lines dropped."""
    if not lines:
        return 0
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pj.read_json(io.BytesIO(b"".join(lines)), parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        if len(lines) == 1:
            return 1
        middle = len(lines) // 2
        return _parse(lines[:middle], schema, out) + _parse(lines[middle:], schema, out)
    if table.num_rows != len(lines):  # e.g. two objects on one line: trust no row of the block
        if len(lines) == 1:
            return 1
        middle = len(lines) // 2
        return _parse(lines[:middle], schema, out) + _parse(lines[middle:], schema, out)
    out.append(table.select(schema.names).cast(schema))
    return 0


def read_impressions(directory: str | Path) -> tuple[pa.Table, LogStats]:
    """``directory/impressions.jsonl`` as an IMPRESSION_SCHEMA table, and what was skipped."""
    return read_log(Path(directory) / IMPRESSIONS_FILE, IMPRESSION_SCHEMA, IMPRESSION_REQUIRED)


def read_events(directory: str | Path) -> tuple[pa.Table, LogStats]:
    """``directory/events.jsonl`` as an EVENT_SCHEMA table, and what was skipped."""
    return read_log(Path(directory) / EVENTS_FILE, EVENT_SCHEMA, EVENT_REQUIRED)
