"""`make bench`: run every benchmark, then write benchmarks/REPORT.md with its tables and plots.

Each benchmark runs as its own process (``python -m benchmarks.bench_<name> --preset P``), in
the order rerank, ann, reindex, train, quality, latency, its output streamed here; one that
fails is reported (exit status, the last lines of its stderr) and the others still run. The
report is then rendered from the newest JSON line of each ``OUT/<name>.jsonl``, so
``--no-run`` regenerates it from results already there. Every report run also appends a flat
line of headline metrics, each with the direction that is better, to ``OUT/summary.jsonl``;
``--compare OLD.jsonl`` (an older summary.jsonl or any benchmark's jsonl) prints what got
better or worse.

``python -m benchmarks.report [--preset S|M|L] [--only a,b | --skip a,b] [--no-run]
[--out bench-out] [--report benchmarks/REPORT.md] [--compare OLD.jsonl]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from benchmarks.report_sections import PARTS, Context, Metrics, bench_name, fmt, md_table

log = logging.getLogger("benchmarks.report")

RUN_ORDER = ("rerank", "ann", "reindex", "train", "quality", "latency")  # quick ones first
REPORT_ORDER = ("quality", "ann", "latency", "train", "reindex", "rerank")
BENCH_PRESETS = {name: ("S", "M", "L") for name in RUN_ORDER} | {"quality": ("S", "M")}
DEFAULT_OUT = Path("bench-out")
TAIL_LINES = 20  # of a failed benchmark's stderr, in its section


def bench_preset(name: str, preset: str) -> str:
    """The benchmark's preset for the report's: the same, else the largest it has."""
    presets = BENCH_PRESETS[name]
    return preset if preset in presets else presets[-1]


def bench_command(name: str, preset: str, out: Path = DEFAULT_OUT) -> list[str]:
    """The arguments after ``python``: results go to ``out`` (given only when not bench-out)."""
    p = bench_preset(name, preset)
    argv = ["-m", f"benchmarks.bench_{name}", "--preset", p]
    if Path(out) == DEFAULT_OUT:
        return argv
    if name in ("quality", "train"):  # these take the results folder
        return [*argv, "--out", str(out)]
    argv += ["--out", str(out / f"{name}.jsonl")]
    if name == "ann":
        argv += ["--plot", str(out / f"ann_{p}.png")]
    if name == "latency":
        argv += ["--plot", str(out / "latency.png"), "--cache-dir", str(out / "cache")]
    return argv


def display(argv: Sequence[str]) -> str:
    """A command as a person would type it: ``python`` for this interpreter."""
    return shlex.join(["python", *argv[1:]] if argv and argv[0] == sys.executable else argv)


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Job:
    """One benchmark process: its name (the section, and the ``OUT/<name>.jsonl`` it appends
    to) and the full command line."""

    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """How a job went."""

    job: Job
    exit_code: int
    wall_s: float
    stderr_tail: tuple[str, ...]
    new_line: bool  # it appended a line to OUT/<name>.jsonl

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.new_line


def default_jobs(preset: str, out: Path, names: Sequence[str]) -> list[Job]:
    """The benchmarks in ``names``, in run order, at ``preset``."""
    return [
        Job(name, (sys.executable, *bench_command(name, preset, out)))
        for name in RUN_ORDER
        if name in names
    ]


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _pump(source: IO[str], sink: IO[str], prefix: str, keep: deque[str] | None) -> None:
    for line in source:
        sink.write(prefix + line)
        sink.flush()
        if keep is not None:
            keep.append(line.rstrip("\n").rsplit("\r", 1)[-1])  # a progress bar's last state


def _stop(proc: subprocess.Popen[str]) -> None:
    """End the job and what it started (servers, Spark, trainers): its own process group."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_job(job: Job, out: Path, timeout_s: float | None = None) -> Outcome:
    """Run one job, echoing its stdout and stderr line by line (prefixed with its name)."""
    results = out / f"{job.name}.jsonl"
    before = _count_lines(results)
    log.info("running %s: %s", job.name, display(job.argv))
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.Popen(
            job.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return Outcome(job, 127, 0.0, (f"could not start {display(job.argv)}: {exc}",), False)
    prefix = f"[{job.name}] "
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, sys.stdout, prefix, None), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, prefix, tail), daemon=True),
    ]
    for t in pumps:
        t.start()
    timed_out = False
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        code, timed_out = proc.wait(), True
    except BaseException:  # Ctrl-C: take the benchmark's processes down with us
        _stop(proc)
        raise
    for t in pumps:
        t.join(30.0)  # a process it left behind may hold the pipes open: do not wait forever
    if timed_out:
        tail.append(f"stopped by benchmarks.report after the {timeout_s:.0f} s timeout")
    wall = time.perf_counter() - started
    outcome = Outcome(job, code, round(wall, 1), tuple(tail), _count_lines(results) > before)
    log.info(
        "%s: exit %d after %.0f s%s",
        job.name,
        code,
        wall,
        "" if outcome.new_line else f", nothing appended to {results}",
    )
    return outcome


def run_jobs(jobs: Sequence[Job], out: Path, timeout_s: float | None = None) -> dict[str, Outcome]:
    """Run every job in turn, whatever the earlier ones did."""
    out.mkdir(parents=True, exist_ok=True)
    return {job.name: run_job(job, out, timeout_s) for job in jobs}


# ----------------------------------------------------------------------------- results


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


# ----------------------------------------------------------------------------- the report


def describe_machine() -> dict[str, Any]:
    """This machine: CPU, cores, library versions and GPUs (torch CUDA, FAISS)."""
    from benchmarks.common import machine

    info = machine(
        "numba",
        "hnswlib",
        "bm25s",
        "sentence-transformers",
        "transformers",
        "pyspark",
        "matplotlib",
    )
    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        import faiss

        info["faiss_gpus"] = faiss.get_num_gpus()
    except (ImportError, AttributeError):
        info["faiss_gpus"] = None
    info["gpus"] = gpus
    return info


_NOT_LIBRARIES = {"cpu", "platform", "python", "time", "device", "threads"}


def _gpu_text(machine: Mapping[str, Any]) -> str:
    if "gpus" in machine:
        return ", ".join(machine["gpus"]) or "none"
    found = [f"{k} {fmt(v)}" for k, v in machine.items() if "gpu" in k.lower() or k == "cuda"]
    return "; ".join(found) or "—"


def machine_section(records: Mapping[str, Loaded], current: Mapping[str, Any] | None) -> str:
    blocks = ["## Machine"]
    if current:
        blocks.append(
            f"This report was made on: {current.get('cpu')}, {current.get('cores')} cores, "
            f"GPU: {_gpu_text(current)} (FAISS GPUs: {fmt(current.get('faiss_gpus'))}), "
            f"Python {current.get('python')}, {current.get('platform')}."
        )
    rows, versions = [], {}
    for name in REPORT_ORDER:
        if name not in records:
            continue
        m = records[name].record.get("machine") or {}
        load = m.get("load_avg_1m", (m.get("load_avg") or [None])[0])
        rows.append(
            [
                name,
                m.get("time") or records[name].record.get("time"),
                m.get("cpu"),
                m.get("cores"),
                load,
                _gpu_text(m),
                m.get("python"),
            ]
        )
        found = dict(m.get("versions") or {})
        found.update({k: v for k, v in m.items() if isinstance(v, str) and k not in _NOT_LIBRARIES})
        for library, version in found.items():
            versions.setdefault(library, {}).setdefault(version or "not installed", []).append(name)
    for library, version in ((current or {}).get("versions") or {}).items():
        if version is not None:
            versions.setdefault(library, {}).setdefault(version, []).append("this report")
    if rows:
        blocks.append(
            "Where each result was measured (the load average is other work on the machine, "
            "which skews speed)\n\n"
            + md_table(
                ["benchmark", "started", "CPU", "cores", "load (1 min)", "GPU", "Python"], rows
            )
        )
    if versions:
        blocks.append(
            "Library versions\n\n"
            + md_table(
                ["library", "version", "seen by"],
                [
                    [lib, v, ", ".join(seen)]
                    for lib in sorted(versions)
                    for v, seen in versions[lib].items()
                ],
            )
        )
    return "\n\n".join(blocks)


def bench_section(
    name: str,
    number: int,
    loaded: Loaded | None,
    outcome: Outcome | None,
    ran: bool,
    preset: str,
    out: Path,
    report: Path,
    figures_dir: Path,
) -> tuple[str, list[Path]]:
    """One benchmark's markdown, and the figures it wrote. ``ran``: this report ran benchmarks
    (a benchmark it did not run shows its newest earlier result, saying so)."""
    part = PARTS[name]
    blocks = [f"## {number}. {part.title} (`{name}`)"]
    run_it = shlex.join(["python", *bench_command(name, preset, out)])
    if outcome is not None and not outcome.ok:
        why = (
            f"exited with status {outcome.exit_code}"
            if outcome.exit_code
            else f"exited 0 but appended nothing to `{out / (name + '.jsonl')}`"
        )
        tail = "\n".join(outcome.stderr_tail) or "(no stderr)"
        blocks.append(
            f"**Failed in this run**: `{display(outcome.job.argv)}` {why} after "
            f"{fmt(outcome.wall_s)} s. Last lines of its stderr:\n\n```text\n{tail}\n```"
        )
        if outcome.new_line:
            blocks.append("It appended its JSON line before failing; that line follows.")
        elif loaded is not None:
            blocks.append("The newest earlier result follows; it is not from this run.")
    if loaded is None:
        if outcome is None:
            blocks.append(
                f"**Not run**: no results in `{out / (name + '.jsonl')}`. To run it: "
                f"`{run_it}` (or `python -m benchmarks.report --only {name}`)."
            )
        return "\n\n".join(blocks), []
    record = loaded.record
    command = record_command(name, record, outcome)
    when = record.get("time") or (record.get("machine") or {}).get("time")
    wall = f", took {fmt(record['wall_s'])} s" if record.get("wall_s") is not None else ""
    if ran and outcome is None:
        blocks.append("Not run by this report: its newest earlier result follows.")
    blocks.append(
        f"Command: `{command}`  \nResult: `{loaded.path}` line {loaded.line}, written "
        f"{when}{wall}, preset {(record.get('config') or {}).get('preset', '?')}."
    )
    text, figures = part.render(Context(record, figures_dir, out))
    blocks += [b for b in text if b]
    for figure in figures:
        link = Path(os.path.relpath(figure.path, report.parent)).as_posix()
        origin = (
            f"drawn by `python -m benchmarks.report` from the JSON line of `{command}`"
            if figure.drawn
            else f"made by `{command}`"
        )
        blocks.append(f"**Figure: {figure.caption}**, {origin}.\n\n![{figure.caption}]({link})")
    return "\n\n".join(blocks), [f.path for f in figures]


def write_report(
    out: Path,
    report: Path,
    *,
    outcomes: Mapping[str, Outcome] | None = None,
    preset: str = "S",
    command: str = "python -m benchmarks.report",
    machine: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report`` (markdown), its PNGs in ``report``'s folder under the report's
    lower-cased stem (REPORT.md: ``report/``), and append the summary line to
    ``out/summary.jsonl``. Returns that summary line."""
    outcomes = dict(outcomes or {})
    records = newest_records(out)
    figures_dir = report.with_name(report.stem.lower())
    made = datetime.now(UTC).isoformat(timespec="seconds")
    blocks = [
        "# Aisle benchmark report",
        f"Made by `{command}` at {made}. Each section names the command that produced its "
        f"numbers and each figure the command that made it. Every run appends one JSON line to "
        f"`{out}/<benchmark>.jsonl`; headline metrics of every report go to "
        f"`{out}/summary.jsonl`, and `python -m benchmarks.report --no-run --compare OLD.jsonl` "
        "prints what got better or worse.",
    ]
    if outcomes:
        total = sum(o.wall_s for o in outcomes.values())
        blocks.append(
            f"Runs of this report ({fmt(total / 60)} min in all"
            + (", over the hour preset S is sized for" if preset == "S" and total > 3600 else "")
            + ")\n\n"
            + md_table(
                ["benchmark", "command", "status", "wall s"],
                [
                    [name, f"`{display(o.job.argv)}`", "ok" if o.ok else "**failed**", o.wall_s]
                    for name, o in outcomes.items()
                ],
            )
        )
    blocks.append(machine_section(records, machine))
    written: list[Path] = []
    for number, name in enumerate(REPORT_ORDER, 1):
        text, paths = bench_section(
            name,
            number,
            records.get(name),
            outcomes.get(name),
            bool(outcomes),
            preset,
            out,
            report,
            figures_dir,
        )
        blocks.append(text)
        written += paths
    for name in PARTS:  # a figure of a benchmark that has none now would mislead
        stale = figures_dir / f"{name}.png"
        if stale.is_file() and stale not in written:
            stale.unlink()
    report.parent.mkdir(parents=True, exist_ok=True)
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    os.replace(tmp, report)
    summary = {
        "time": made,
        "command": command,
        "report": str(report),
        "runs": {
            n: {"exit_code": o.exit_code, "wall_s": o.wall_s, "ok": o.ok}
            for n, o in outcomes.items()
        },
        "sources": {
            n: {
                "file": str(r.path),
                "line": r.line,
                "preset": (r.record.get("config") or {}).get("preset"),
                "time": r.record.get("time") or (r.record.get("machine") or {}).get("time"),
                # False: an earlier run's line (this report did not run it, or it failed)
                "this_run": n in outcomes and outcomes[n].new_line,
            }
            for n, r in records.items()
        },
        "metrics": headline_metrics(records),
    }
    out.mkdir(parents=True, exist_ok=True)
    with (out / "summary.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(summary, sort_keys=True) + "\n")
    log.info("wrote %s (%d figures) and %s", report, len(written), out / "summary.jsonl")
    return summary


def run_and_report(
    jobs: Sequence[Job],
    out: Path,
    report: Path,
    *,
    timeout_s: float | None = None,
    **report_options: Any,
) -> tuple[int, dict[str, Any]]:
    """Run ``jobs`` (none: only render), write the report and the summary line. Returns
    (exit status: 1 if a job failed, else 0; the summary line)."""
    outcomes = run_jobs(jobs, out, timeout_s)
    summary = write_report(out, report, outcomes=outcomes, **report_options)
    failed = [name for name, o in outcomes.items() if not o.ok]
    if failed:
        log.error("failed: %s (their sections in %s say why)", ", ".join(failed), report)
    return (1 if failed else 0), summary


# ----------------------------------------------------------------------------- compare


def old_metrics(
    old: Sequence[Mapping[str, Any]], current: Mapping[str, Loaded]
) -> tuple[Metrics, str | None, dict[str, Any]]:
    """The older run in ``old`` (lines of a summary.jsonl or of one benchmark's jsonl): its
    metrics, that benchmark's name (None for a summary) and each benchmark's preset. A
    benchmark file's newest line that is the one this report shows is passed over: the line
    before it is the older run."""
    if not old:
        return {}, None, {}
    last = old[-1]
    name = bench_name(last)
    if name is None and "metrics" in last:
        presets = {n: s.get("preset") for n, s in (last.get("sources") or {}).items()}
        return dict(last["metrics"]), None, presets
    if name not in PARTS:
        raise ValueError(f"cannot tell which benchmark wrote these lines (bench={name!r})")
    lines = [{k: v for k, v in r.items() if k != "_line"} for r in old if bench_name(r) == name]
    if name in current and lines and lines[-1] == current[name].record:
        lines = lines[:-1]
    if not lines:
        return {}, name, {}
    return (
        PARTS[name].metrics(lines[-1]),
        name,
        {name: (lines[-1].get("config") or {}).get("preset")},
    )


def comparison(
    old: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    current: Mapping[str, Loaded],
    tolerance: float,
    label: str,
) -> str:
    """The --compare printout: this report's ``summary`` against the older run in ``old``."""
    before, name, old_presets = old_metrics(old, current)
    new = summary["metrics"]
    if name is not None:
        new = {k: v for k, v in new.items() if k.startswith(f"{name}/")}
    notes = []
    for bench, preset in old_presets.items():
        now = (summary.get("sources") or {}).get(bench, {}).get("preset")
        if preset and now and preset != now:
            notes.append(
                f"note: {bench} ran at preset {preset} then and {now} now: "
                "different sizes, so its numbers are not like for like"
            )
    return "\n".join([*notes, format_comparison(before, new, tolerance, label)])


def compare(old: Metrics, new: Metrics, tolerance: float = 0.02) -> list[list[Any]]:
    """Rows (metric, old, new, change %, verdict) for metrics in both; the verdict is "same"
    within ``tolerance`` (relative), else "better" or "worse" by the metric's direction."""
    rows = []
    for name in [n for n in new if n in old]:
        a, b = float(old[name]["value"]), float(new[name]["value"])
        higher = new[name].get("better", old[name].get("better")) == "higher"
        change = (b - a) / abs(a) if a else (0.0 if b == a else float("inf"))
        if abs(b - a) <= tolerance * abs(a) or b == a:
            verdict = "same"
        else:
            verdict = "better" if (b > a) == higher else "worse"
        rows.append([name, a, b, change * 100, verdict])
    return rows


def format_comparison(old: Metrics, new: Metrics, tolerance: float, label: str) -> str:
    rows = compare(old, new, tolerance)
    widths = [max([len("metric"), *(len(r[0]) for r in rows)]), 12, 12, 9, 7]
    lines = [f"Compared with {label} (tolerance {tolerance:.0%}):", ""]
    header = ("metric", "old", "new", "change %", "verdict")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for name, a, b, change, verdict in rows:
        cells = (name, fmt(a), fmt(b), f"{change:+.1f}", verdict)
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    counts = {v: sum(r[4] == v for r in rows) for v in ("better", "worse", "same")}
    lines.append("")
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(rows)} metrics")
    only_old, only_new = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    if only_old:
        lines.append(f"only in the old run ({len(only_old)}): {', '.join(only_old)}")
    if only_new:
        lines.append(f"only in the new run ({len(only_new)}): {', '.join(only_new)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def _names(text: str | None, parser: argparse.ArgumentParser, flag: str) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUN_ORDER))
    if unknown:
        parser.error(f"{flag}: unknown benchmark(s) {unknown}; known: {', '.join(RUN_ORDER)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=("S", "M", "L"),
        default="S",
        help="S fits a 2-core machine in under an hour; M and L are for bigger "
        "machines and GPUs (quality has no L: it runs M)",
    )
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(RUN_ORDER)}")
    parser.add_argument("--skip", help="comma-separated benchmarks not to run")
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="only render the report from the newest line of each OUT/*.jsonl",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--report", type=Path, default=Path("benchmarks/REPORT.md"))
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="OLD.jsonl",
        help="print what got better or worse since that run",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="relative change still counted as 'same' (default 0.02)",
    )
    parser.add_argument(
        "--timeout-min",
        type=float,
        default=0.0,
        help="stop a benchmark after this many minutes (0: never)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build: noise here
    only, skip = _names(args.only, parser, "--only"), _names(args.skip, parser, "--skip")
    names = [n for n in (only or RUN_ORDER) if n not in skip]
    old = None
    if args.compare is not None:  # read now: this run appends to the same files
        if not args.compare.is_file():
            parser.error(f"--compare: {args.compare} is not a file")
        old = read_jsonl(args.compare)

    given = sys.argv[1:] if argv is None else list(argv)
    status, summary = run_and_report(
        [] if args.no_run else default_jobs(args.preset, args.out, names),
        args.out,
        args.report,
        timeout_s=args.timeout_min * 60 or None,
        preset=args.preset,
        command=shlex.join(["python", "-m", "benchmarks.report", *given]),
        machine=describe_machine(),
    )
    if old is not None:
        current = newest_records(args.out)
        try:
            print(comparison(old, summary, current, args.tolerance, str(args.compare)))
        except ValueError as exc:
            parser.error(f"--compare {args.compare}: {exc}")
    return status


if __name__ == "__main__":
    sys.exit(main())
