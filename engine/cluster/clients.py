"""The router's clients of the shard servers: channels to every replica, parallel calls, failover.

Each shard call gets min(what is left of the request's deadline, the shard timeout); a replica
that fails is retried on the shard's next replica while time remains, and one that has not
answered within the hedge delay is hedged: the next replica is asked too and the first usable
answer wins. Failing over only after the shard timeout left the healthy replica whatever the
stalled call had not used (~10 % of a short deadline), so a short stall on one host failed
requests although its shard had healthy replicas.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from aisle.v1 import index_admin_pb2_grpc, shard_pb2, shard_pb2_grpc
from engine.cluster.config import RouterConfig
from engine.search.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)

MAX_SHARD_MESSAGE_BYTES = 64 * 1024 * 1024
DESCRIBE_TIMEOUT_S = 2.0
# Hedges are budgeted (a token bucket): each shard call earns HEDGE_BUDGET_RATIO of a hedge, up
# to HEDGE_BUDGET_BURST saved. When every replica is slow (overload, not one stalled host),
# hedging every call would double the load on shards that are already behind.
HEDGE_BUDGET_RATIO = 0.1
HEDGE_BUDGET_BURST = 10.0
MAX_CONCURRENT_REQUESTS = 256  # router requests in flight at once (the server admits fewer)
# Of what is left of the request's deadline, min(this, 10 %) is kept for merging and answering.
_RESERVE_S = 0.100
_MIN_CALL_S = 0.001
# Errors that say the request itself is wrong (the router's validation should have caught them):
# passed on to the caller, not retried on another replica.
_REQUEST_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
}


@dataclass
class Replica:
    """One shard server: its channel and stubs, and until when it is tried last."""

    address: str
    channel: grpc.Channel
    shard_stub: shard_pb2_grpc.ShardSearchStub
    admin_stub: index_admin_pb2_grpc.IndexAdminStub
    down_until: float = 0.0  # monotonic time before which it is tried last


@dataclass
class FanOut:
    """Per shard: the response of the replica that answered, or why none did."""

    responses: dict[int, Any] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)


class ShardClients:
    """Channels to every replica of every shard, and parallel calls with failover."""

    def __init__(self, config: RouterConfig, token: str | None = None) -> None:
        self.config = config
        self.timeout_s = config.shard_timeout_ms / 1e3
        self.hedge_s = config.hedge_ms / 1e3
        self.hedges = 0  # hedged calls sent, for tests and logs
        self._hedge_tokens = HEDGE_BUDGET_BURST
        self._hedge_lock = threading.Lock()
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", MAX_SHARD_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_SHARD_MESSAGE_BYTES),
            # A restarted replica is picked up within a second or two, not after minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self.replicas: list[list[Replica]] = []
        for addresses in config.shards:
            group = []
            for address in addresses:
                channel = grpc.insecure_channel(address, options=options)
                group.append(
                    Replica(
                        address,
                        channel,
                        shard_pb2_grpc.ShardSearchStub(channel),
                        index_admin_pb2_grpc.IndexAdminStub(channel),
                    )
                )
            self.replicas.append(group)
        self._turns = [itertools.count() for _ in self.replicas]
        # Blocking calls on a pool rather than grpc's .future(): a future starts a channel
        # polling thread whenever none is running (every request, at low load), which cost
        # more CPU than the shard's work; a blocking call waits on its own completion queue.
        # Threads start only as concurrency needs them; the bound covers every handler thread
        # of the router waiting on every shard at once, so no call queues behind another.
        self._pool = futures.ThreadPoolExecutor(
            max_workers=MAX_CONCURRENT_REQUESTS * len(self.replicas),
            thread_name_prefix="aisle-shard-call",
        )

    @property
    def n_shards(self) -> int:
        return len(self.replicas)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for group in self.replicas:
            for replica in group:
                replica.channel.close()

    def order(self, shard: int) -> list[Replica]:
        """Replicas to try, in turn: round robin among healthy ones, recently failed last."""
        group = self.replicas[shard]
        start = next(self._turns[shard]) % len(group)
        rotated = group[start:] + group[:start]
        now = time.monotonic()
        return sorted(rotated, key=lambda r: r.down_until > now)  # stable

    def _earn_hedges(self, calls: int) -> None:
        with self._hedge_lock:
            self._hedge_tokens = min(
                HEDGE_BUDGET_BURST, self._hedge_tokens + calls * HEDGE_BUDGET_RATIO
            )

    def _spend_hedge(self) -> bool:
        with self._hedge_lock:
            if self._hedge_tokens < 1.0:
                return False
            self._hedge_tokens -= 1.0
            self.hedges += 1
            return True

    def _call_timeout(self, end: float) -> float:
        remaining = end - time.monotonic()
        if math.isfinite(remaining):
            remaining -= min(_RESERVE_S, 0.1 * remaining)
        return min(remaining, self.timeout_s)

    def call(
        self,
        method: str,
        requests: dict[int, Any],
        end: float = math.inf,
        check: Callable[[int, Any], str | None] | None = None,
    ) -> FanOut:
        """Call `method` of ShardSearch on one replica of each shard in `requests` at once.

        Args:
            method: a ShardSearch method name ("SearchShard").
            requests: shard → request message.
            end: time.monotonic() by which the caller must have its answer (inf: none).
            check: `check(shard, response)` returns why a response is unusable (a replica of
                another version or shard) or None; unusable counts as a failed replica.

        Returns:
            FanOut; a shard is missing when every replica failed or time ran out.

        Raises:
            InvalidArgument, NotFound: a shard rejected the request itself.
        """
        out = FanOut()
        done: queue.SimpleQueue = queue.SimpleQueue()
        orders = {shard: self.order(shard) for shard in requests}
        expiry: dict[int, float] = {}  # shard → when its latest attempt must have finished
        in_flight: dict[int, dict[int, Any]] = {shard: {} for shard in requests}  # attempt → call
        launched = dict.fromkeys(requests, 0)  # shard → attempts started
        last_launch: dict[int, float] = {}
        over_budget: set[int] = set()  # shards not hedged again in this call

        def launch(shard: int) -> bool:
            timeout = self._call_timeout(end)
            if timeout < _MIN_CALL_S or launched[shard] >= len(orders[shard]):
                launched[shard] = len(orders[shard])  # nothing more to try: no more hedges
                return False
            attempt = launched[shard]
            launched[shard] += 1
            stub_method = getattr(orders[shard][attempt].shard_stub, method)
            last_launch[shard] = time.monotonic()
            expiry[shard] = max(expiry.get(shard, 0.0), last_launch[shard] + timeout)
            future = self._pool.submit(
                _call_by, stub_method, requests[shard], last_launch[shard] + timeout, self.metadata
            )
            in_flight[shard][attempt] = future
            future.add_done_callback(lambda f: done.put((shard, attempt, f)))
            return True

        def cancel(shards) -> None:
            for s in shards:
                for call in in_flight[s].values():
                    call.cancel()  # a call already running ends at its own deadline

        failures: dict[int, list[str]] = {shard: [] for shard in requests}
        self._earn_hedges(len(requests))
        for shard in requests:
            if not launch(shard):
                out.missing[shard] = "no time left before the request's deadline"
        pending = set(requests) - set(out.missing)
        while pending:
            now = time.monotonic()
            # Every call carries its own deadline, so this wait is only a safety net ...
            wake = max(expiry[s] for s in pending) + 0.25
            # ... unless a shard is due a hedge: a replica that has not answered within
            # hedge_s is not waited for alone while another replica could answer.
            hedges = [s for s in pending - over_budget if launched[s] < len(orders[s])]
            if self.hedge_s > 0 and hedges:
                wake = min(wake, min(last_launch[s] for s in hedges) + self.hedge_s)
            try:
                shard, attempt, future = done.get(timeout=max(wake - now, 0.0))
            except queue.Empty:
                now = time.monotonic()
                if now >= max(expiry[s] for s in pending) + 0.25:
                    cancel(pending)
                    for s in pending:
                        out.missing[s] = "no answer (the call outlived its deadline)"
                    break
                for s in hedges:
                    if now < last_launch[s] + self.hedge_s:
                        continue
                    if not self._spend_hedge():
                        over_budget.add(s)  # wait for this call alone (failover still works)
                        continue
                    if launch(s):
                        log.debug("shard %d: hedging on replica %d", s, launched[s] - 1)
                continue
            if shard not in pending or future.cancelled():
                continue  # a hedge that lost the race
            del in_flight[shard][attempt]
            replica = orders[shard][attempt]
            reason = self._outcome(future, shard, replica, check, in_flight, pending)
            if reason is None:
                out.responses[shard] = future.result()
                replica.down_until = 0.0
                pending.discard(shard)
                cancel([shard])
                continue
            failures[shard].append(f"{replica.address}: {reason}")
            replica.down_until = time.monotonic() + self.config.failed_replica_backoff_s
            if in_flight[shard] or launch(shard):
                continue  # another replica is still at it, or now is
            out.missing[shard] = "; ".join(failures[shard])
            pending.discard(shard)
        for shard, reasons in failures.items():
            if reasons and shard in out.responses:
                log.info("shard %d failed over after: %s", shard, "; ".join(reasons))
        for shard, reason in out.missing.items():
            log.warning("shard %d missing from the answer: %s", shard, reason)
        return out

    @staticmethod
    def _outcome(future, shard, replica, check, in_flight, pending) -> str | None:
        """None when the response is usable, else why not; raises for request errors."""
        error = future.exception()
        if error is None:
            return check(shard, future.result()) if check is not None else None
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        if code in _REQUEST_ERRORS:
            for s in pending:
                for call in in_flight[s].values():
                    call.cancel()
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise _REQUEST_ERRORS[code](f"shard {shard} ({replica.address}): {details}")
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        return f"{code.name} {details or ''}".strip()

    def describe(self, timeout_s: float = DESCRIBE_TIMEOUT_S) -> dict[str, Any]:
        """address → DescribeShardResponse, or the grpc.RpcError it raised."""
        calls = {
            r.address: r.shard_stub.DescribeShard.future(
                shard_pb2.DescribeShardRequest(), timeout=timeout_s, metadata=self.metadata
            )
            for group in self.replicas
            for r in group
        }
        out: dict[str, Any] = {}
        for address, future in calls.items():
            try:
                out[address] = future.result()
            except grpc.RpcError as error:
                out[address] = error
        return out


def _call_by(method: Any, request: Any, expiry: float, metadata: Any) -> Any:
    """A blocking call that must end by `expiry` (time.monotonic()), however long it queued."""
    return method(request, timeout=max(expiry - time.monotonic(), 1e-4), metadata=metadata)
