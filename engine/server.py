"""Builds the gRPC server: services, health, reflection, interceptor, TLS, metrics, lifecycle."""

from __future__ import annotations

import logging
import os
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
    index_admin_pb2,
    index_admin_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from engine.api.interceptor import ServingInterceptor
from engine.api.limits import AdmissionControl, RateLimiter
from engine.api.metrics import ServerMetrics
from engine.api.privacy import PrivacyConfig, PrivacyEdge, PrivacyServicer
from engine.api.servicers import EventsServicer, IndexAdminServicer, RetrievalServicer, ServiceSlot
from engine.cluster.clients import ShardClients
from engine.cluster.config import RouterConfig
from engine.cluster.router import NO_LIVE_UPDATES, create_router_service
from engine.cluster.shard import (
    SHARD_SERVICE_NAMES,
    ShardSpec,
    add_shard_services,
    load_shard_service,
)
from engine.http.app import create_app
from engine.http.bridge import Bridge
from engine.http.gateway import HttpGateway, HttpTls
from engine.privacy.consent import ConsentStore
from engine.privacy.logs import compact
from engine.privacy.retention import RetentionSchedule
from engine.search.engagement import EngagementFeed
from engine.search.explore import Explorer
from engine.search.impressions import ImpressionWriter
from engine.search.service import SearchService
from engine.search.siblings import FOLLOW_S, Follower, SiblingBoard, WorkerSpec
from engine.search.snapshot import load_snapshot
from engine.search.types import EncodingConfig
from trainer.feedback.engagement import ENGAGEMENT_DAYS
from trainer.feedback.privacy import forget_dataset_users

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CATALOG_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".gz")
DATASETS_DIR = "datasets"  # training datasets built from this root's logs, erased with a user
SERVICE_NAMES = (
    retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name,
    index_admin_pb2.DESCRIPTOR.services_by_name["IndexAdmin"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["Events"].full_name,
    privacy_pb2.DESCRIPTOR.services_by_name["Privacy"].full_name,
)


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate files (PEM); with `client_ca`, clients must present a certificate
    signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS {name} file {path} does not exist")

    def credentials(self) -> grpc.ServerCredentials:
        pair = [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())]
        if self.client_ca is None:
            return grpc.ssl_server_credentials(pair)
        return grpc.ssl_server_credentials(
            pair, root_certificates=Path(self.client_ca).read_bytes(), require_client_auth=True
        )


@dataclass(frozen=True)
class ServerConfig:
    """How to serve. `index` is an index root (follows CURRENT) or one version dir."""

    index: Path
    model: Path | None = None  # None: the model the manifest names
    host: str = "127.0.0.1"
    port: int = 50051  # 0 binds a free port
    workers: int = 16  # gRPC handler threads
    admin_token: str | None = None
    protect_reads: bool = False  # Retrieval/Events need the token too
    # RPCs accepted at once (running + waiting for a worker thread); more are refused by grpcio
    # itself with RESOURCE_EXHAUSTED before they reach a thread or a queue.
    max_in_flight: int = 64
    rate_limit: float = 0.0  # requests/s per client (x-aisle-client metadata or peer); 0: off
    rate_burst: int = 0  # bucket size; 0: max(1, rate_limit)
    metrics_port: int | None = None  # Prometheus /metrics on HTTP; None: off, 0: a free port
    metrics_host: str = "127.0.0.1"
    tls: TlsConfig | None = None
    events_dir: Path | None = None  # event log; None: ROOT/events when serving an index root
    # Log what each response showed to events_dir/impressions.jsonl (engine.search.impressions;
    # asynchronous, bounded, every drop counted). Off: responses still carry a request_id.
    impressions: bool = True
    # Share of Search responses with adjacent hits swapped (engine.search.explore); 0: off.
    explore_share: float = 0.0
    # The ranking stage's engagement feature: engaged events per item in the event log's last
    # `engagement_days` days, re-read every `engagement_refresh_s` (engine.search.engagement).
    engagement_days: float = ENGAGEMENT_DAYS
    engagement_refresh_s: float = 300.0
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    # Shutdown: health says NOT_SERVING for `drain_s` while the listener still takes requests
    # (a load balancer's window to stop routing here), then the listener closes and in-flight
    # requests get `grace_s` to finish before they are cancelled.
    drain_s: float = 0.0
    grace_s: float = 5.0
    shard: ShardSpec | None = None  # serve only this shard, to a router (--shard I/N)
    router: RouterConfig | None = None  # fan out to shard servers (--router --shard-addrs)
    # The HTTP/JSON gateway and playground (engine.http) on this port; None: off, 0: a free one.
    http_port: int | None = None
    http_host: str | None = None  # None: `host`
    # Pseudonymous user ids, query scrubbing, consent defaults, retention (docs/privacy.md).
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    # One of the worker processes of `aisle-serve --processes N` (engine.cluster.workers): it
    # binds the port with SO_REUSEPORT beside its siblings and follows them through the files
    # in `siblings_dir` and the shared logs every `follow_s` (engine.search.siblings).
    worker: WorkerSpec | None = None
    siblings_dir: Path | None = None
    follow_s: float = FOLLOW_S

    def __post_init__(self) -> None:
        index = Path(self.index)
        if not index.exists():
            raise ValueError(
                f"index {index} does not exist: build one with "
                f"`aisle-index build --catalog CATALOG --out {index}`"
            )
        if index.is_file():
            kind = " (a catalog?)" if index.suffix in CATALOG_SUFFIXES else ""
            raise ValueError(
                f"index {index} is a file{kind}, not an index: build the index first with "
                f"`aisle-index build --catalog {index} --out ./index`, then serve it with "
                "`aisle-serve --index ./index`"
            )
        if not any((index / name).exists() for name in ("CURRENT", "versions", "manifest.json")):
            raise ValueError(
                f"index {index} is a directory with no index in it (no CURRENT, versions/ or "
                "manifest.json): give the --out directory of `aisle-index build`"
            )
        if self.model is not None and not Path(self.model).is_dir():
            raise ValueError(f"model {self.model} is not a directory")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"http port must be 0..65535, got {self.http_port}")
        if self.http_port is not None and self.shard is not None:
            raise ValueError("a shard server serves no HTTP gateway (give --http-port elsewhere)")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics port must be 0..65535, got {self.metrics_port}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.rate_limit < 0 or self.rate_burst < 0:
            raise ValueError("rate_limit and rate_burst must be >= 0")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("admin token must be at least 16 characters")
        if self.protect_reads and self.admin_token is None:
            raise ValueError("protect_reads needs an admin token (AISLE_ADMIN_TOKEN)")
        if self.grace_s < 0 or self.drain_s < 0:
            raise ValueError("grace_s and drain_s must be >= 0")
        Explorer(self.explore_share)  # validates: 0 <= share <= MAX_SHARE
        # validates: days > 0 and refresh_s > 0 (nothing is read before start)
        EngagementFeed(index, days=self.engagement_days, refresh_s=self.engagement_refresh_s)
        if self.shard is not None and self.router is not None:
            raise ValueError(
                "a server is a shard server (--shard) or a router (--router), not both"
            )
        if (self.worker is None) != (self.siblings_dir is None):
            raise ValueError("a worker process needs its siblings dir, and only a worker one")
        if self.worker is not None:
            for used, flag, why in (
                (self.shard, "--shard", "run more shard servers as replicas instead"),
                (self.router, "--router", "a router fans out; run several routers instead"),
                (
                    self.privacy.popularity_dp,
                    "--popularity-epsilon",
                    "each worker's start would be another release of the noisy counts, "
                    "spending the privacy budget once per process",
                ),
            ):
                if used is not None:
                    raise ValueError(f"--processes above 1 does not combine with {flag} ({why})")
            if self.follow_s <= 0:
                raise ValueError(f"follow_s must be > 0, got {self.follow_s}")


class AisleServer:
    """A bound server: `port` is the gRPC port, `metrics_port` the HTTP one (or None)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self._health = health.HealthServicer()
        # A shard server serves the internal shard API (engine.cluster.shard), not the public one.
        self._service_names = SERVICE_NAMES if config.shard is None else SHARD_SERVICE_NAMES
        for name in ("", *self._service_names):
            self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        interceptor = ServingInterceptor(
            admin_token=config.admin_token,
            protect_reads=config.protect_reads,
            metrics=self.metrics,
            admission=AdmissionControl(config.max_in_flight),
            rate_limiter=(
                RateLimiter(config.rate_limit, config.rate_burst or None)
                if config.rate_limit > 0
                else None
            ),
            max_response_bytes=MAX_MESSAGE_BYTES,
        )
        # Consent lives beside the event log; the privacy edge runs before everything else, so
        # no other code (the serving interceptor, handlers, logs) sees a raw user id.
        self._slot = ServiceSlot(self.metrics)
        events_dir = self._events_dir() if config.shard is None else None
        self._consent = (
            ConsentStore(events_dir, config.privacy.default) if events_dir is not None else None
        )
        interceptors: list[grpc.ServerInterceptor] = [interceptor]
        if config.shard is None:
            edge = PrivacyEdge(
                config.privacy,
                lambda: self._consent,
                lambda: getattr(self._slot.service, "users", None),
            )
            interceptors.insert(0, edge)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="aisle-rpc"),
            interceptors=interceptors,
            # Admission has to happen before a handler thread is taken: the interceptor alone
            # can never see more than `workers` calls, and the rest would wait in grpcio's
            # unbounded queue. grpcio counts a call from arrival to completion and refuses the
            # one past this limit with RESOURCE_EXHAUSTED at once.
            maximum_concurrent_rpcs=config.max_in_flight,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # grpc's default SO_REUSEPORT lets a second server bind the same port and
                # silently take half the traffic (with another index): make that bind fail,
                # except between the worker processes of one server, which share it on purpose
                # (the supervisor holds a lock on the port against a second server of workers).
                ("grpc.so_reuseport", 1 if config.worker is not None else 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        # Services are registered up front and answer UNAVAILABLE until load() fills the slot,
        # so health checks can reach a loading server and see NOT_SERVING.
        self._draining = False
        self._gateway: HttpGateway | None = None
        if config.shard is not None:
            add_shard_services(self._server, self._slot, str(config.index))
        else:
            no_updates = NO_LIVE_UPDATES if config.router is not None else ""
            servicers = {
                "Retrieval": RetrievalServicer(self._slot),
                "IndexAdmin": IndexAdminServicer(self._slot, str(config.index), no_updates),
                "Events": EventsServicer(self._slot),
            }
            retrieval_pb2_grpc.add_RetrievalServicer_to_server(servicers["Retrieval"], self._server)
            index_admin_pb2_grpc.add_IndexAdminServicer_to_server(
                servicers["IndexAdmin"], self._server
            )
            events_pb2_grpc.add_EventsServicer_to_server(servicers["Events"], self._server)
            privacy_pb2_grpc.add_PrivacyServicer_to_server(
                PrivacyServicer(
                    config.privacy, lambda: self._consent, self._slot.get, self._forget_datasets
                ),
                self._server,
            )
        address = f"{config.host}:{config.port}"
        try:
            if config.tls is not None:
                self.port = self._server.add_secure_port(address, config.tls.credentials())
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.62 raises where older versions returned 0
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"could not bind {address}: the port is in use (another aisle-serve?) "
                "or the address is not local"
            )
        if config.http_port is not None and config.shard is None:
            # The same servicers behind the same interceptors: one implementation, two edges.
            app = create_app(Bridge(interceptors), servicers, ready=self._ready)
            tls = config.tls
            self._gateway = HttpGateway(
                app,
                config.http_host or config.host,
                config.http_port,
                HttpTls(tls.cert, tls.key, tls.client_ca) if tls is not None else None,
            )
        self.metrics_port: int | None = None
        self._clients: ShardClients | None = None  # a router's, to its shard servers
        self._retention: RetentionSchedule | None = None  # --retention-every
        self._follower: Follower | None = None  # a worker's, following its siblings

    def _forget_datasets(self, user_ids: tuple[str, ...]) -> int:
        """Erasure in the training datasets under ROOT/datasets/ (docs/privacy.md)."""
        index = Path(self.config.index)
        datasets = index / DATASETS_DIR
        if not datasets.is_dir():
            return 0
        dirs = sorted(p for p in datasets.iterdir() if p.is_dir() and not p.name.startswith("."))
        return sum(forget_dataset_users(d, set(user_ids)) for d in dirs)

    @property
    def http_port(self) -> int | None:
        """The HTTP gateway's bound port, or None when it is off."""
        return self._gateway.port if self._gateway is not None else None

    def _ready(self) -> bool:
        return self._slot.service is not None and not self._draining

    @property
    def service(self) -> SearchService | None:
        return self._slot.service

    def _events_dir(self) -> Path | None:
        if self.config.events_dir is not None:
            return Path(self.config.events_dir)
        index = Path(self.config.index)
        if (index / "CURRENT").exists() or (index / "versions").is_dir():
            return index / "events"  # an index root: its events live beside its versions
        return None  # a bare version dir: no event log unless one is named

    def _impression_writer(self) -> ImpressionWriter | None:
        directory = self._events_dir()
        if not self.config.impressions or directory is None:
            return None
        return ImpressionWriter(
            directory,
            on_drop=self.metrics.impressions_dropped.inc,
            scrub=self.config.privacy.scrubber,
        )

    def _siblings(self) -> SiblingBoard | None:
        config = self.config
        if config.worker is None or config.siblings_dir is None:  # (both or neither)
            return None
        return SiblingBoard(config.siblings_dir, config.worker)

    def _explorer(self) -> Explorer | None:
        if not self.config.explore_share:
            return None
        return Explorer(self.config.explore_share, on_explore=self.metrics.explored.inc)

    def _engagement(self) -> EngagementFeed | None:
        directory = self._events_dir()
        if directory is None:
            return None  # no event log: the ranker's engagement feature is missing (NaN)
        return EngagementFeed(
            directory,
            days=self.config.engagement_days,
            refresh_s=self.config.engagement_refresh_s,
            default_use_for_training=self.config.privacy.default.use_for_training,
        )

    def load(self) -> None:
        """Load model and index; health turns SERVING only after this."""

        def on_batch(n_texts: int) -> None:
            self.metrics.encoder_batches.inc()
            self.metrics.encoder_batch_texts.inc(n_texts)

        events_dir = self._events_dir() if self.config.shard is None else None
        retention = self.config.privacy.retention_days
        if self.config.worker is not None and self.config.worker.index > 0:
            retention = None  # worker 0 compacts for all (the files are shared)
        if events_dir is not None and retention is not None and os.access(events_dir, os.W_OK):
            compact(events_dir, retention)  # retention at start, before the log is replayed
        every = self.config.privacy.retention_every_hours
        if events_dir is not None and retention is not None and every is not None:
            # and then periodically, beside the live log's appends (the dir may appear later)
            self._retention = RetentionSchedule(events_dir, retention, every)
        if self.config.shard is not None:  # one shard's index and vectors, no model
            service = load_shard_service(self.config.index, self.config.shard)
        elif self.config.router is not None:  # the model and catalog; shards are remote
            self._clients = ShardClients(self.config.router, self.config.admin_token)
            service = create_router_service(
                self.config.index,
                self.config.model,
                self._clients,
                encoding=self.config.encoding,
                on_batch=on_batch,
                events_dir=self._events_dir(),
                impressions=self._impression_writer(),
                explorer=self._explorer(),
            )
        else:
            service = SearchService(
                load_snapshot(self.config.index, self.config.model, encoding=self.config.encoding),
                index_path=self.config.index,
                model_dir=self.config.model,
                encoding=self.config.encoding,
                on_batch=on_batch,
                events_dir=self._events_dir(),
                impressions=self._impression_writer(),
                popularity_dp=self.config.privacy.popularity_dp,
                explorer=self._explorer(),
                engagement=self._engagement(),
                siblings=self._siblings(),
            )
            service.warm_up()
            if self.config.worker is not None:
                service.follow()  # a restarted worker serves what its siblings serve, first
                self._follower = Follower(service.follow, self.config.follow_s)
        m = self.metrics
        if isinstance(service, SearchService):  # a shard server encodes nothing
            m.queue_depth.set_function(lambda: service.batcher.queue_depth)
            m.cache_hits.set_function(lambda: service.batcher.cache.hits)
            m.cache_misses.set_function(lambda: service.batcher.cache.misses)
        m.index_version.set_function(lambda: service.snapshot.summary.version)
        m.index_items.set_function(lambda: service.snapshot.summary.item_count)
        self._slot.service = service
        if self._retention is not None:
            self._retention.start()
        if self._follower is not None:
            self._follower.start()
        for name in ("", *self._service_names):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        summary = service.snapshot.summary
        log.info(
            "loaded index version %d: %d items in %d shards (%s), model %s",
            summary.version,
            summary.item_count,
            summary.shard_count,
            summary.factory,
            summary.model_fingerprint[:12],
        )
        worker = self.config.worker
        log.info(
            "serving on %s:%d%s (pid %d%s)%s",
            self.config.host,
            self.port,
            " with TLS" if self.config.tls else "",
            os.getpid(),
            f", worker {worker.index} of {worker.count}" if worker is not None else "",
            f"; HTTP gateway and playground on port {self.http_port}" if self._gateway else "",
        )

    def start(self) -> None:
        """Accept connections (health answers NOT_SERVING until load() has finished)."""
        self._server.start()
        if self._gateway is not None:
            self._gateway.start()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(
                self.config.metrics_host, self.config.metrics_port
            )
        if self.config.admin_token is None:
            log.warning("no admin token set: IndexAdmin methods are open to every caller")
        if self.config.shard is None and self.config.privacy.pseudonyms is None:
            log.warning(
                "no user keys (AISLE_USER_KEYS_FILE / --user-keys-file): user ids are stored "
                "as given, not pseudonymised; see docs/privacy.md"
            )
        log.info(
            "listening on %s:%d; health says NOT_SERVING until the model and index are loaded",
            self.config.host,
            self.port,
        )

    def stop(self, grace_s: float | None = None, drain_s: float | None = None) -> None:
        """Health NOT_SERVING first; keep serving for the drain window so load balancers can
        route elsewhere; then stop taking requests and let in-flight ones finish within the
        grace period. `stop(0)` stops at once (drain defaults to 0 when a grace is given)."""
        if drain_s is None:
            drain_s = self.config.drain_s if grace_s is None else 0.0
        self._health.enter_graceful_shutdown()
        self._draining = True
        if drain_s > 0:
            log.info("health NOT_SERVING; draining for %.1f s before closing the listener", drain_s)
            time.sleep(drain_s)
        self._server.stop(self.config.grace_s if grace_s is None else grace_s).wait()
        if self._follower is not None:
            self._follower.stop()
        if self._retention is not None:
            self._retention.stop()
        if self._gateway is not None:
            self._gateway.stop()
        if self._slot.service is not None:
            self._slot.service.close()
        if self._clients is not None:
            self._clients.close()
        self.metrics.close()

    def wait(self) -> None:
        self._server.wait_for_termination()


def create_server(config: ServerConfig) -> AisleServer:
    """Bind, start and load a server; with `port=0` read the bound port from `.port`."""
    server = AisleServer(config)
    # A lone server listens first, so health checks see it loading. A worker listens only once
    # loaded: beside its siblings on the port, the kernel would hand it new connections while
    # it loads, and their calls would get UNAVAILABLE that a sibling could have answered.
    steps = (
        (server.load, server.start) if config.worker is not None else (server.start, server.load)
    )
    try:
        for step in steps:
            step()
    except BaseException:
        server.stop(0)
        raise
    return server
