"""Thin gRPC servicers: proto → validated domain query → service call → proto."""

from __future__ import annotations

import math
import time
from datetime import UTC
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from google.protobuf.json_format import MessageToDict

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
    index_admin_pb2,
    index_admin_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    types_pb2,
)
from engine.api import validation
from engine.api.metrics import ServerMetrics
from engine.api.paging import PageToken, encode_token, request_digest
from engine.search.errors import FieldViolation, InvalidArgument, Unavailable
from engine.search.events import Event, now_utc
from engine.search.service import SearchService
from engine.search.types import IndexSummary, SearchResult
from indexer.storage.layout import IndexRoot


def _server_version() -> str:
    try:
        return version("aisle")
    except PackageNotFoundError:
        return "unknown"


def index_info(summary: IndexSummary) -> types_pb2.IndexInfo:
    return types_pb2.IndexInfo(
        version=summary.version,
        model_fingerprint=summary.model_fingerprint,
        item_count=summary.item_count,
        shard_count=summary.shard_count,
        factory=summary.factory,
    )


def _json_safe(value: Any) -> Any:
    """Struct holds JSON values only: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


def _fill(
    response: Any,
    result: SearchResult,
    service: SearchService,
    request: Any,
    started: float,
    *,
    include_fields: bool,
    field_names: tuple[str, ...] = (),
    offset: int = 0,
    k: int = 0,
) -> None:
    for hit in result.hits:
        out = response.hits.add(item_id=hit.item_id, score=hit.score, similarity=hit.similarity)
        if include_fields:
            fields = service.record(hit.row, field_names)
            out.fields.update({key: _json_safe(v) for key, v in fields.items()})
    if result.has_more:
        response.next_page_token = encode_token(
            PageToken(offset + k, result.index.version, request_digest(request))
        )
    response.index.CopyFrom(index_info(result.index))
    timings = result.timings_ms
    response.timings.CopyFrom(
        types_pb2.Timings(
            encode_ms=timings.get("encode_ms", 0.0),
            search_ms=timings.get("search_ms", 0.0),
            rerank_ms=timings.get("rerank_ms", 0.0),
            total_ms=(time.perf_counter() - started) * 1e3,
        )
    )


def _fill_search_extras(
    response: retrieval_pb2.SearchResponse, query: Any, result: SearchResult
) -> None:
    """The mode that answered, and what query understanding took out of the query."""
    response.mode = validation.MODE_ENUMS[result.mode]
    parsed = query.parsed
    if parsed is not None:
        response.parsed_query.text = parsed.text
        if parsed.price_min is not None:
            response.parsed_query.price.min = parsed.price_min
        if parsed.price_max is not None:
            response.parsed_query.price.max = parsed.price_max


def _fill_facets(response: retrieval_pb2.SearchResponse, result: SearchResult) -> None:
    for name, values in result.facets.items():
        facet = response.facets.add(field=name)
        for value, count in values:
            facet.values.add(value=value, count=count)


def _filter_of(request: Any) -> Any:
    """FilterSpec of a Recommend/SimilarItems request (item ids excluded via their rows)."""
    violations: list = []
    spec, excluded = validation.filter_spec(request.filter, "", violations)
    if violations:
        raise InvalidArgument(
            "; ".join(f"{v.field}: {v.description}" for v in violations), violations
        )
    return spec, excluded


class ServiceSlot:
    """Where servicers find the search service; empty while the server is still loading."""

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self.service: SearchService | None = None
        self.metrics = metrics

    def observe(self, result: SearchResult) -> None:
        if self.metrics is not None:
            self.metrics.observe_stages(result.timings_ms)

    def get(self) -> SearchService:
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
        query = validation.search_query(request, self._service.snapshot.summary.version)
        result = self._service.search(query, timeout_s=context.time_remaining())
        self._slot.observe(result)
        response = retrieval_pb2.SearchResponse(personalized=result.personalized)
        _fill_facets(response, result)
        _fill_search_extras(response, query, result)
        _fill(
            response,
            result,
            self._service,
            request,
            started,
            include_fields=request.include_fields,
            field_names=tuple(request.field_names),
            offset=query.offset,
            k=query.k,
        )
        return response

    def BatchSearch(self, request, context):  # noqa: N802
        started = time.perf_counter()
        if not 1 <= len(request.requests) <= validation.MAX_BATCH:
            raise InvalidArgument.field(
                "requests",
                f"give 1 to {validation.MAX_BATCH} requests, got {len(request.requests)}",
            )
        version = self._service.snapshot.summary.version
        queries = [
            validation.search_query(r, version, prefix=f"requests[{i}].")
            for i, r in enumerate(request.requests)
        ]
        results = self._service.search_batch(queries, timeout_s=context.time_remaining())
        for result in results:
            self._slot.observe(result)
        response = retrieval_pb2.BatchSearchResponse()
        for sub, query, result in zip(request.requests, queries, results, strict=True):
            out = response.responses.add(personalized=result.personalized)
            _fill_facets(out, result)
            _fill_search_extras(out, query, result)
            _fill(
                out,
                result,
                self._service,
                sub,
                started,
                include_fields=sub.include_fields,
                field_names=tuple(sub.field_names),
                offset=query.offset,
                k=query.k,
            )
        return response

    def Recommend(self, request, context):  # noqa: N802
        started = time.perf_counter()
        validation.check_k(request.k)
        spec, excluded = _filter_of(request)
        if not request.user_id and not request.history_item_ids:
            raise InvalidArgument.field("user_id", "give user_id or history_item_ids")
        if len(request.user_id) > 256:
            raise InvalidArgument.field("user_id", "at most 256 characters")
        if len(request.history_item_ids) > validation.MAX_RECENT_ITEMS:
            raise InvalidArgument.field(
                "history_item_ids", f"at most {validation.MAX_RECENT_ITEMS} ids"
            )
        version = self._service.snapshot.summary.version
        offset = validation.page_offset(request, version, request.k)
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
        _fill(
            response,
            result,
            self._service,
            request,
            started,
            include_fields=request.include_fields,
            offset=offset,
            k=request.k,
        )
        return response

    def SimilarItems(self, request, context):  # noqa: N802
        started = time.perf_counter()
        validation.check_k(request.k)
        if not request.item_id:
            raise InvalidArgument.field("item_id", "must not be empty")
        spec, excluded = _filter_of(request)
        version = self._service.snapshot.summary.version
        offset = validation.page_offset(request, version, request.k)
        result = self._service.similar_items(
            request.item_id, request.k, offset, spec=self._service.exclude(spec, excluded)
        )
        response = retrieval_pb2.SimilarItemsResponse()
        _fill(
            response,
            result,
            self._service,
            request,
            started,
            include_fields=request.include_fields,
            offset=offset,
            k=request.k,
        )
        return response

    def Embed(self, request, context):  # noqa: N802
        texts = validation.embed_texts(request)
        vectors, snap = self._service.embed(
            texts, items=request.kind == retrieval_pb2.EMBED_KIND_ITEM
        )
        return retrieval_pb2.EmbedResponse(
            embeddings=[retrieval_pb2.Embedding(values=v.tolist()) for v in vectors],
            dim=int(vectors.shape[1]),
            model_fingerprint=snap.summary.model_fingerprint,
        )


MAX_UPSERT = 1000
MAX_DELETE = 10_000


class IndexAdminServicer(index_admin_pb2_grpc.IndexAdminServicer):
    def __init__(self, slot: ServiceSlot, index_path: str) -> None:
        self._slot = slot
        self._index_path = index_path

    @property
    def _service(self) -> SearchService:
        return self._slot.get()

    def Upsert(self, request, context):  # noqa: N802
        if not 1 <= len(request.items) <= MAX_UPSERT:
            raise InvalidArgument.field(
                "items", f"give 1 to {MAX_UPSERT} items, got {len(request.items)}"
            )
        records = []
        for i, item in enumerate(request.items):
            if not 1 <= len(item.item_id) <= 256:
                raise InvalidArgument.field(f"items[{i}].item_id", "1 to 256 characters")
            fields = MessageToDict(item.fields)
            if "item_id" in fields and fields["item_id"] != item.item_id:
                raise InvalidArgument.field(f"items[{i}].fields.item_id", "differs from item_id")
            records.append({**fields, "item_id": item.item_id})
        if len({r["item_id"] for r in records}) != len(records):
            raise InvalidArgument.field("items", "an item id appears twice")
        if request.mode == index_admin_pb2.UPSERT_MODE_ATTRIBUTES_ONLY:
            updates = {r.pop("item_id"): r for r in records}
            seq = self._service.update_attributes(updates)
        else:
            seq = self._service.upsert(records)
        return index_admin_pb2.UpsertResponse(upserted=len(records), log_sequence=seq)

    def Delete(self, request, context):  # noqa: N802
        if not 1 <= len(request.item_ids) <= MAX_DELETE:
            raise InvalidArgument.field(
                "item_ids", f"give 1 to {MAX_DELETE} ids, got {len(request.item_ids)}"
            )
        seq, deleted, not_found = self._service.delete(list(request.item_ids))
        return index_admin_pb2.DeleteResponse(
            deleted=deleted, not_found=not_found, log_sequence=seq
        )

    def Reload(self, request, context):  # noqa: N802
        if request.version < 0:
            raise InvalidArgument.field("version", "must be 0 (CURRENT) or a published version")
        previous, summary = self._service.reload(request.version)
        return index_admin_pb2.ReloadResponse(previous_version=previous, index=index_info(summary))

    def Status(self, request, context):  # noqa: N802
        snap = self._service.snapshot
        response = index_admin_pb2.StatusResponse(
            index=index_info(snap.summary),
            uptime_s=time.time() - self._service.started_at,
            pending_updates=self._service.pending_updates(),
            server_version=_server_version(),
        )
        for shard in snap.index.manifest.shards:
            response.shards.add(shard=shard.shard, item_count=shard.count, location="local")
        try:
            response.available_versions.extend(IndexRoot(self._index_path).versions())
        except (OSError, ValueError):
            pass  # served from a bare version dir: there is no root to list
        return response


EVENT_TYPE_NAMES = {
    events_pb2.EVENT_TYPE_VIEW: "view",
    events_pb2.EVENT_TYPE_CLICK: "click",
    events_pb2.EVENT_TYPE_ADD_TO_CART: "add_to_cart",
    events_pb2.EVENT_TYPE_PURCHASE: "purchase",
}
MAX_EVENTS = 1000


class EventsServicer(events_pb2_grpc.EventsServicer):
    def __init__(self, slot: ServiceSlot) -> None:
        self._slot = slot

    def Record(self, request, context):  # noqa: N802
        if not 1 <= len(request.events) <= MAX_EVENTS:
            raise InvalidArgument.field(
                "events", f"give 1 to {MAX_EVENTS} events, got {len(request.events)}"
            )
        violations = []
        events = []
        received = now_utc()
        for i, e in enumerate(request.events):
            if not 1 <= len(e.user_id) <= 256:
                violations.append(FieldViolation(f"events[{i}].user_id", "1 to 256 characters"))
            if not e.item_id:
                violations.append(FieldViolation(f"events[{i}].item_id", "must be set"))
            if e.type not in EVENT_TYPE_NAMES:
                violations.append(
                    FieldViolation(
                        f"events[{i}].type", "must be VIEW, CLICK, ADD_TO_CART or PURCHASE"
                    )
                )
            if len(e.query) > validation.MAX_QUERY_CHARS:
                violations.append(FieldViolation(f"events[{i}].query", "at most 1000 characters"))
            when = e.time.ToDatetime(tzinfo=UTC) if e.HasField("time") else received
            events.append(
                Event(e.user_id, e.item_id, EVENT_TYPE_NAMES.get(e.type, ""), e.query, when)
            )
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations), violations
            )
        recorded = self._slot.get().record_events(events)
        return events_pb2.RecordResponse(recorded=recorded)
