"""Tests for the rows per query tower (benchmarks.tower_load): real aisle-serve processes, one
per tower, over one tiny index; and the latency report's table of those rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.load import QueryPool
from benchmarks.report.figures import Context
from benchmarks.report.latency import latency_section
from benchmarks.tower_load import Tower, parse_towers, relative_to_first, tower_levels
from tests.helpers import make_static_fast_tower

QUERIES = ["red sofa", "usb cable", "oak desk", "cordless drill", "blue rug", "steel hammer",
           "led lamp", "garden hose", "water bottle", "wool blanket"]  # fmt: skip


def _level(c: int, qps: float, p50: float) -> dict:
    return {"concurrency": c, "n": 10, "errors": 0, "qps": qps, "p50_ms": p50, "p95_ms": p50,
            "p99_ms": p50 * 2, "encode_p50_ms": 0.1, "encode_p99_ms": 0.2}  # fmt: skip


def test_parse_towers_takes_a_comma_list_of_full_and_fast() -> None:
    assert parse_towers("full,fast") == ("full", "fast")
    assert parse_towers(" fast ,fast") == ("fast",)
    for bad in ("", "full,tiny", ","):
        with pytest.raises(ValueError, match="comma list of full, fast"):
            parse_towers(bad)


def test_rows_are_relative_to_the_first_tower_per_concurrency() -> None:
    rows = [
        {"tower": "full", "levels": [_level(1, 100.0, 10.0), _level(8, 200.0, 40.0)]},
        {"tower": "fast", "levels": [_level(1, 250.0, 4.0), _level(8, 600.0, 13.0)]},
    ]
    relative_to_first(rows)
    assert "qps_vs_ref" not in rows[0]["levels"][0]
    fast = rows[1]
    assert fast["reference"] == "full"
    assert [x["qps_vs_ref"] for x in fast["levels"]] == [2.5, 3.0]
    assert [x["p50_change_pct"] for x in fast["levels"]] == [-60.0, -67.5]


@pytest.mark.slow
def test_tower_levels_serve_each_tower_side_by_side(
    index_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    make_static_fast_tower(model)  # outside the fingerprint: the index serves with it
    towers = [Tower("full", "full", model), Tower("fast", "fast", model)]
    rows = tower_levels(index_root, tmp_path, towers, QueryPool(QUERIES), [1, 2], 12, 5)
    assert [r["tower"] for r in rows] == ["full", "fast"]
    for row in rows:
        assert [x["concurrency"] for x in row["levels"]] == [1, 2]
        for level in row["levels"]:
            assert level["n"] == 12 and level["errors"] == 0
            assert level["encode_p50_ms"] is not None and level["encode_p99_ms"] is not None
    assert all("qps_vs_ref" in x for x in rows[1]["levels"])
    assert not list(tmp_path.glob("port-*"))  # the servers were stopped and cleaned up


def test_latency_section_shows_the_rows_per_tower(tmp_path: Path) -> None:
    towers = [
        {"tower": "full", "levels": [_level(8, 200.0, 40.0)]},
        {"tower": "fast", "levels": [_level(8, 600.0, 13.0)]},
    ]
    main = {"bench": "latency", "config": {"preset": "S"}, "n_items": 100, "k": 10,
            "query_tower": "full", "served": [_level(1, 100.0, 10.0)]}  # fmt: skip
    blocks, _ = latency_section(Context({**main, "query_towers": towers}, tmp_path / "f", tmp_path))
    text = "\n".join(blocks)
    assert "Main levels served with the full query tower." in text
    assert "| fast | 8 | 13 | 26 | 600 | 0 | 0.1 | 0.2 | 3× | -67.5 % |" in text
    # A --query-tower-only run's line (its own file) shows under the newest full line.
    only = {"bench": "latency_towers", "command": "python -m benchmarks.bench_latency "
            "--query-tower full,fast --query-tower-only", "query_towers": towers}  # fmt: skip
    (tmp_path / "latency_towers.jsonl").write_text(json.dumps(only) + "\n")
    blocks, _ = latency_section(Context(main, tmp_path / "f", tmp_path))
    text = "\n".join(blocks)
    assert "newest rows per query tower** (`python -m benchmarks.bench_latency" in text
    assert "| fast | 8 | 13 |" in text
