"""Tests for benchmarks.report: the report from JSON lines, the runner, the summary, --compare.

``records.jsonl`` holds one line per benchmark: the ann, latency, rank, reindex and rerank lines
are real runs' lines from bench-out/ (ann trimmed to a few settings); the quality, train and
query_tower lines follow the shapes bench_quality.py, bench_train.py and bench_query_tower.py
append, with illustrative numbers.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report import compare as Rcompare
from benchmarks.report import main as R
from benchmarks.report import results as Rresults
from benchmarks.report import run as Rrun
from benchmarks.report.format import bench_name, fmt, record_time

RECORDS = Path(__file__).with_name("records.jsonl")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fixture_records() -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
    return {bench_name(r): r for r in lines}


def write_results(out: Path, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """OUT/<name>.jsonl for each benchmark in ``names`` (default all), one line each."""
    records = fixture_records()
    out.mkdir(parents=True, exist_ok=True)
    for name in names or list(records):
        if "plot" in records[name]:  # where the benchmark would have drawn it, if it had
            records[name]["plot"] = str(out / Path(records[name]["plot"]).name)
        with (out / f"{name}.jsonl").open("a") as f:
            f.write(json.dumps(records[name]) + "\n")
    return records


def section(text: str, name: str) -> str:
    """The markdown of one benchmark's section."""
    start = text.index(f"(`{name}`)")
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else None]


def python_job(name: str, code: str) -> Rrun.Job:
    return Rrun.Job(name, (sys.executable, "-c", code))


# ----------------------------------------------------------------------------- rendering


def test_report_renders_every_benchmark_from_its_newest_line(tmp_path: Path) -> None:
    out, report = tmp_path / "bench-out", tmp_path / "benchmarks" / "REPORT.md"
    records = write_results(out)
    summary = R.write_report(out, report, command="python -m benchmarks.report --no-run")
    text = report.read_text()

    for name in Rresults.REPORT_ORDER:
        assert f"(`{name}`)" in text
    assert "Not run" not in text and "Failed" not in text
    # Commands: the record's own (quality, train), else rebuilt from its preset.
    assert "Command: `python -m benchmarks.bench_quality --preset S`" in text
    assert "Command: `python -m benchmarks.bench_train --preset S`" in text
    assert "Command: `python -m benchmarks.bench_rerank --preset M`" in text
    assert "Command: `python -m benchmarks.bench_latency --preset S --soak 5`" in text

    # Quality: mean ± standard error per dataset and method, straight from the record.
    rows = records["quality"]["results"]["rows"]
    hybrid = next(r for r in rows if r["dataset"] == "esci" and r["method"] == "hybrid fine-tuned")
    ndcg = hybrid["metrics"]["ndcg@10"]
    quality = section(text, "quality")
    assert f"| hybrid fine-tuned | 800 | {ndcg['mean']:.4f} ± {ndcg['stderr']:.4f} |" in quality
    assert "Recall@50" in quality  # Scientific's deeper recall
    assert "rrf k=60 w=2/1" in quality
    assert "Fine-tuned model per dataset: homedepot `bench-out/models/train_quick-" in quality
    # Latency reads bench_latency's "benchmark" key and shows the floor ratio.
    latency = section(text, "latency")
    assert f"{fmt(records['latency']['served_over_floor_p50'])}**" in latency
    assert "in-process floor (no gRPC)" in latency
    # Rank: the ranker against hybrid over the same candidates, and what the stage costs.
    rank = section(text, "rank")
    ranked = records["rank"]["results"]["metrics"]["ranked"]["ndcg@10"]
    assert f"| ranked (LightGBM lambdarank) | {fmt(ranked['mean'])} ± " in rank
    assert "hybrid (the default fusion)" in rank and "Ranking stage" in rank
    assert "title_trigram_cosine" in rank  # among the top features by gain
    # Peers side by side.
    assert "hnswlib HNSW32" in section(text, "ann")
    assert "sentence-transformers 41" in section(text, "train")
    assert "Spark overhead" in section(text, "reindex")
    towers = section(text, "query_tower")
    assert "| full | 1,850 | 2,900 | 1,900 | 3,100 | — | 0.3 | — | 0.36 | — |" in towers
    assert "| static | 50 | 80 | 52 | 90 | 37 | 0.29 | -3.33 % | 0.354 | -1.67 % |" in towers
    assert "| static | 8 | 8.5 | 14 | 900 | 0 | 0.07 | 0.2 | 3× | -67.31 % |" in towers
    assert "hybrid NDCG@10 -1.67 % within 2 %" in towers and "3× the full tower's ≥ 2.5×" in towers
    # Machine: CPU and library versions from the records.
    assert "| quality | 2026-11-29T18:10:00+00:00 | AMD EPYC | 2 |" in text
    assert "| faiss-cpu | 1.15.1 |" in text

    # Figures: drawn (the benchmarks' own PNGs are not there), linked relatively, each naming
    # the command whose results it shows.
    for name in ("quality", "ann", "latency", "query_tower", "train", "reindex"):
        png = report.parent / "report" / f"{name}.png"
        assert png.read_bytes().startswith(PNG_MAGIC), name
        assert f"](report/{name}.png)" in section(text, name)
    assert (
        "drawn by `python -m benchmarks.report` from the JSON line of "
        "`python -m benchmarks.bench_quality --preset S`" in text
    )

    metrics = summary["metrics"]
    assert metrics["quality/esci/hybrid fine-tuned/ndcg@10"]["value"] == ndcg["mean"]
    assert metrics["quality/esci/hybrid fine-tuned/ndcg@10"]["better"] == "higher"
    assert metrics["latency/c1/p50_ms"] == {"value": 8.555, "better": "lower"}
    assert metrics["train/ratio"] == {"value": 1.276, "better": "higher"}
    assert metrics["rank/homedepot/ranked/ndcg@10"] == {"value": ranked["mean"], "better": "higher"}
    assert metrics["query_tower/static/encode_cpu_p50_us"] == {"value": 50.0, "better": "lower"}
    assert metrics["query_tower/static/served/c8/qps"] == {"value": 900.0, "better": "higher"}
    assert metrics["reindex/spark_overhead_ratio"]["better"] == "lower"
    assert metrics["ann/HNSW32/qps_batched@recall0.95"]["better"] == "higher"
    lines = (out / "summary.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["metrics"] == metrics


def test_missing_benchmark_says_not_run_with_its_command(tmp_path: Path) -> None:
    out, report = tmp_path / "results", tmp_path / "REPORT.md"
    write_results(out, ["rerank"])
    stale = tmp_path / "report" / "quality.png"  # from an earlier report
    stale.parent.mkdir()
    stale.write_bytes(PNG_MAGIC)
    R.write_report(out, report)
    text = report.read_text()
    quality = section(text, "quality")
    assert "**Not run**" in quality
    assert f"`python -m benchmarks.bench_quality --preset S --out {out}`" in quality
    assert "**Not run**" in section(text, "latency")
    assert "**Not run**" not in section(text, "rerank")
    assert not stale.exists()
    assert json.loads((out / "summary.jsonl").read_text())["metrics"]


def test_newest_line_wins_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    records = fixture_records()
    older = json.loads(json.dumps(records["reindex"]))
    older["results"]["spark_overhead_ratio"] = 9.99
    path = tmp_path / "reindex.jsonl"
    path.write_text(json.dumps(older) + "\n" + json.dumps(records["reindex"]) + '\n{"bench": ')
    loaded = Rresults.newest_records(tmp_path)["reindex"]
    assert loaded.line == 2
    assert loaded.record == records["reindex"]


def test_the_benchmarks_own_plot_is_used_only_when_its_run_wrote_it(tmp_path: Path) -> None:
    out, report = tmp_path / "bench-out", tmp_path / "REPORT.md"
    records = write_results(out, ["latency"])
    own = out / "latency.png"
    own.write_bytes(PNG_MAGIC + b"the benchmark's own CDF")
    started = record_time(records["latency"]).timestamp()  # latency: machine.time only
    os.utime(own, (started + 60, started + 60))  # written during that run
    R.write_report(out, report)
    assert (tmp_path / "report" / "latency.png").read_bytes() == own.read_bytes()
    assert "made by `python -m benchmarks.bench_latency --preset S --soak 5`" in (
        report.read_text()
    )
    os.utime(own, (started - 3600, started - 3600))  # an earlier run's picture
    R.write_report(out, report)
    drawn = (tmp_path / "report" / "latency.png").read_bytes()
    assert drawn.startswith(PNG_MAGIC) and drawn != own.read_bytes()
    assert "drawn by `python -m benchmarks.report`" in report.read_text()


# ----------------------------------------------------------------------------- running


WRITE_LINE = """
import json, pathlib, sys
print("measuring {name}")
record = json.loads(pathlib.Path(sys.argv[1]).read_text().splitlines()[{line}])
with open(sys.argv[2], "a") as f:
    f.write(json.dumps(record) + "\\n")
sys.exit({exit_code})
"""


def writing_job(name: str, out: Path, exit_code: int = 0) -> Rrun.Job:
    """A job that appends the fixture's line for ``name`` to OUT/<name>.jsonl, then exits."""
    line = list(fixture_records()).index(name)
    code = WRITE_LINE.format(name=name, line=line, exit_code=exit_code)
    return Rrun.Job(name, (sys.executable, "-c", code, str(RECORDS), str(out / f"{name}.jsonl")))


def test_a_failing_benchmark_is_reported_and_the_others_still_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report = tmp_path / "bench-out", tmp_path / "REPORT.md"
    jobs = [
        python_job(
            "rerank",
            "import sys; print('loading', file=sys.stderr); "
            "print('KeyError: no such kernel', file=sys.stderr); sys.exit(3)",
        ),
        writing_job("reindex", out),
        python_job("ann", "print('done, but wrote nothing')"),
        writing_job("train", out, exit_code=1),  # a plot after the line failed, say
    ]
    status, summary = R.run_and_report(jobs, out, report)

    assert status == 1
    assert summary["runs"]["rerank"] == {
        "exit_code": 3,
        "ok": False,
        "wall_s": summary["runs"]["rerank"]["wall_s"],
    }
    assert summary["runs"]["reindex"]["ok"] and not summary["runs"]["ann"]["ok"]
    assert "[reindex] measuring reindex" in capsys.readouterr().out  # streamed
    text = report.read_text()
    rerank = section(text, "rerank")
    assert "**Failed in this run**" in rerank and "exited with status 3" in rerank
    assert "KeyError: no such kernel" in rerank
    assert "exited 0 but appended nothing" in section(text, "ann")
    reindex = section(text, "reindex")
    assert "Failed" not in reindex and "| Spark session start | 21.55 |" in reindex
    assert f"Command: `python -c {shlex.quote(jobs[1].argv[2])}" in reindex  # this run's
    train = section(text, "train")
    assert "exited with status 1" in train and "appended its JSON line before failing" in train
    assert "ratio 1.276" in train
    assert "**Not run**" in section(text, "quality")
    assert summary["metrics"]["reindex/local_items_per_s"]["value"] == 25.3
    assert summary["sources"]["reindex"]["this_run"]


def test_a_benchmark_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    started = time.perf_counter()
    outcome = Rrun.run_job(python_job("train", "import time; time.sleep(60)"), tmp_path, 1.0)
    assert time.perf_counter() - started < 30
    assert not outcome.ok and "timeout" in outcome.stderr_tail[-1]


def test_default_jobs_map_presets_and_results_folder() -> None:
    jobs = Rrun.default_jobs("L", Path("bench-out"), list(Rrun.RUN_ORDER))
    assert [j.name for j in jobs] == list(Rrun.RUN_ORDER)
    assert all(j.argv[0] == sys.executable for j in jobs)
    by_name = {j.name: Rrun.display(j.argv) for j in jobs}
    assert by_name["quality"] == "python -m benchmarks.bench_quality --preset M"  # no L
    assert by_name["ann"] == "python -m benchmarks.bench_ann --preset L"
    other = {j.name: j.argv[1:] for j in Rrun.default_jobs("S", Path("/tmp/o"), ["ann", "train"])}
    assert other["ann"][-4:] == ("--out", "/tmp/o/ann.jsonl", "--plot", "/tmp/o/ann_S.png")
    assert other["train"][-2:] == ("--out", "/tmp/o")


def declared_flags(module: Path) -> set[str]:
    """The option strings of every ``add_argument`` call in a benchmark's source."""
    flags = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags |= {
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and str(a.value).startswith("--")
            }
    return flags


@pytest.mark.parametrize("name", Rrun.RUN_ORDER)
def test_every_benchmark_declares_the_flags_the_runner_passes(name: str, tmp_path: Path) -> None:
    source = Path(R.__file__).parents[1] / f"bench_{name}.py"
    passed = {a for a in Rrun.bench_command(name, "L", tmp_path) if a.startswith("--")}
    assert passed <= declared_flags(source), passed - declared_flags(source)


# ----------------------------------------------------------------------------- compare


def metric(value: float, better: str) -> dict[str, Any]:
    return {"value": value, "better": better}


def test_compare_says_better_or_worse_by_direction() -> None:
    old = {
        "q/ndcg": metric(0.40, "higher"),
        "l/p50": metric(10.0, "lower"),
        "l/qps": metric(100.0, "higher"),
        "l/p99": metric(20.0, "lower"),
        "gone": metric(1.0, "lower"),
    }
    new = {
        "q/ndcg": metric(0.42, "higher"),
        "l/p50": metric(12.0, "lower"),
        "l/qps": metric(101.0, "higher"),
        "l/p99": metric(15.0, "lower"),
        "added": metric(1.0, "lower"),
    }
    verdicts = {row[0]: row[4] for row in Rcompare.compare(old, new, tolerance=0.02)}
    assert verdicts == {"q/ndcg": "better", "l/p50": "worse", "l/qps": "same", "l/p99": "better"}
    assert Rcompare.compare(old, new, tolerance=0.25)[1][4] == "same"
    text = Rcompare.format_comparison(old, new, 0.02, "old.jsonl")
    assert "2 better, 1 worse, 1 same of 4 metrics" in text
    assert "only in the old run (1): gone" in text and "only in the new run (1): added" in text


def test_compare_with_an_older_summary_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench-out"
    write_results(out, ["latency"])
    args = ["--no-run", "--out", str(out), "--report", str(tmp_path / "REPORT.md")]
    assert R.main(args) == 0
    summary = out / "summary.jsonl"
    first = json.loads(summary.read_text())
    first["metrics"]["latency/c1/p50_ms"]["value"] = 4.0  # the old run was faster
    summary.write_text(json.dumps(first) + "\n")
    capsys.readouterr()
    assert R.main([*args, "--compare", str(summary)]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("latency/c1/p50_ms "))
    assert row.split()[1:] == ["4", "8.555", "+113.9", "worse"]
    assert "latency/c8/p50_ms" in printed and " same" in printed


def test_compare_with_a_benchmarks_own_jsonl_takes_its_previous_line(tmp_path: Path) -> None:
    records = fixture_records()
    older = json.loads(json.dumps(records["train"]))
    older["results"]["ratio"] = 1.0
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(older) + "\n" + json.dumps(records["train"]) + "\n")
    before, name, presets = Rcompare.old_metrics(
        Rresults.read_jsonl(path), Rresults.newest_records(tmp_path)
    )
    assert name == "train" and before["train/ratio"]["value"] == 1.0 and presets == {"train": "S"}
    other = tmp_path / "elsewhere"
    other.mkdir()
    before, _, _ = Rcompare.old_metrics(Rresults.read_jsonl(path), Rresults.newest_records(other))
    assert before["train/ratio"]["value"] == 1.276  # another file: its newest line


def test_compare_flags_a_preset_change(tmp_path: Path) -> None:
    out = tmp_path / "bench-out"
    records = write_results(out, ["train", "reindex"])
    summary = R.write_report(out, tmp_path / "REPORT.md")
    older = json.loads(json.dumps(records["train"]))
    older["config"]["preset"] = "M"
    old_file = tmp_path / "old-train.jsonl"
    old_file.write_text(json.dumps(older) + "\n")
    text = Rcompare.comparison(
        Rresults.read_jsonl(old_file), summary, Rresults.newest_records(out), 0.02, "old"
    )
    assert text.startswith("note: train ran at preset M then and S now")
    assert "reindex/" not in text  # only the benchmark the old file is from
    assert "0 better, 0 worse, 3 same of 3 metrics" in text


def test_latency_section_shows_hybrid_levels_and_the_other_scale(tmp_path: Path) -> None:
    from benchmarks.report.figures import Context
    from benchmarks.report.latency import latency_section

    def level(c: int, p50: float) -> dict[str, Any]:
        return {"concurrency": c, "p50_ms": p50, "p95_ms": p50 + 1, "p99_ms": p50 + 2,
                "mean_ms": p50, "qps": 100.0, "errors": 0, "stages_p50_ms": {}}  # fmt: skip

    real = {
        "bench": "latency",
        "time": "2026-11-29T10:00:00+00:00",
        "config": {"preset": "M", "grow": 0},
        "n_items": 54667,
        "k": 100,
        "served": [level(1, 5.0)],
        "hybrid": [level(1, 5.5)],
        "hybrid_cost_ms": {"p50": 0.5, "p99": 0.7},
        "floor": {**level(1, 4.0), "paired_served": level(1, 4.8), "method": "interleaved"},
        "served_over_floor_p50": 1.2,
        "served_c1_over_floor_p50": 1.25,
    }
    grown = {**real, "config": {"preset": "1M", "grow": 1_000_000}, "n_items": 1_000_000,
             "hybrid": [], "hybrid_cost_ms": None, "served_over_floor_p50": 1.13}  # fmt: skip
    (tmp_path / "latency.jsonl").write_text(json.dumps(grown) + "\n" + json.dumps(real) + "\n")
    blocks, _ = latency_section(Context(record=real, figures_dir=tmp_path / "f", out_dir=tmp_path))
    text = "\n".join(blocks)
    assert "served, hybrid, cache off" in text
    assert "p50 0.5 ms, p99 0.7 ms" in text
    assert "--preset 1M" in text and "1,000,000 items" in text and "1.13" in text
    # The floor's own served requests get a row; the ratio is theirs, the level's beside it.
    assert "| served, interleaved with the floor | 1 | 4.8" in text
    assert "concurrency 1: 1.2**" in text and "over the floor: 1.25." in text


def test_quality_section_names_the_model_parts() -> None:
    from benchmarks.report.quality import model_parts

    rows = [
        {"dataset": "homedepot", "method": "fine-tuned", "lexical": {"dim": 256, "weight": 0.4}},
        {"dataset": "scientific", "method": "fine-tuned", "history_decay": 0.7},
        {"dataset": "scientific", "method": "zero-shot", "history_decay": 1.0},
    ]
    text = model_parts(rows)
    assert "homedepot fine-tuned: BERT towers plus a 256-dim character-trigram sketch" in text
    assert "weight 0.4" in text and "scientific fine-tuned: user tower decay 0.7" in text
    assert "zero-shot: user tower" not in text
    assert model_parts([{"dataset": "esci", "method": "fine-tuned", "history_decay": 1.0}]) == ""
    fast = {"dataset": "homedepot", "method": "fine-tuned, fast query tower (static)",
            "query_tower": "fast"}  # fmt: skip
    assert "fast query tower (static): the fine-tuned model's distilled query tower" in (
        model_parts([fast])
    )
