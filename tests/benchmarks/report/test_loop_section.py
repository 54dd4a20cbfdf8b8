"""The report's bench_loop part: rounds, the paired IPS difference, and the ceiling reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.report.figures import Context
from benchmarks.report.loop import loop_metrics, loop_section

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def loop_record(with_ceiling: bool) -> dict:
    def rounds(values: list[float]) -> dict:
        rows = [
            {"round": i + 1, "dev_ndcg@10": v, "dev_ndcg@10_stderr": 0.02, "outcome": "win"}
            for i, v in enumerate(values)
        ]
        return {"propensity_weighting": True, "rounds": rows}

    results = {
        "zero_shot": {"dev_ndcg@10": 0.5, "dev_ndcg@10_stderr": 0.02},
        "ips": {**rounds([0.52, 0.54]), "gap_closed_vs_ceiling": 0.4},
        "no_ips": rounds([0.53, 0.55]),
        "ips_minus_no_ips_last_round": {"mean": -0.01, "stderr": 0.005, "n": 200},
    }
    if with_ceiling:
        results["ceiling"] = {"dev_ndcg@10": 0.6, "dev_ndcg@10_stderr": 0.02}
    return {"bench": "loop", "config": {"preset": "S", "explore_share": 0.2}, "results": results}


def test_the_ceiling_is_reported_drawn_and_a_metric(tmp_path: Path) -> None:
    record = loop_record(with_ceiling=True)
    blocks, figures = loop_section(Context(record, tmp_path / "fig", tmp_path))
    text = "\n".join(blocks)
    assert "Ceiling (the loop's recipe trained on the traffic queries' own judgments): 0.6" in text
    assert "closed 0.4 of the zero-shot → ceiling gap" in text
    assert "| 2 | 0.54 ± 0.02 | win | 0.55 ± 0.02 | win |" in text
    assert figures[0].path.read_bytes().startswith(PNG_MAGIC)
    metrics = loop_metrics(record)
    assert metrics["loop/ceiling_dev_ndcg@10"] == {"value": 0.6, "better": "higher"}
    assert metrics["loop/ips_minus_no_ips"] == {"value": -0.01, "better": "higher"}


def test_the_sketch_reference_is_reported_drawn_and_a_metric(tmp_path: Path) -> None:
    record = loop_record(with_ceiling=False)
    record["results"]["zero_shot_sketch"] = {"dev_ndcg@10": 0.53, "dev_ndcg@10_stderr": 0.02}
    record["results"]["ips_minus_zero_shot_sketch_last_round"] = {"mean": 0.01, "stderr": 0.004}
    blocks, figures = loop_section(Context(record, tmp_path / "fig", tmp_path))
    text = "\n".join(blocks)
    assert "the trigram sketch the IPS-weighted loop ended with: 0.53 ± 0.02" in text
    assert "(IPS loop − it, paired): 0.01 ± 0.004" in text
    assert figures[0].path.read_bytes().startswith(PNG_MAGIC)
    metrics = loop_metrics(record)
    assert metrics["loop/zero_shot_sketch_dev_ndcg@10"] == {"value": 0.53, "better": "higher"}
    plain = loop_record(with_ceiling=False)  # without the sketch: nothing of it
    blocks, _ = loop_section(Context(plain, tmp_path / "fig2", tmp_path))
    assert "trigram sketch" not in "\n".join(blocks)
    assert "loop/zero_shot_sketch_dev_ndcg@10" not in loop_metrics(plain)


def test_a_run_without_the_ceiling_says_nothing_of_it(tmp_path: Path) -> None:
    record = loop_record(with_ceiling=False)
    blocks, _ = loop_section(Context(record, tmp_path / "fig", tmp_path))
    assert "Ceiling" not in "\n".join(blocks)
    assert "loop/ceiling_dev_ndcg@10" not in loop_metrics(record)


def test_replicates_are_summarised_across_runs(tmp_path: Path) -> None:
    from benchmarks.bench_loop import replicate_summary

    runs = []
    for seed, (ips, no_ips) in enumerate([(0.54, 0.55), (0.60, 0.57), (0.50, 0.50)]):
        record = loop_record(with_ceiling=False)
        record["config"]["seed"] = seed + 3
        record["results"]["ips"]["rounds"][-1]["dev_ndcg@10"] = ips
        record["results"]["no_ips"]["rounds"][-1]["dev_ndcg@10"] = no_ips
        runs.append(record)
    summary = replicate_summary(runs)
    diff = summary["ips_minus_no_ips"]
    assert summary["seeds"] == [3, 4, 5] and diff["n"] == 3
    assert diff["per_seed"] == pytest.approx([-0.01, 0.03, 0.0])
    assert diff["mean"] == pytest.approx(0.02 / 3)
    # sample standard deviation over the runs / sqrt(3)
    assert diff["stderr"] == pytest.approx(np.std([-0.01, 0.03, 0.0], ddof=1) / np.sqrt(3))
    assert summary["no_ips_gain_over_zero_shot"]["mean"] == pytest.approx(0.54 - 0.5)
    assert np.isnan(replicate_summary(runs[:1])["ips_minus_no_ips"]["stderr"])
    record = runs[-1]
    record["results"]["replicates"] = summary
    blocks, _ = loop_section(Context(record, tmp_path / "fig", tmp_path))
    assert "Across 3 runs (seeds 3, 4, 5, each its own subset and traffic)" in "\n".join(blocks)
    metric = loop_metrics(record)["loop/ips_minus_no_ips_across_seeds"]
    assert metric["value"] == pytest.approx(0.02 / 3)
    assert "loop/ips_minus_no_ips_across_seeds" not in loop_metrics(runs[0])
