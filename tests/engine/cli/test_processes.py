"""`aisle-serve --processes 2`: worker processes on one port, the kernel spreading connections,
writes reaching every worker, a killed worker restarted, one supervisor per address, SIGTERM
stopping them all. Real processes on 127.0.0.1; each ended by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine.client import AisleClient
from tests.helpers import Admin, established_inodes, item, socket_inodes

pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def connections_by_pid(pids: set[int], port: int) -> dict[int, int]:
    """ESTABLISHED TCP connections on local ``port`` held by each of ``pids``."""
    established = established_inodes(port)
    return {pid: len(socket_inodes(pid) & established) for pid in pids}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value of the supervisor's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def searches_ok(metrics: dict, worker: str) -> float:
    key = frozenset({"method": "Search", "code": "OK", "worker": worker}.items())
    return metrics.get(("aisle_requests_total", key), 0.0)


def serve(root: Path, port_file: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli.serve", "--index", str(root), "--port-file",
         str(port_file), "--processes", "2", "--drain-grace-s", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    return int(path.read_text())


def test_two_processes_share_the_port_and_the_writes(index_root, tmp_path) -> None:
    root = tmp_path / "index"
    shutil.copytree(index_root, root)
    port_file = tmp_path / "port"
    metrics_port = free_port()
    proc = serve(root, port_file, "--port", "0", "--metrics-port", str(metrics_port))
    clients: list[AisleClient] = []
    try:
        port = wait_for(port_file, proc)
        workers = children(proc.pid)
        assert len(workers) == 2
        # Sixteen clients, sixteen connections: the kernel gives both workers some.
        clients = [AisleClient(f"127.0.0.1:{port}") for _ in range(16)]
        for client in clients:
            assert len(client.search("sofa", 3).hits) == 3
        counts = connections_by_pid(workers, port)
        assert sum(counts.values()) == 16 and min(counts.values()) > 0, counts
        # One scrape target: every worker's series, labelled by worker.
        metrics = scrape(metrics_port)
        assert metrics[("aisle_workers_up", frozenset())] == 2
        assert searches_ok(metrics, "0") > 0 and searches_ok(metrics, "1") > 0
        assert searches_ok(metrics, "0") + searches_ok(metrics, "1") == 16

        # A write through one connection is served on every connection within moments.
        title = "violet hammock deluxe"
        Admin(port).upsert(item("NEW1", title=title))
        deadline = time.monotonic() + 10
        pending = list(clients)
        while pending and time.monotonic() < deadline:
            pending = [c for c in pending if c.search(title, 1).hits[0].item_id != "NEW1"]
            time.sleep(0.05)
        assert not pending

        # A second supervisor on the same address is refused, not let in beside them.
        other = serve(root, tmp_path / "other-port", "--port", str(port))
        output, _ = other.communicate(timeout=60)
        assert other.returncode == 2 and "another aisle-serve --processes" in output

        # kill -9 of a worker: the supervisor starts another, and it serves the write too.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (len(children(proc.pid) - {victim}) < 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        replacement = children(proc.pid) - workers
        assert len(replacement) == 1
        deadline = time.monotonic() + 60
        fresh: list[AisleClient] = []
        while time.monotonic() < deadline:
            fresh += [AisleClient(f"127.0.0.1:{port}") for _ in range(4)]
            for client in fresh[-4:]:
                try:
                    assert client.search(title, 1).hits[0].item_id == "NEW1"
                except Exception:  # the new worker still loading: its listener not up yet
                    pass
            if connections_by_pid(replacement, port)[min(replacement)] > 0:
                break
            time.sleep(0.2)
        for client in fresh:
            assert client.search(title, 1).hits[0].item_id == "NEW1"
            client.close()
        assert scrape(metrics_port)[("aisle_worker_restarts_total", frozenset())] == 1
    finally:
        for client in clients:
            client.close()
        workers = children(proc.pid) if proc.poll() is None else set()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "with 2 worker processes" in output and "restarting it" in output
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_a_worker_setting_error_stops_the_start(index_root, tmp_path) -> None:
    proc = serve(index_root, tmp_path / "port", "--port", "0", "--popularity-epsilon", "1.0")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "does not combine with --popularity-epsilon" in output
    assert "worker 0 exited with status 2" in output


def test_workers_stop_when_the_supervisor_is_killed(index_root, tmp_path) -> None:
    port_file = tmp_path / "port"
    port = free_port()  # a given port: both workers start at once
    proc = serve(index_root, port_file, "--port", str(port))
    try:
        assert wait_for(port_file, proc) == port
        workers = children(proc.pid)
        assert len(workers) == 2
        with AisleClient(f"127.0.0.1:{port}", connections=4) as client:
            for _ in range(8):
                assert len(client.search("sofa", 2).hits) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        alive = set(workers)
        while alive and time.monotonic() < deadline:
            alive = {p for p in alive if Path(f"/proc/{p}").exists()}
            time.sleep(0.1)
        assert not alive, "workers outlived their supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
