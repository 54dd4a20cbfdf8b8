"""A small Python client for the Aisle gRPC API."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
    index_admin_pb2,
    index_admin_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)


class AisleClient:
    """Talks to one Aisle server. Use as a context manager, or call close().

    `admin_token` is sent as `authorization: Bearer <token>` on IndexAdmin calls.
    """

    def __init__(
        self,
        address: str,
        *,
        admin_token: str | None = None,
        timeout_s: float = 10.0,
        client_id: str | None = None,
        tls_ca: bytes | None = None,
        tls_client_cert: tuple[bytes, bytes] | None = None,
        tls_server_name: str | None = None,
    ):
        """`tls_ca` (PEM bytes) turns TLS on; `tls_client_cert` is (key, cert) PEM for mutual
        TLS; `client_id` is sent as x-aisle-client (the server rate-limits per client)."""
        self.address = address
        self.timeout_s = timeout_s
        if tls_ca is not None:
            key, cert = tls_client_cert or (None, None)
            credentials = grpc.ssl_channel_credentials(tls_ca, key, cert)
            options = (
                [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
            )
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address)
        self._read_metadata: tuple[tuple[str, str], ...] = (
            (("x-aisle-client", client_id),) if client_id else ()
        )
        self._retrieval = retrieval_pb2_grpc.RetrievalStub(self._channel)
        self._admin = index_admin_pb2_grpc.IndexAdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._events = events_pb2_grpc.EventsStub(self._channel)
        self._admin_metadata = self._read_metadata + (
            (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        )
        if admin_token:  # a server with --protect-reads wants the token on every call
            self._read_metadata = self._admin_metadata

    def __enter__(self) -> AisleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_until_serving(self, timeout_s: float = 60.0) -> None:
        """Block until the server's health says SERVING; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status = self._health.Check(health_pb2.HealthCheckRequest(), timeout=2.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.address} is not SERVING after {timeout_s:.0f} s")
            time.sleep(0.1)

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        include_fields: bool = False,
        page_token: str = "",
        recent_item_ids: Sequence[str] = (),
        **fields: object,
    ) -> retrieval_pb2.SearchResponse:
        """Search; extra keyword arguments are SearchRequest fields (e.g. effort=...)."""
        request = retrieval_pb2.SearchRequest(
            query=query,
            k=k,
            include_fields=include_fields,
            page_token=page_token,
            recent_item_ids=list(recent_item_ids),
            **fields,
        )
        return self._retrieval.Search(request, timeout=self.timeout_s, metadata=self._read_metadata)

    def batch_search(
        self, requests: Sequence[retrieval_pb2.SearchRequest]
    ) -> retrieval_pb2.BatchSearchResponse:
        return self._retrieval.BatchSearch(
            retrieval_pb2.BatchSearchRequest(requests=list(requests)),
            timeout=self.timeout_s,
            metadata=self._read_metadata,
        )

    def similar_items(self, item_id: str, k: int = 10, **fields: object):
        return self._retrieval.SimilarItems(
            retrieval_pb2.SimilarItemsRequest(item_id=item_id, k=k, **fields),
            timeout=self.timeout_s,
        )

    def recommend(self, history_item_ids: Sequence[str] = (), k: int = 10, **fields: object):
        return self._retrieval.Recommend(
            retrieval_pb2.RecommendRequest(history_item_ids=list(history_item_ids), k=k, **fields),
            timeout=self.timeout_s,
            metadata=self._read_metadata,
        )

    def embed(self, texts: Sequence[str], *, items: bool = False) -> retrieval_pb2.EmbedResponse:
        kind = retrieval_pb2.EMBED_KIND_ITEM if items else retrieval_pb2.EMBED_KIND_QUERY
        return self._retrieval.Embed(
            retrieval_pb2.EmbedRequest(texts=list(texts), kind=kind),
            timeout=self.timeout_s,
            metadata=self._read_metadata,
        )

    def record_events(self, events: Sequence[events_pb2.Event]) -> events_pb2.RecordResponse:
        """Record shopper events (durable when this returns). Give each event the
        ``request_id`` of the response that showed the item and its 1-based ``position`` there
        (``offset + index + 1``), so it is attributed to that result list."""
        return self._events.Record(
            events_pb2.RecordRequest(events=list(events)),
            timeout=self.timeout_s,
            metadata=self._read_metadata,
        )

    def status(self) -> index_admin_pb2.StatusResponse:
        return self._admin.Status(
            index_admin_pb2.StatusRequest(), timeout=self.timeout_s, metadata=self._admin_metadata
        )

    def reload(self, version: int = 0) -> index_admin_pb2.ReloadResponse:
        return self._admin.Reload(
            index_admin_pb2.ReloadRequest(version=version),
            timeout=max(self.timeout_s, 120.0),  # loading a model and index takes a while
            metadata=self._admin_metadata,
        )
