"""The report's bench_query_tower part with ``--serve-processes``: the towers served by several
processes get their own rows, target line and metrics, against the one-process full tower."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report.figures import Context
from benchmarks.report.query_tower import query_tower_metrics, query_tower_section

RECORDS = Path(__file__).with_name("records.jsonl")


def level(c: int, qps: float) -> dict:
    return {"concurrency": c, "n": 400, "errors": 0, "qps": qps, "p50_ms": 8000 / qps,
            "p95_ms": 1.0, "p99_ms": 2.0, "encode_p50_ms": 0.1, "encode_p99_ms": 0.2}  # fmt: skip


def test_rows_served_by_several_processes(tmp_path: Path) -> None:
    lines = [json.loads(line) for line in RECORDS.read_text().splitlines()]
    record = next(line for line in lines if line.get("bench") == "query_tower")
    full, static = record["results"]  # full: 300 QPS at concurrency 8
    full["served_processes"] = {"processes": 2, "levels": [level(8, 420.0)]}
    static["served_processes"] = {"processes": 2, "levels": [level(8, 1200.0)]}
    blocks, _ = query_tower_section(Context(record, tmp_path / "fig", tmp_path))
    text = "\n".join(blocks)
    assert "| static x2 processes | 8 |" in text and "| full x2 processes | 8 |" in text
    assert "| 1,200 | 0 | 0.1 | 0.2 | 4× |" in text  # relative to the one-process full tower
    assert "with 2 server processes 4× the full tower's (one process) ≥ 2.5×" in text
    metrics = query_tower_metrics(record)
    assert metrics["query_tower/static/served_x2/c8/qps"] == {"value": 1200.0, "better": "higher"}
    assert metrics["query_tower/static/served/c8/qps"] == {"value": 900.0, "better": "higher"}
