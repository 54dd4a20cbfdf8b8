"""The learning ledger: a JSON line per round (and rollback) in ``ROOT/learning/rounds.jsonl``.

A record is appended and fsynced once its round is over, so the ledger only ever holds finished
rounds; a crash mid-append leaves a torn last line, which ``read`` skips and the next ``append``
cuts off first. Records (documented in docs/learning.md):

* ``{"kind": "round", "round", "window": {"since", "until"}, "counts": {...}, "champion":
  {model, fingerprint, version, metrics}, "challenger": {...}, "decision": {...}, "version"
  (the version served after the round), "finished"}``
* ``{"kind": "rollback", "from_version", "to_version", "fingerprint", "finished"}``
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from trainer.io import fsync_dir

log = logging.getLogger(__name__)

LEARNING_DIR = "learning"
LEDGER_NAME = "rounds.jsonl"


def ledger_path(root: str | Path) -> Path:
    """``ROOT/learning/rounds.jsonl``."""
    return Path(root) / LEARNING_DIR / LEDGER_NAME


def read(root: str | Path) -> list[dict]:
    """Every complete record of the index root's ledger, oldest first ([] when none)."""
    path = ledger_path(root)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                log.warning("%s:%d: skipping a torn last line", path, number)
                break
            records.append(json.loads(line))
    return records


def append(root: str | Path, record: dict) -> None:
    """Append ``record`` as one line, durable when this returns."""
    path = ledger_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn record of a crashed append: cut it
                f.seek(0)
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
                f.seek(0, os.SEEK_END)
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def rounds(root: str | Path) -> list[dict]:
    """The round records of the ledger (no rollbacks), oldest first."""
    return [r for r in read(root) if r.get("kind") == "round"]
