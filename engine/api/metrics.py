"""Prometheus metrics of one server: requests, latency by method and stage, errors, index."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Millisecond-scale buckets: the latency target is p50 <= 10 ms, p99 <= 25 ms.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.010,
    0.015,
    0.020,
    0.025,
    0.035,
    0.050,
    0.075,
    0.100,
    0.250,
    0.500,
    1.0,
    2.5,
)


class ServerMetrics:
    """The metric series; each server gets its own registry so several can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aisle_requests",
            "RPCs answered, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "aisle_request_latency_seconds",
            "RPC latency inside the server, by method",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stage_latency = Histogram(
            "aisle_stage_latency_seconds",
            "Time per request stage (encode, search, rerank)",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.errors = Counter(
            "aisle_errors", "RPCs that ended with a non-OK status, by code", ["code"], registry=r
        )
        self.in_flight = Gauge("aisle_in_flight_requests", "RPCs being handled now", registry=r)
        self.queue_depth = Gauge(
            "aisle_encoder_queue_depth", "Query texts waiting for the encoder", registry=r
        )
        self.index_version = Gauge("aisle_index_version", "Served index version", registry=r)
        self.index_items = Gauge("aisle_index_items", "Searchable items", registry=r)
        self.cache_hits = Gauge(
            "aisle_query_cache_hits",
            "Query embeddings served from the cache (since load)",
            registry=r,
        )
        self.cache_misses = Gauge(
            "aisle_query_cache_misses",
            "Query embeddings not in the cache (since load)",
            registry=r,
        )
        self.encoder_batches = Counter(
            "aisle_encoder_batches", "Encoder calls made by the micro-batcher", registry=r
        )
        self.encoder_batch_texts = Counter(
            "aisle_encoder_batch_texts", "Texts encoded by the micro-batcher", registry=r
        )
        self.rejected = Counter(
            "aisle_rejected_requests",
            "RPCs refused before work, by reason",
            ["reason"],
            registry=r,
        )
        self.impressions_dropped = Counter(
            "aisle_impressions_dropped",
            "Impressions not logged: the writer's queue was full or the disk refused them",
            registry=r,
        )
        self.explored = Counter(
            "aisle_explored_responses",
            "Search responses with adjacent hits swapped for position-bias estimation "
            "(aisle-serve --explore-share)",
            registry=r,
        )
        self._http: Any = None

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage_latency.labels(stage.removesuffix("_ms")).observe(ms / 1e3)

    def serve_http(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
