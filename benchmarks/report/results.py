"""The results the report shows: the newest line of each benchmark's jsonl, its command."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report.format import Metrics
from benchmarks.report.run import Outcome, display
from benchmarks.report.sections import PARTS

log = logging.getLogger(__name__)

REPORT_ORDER = ("quality", "rank", "ann", "latency", "query_tower", "train", "reindex", "rerank")


@dataclass(frozen=True)
class Loaded:
    """The newest readable line of a benchmark's jsonl."""

    record: dict[str, Any]
    path: Path
    line: int  # 1-based


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` that parses as a JSON object (a torn last line is skipped)."""
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON: skipped", path, number)
                continue
            if isinstance(record, dict):
                records.append(record | {"_line": number})
    return records


def newest_records(out: Path, names: Sequence[str] = REPORT_ORDER) -> dict[str, Loaded]:
    """The newest line of each ``out/<name>.jsonl`` that exists."""
    found = {}
    for name in names:
        path = out / f"{name}.jsonl"
        if path.is_file() and (records := read_jsonl(path)):
            record = records[-1]
            found[name] = Loaded(
                {k: v for k, v in record.items() if k != "_line"}, path, record["_line"]
            )
    return found


def record_command(name: str, record: Mapping[str, Any], outcome: Outcome | None) -> str:
    """The command that produced ``record``: this run's, the record's own, else rebuilt."""
    if outcome is not None and outcome.new_line:
        return display(outcome.job.argv)
    if record.get("command"):
        return str(record["command"])
    preset = (record.get("config") or {}).get("preset", "S")
    argv = ["python", "-m", f"benchmarks.bench_{name}", "--preset", str(preset)]
    if name == "latency" and (record.get("soak") or {}).get("minutes"):
        argv += ["--soak", f"{record['soak']['minutes']:g}"]
    return shlex.join(argv)


def headline_metrics(records: Mapping[str, Loaded]) -> Metrics:
    """Every benchmark's headline metrics, in report order."""
    metrics: Metrics = {}
    for name in REPORT_ORDER:
        if name in records:
            metrics.update(PARTS[name].metrics(records[name].record))
    return metrics
