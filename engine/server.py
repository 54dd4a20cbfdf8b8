"""Builds the gRPC server: services, health, reflection, the error interceptor, lifecycle."""

from __future__ import annotations

import logging
import os
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
    index_admin_pb2,
    index_admin_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from engine.interceptor import ErrorMappingInterceptor
from engine.service import SearchService, load_snapshot
from engine.servicer import EventsServicer, IndexAdminServicer, RetrievalServicer, ServiceSlot

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVICE_NAMES = (
    retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name,
    index_admin_pb2.DESCRIPTOR.services_by_name["IndexAdmin"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["Events"].full_name,
)


@dataclass(frozen=True)
class ServerConfig:
    """How to serve. `index` is an index root (follows CURRENT) or one version dir."""

    index: Path
    model: Path | None = None  # None: the model the manifest names
    host: str = "127.0.0.1"
    port: int = 50051  # 0 binds a free port
    workers: int = 8
    admin_token: str | None = None
    grace_s: float = 5.0

    def __post_init__(self) -> None:
        if not Path(self.index).exists():
            raise ValueError(
                f"index {self.index} does not exist: build one with `aisle-index build`"
            )
        if self.model is not None and not Path(self.model).is_dir():
            raise ValueError(f"model {self.model} is not a directory")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("admin token must be at least 16 characters")
        if self.grace_s < 0:
            raise ValueError("grace_s must be >= 0")


class AisleServer:
    """A started server: `port` is the bound port; `stop()` drains in-flight requests."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._health = health.HealthServicer()
        for name in ("", *SERVICE_NAMES):
            self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="aisle-rpc"),
            interceptors=[ErrorMappingInterceptor(config.admin_token)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        # Services are registered up front and answer UNAVAILABLE until load() fills the slot,
        # so health checks can reach a loading server and see NOT_SERVING.
        self._slot = ServiceSlot()
        retrieval_pb2_grpc.add_RetrievalServicer_to_server(
            RetrievalServicer(self._slot), self._server
        )
        index_admin_pb2_grpc.add_IndexAdminServicer_to_server(
            IndexAdminServicer(self._slot, str(config.index)), self._server
        )
        events_pb2_grpc.add_EventsServicer_to_server(EventsServicer(), self._server)
        address = f"{config.host}:{config.port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")

    @property
    def service(self) -> SearchService | None:
        return self._slot.service

    def load(self) -> None:
        """Load model and index; health turns SERVING only after this."""
        snapshot = load_snapshot(self.config.index, self.config.model)
        self._slot.service = SearchService(
            snapshot, index_path=self.config.index, model_dir=self.config.model
        )
        for name in ("", *SERVICE_NAMES):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        summary = snapshot.summary
        log.info(
            "loaded index version %d: %d items in %d shards (%s), model %s",
            summary.version,
            summary.item_count,
            summary.shard_count,
            summary.factory,
            summary.model_fingerprint[:12],
        )

    def start(self) -> None:
        """Accept connections (health answers NOT_SERVING until load() has finished)."""
        self._server.start()
        if self.config.admin_token is None:
            log.warning("no admin token set: IndexAdmin methods are open to every caller")
        log.info("serving on %s:%d (pid %d)", self.config.host, self.port, os.getpid())

    def stop(self, grace_s: float | None = None) -> None:
        """Stop taking requests, let in-flight ones finish within the grace period."""
        self._health.enter_graceful_shutdown()
        self._server.stop(self.config.grace_s if grace_s is None else grace_s).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()


def create_server(config: ServerConfig) -> AisleServer:
    """Bind, start and load a server; with `port=0` read the bound port from `.port`."""
    server = AisleServer(config)
    server.start()
    try:
        server.load()
    except BaseException:
        server.stop(0)
        raise
    return server
