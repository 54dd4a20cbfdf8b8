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
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.report.compare import comparison
from benchmarks.report.figures import Context
from benchmarks.report.format import fmt, md_table
from benchmarks.report.machine import describe_machine, machine_section
from benchmarks.report.results import (
    REPORT_ORDER,
    Loaded,
    headline_metrics,
    newest_records,
    read_jsonl,
    record_command,
)
from benchmarks.report.run import (
    DEFAULT_OUT,
    RUN_ORDER,
    Job,
    Outcome,
    bench_command,
    default_jobs,
    display,
    run_jobs,
)
from benchmarks.report.sections import PARTS

__all__ = ["bench_section", "main", "run_and_report", "write_report"]

log = logging.getLogger(__name__)


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
    run_it = part.command or shlex.join(["python", *bench_command(name, preset, out)])
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
                f"**Not run**: no results in `{out / (name + '.jsonl')}`. To run it: `{run_it}`"
                + (
                    " (the report does not run it)."
                    if part.command
                    else f" (or `python -m benchmarks.report --only {name}`)."
                )
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
