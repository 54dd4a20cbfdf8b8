"""One record of the update log (indexer.storage.update_log) and its line format: canonical JSON
(sorted keys, no spaces, ASCII) with a ``crc`` (zlib.crc32 of the line without it), checked on
every read; and the scan of one segment file, which tells a torn last line from damage.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.storage.manifest import IndexFormatError

__all__ = [
    "OPS",
    "LogRecord",
    "SegmentScan",
    "UpdateLogError",
    "decode_line",
    "encode_line",
    "scan_segment",
]

OPS = ("upsert", "delete", "attributes")
_VECTOR_DTYPE = np.dtype("<f4")  # little-endian float32 on every machine


class UpdateLogError(IndexFormatError):
    """The update log is corrupt (not a torn last record): the message names file and line."""


@dataclass(frozen=True, eq=False)
class LogRecord:
    """One update. Which fields are set depends on ``op``.

    Attributes:
        seq: position in the log, >= 1, strictly rising.
        op: "upsert", "delete" or "attributes".
        time: ISO 8601 UTC time of the append.
        items: upsert: the catalog records, each with ``item_id`` and ``title``.
        vectors: upsert: (len(items), dim) float32, row i is ``items[i]``'s vector.
        fingerprint: upsert: fingerprint of the model that made ``vectors``.
        item_ids: delete: the ids deleted.
        attributes: attributes: item_id -> {column: new value, None = clear}.
    """

    seq: int
    op: str
    time: str = ""
    items: tuple[dict[str, Any], ...] = ()
    vectors: np.ndarray | None = None
    fingerprint: str = ""
    item_ids: tuple[str, ...] = ()
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The record as JSON-able data, without the crc."""
        data: dict[str, Any] = {"seq": self.seq, "op": self.op, "time": self.time}
        if self.op == "upsert":
            if self.vectors is None:
                raise ValueError(f"upsert record {self.seq} has no vectors")
            data["items"] = list(self.items)
            data["dim"] = int(self.vectors.shape[1])
            data["fingerprint"] = self.fingerprint
            raw = np.ascontiguousarray(self.vectors, dtype=_VECTOR_DTYPE).tobytes()
            data["vectors"] = base64.b64encode(raw).decode("ascii")
        elif self.op == "delete":
            data["item_ids"] = list(self.item_ids)
        else:
            data["attributes"] = self.attributes
        return data


def _canonical(data: Mapping[str, Any]) -> bytes:
    # Sorted keys, no spaces, ASCII only: the same bytes for the same data on every machine,
    # which is what the crc is computed over (and recomputed from the parsed line on replay).
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def encode_line(record: LogRecord) -> bytes:
    """The record's log line: canonical JSON with its crc, newline-terminated."""
    body = _canonical(record.payload())
    crc = zlib.crc32(body)
    return body[:-1] + b',"crc":' + str(crc).encode("ascii") + b"}\n"


def decode_line(line: bytes, where: str) -> LogRecord:
    """Parse and check one log line; raises ValueError (the caller decides: torn or corrupt)."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("crc"), int):
        raise ValueError(f"{where}: not a log record (no crc)")
    crc = data.pop("crc")
    if zlib.crc32(_canonical(data)) != crc:
        raise ValueError(f"{where}: checksum mismatch")
    seq, op = data.get("seq"), data.get("op")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 or op not in OPS:
        raise ValueError(f"{where}: bad seq {seq!r} or op {op!r}")
    time = str(data.get("time", ""))
    if op == "delete":
        ids = data.get("item_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{where}: delete record without a list of item ids")
        return LogRecord(seq, op, time, item_ids=tuple(ids))
    if op == "attributes":
        attributes = data.get("attributes")
        if not isinstance(attributes, dict) or not all(
            isinstance(v, dict) for v in attributes.values()
        ):
            raise ValueError(f"{where}: attributes record without an object of objects")
        return LogRecord(seq, op, time, attributes=attributes)
    items, dim = data.get("items"), data.get("dim")
    if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
        raise ValueError(f"{where}: upsert record without a list of items")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{where}: upsert record with bad dim {dim!r}")
    try:
        raw = base64.b64decode(data.get("vectors", ""), validate=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: upsert vectors are not base64 ({e})") from None
    if len(raw) != len(items) * dim * _VECTOR_DTYPE.itemsize:
        raise ValueError(f"{where}: upsert holds {len(raw)} vector bytes for {len(items)} items")
    vectors = np.frombuffer(raw, dtype=_VECTOR_DTYPE).reshape(len(items), dim)
    vectors = vectors.astype(np.float32)  # native order, writable copy
    return LogRecord(
        seq,
        op,
        time,
        items=tuple(items),
        vectors=vectors,
        fingerprint=str(data.get("fingerprint", "")),
    )


@dataclass
class SegmentScan:
    """What ``scan_segment`` read: the good records and where the good part ends."""

    records: list[LogRecord]
    good_end: int  # byte offset just past the last good line
    lines: int  # lines consumed up to good_end
    torn: bool  # bytes after good_end that are not a whole good record
    damage: str = ""  # why the line at good_end is bad, when more data follows it (not torn)


def scan_segment(path: Path, start: int = 0, first_line: int = 1) -> SegmentScan:
    """Read the records of one segment from byte ``start`` (line ``first_line``).

    A bad or unterminated final line is reported as ``torn``; a bad line followed by more data
    as ``damage`` (the records before it are returned; the caller refuses).
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    records: list[LogRecord] = []
    pos, lineno = 0, first_line
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:  # no newline: the write of the last record never finished
            return SegmentScan(records, start + pos, lineno - first_line, torn=True)
        line = data[pos:end]
        if line.strip():
            try:
                records.append(decode_line(line, f"{path}:{lineno}"))
            except ValueError as e:
                if data[end + 1 :].strip():
                    return SegmentScan(records, start + pos, lineno - first_line, False, str(e))
                # A crash may persist a later page (with the newline) before an earlier one.
                return SegmentScan(records, start + pos, lineno - first_line, torn=True)
        pos, lineno = end + 1, lineno + 1
    return SegmentScan(records, start + pos, lineno - first_line, torn=False)
