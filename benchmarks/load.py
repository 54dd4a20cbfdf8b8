"""The served-latency harness the latency benchmarks share: `aisle-serve` in its own process on
127.0.0.1 (stopped by its pid), distinct queries handed out in order, and a gRPC load generator
at a fixed concurrency with the server's stage timings per response."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench_latency")
_SERVER_IDS = itertools.count()  # servers of one process get distinct port files and event dirs


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary(latencies_ms: list[float], wall_s: float, errors: int) -> dict[str, Any]:
    return {
        "n": len(latencies_ms),
        "errors": errors,
        "qps": round(len(latencies_ms) / wall_s, 1) if wall_s else None,
        "p50_ms": round(percentile(latencies_ms, 50), 3),
        "p95_ms": round(percentile(latencies_ms, 95), 3),
        "p99_ms": round(percentile(latencies_ms, 99), 3),
        "mean_ms": round(statistics.fmean(latencies_ms), 3) if latencies_ms else None,
    }


class Server:
    """`aisle-serve` in its own process on 127.0.0.1; stopped by its pid."""

    def __init__(
        self,
        root: Path,
        work: Path,
        *,
        cache_size: int,
        impressions: str = "on",
        query_tower: str | None = None,
        model: Path | None = None,
        processes: int = 1,
    ) -> None:
        """``query_tower``: aisle-serve --query-tower (None: its default, the fast tower when
        the model dir has one); ``model``: --model (None: the index's own model);
        ``processes``: --processes (the pid is then the supervisor's)."""
        tag = f"{os.getpid()}-{next(_SERVER_IDS)}-{cache_size}-{impressions}"
        self.port_file = port_file = work / f"port-{tag}"
        port_file.unlink(missing_ok=True)
        # The server's own events dir (impressions land there), not the cached index root's.
        self.events_dir = work / f"events-{tag}"
        shutil.rmtree(self.events_dir, ignore_errors=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli.serve", "--index", str(root), "--port", "0",
             "--port-file", str(port_file), "--cache-size", str(cache_size), "--workers", "32",
             "--max-in-flight", "256", "--events-dir", str(self.events_dir),
             "--impressions", impressions,
             *(["--query-tower", query_tower] if query_tower else []),
             *(["--model", str(model)] if model is not None else []),
             *(["--processes", str(processes)] if processes > 1 else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 600  # a 1M-item index takes a while to verify and load
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("aisle-serve did not start")
            time.sleep(0.1)
        self.address = f"127.0.0.1:{int(port_file.read_text())}"

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, keep_events: bool = False) -> None:
        """SIGTERM (the impression writer flushes), then remove the port file and, unless
        ``keep_events``, the events dir."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.port_file.unlink(missing_ok=True)
        if not keep_events:
            shutil.rmtree(self.events_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- load


class QueryPool:
    """The distinct queries, handed out in order so that no level repeats another's; when a
    run needs more than there are, they come round again and the repeats are counted."""

    def __init__(self, queries: list[str]) -> None:
        if not queries:
            raise ValueError("no queries to send")
        self.queries = queries
        self.offset = 0

    def take(self, n: int) -> tuple[list[str], int]:
        """(the next ``n`` queries, how many of them were handed out before)."""
        size = len(self.queries)
        out = [self.queries[(self.offset + i) % size] for i in range(n)]
        repeated = max(0, min(n, self.offset + n - size))
        self.offset += n
        if repeated:
            log.warning(
                "%d of %d queries are repeats: the %d distinct ones are used up (the cache is "
                "off, so each is searched afresh)",
                repeated,
                n,
                size,
            )
        return out, repeated


def mode_enum(mode: str) -> int:
    """The SearchMode value of "dense" / "hybrid" / "lexical"."""
    from aisle.v1 import retrieval_pb2

    return retrieval_pb2.SearchMode.Value(f"SEARCH_MODE_{mode.upper()}")


def run_load(
    address: str,
    queries: list[str],
    concurrency: int,
    n_requests: int,
    k: int,
    duration_s: float | None = None,
    on_tick: Any = None,
    mode: str = "dense",
) -> dict[str, Any]:
    """`concurrency` threads, each with its own channel, sending queries back to back in
    `mode`; a response that says another mode answered counts as an error ("wrong_mode")."""
    from aisle.v1 import types_pb2
    from engine.client import AisleClient

    want = mode_enum(mode)
    lock = threading.Lock()
    cursor = {"i": 0}
    latencies: list[float] = []
    # Every stage the server reports (encode, search, rerank, total; more if the proto grows).
    stages: dict[str, list[float]] = {f.name: [] for f in types_pb2.Timings.DESCRIPTOR.fields}
    errors: dict[str, int] = {}
    stop_at = None if duration_s is None else time.monotonic() + duration_s

    def next_query() -> str | None:
        with lock:
            i = cursor["i"]
            if stop_at is None and i >= n_requests:
                return None
            if stop_at is not None and time.monotonic() > stop_at:
                return None
            cursor["i"] = i + 1
        return queries[i % len(queries)]

    def worker() -> None:
        with AisleClient(address, timeout_s=30) as client:
            while (query := next_query()) is not None:
                t = time.perf_counter()
                try:
                    response = client.search(query, k, mode=want)
                except Exception as error:  # counted and reported, never hidden
                    code = error.code() if hasattr(error, "code") else type(error).__name__
                    with lock:
                        errors[str(code)] = errors.get(str(code), 0) + 1
                    continue
                elapsed = (time.perf_counter() - t) * 1e3
                if response.mode != want:
                    with lock:
                        errors["wrong_mode"] = errors.get("wrong_mode", 0) + 1
                    continue
                with lock:
                    latencies.append(elapsed)
                    for name in stages:
                        stages[name].append(getattr(response.timings, name))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    # Join rather than poll: the wall time (hence queries/s) ends when the last thread does,
    # not at the next poll; on_tick still runs about once a second.
    next_tick = time.monotonic() + 1.0
    for t in threads:
        while t.is_alive():
            t.join(timeout=max(0.0, next_tick - time.monotonic()))
            if time.monotonic() >= next_tick:
                next_tick += 1.0
                if on_tick is not None:
                    on_tick()
    wall = time.perf_counter() - started
    out = summary(latencies, wall, sum(errors.values()))
    out["mode"] = mode
    out["errors_by_code"] = errors
    out["stages_p50_ms"] = {n: round(percentile(v, 50), 3) for n, v in stages.items()}
    out["stages_p99_ms"] = {n: round(percentile(v, 99), 3) for n, v in stages.items()}
    out["latencies_ms"] = latencies
    return out


def level_line(label: str, level: dict[str, Any]) -> str:
    """One load level as a line: p50 / p95 / p99, QPS, errors and the server's stage p50s."""
    return (
        f"{label}: p50 {level['p50_ms']:.2f} ms  p95 {level['p95_ms']:.2f}  p99 "
        f"{level['p99_ms']:.2f}  qps {level['qps']}  errors {level['errors']}  stages "
        f"{level['stages_p50_ms']}"
    )
