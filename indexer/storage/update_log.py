"""The durable log of live index updates (upserts, deletes, attribute changes), replayed on open.

Layout, beside the versions of an index root::

    ROOT/updates/.lock                      flock: appends exclusive, reads shared (any process)
    ROOT/updates/log.000000000001.jsonl     segments, named by the first seq they may hold
    ROOT/updates/log.000000000042.jsonl     the last segment is the one appended to

One JSON object per line, keys sorted, with a ``seq`` that rises by one per record across all
segments and a ``crc`` (zlib.crc32 of the line's canonical JSON without the crc):

- ``{"op": "upsert", "items": [record, ...], "vectors": base64, "dim": d, "fingerprint": ...}``:
  catalog records (typed like ``trainer.data.catalog.read_catalog`` rows) and their (n, dim) float32
  little-endian vectors, so replay needs no model and is deterministic; ``fingerprint`` names
  the model that made the vectors;
- ``{"op": "delete", "item_ids": [...]}``;
- ``{"op": "attributes", "attributes": {item_id: {column: value or null}}}`` (no re-embedding).

An append is written and fsynced before ``append_*`` returns, so a caller may acknowledge then.
A crash can only tear the record being written (appends are serialised by a thread lock and an
flock), and only in the newest segment (``rotate`` cuts a torn tail off first): a bad *last*
line of the *last* segment is ignored with a warning on replay and cut off before the next
append. Everything else must be whole and continuous: seqs rise by exactly one, within a segment
and from one segment to the next. A bad line, a missing record, or a bad last line of an older
segment was acknowledged and is gone, and replaying past it would serve later updates without
it, so reading refuses with an ``UpdateLogError`` that names the segment, the missing seqs and
the recovery: restore the segment from a backup, or ``aisle-index repair-log ROOT --truncate-at
SEQ`` (``UpdateLog.repair``), which moves every record from SEQ on aside into
``updates/quarantine/`` (never deleting them) so the log ends before the damage.

``rotate`` starts a new segment (compaction does, once it has folded the log into a version);
``truncate(seq)`` deletes whole segments whose records are all <= seq, noting the newest deleted
record in ``updates/truncated.json``. ``IndexRoot.prune`` calls ``truncate_applied``, which keeps
every record newer than the oldest kept version's ``applied_seq``, so a rollback to any kept
version can still replay what came after it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.storage.faults import fault_point
from indexer.storage.log_record import (
    LogRecord,
    UpdateLogError,
    decode_line,
    encode_line,
    scan_segment,
)
from indexer.storage.manifest import MANIFEST_NAME, IndexFormatError, load_manifest
from trainer.io import fsync_dir, write_atomic

__all__ = [
    "QUARANTINE_DIR",
    "UPDATES_DIR",
    "UpdateLog",
    "applied_seqs",
    "truncate_applied",
]

logger = logging.getLogger(__name__)

UPDATES_DIR = "updates"
_LOCK_NAME = ".lock"
_TRUNCATED_NAME = "truncated.json"  # seq and time of the newest record deleted by truncate
QUARANTINE_DIR = "quarantine"  # repair moves damaged tails here, one dir per repair
_SEGMENT = re.compile(r"^log\.(\d{12})\.jsonl$")


class UpdateLog:
    """Append-only, crash-safe update log of one index root. Thread- and process-safe.

    Args:
        root: the index root (the log lives in ``root/updates``, created on first append).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.dir = self.root / UPDATES_DIR
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        # The writer's view of the active segment: which file, how far it has read it, and the
        # highest seq seen anywhere. Refreshed under the flock before every append.
        self._segment: Path | None = None
        self._fd: int | None = None
        self._offset = 0
        self._lines = 0
        self._last_seq = 0

    def __repr__(self) -> str:
        return f"UpdateLog({str(self.dir)!r})"

    def __enter__(self) -> UpdateLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the open files (the log can be used again afterwards; it reopens them)."""
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fd = self._lock_fd = None
            self._segment = None

    # ------------------------------------------------------------------ appends

    def append_upsert(
        self, items: Sequence[Mapping[str, Any]], vectors: np.ndarray, fingerprint: str
    ) -> int:
        """Durably append an upsert of ``items`` with their (n, dim) float32 ``vectors``.

        ``items`` must already be validated catalog records with JSON-able values.

        Returns:
            The record's seq.
        """
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) != len(items) or not len(items):
            raise ValueError(
                f"upsert needs one vector per item: {len(items)} items, vectors {vectors.shape}"
            )
        items = tuple(dict(r) for r in items)
        return self._append(
            lambda seq: LogRecord(
                seq, "upsert", _now(), items=items, vectors=vectors, fingerprint=fingerprint
            )
        )

    def append_delete(self, item_ids: Sequence[str]) -> int:
        """Durably append a delete of ``item_ids``; returns its seq."""
        ids = tuple(item_ids)
        if not ids or not all(isinstance(i, str) and i for i in ids):
            raise ValueError(f"delete needs non-empty string item ids, got {list(ids)[:5]!r}")
        return self._append(lambda seq: LogRecord(seq, "delete", _now(), item_ids=ids))

    def append_attributes(self, attributes: Mapping[str, Mapping[str, Any]]) -> int:
        """Durably append attribute changes (item_id -> {column: value}); returns its seq."""
        data = {str(i): dict(fields) for i, fields in attributes.items()}
        if not data:
            raise ValueError("attribute update without any item")
        return self._append(lambda seq: LogRecord(seq, "attributes", _now(), attributes=data))

    def _append(self, make: Any) -> int:
        with self._lock, self._flock(fcntl.LOCK_EX):
            self._sync_tail()
            assert self._fd is not None
            seq = self._last_seq + 1
            line = encode_line(make(seq))
            try:
                view = memoryview(line)
                while view:  # os.write may write less than asked (signals, full disks)
                    view = view[os.write(self._fd, view) :]
                fault_point("log-before-fsync")
                os.fsync(self._fd)
            except BaseException:
                # Cut off whatever part of the record reached the file: it was not acknowledged.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._offset)
                raise
            fault_point("log-after-fsync")
            self._offset += len(line)
            self._lines += 1
            self._last_seq = seq
            return seq

    # ------------------------------------------------------------------ reading

    @property
    def last_seq(self) -> int:
        """Highest seq in the log (0 when empty), read from disk."""
        with self._lock, self._flock(fcntl.LOCK_SH):
            segments = self.segments()
            last = 0
            for start, path in reversed(segments):
                scan = scan_segment(path)
                if scan.records:
                    return scan.records[-1].seq
                last = max(last, start - 1)
            return last

    def records(self, after: int = 0) -> list[LogRecord]:
        """Every record with seq > ``after``, in seq order.

        Segments whose records are all <= ``after`` are not read. The rest must be continuous
        (each seq one more than the one before, across segments); only a torn last record of
        the last segment is dropped (it was never acknowledged).

        Raises:
            UpdateLogError: a damaged or missing record anywhere else, naming the segment, the
                seqs and the recovery command.
        """
        with self._lock, self._flock(fcntl.LOCK_SH):
            segments = self.segments()
            out: list[LogRecord] = []
            previous: int | None = None  # the last seq read (or skipped)
            previous_segment = (0, Path())
            for i, (start, path) in enumerate(segments):
                newest = i + 1 == len(segments)
                if not newest and segments[i + 1][0] - 1 <= after:
                    previous = segments[i + 1][0] - 1
                    continue  # every record in it is folded in already: do not even read it
                if previous is not None and start != previous + 1:
                    raise self._gap(
                        previous_segment[1],
                        previous_segment[0],
                        f"it ends at seq {previous} but the next segment, {path.name}, starts "
                        f"at seq {start}, so seq {_span(previous + 1, start - 1)} is missing",
                        min(start, previous + 1),
                    )
                scan = scan_segment(path)
                expected = start
                for line, record in enumerate(scan.records, 1):
                    if record.seq != expected:
                        missing = (
                            f"so seq {_span(expected, record.seq - 1)} is missing"
                            if record.seq > expected
                            else "out of order"
                        )
                        raise self._gap(
                            path,
                            start,
                            f"line {line} holds seq {record.seq} where seq {expected} belongs, "
                            f"{missing}",
                            min(expected, record.seq),
                        )
                    expected += 1
                    if record.seq > after:
                        out.append(record)
                if scan.damage:
                    raise self._gap(
                        path, start, f"{scan.damage}: record seq {expected} is damaged", expected
                    )
                if scan.torn and not newest:
                    raise self._gap(
                        path,
                        start,
                        f"its last record (line {scan.lines + 1}, seq {expected}) is damaged or "
                        f"incomplete, yet newer segments follow (a crash only tears the newest "
                        f"segment, so this record was acknowledged)",
                        expected,
                    )
                if scan.torn:
                    logger.warning(
                        "%s: ignoring a torn last record (line %d, it would have been seq %d): "
                        "the newest segment's last write was interrupted by a crash before it "
                        "was acknowledged",
                        path,
                        scan.lines + 1,
                        expected,
                    )
                previous, previous_segment = expected - 1, (start, path)
            return out

    def _gap(self, path: Path, start: int, problem: str, first_missing: int) -> UpdateLogError:
        """The error for a gap or damage at ``first_missing``: names the segment and the
        recovery."""
        return UpdateLogError(
            f"update log segment {path} (from seq {start}): {problem}. Refusing to replay past "
            f"it: later updates would be served without the missing ones. Restore the segment "
            f"from a backup, or run `aisle-index repair-log {self.root} --truncate-at "
            f"{first_missing}` to move the records from seq {first_missing} on aside into "
            f"{self.dir / QUARANTINE_DIR} (they are then no longer served)"
        )

    def segments(self) -> list[tuple[int, Path]]:
        """(first seq, path) of each segment file, ascending."""
        if not self.dir.is_dir():
            return []
        found = []
        for path in self.dir.iterdir():
            match = _SEGMENT.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        """(name, size, mtime ns) of each segment, without reading any: it changes whenever a
        record is appended (by any process) or a segment is rotated or truncated. A follower
        compares it to decide whether to read the log at all."""
        stamps = []
        for _, path in self.segments():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # truncated between the listing and the stat
            stamps.append((path.name, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def written_through(self, stamp: tuple[tuple[str, int, int], ...]) -> bool:
        """Whether ``stamp`` (taken after this process's last append) ends exactly where that
        append did: nobody appended since, so a reader that applied it is up to date."""
        return (
            bool(stamp)
            and self._segment is not None
            and stamp[-1][0] == self._segment.name
            and stamp[-1][1] == self._offset
        )

    # ------------------------------------------------------------------ maintenance

    def rotate(self) -> Path | None:
        """Start a new segment after the last record (None when the active one is empty)."""
        with self._lock, self._flock(fcntl.LOCK_EX):
            self._sync_tail()
            if self._offset == 0:
                return None
            path = self._new_segment(self._last_seq + 1)
            logger.info("update log: started segment %s", path.name)
            return path

    def truncate(self, upto_seq: int) -> list[Path]:
        """Delete whole segments whose records all have seq <= ``upto_seq`` (never the last).

        Remembers the seq and time of the newest record deleted (``truncated``), so that a full
        build from a catalog older than that can refuse instead of losing those updates.
        """
        removed = []
        with self._lock, self._flock(fcntl.LOCK_EX):
            segments = self.segments()
            doomed = [
                path
                for (_, path), (next_start, _) in zip(segments, segments[1:], strict=False)
                if next_start - 1 <= upto_seq
            ]
            newest = self._truncated_unlocked()
            for path in doomed:
                records = scan_segment(path).records
                if records and (newest is None or records[-1].seq > newest[0]):
                    newest = (records[-1].seq, records[-1].time)
            if newest is not None and doomed:
                data = {"seq": newest[0], "time": newest[1]}
                write_atomic(self.dir / _TRUNCATED_NAME, (json.dumps(data) + "\n").encode())
            for path in doomed:
                path.unlink()
                removed.append(path)
            if removed:
                fsync_dir(self.dir)
                logger.info(
                    "update log: removed %d segment(s) folded into every kept version (seq <= %d)",
                    len(removed),
                    upto_seq,
                )
        return removed

    def repair(self, truncate_at: int) -> tuple[Path, int]:
        """Move every record with seq >= ``truncate_at`` aside, so the log ends before a gap
        or damage that ``records`` refuses (``aisle-index repair-log``). Stop servers first.

        Whole segments from ``truncate_at`` on are moved (renamed) into
        ``updates/quarantine/<time>/``; the segment holding ``truncate_at`` is copied there,
        then rewritten (atomically) with its records before it. Nothing is deleted. When a
        version already folded records past the cut (``applied_seq`` >= ``truncate_at``), the
        whole log goes aside as if pruned up to the newest such seq (``truncated``), and an
        empty segment after it is started, so new updates get seqs no version skips (versions
        older than that seq then refuse: they need records that were moved).

        Returns:
            (the quarantine dir, the seq the log now ends at: new updates get the next one).

        Raises:
            ValueError: ``truncate_at`` < 1, nothing to move, or the records before it are not
                whole and continuous themselves (the message names the seq to cut at).
        """
        if isinstance(truncate_at, bool) or not isinstance(truncate_at, int) or truncate_at < 1:
            raise ValueError(f"--truncate-at must be a seq >= 1, got {truncate_at!r}")
        with self._lock, self._flock(fcntl.LOCK_EX):
            plan: list[tuple[Path, int]] = []  # (segment, bytes to keep; 0 = move it whole)
            previous: int | None = None
            for start, path in self.segments():
                if previous is not None and start != previous + 1 and start < truncate_at:
                    raise ValueError(
                        f"{path.name} starts at seq {start} after seq {previous}: records are "
                        f"missing before seq {truncate_at}; use --truncate-at {previous + 1}"
                    )
                if start >= truncate_at:
                    plan.append((path, 0))
                    continue
                data = path.read_bytes()
                keep, expected = 0, start
                while keep < len(data) and expected < truncate_at:
                    end = data.find(b"\n", keep)
                    if end < 0:
                        break
                    try:
                        record = decode_line(data[keep:end], str(path))
                    except ValueError:
                        break
                    if record.seq != expected:
                        break
                    keep, expected = end + 1, expected + 1
                if keep < len(data) and expected < truncate_at:
                    raise ValueError(
                        f"{path.name}: seq {expected} is damaged or missing too; use "
                        f"--truncate-at {expected}"
                    )
                if keep < len(data):
                    plan.append((path, keep))
                previous = expected - 1
            if not plan:
                raise ValueError(f"the update log holds no record from seq {truncate_at} on")
            end = truncate_at - 1 if previous is None else min(previous, truncate_at - 1)
            floor = _seq_floor(self.root)
            if floor > end:
                # Seqs end+1..floor are folded into a version but leave the log: like a prune,
                # so the whole log goes aside, ``truncated`` says up to where (older versions
                # and builds from older catalogs refuse with its message), and the log goes on
                # after ``floor``. A kept prefix would leave a gap every full read refuses.
                plan = [(path, 0) for _, path in self.segments()]
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            quarantine = self.dir / QUARANTINE_DIR / stamp
            quarantine.mkdir(parents=True)
            for path, keep in plan:
                if keep:
                    shutil.copy2(path, quarantine / path.name)
                    fsync_dir(quarantine)
                    write_atomic(path, path.read_bytes()[:keep])
                else:
                    os.replace(path, quarantine / path.name)
            fsync_dir(quarantine)
            if floor > end:
                known = self._truncated_unlocked()
                if known is None or known[0] < floor:
                    data = {"seq": floor, "time": _now()}  # the lost records' times are unknown
                    write_atomic(self.dir / _TRUNCATED_NAME, (json.dumps(data) + "\n").encode())
                self._new_segment(floor + 1)
                end = floor
            fsync_dir(self.dir)
            # The writer re-reads the tail before its next append.
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._segment, self._last_seq = None, None, 0
            logger.warning(
                "update log: moved the records from seq %d on (%d segment file(s)) into %s; "
                "the log now ends at seq %d",
                truncate_at,
                len(plan),
                quarantine,
                end,
            )
            return quarantine, end

    def truncated(self) -> tuple[int, str] | None:
        """(seq, ISO time) of the newest record ``truncate`` deleted, or None."""
        with self._lock, self._flock(fcntl.LOCK_SH):
            return self._truncated_unlocked()

    # ------------------------------------------------------------------ internals

    def _truncated_unlocked(self) -> tuple[int, str] | None:
        try:
            data = json.loads((self.dir / _TRUNCATED_NAME).read_text(encoding="utf-8"))
            return int(data["seq"]), str(data["time"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise UpdateLogError(f"{self.dir / _TRUNCATED_NAME}: unreadable ({e})") from None

    @contextlib.contextmanager
    def _flock(self, kind: int) -> Iterator[None]:
        if kind == fcntl.LOCK_EX:
            self.dir.mkdir(parents=True, exist_ok=True)
        elif not self.dir.is_dir():
            yield  # nothing to read, and a reader must not create the directory
            return
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(self.dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                if kind == fcntl.LOCK_EX or e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                # A read-only root (a read-only mount, another owner): read under a shared
                # lock on the existing lock file, or without one when there is none (no
                # process can have written to a root nobody may write).
                if not (self.dir / _LOCK_NAME).exists():
                    yield
                    return
                self._lock_fd = os.open(self.dir / _LOCK_NAME, os.O_RDONLY)
        fcntl.flock(self._lock_fd, kind)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _new_segment(self, start: int) -> Path:
        path = self.dir / f"log.{start:012d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.close(fd)
        fsync_dir(self.dir)
        return path

    def _sync_tail(self) -> None:
        """Point the writer at the active segment's valid end (holding the exclusive flock).

        Catches up with records other processes appended, and cuts off a torn record left by
        a writer that crashed (it held the flock while writing, so it is gone now).
        """
        segments = self.segments()
        if not segments:
            start = max(self._last_seq, _seq_floor(self.root)) + 1
            segments = [(start, self._new_segment(start))]
        start, path = segments[-1]
        if path != self._segment:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._segment, self._offset, self._lines = path, 0, 0
            self._last_seq = max(self._last_seq, start - 1)
        assert self._fd is not None
        if os.fstat(self._fd).st_size == self._offset:
            return
        scan = scan_segment(path, self._offset, self._lines + 1)
        for i, record in enumerate(scan.records):
            if record.seq != self._last_seq + 1:  # no new seq after a gap: it would hide it
                raise self._gap(
                    path,
                    start,
                    f"line {self._lines + i + 1} holds seq {record.seq} where seq "
                    f"{self._last_seq + 1} belongs",
                    min(record.seq, self._last_seq + 1),
                )
            self._last_seq = record.seq
        if scan.damage:
            raise self._gap(
                path, start, f"{scan.damage}: record seq {self._last_seq + 1} is damaged",
                self._last_seq + 1,
            )  # fmt: skip
        if scan.torn:
            logger.warning(
                "%s: cutting off a torn last record after line %d (left by a crashed writer; "
                "it was never acknowledged)",
                path,
                self._lines + scan.lines,
            )
            os.ftruncate(self._fd, scan.good_end)
            os.fsync(self._fd)
        self._offset, self._lines = scan.good_end, self._lines + scan.lines


def _span(first: int, last: int) -> str:
    return str(first) if first >= last else f"{first}..{last}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def applied_seqs(root: str | Path) -> tuple[dict[int, int], list[str]]:
    """applied_seq of every published version, and the problems of unreadable manifests."""
    versions_dir = Path(root) / "versions"
    out: dict[int, int] = {}
    problems: list[str] = []
    if not versions_dir.is_dir():
        return out, problems
    for path in versions_dir.iterdir():
        if path.name.isdigit():
            try:
                out[int(path.name)] = load_manifest(path / MANIFEST_NAME).applied_seq
            except IndexFormatError as e:
                problems.append(str(e))
    return out, problems


def _seq_floor(root: Path) -> int:
    # A fresh log (its directory deleted, say) must still number after every folded record.
    return max(applied_seqs(root)[0].values(), default=0)


def truncate_applied(root: str | Path) -> list[Path]:
    """Delete log segments that every kept version has folded in (seq <= min applied_seq).

    Deletes nothing while some version's manifest is unreadable: that version might need them.
    """
    root = Path(root)
    applied, problems = applied_seqs(root)
    if problems:
        logger.warning("keeping the whole update log: %s", problems[0])
        return []
    if not applied or not (root / UPDATES_DIR).is_dir():
        return []
    with UpdateLog(root) as log:
        return log.truncate(min(applied.values()))
