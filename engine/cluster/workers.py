"""Several server processes on one port: the supervisor of ``aisle-serve --processes N``.

One server process is bound by Python's GIL: past the encoder (ONNX Runtime and FAISS release it)
every request runs Python under it, so a process with the static query tower answers ~700
requests/s on two cores with a third of the machine idle (docs/training.md). N worker processes
use N cores. Each worker is a whole ``aisle-serve`` (``--worker I/N``) bound to the same address
with SO_REUSEPORT: the kernel hands each new client connection to one of them (a gRPC channel is
one connection, so one client's calls all reach one worker). The workers keep each other current
through the shared update log, event log and a small board for Reloads
(engine.search.siblings).

The supervisor starts them (all at once; worker 0 first when the port is 0, to learn it), writes the
port file once every worker is SERVING, restarts a worker that dies (at most ``RESTART_LIMIT``
times in ``RESTART_WINDOW_S``, then it stops them all and exits 1), passes SIGTERM/SIGINT on to
every worker (each drains as a lone server does) and exits when they have. A worker whose
supervisor is gone (kill -9) stops by itself within a second. A lock on the address keeps a second
supervisor from joining the port (SO_REUSEPORT would otherwise let it take a share of the
connections); a plain ``aisle-serve`` cannot bind it either, as it does not set SO_REUSEPORT.

Metrics: with ``--metrics-port``, each worker serves its own on a free port, and the supervisor
serves all of them on the port asked for (``WorkersCollector``): every series of every worker,
labelled ``worker="I"`` (``sum without (worker) (...)`` is the server's), plus its own
``aisle_workers_up`` and ``aisle_worker_restarts_total``. One scrape target, as with one process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
START_TIMEOUT_S = 900.0  # a 1M-item index takes a while to verify and load
STOP_EXTRA_S = 15.0  # past the drain and grace periods, before SIGKILL
SCRAPE_TIMEOUT_S = 2.0  # per worker, when the supervisor's /metrics is scraped


class WorkerStartError(RuntimeError):
    """A worker exited, or did not report its port, while the server was starting."""


class Supervisor:
    """Starts ``processes`` workers of ``aisle-serve`` (the command line ``argv``, plus the
    worker's own flags) on ``host:port`` and keeps them running; see the module docstring."""

    def __init__(
        self,
        argv: list[str],
        processes: int,
        host: str,
        port: int,
        *,
        stop_timeout_s: float = 30.0,
    ) -> None:
        if processes < 2:
            raise ValueError(f"a supervisor runs 2 or more workers, got {processes}")
        self.argv = list(argv)
        self.processes = processes
        self.host = host
        self.port = port
        self.http_port: int | None = None
        self.stop_timeout_s = stop_timeout_s
        self.dir = Path(tempfile.mkdtemp(prefix="aisle-workers-"))
        self._procs: list[subprocess.Popen | None] = [None] * processes
        self._restarts: deque[float] = deque()
        self._lock_file: int | None = None
        self.restarted = 0

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker and wait until each is SERVING.

        Raises:
            WorkerStartError: a worker exited or timed out while starting (the others are
                stopped).
            OSError: another supervisor holds the address.
        """
        try:
            # A given port: every worker loads at once. Port 0: worker 0 picks one first.
            first = range(self.processes) if self.port else range(1)
            if self.port:
                self._lock_address(self.port)
            for index in first:
                self._spawn(index)
            self.port = self._wait_port(0)
            if self._lock_file is None:
                self._lock_address(self.port)
            for index in range(len(first), self.processes):
                self._spawn(index)
            for index in range(1, self.processes):
                self._wait_port(index)
            http = self.dir / "http-port"  # worker 0's gateway, when it runs one
            self.http_port = int(http.read_text()) if http.exists() else None
        except BaseException:
            self.stop()
            raise
        log.info(
            "serving on %s:%d with %d worker processes (pids %s)",
            self.host,
            self.port,
            self.processes,
            ", ".join(str(pid) for pid in self.pids),
        )

    def _lock_address(self, port: int) -> None:
        path = Path(tempfile.gettempdir()) / f"aisle-serve-{self.host}-{port}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(
                f"{self.host}:{port} is served by another aisle-serve --processes (it holds {path})"
            ) from None
        self._lock_file = fd

    def _command(self, index: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "engine.cli.serve",
            *self.argv,
            "--worker",
            f"{index}/{self.processes}",
            "--siblings-dir",
            str(self.dir),
            "--port",
            str(self.port),
        ]

    def _spawn(self, index: int) -> None:
        (self.dir / f"port-{index}").unlink(missing_ok=True)
        self._procs[index] = subprocess.Popen(self._command(index))

    def _wait_port(self, index: int) -> int:
        path = self.dir / f"port-{index}"
        proc = self._procs[index]
        assert proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while not path.exists():
            if proc.poll() is not None:
                raise WorkerStartError(
                    f"worker {index} exited with status {proc.returncode} while starting "
                    "(its error is above)"
                )
            if time.monotonic() > deadline:
                raise WorkerStartError(f"worker {index} did not start in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        return int(path.read_text())

    # -- run --------------------------------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None]

    def run(self, stop: threading.Event) -> int:
        """Watch the workers until ``stop`` is set (0) or they die too often (1); restart a
        worker that exits on its own."""
        while not stop.wait(0.2):
            for index, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None:
                    continue
                now = time.monotonic()
                while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
                    self._restarts.popleft()
                if len(self._restarts) >= RESTART_LIMIT:
                    log.error(
                        "worker %d (pid %d) exited with status %s; %d restarts in the last "
                        "%.0f s already: stopping every worker",
                        index,
                        proc.pid,
                        proc.returncode,
                        len(self._restarts),
                        RESTART_WINDOW_S,
                    )
                    return 1
                log.error(
                    "worker %d (pid %d) exited with status %s: restarting it",
                    index,
                    proc.pid,
                    proc.returncode,
                )
                self._restarts.append(now)
                self.restarted += 1
                self._spawn(index)
        return 0

    # -- stop -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every worker (each drains), wait for them, SIGKILL the late ones; then
        remove the siblings dir and release the address."""
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for proc in self._procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time: killing it", proc.pid)
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None


class WorkersCollector:
    """A Prometheus collector of the workers' own metrics: each worker's /metrics (its port in
    the siblings dir, ``metrics-port-I``) read at every scrape, its series labelled with the
    worker; a worker that does not answer (restarting) is left out of that scrape and counted in
    ``aisle_workers_up``."""

    def __init__(self, supervisor: Supervisor, host: str) -> None:
        self._supervisor = supervisor
        self._host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host

    def _worker_text(self, index: int) -> str | None:
        try:
            port = int((self._supervisor.dir / f"metrics-port-{index}").read_text())
            url = f"http://{self._host}:{port}/metrics"
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:  # noqa: S310
                return response.read().decode("utf-8")
        except (OSError, ValueError):
            return None

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        up = 0
        for index in range(self._supervisor.processes):
            text = self._worker_text(index)
            if text is None:
                continue
            up += 1
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": str(index)},
                                      sample.value, sample.timestamp)  # fmt: skip
        yield from families.values()
        workers = GaugeMetricFamily(
            "aisle_workers_up", "Worker processes whose metrics answered this scrape"
        )
        workers.add_metric([], up)
        yield workers
        restarts = CounterMetricFamily(
            "aisle_worker_restarts", "Worker processes the supervisor restarted"
        )
        restarts.add_metric([], self._supervisor.restarted)
        yield restarts


def supervise(
    argv: list[str],
    processes: int,
    host: str,
    port: int,
    *,
    port_file: Path | None,
    http_port_file: Path | None,
    drain_s: float,
    metrics: tuple[str, int] | None = None,
) -> int:
    """``aisle-serve --processes N``: run the workers until SIGTERM/SIGINT; the exit status.
    ``drain_s``: a worker's drain and grace periods together (it is killed STOP_EXTRA_S
    later); ``metrics``: (host, port) to serve every worker's metrics on
    (``WorkersCollector``)."""
    supervisor = Supervisor(argv, processes, host, port, stop_timeout_s=drain_s + STOP_EXTRA_S)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping the %d workers", signum, processes)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        supervisor.start()
    except (WorkerStartError, OSError) as error:
        print(f"aisle-serve: {error}", file=sys.stderr)
        return 2
    http = None
    if metrics is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkersCollector(supervisor, metrics[0]))
        try:
            http, _ = start_http_server(metrics[1], addr=metrics[0], registry=registry)
        except OSError as error:
            supervisor.stop()
            print(f"aisle-serve: could not serve metrics on {metrics[0]}:{metrics[1]}: {error}",
                  file=sys.stderr)  # fmt: skip
            return 2
        log.info("metrics of every worker on http://%s:%d/metrics", metrics[0],
                 http.server_address[1])  # fmt: skip
    for path, value in ((port_file, supervisor.port), (http_port_file, supervisor.http_port)):
        if path is not None and value is not None:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{value}\n")
            os.replace(tmp, path)
    try:
        status = supervisor.run(stop)
    finally:
        supervisor.stop()
        if http is not None:
            http.shutdown()
            http.server_close()
    return status
