"""Running the benchmarks for the report: their commands, one process each, streamed."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

RUN_ORDER = ("rerank", "ann", "reindex", "train", "quality", "latency", "loop")  # quick first
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
    if name in ("quality", "train", "loop"):  # these take the results folder
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
