"""Thin gRPC servicers: proto → domain (engine.api.convert) → service call → proto."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
    index_admin_pb2,
    index_admin_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from engine.api import convert
from engine.api.metrics import ServerMetrics
from engine.search.errors import InvalidArgument, Unavailable, Unimplemented
from engine.search.events import now_utc
from engine.search.service import SearchService
from engine.search.types import SearchResult
from indexer.storage.layout import IndexRoot


def _server_version() -> str:
    try:
        return version("aisle")
    except PackageNotFoundError:
        return "unknown"


def _fields(
    service: SearchService, result: SearchResult, include: bool, names: tuple[str, ...] = ()
) -> list[dict[str, Any]] | None:
    """Each hit's record (only `names`, when given), or None when the request wants none."""
    return [service.record(hit.row, names) for hit in result.hits] if include else None


class ServiceSlot:
    """Where servicers find the service (a SearchService, or a shard server's ShardService);
    empty while the server is still loading."""

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self.service: Any = None
        self.metrics = metrics

    def observe(self, result: SearchResult) -> None:
        if self.metrics is not None:
            self.metrics.observe_stages(result.timings_ms)

    def get(self) -> Any:
        service = self.service
        if service is None:
            raise Unavailable("the server is still loading its model and index; retry shortly")
        return service


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServicer):
    def __init__(self, slot: ServiceSlot) -> None:
        self._slot = slot

    @property
    def _service(self) -> SearchService:
        return self._slot.get()

    def Search(self, request, context):  # noqa: N802 (gRPC method names)
        started = time.perf_counter()
        query = convert.search_query(request, self._service.snapshot.summary.version)
        result = self._service.search(query, timeout_s=context.time_remaining())
        self._slot.observe(result)
        response = retrieval_pb2.SearchResponse()
        fields = _fields(self._service, result, request.include_fields, tuple(request.field_names))
        convert.fill_search(response, request, query, result, started, fields)
        return response

    def BatchSearch(self, request, context):  # noqa: N802
        started = time.perf_counter()
        if not 1 <= len(request.requests) <= convert.MAX_BATCH:
            raise InvalidArgument.field(
                "requests",
                f"give 1 to {convert.MAX_BATCH} requests, got {len(request.requests)}",
            )
        version = self._service.snapshot.summary.version
        queries = [
            convert.search_query(r, version, prefix=f"requests[{i}].")
            for i, r in enumerate(request.requests)
        ]
        results = self._service.search_batch(queries, timeout_s=context.time_remaining())
        for result in results:
            self._slot.observe(result)
        response = retrieval_pb2.BatchSearchResponse()
        for sub, query, result in zip(request.requests, queries, results, strict=True):
            fields = _fields(self._service, result, sub.include_fields, tuple(sub.field_names))
            convert.fill_search(response.responses.add(), sub, query, result, started, fields)
        return response

    def Recommend(self, request, context):  # noqa: N802
        started = time.perf_counter()
        convert.check_k(request.k)
        spec, excluded = convert.filter_of(request.filter)
        if not request.user_id and not request.history_item_ids:
            raise InvalidArgument.field("user_id", "give user_id or history_item_ids")
        if len(request.user_id) > 256:
            raise InvalidArgument.field("user_id", "at most 256 characters")
        if len(request.history_item_ids) > convert.MAX_RECENT_ITEMS:
            raise InvalidArgument.field(
                "history_item_ids", f"at most {convert.MAX_RECENT_ITEMS} ids"
            )
        version = self._service.snapshot.summary.version
        offset = convert.page_offset(request, version, request.k)
        result = self._service.recommend(
            request.k,
            user_id=request.user_id,
            history=tuple(request.history_item_ids),
            include_seen=request.include_seen,
            offset=offset,
            expected_version=version if offset else None,
            spec=self._service.exclude(spec, excluded),
        )
        self._slot.observe(result)
        response = retrieval_pb2.RecommendResponse(popularity_fallback=result.popularity_fallback)
        fields = _fields(self._service, result, request.include_fields)
        convert.fill_results(
            response, result, request, started, fields=fields, offset=offset, k=request.k
        )
        return response

    def SimilarItems(self, request, context):  # noqa: N802
        started = time.perf_counter()
        convert.check_k(request.k)
        if not 1 <= len(request.item_id) <= convert.MAX_ID_CHARS:
            raise InvalidArgument.field("item_id", f"1 to {convert.MAX_ID_CHARS} characters")
        spec, excluded = convert.filter_of(request.filter)
        version = self._service.snapshot.summary.version
        offset = convert.page_offset(request, version, request.k)
        result = self._service.similar_items(
            request.item_id, request.k, offset, spec=self._service.exclude(spec, excluded)
        )
        response = retrieval_pb2.SimilarItemsResponse()
        fields = _fields(self._service, result, request.include_fields)
        convert.fill_results(
            response, result, request, started, fields=fields, offset=offset, k=request.k
        )
        return response

    def Embed(self, request, context):  # noqa: N802
        texts = convert.embed_texts(request)
        vectors, snap = self._service.embed(
            texts, items=request.kind == retrieval_pb2.EMBED_KIND_ITEM
        )
        return retrieval_pb2.EmbedResponse(
            embeddings=[retrieval_pb2.Embedding(values=v.tolist()) for v in vectors],
            dim=int(vectors.shape[1]),
            model_fingerprint=snap.summary.model_fingerprint,
        )


class IndexAdminServicer(index_admin_pb2_grpc.IndexAdminServicer):
    """IndexAdmin over a SearchService. `no_live_updates` says why this server refuses Upsert
    and Delete (UNIMPLEMENTED; a router's), "" when it takes them."""

    def __init__(self, slot: ServiceSlot, index_path: str, no_live_updates: str = "") -> None:
        self._slot = slot
        self._index_path = index_path
        self._no_live_updates = no_live_updates

    @property
    def _service(self) -> SearchService:
        return self._slot.get()

    def Upsert(self, request, context):  # noqa: N802
        if self._no_live_updates:
            raise Unimplemented(f"Upsert: {self._no_live_updates}")
        records = convert.upsert_records(request)
        if request.mode == index_admin_pb2.UPSERT_MODE_ATTRIBUTES_ONLY:
            updates = {r.pop("item_id"): r for r in records}
            seq = self._service.update_attributes(updates)
        else:
            seq = self._service.upsert(records)
        return index_admin_pb2.UpsertResponse(upserted=len(records), log_sequence=seq)

    def Delete(self, request, context):  # noqa: N802
        if self._no_live_updates:
            raise Unimplemented(f"Delete: {self._no_live_updates}")
        if not 1 <= len(request.item_ids) <= convert.MAX_DELETE:
            raise InvalidArgument.field(
                "item_ids", f"give 1 to {convert.MAX_DELETE} ids, got {len(request.item_ids)}"
            )
        for i, item_id in enumerate(request.item_ids):
            if not 1 <= len(item_id) <= convert.MAX_ID_CHARS:
                raise InvalidArgument.field(
                    f"item_ids[{i}]", f"1 to {convert.MAX_ID_CHARS} characters"
                )
        seq, deleted, not_found = self._service.delete(list(request.item_ids))
        return index_admin_pb2.DeleteResponse(
            deleted=deleted, not_found=not_found, log_sequence=seq
        )

    def Reload(self, request, context):  # noqa: N802
        if request.version < 0:
            raise InvalidArgument.field("version", "must be 0 (CURRENT) or a published version")
        previous, summary = self._service.reload(request.version)
        return index_admin_pb2.ReloadResponse(
            previous_version=previous, index=convert.index_info(summary)
        )

    def Status(self, request, context):  # noqa: N802
        snap = self._service.snapshot
        response = index_admin_pb2.StatusResponse(
            index=convert.index_info(snap.summary),
            uptime_s=time.time() - self._service.started_at,
            pending_updates=self._service.pending_updates(),
            server_version=_server_version(),
            query_tower=snap.encoder.query_tower,
        )
        for shard in snap.index.manifest.shards:
            location = snap.retriever.location(shard.shard)
            response.shards.add(shard=shard.shard, item_count=shard.count, location=location)
        response.available_versions.extend(available_versions(self._index_path))
        return response


def available_versions(index_path: str) -> list[int]:
    """The versions published in the index root; none when serving a bare version dir."""
    try:
        return IndexRoot(index_path).versions()
    except (OSError, ValueError):
        return []  # served from a bare version dir: there is no root to list


class EventsServicer(events_pb2_grpc.EventsServicer):
    def __init__(self, slot: ServiceSlot) -> None:
        self._slot = slot

    def Record(self, request, context):  # noqa: N802
        events = convert.events(request, now_utc())
        recorded = self._slot.get().record_events(events)
        return events_pb2.RecordResponse(recorded=recorded)
