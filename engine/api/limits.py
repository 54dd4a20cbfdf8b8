"""Admission control and per-client rate limits: refuse at once rather than queue without bound."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class AdmissionControl:
    """At most `max_in_flight` requests are handled at once; the next one is refused at once
    (RESOURCE_EXHAUSTED) instead of waiting in an unbounded queue and blowing its latency."""

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_enter(self) -> bool:
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                return False
            self._in_flight += 1
            return True

    def exit(self) -> None:
        with self._lock:
            self._in_flight -= 1


class RateLimiter:
    """Token buckets per client id: `rate` requests/s sustained, bursts up to `burst`.

    Client ids come from the `x-aisle-client` metadata, else the peer address. At most
    `max_clients` buckets are kept (least recently seen dropped), so memory stays bounded.
    """

    def __init__(self, rate: float, burst: int | None = None, max_clients: int = 10_000) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # id → (tokens, t)
        self._lock = threading.Lock()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return allowed
