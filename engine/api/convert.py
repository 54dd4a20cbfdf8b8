"""The one converter each way: proto requests → validated domain values (or a typed error),
and domain results → proto responses, for the public API and the shard API alike."""

from __future__ import annotations

import dataclasses
import math
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from google.protobuf.json_format import MessageToDict

from aisle.v1 import events_pb2, index_admin_pb2, retrieval_pb2, types_pb2
from engine.api.paging import MAX_DEPTH, PageToken, decode_token, encode_token, request_digest
from engine.search.errors import FieldViolation, InvalidArgument
from engine.search.events import Event
from engine.search.fusion import FusionParams
from engine.search.query import parse_query
from engine.search.types import (
    DEFAULT_FUSION,
    MODE_DEFAULT,
    MODE_DENSE,
    MODE_HYBRID,
    MODE_LEXICAL,
    IndexSummary,
    SearchQuery,
    SearchResult,
)
from indexer.rerank.specs import BoostSpec, DiversitySpec, FilterSpec

MAX_K = 1000
MAX_QUERY_CHARS = 1000
MAX_RECENT_ITEMS = 100
MAX_BATCH = 256
MAX_EMBED_TEXTS = 256
MAX_EMBED_CHARS = 10_000
MAX_EFFORT = 65_536
MAX_CANDIDATES = 10_000
DEFAULT_PERSONALIZATION_WEIGHT = 0.3
MAX_BRANDS = 1000
MAX_ATTRIBUTE_RANGES = 32
MAX_EXCLUDED = 10_000
MAX_BOOST_WEIGHT = 10.0
FACET_FIELDS = ("category", "brand")
MAX_UPSERT = 1000
MAX_DELETE = 10_000
MAX_EVENTS = 1000
MAX_REQUEST_ID_CHARS = 64  # Event.request_id (the server's ids are 29 characters)
MAX_POSITION = 10_000  # Event.position
MAX_ID_CHARS = 256
MAX_ITEM_FIELDS_BYTES = 64 * 1024  # an item's fields, serialized: a page of hits must fit a reply
# The Timestamp range (0001-01-01 to 9999-12-31 UTC): outside it a time is not a time.
MIN_TIMESTAMP_S = -62_135_596_800
MAX_TIMESTAMP_S = 253_402_300_799
EVENT_TYPE_NAMES = {
    events_pb2.EVENT_TYPE_VIEW: "view",
    events_pb2.EVENT_TYPE_CLICK: "click",
    events_pb2.EVENT_TYPE_ADD_TO_CART: "add_to_cart",
    events_pb2.EVENT_TYPE_PURCHASE: "purchase",
}

# ----------------------------------------------------------------------------- proto → domain


def check_k(k: int, field: str = "k") -> None:
    """INVALID_ARGUMENT unless 1 <= k <= MAX_K."""
    if not 1 <= k <= MAX_K:
        raise InvalidArgument.field(field, f"must be between 1 and {MAX_K}, got {k}")


def page_offset(request, index_version: int, k: int, prefix: str = "") -> int:
    """The page's start offset from the request's page token (0 without one)."""
    if not request.page_token:
        return 0
    offset = decode_token(
        request.page_token,
        digest=request_digest(request),
        index_version=index_version,
        field=f"{prefix}page_token",
    )
    if offset + k > MAX_DEPTH:
        raise InvalidArgument.field(f"{prefix}page_token", f"pages end at result {MAX_DEPTH}")
    return offset


def _range(
    message, field: str, violations: list[FieldViolation]
) -> tuple[float | None, float | None]:
    lo = message.min if message.HasField("min") else None
    hi = message.max if message.HasField("max") else None
    for name, value in (("min", lo), ("max", hi)):
        if value is not None and not math.isfinite(value):
            violations.append(FieldViolation(f"{field}.{name}", f"must be finite, got {value}"))
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi) and lo > hi:
        violations.append(FieldViolation(field, f"min {lo} is above max {hi}"))
    return lo, hi


def filter_spec(
    message, prefix: str, violations: list[FieldViolation]
) -> tuple[FilterSpec | None, tuple[str, ...]]:
    """A proto Filter as a FilterSpec (None when unset) and the item ids it excludes."""
    field = f"{prefix}filter"
    if len(message.brands) > MAX_BRANDS:
        violations.append(FieldViolation(f"{field}.brands", f"at most {MAX_BRANDS} brands"))
    if len(message.attributes) > MAX_ATTRIBUTE_RANGES:
        violations.append(
            FieldViolation(f"{field}.attributes", f"at most {MAX_ATTRIBUTE_RANGES} ranges")
        )
    if len(message.exclude_item_ids) > MAX_EXCLUDED:
        violations.append(
            FieldViolation(f"{field}.exclude_item_ids", f"at most {MAX_EXCLUDED} ids")
        )
    price_min, price_max = _range(message.price, f"{field}.price", violations)
    ranges = []
    for i, attribute in enumerate(message.attributes):
        if not attribute.name:
            violations.append(FieldViolation(f"{field}.attributes[{i}].name", "must be set"))
        lo, hi = _range(attribute.range, f"{field}.attributes[{i}].range", violations)
        ranges.append((attribute.name, lo, hi))
    if violations:
        return None, ()
    try:
        spec = FilterSpec(
            category_prefix=message.category_prefix.strip(),
            brands=tuple(b for b in message.brands if b),
            price_min=price_min,
            price_max=price_max,
            attribute_ranges=tuple(ranges),
            in_stock=message.in_stock if message.HasField("in_stock") else None,
        )
    except ValueError as error:
        violations.append(FieldViolation(field, str(error)))
        return None, ()
    excluded = tuple(i for i in message.exclude_item_ids if i)
    return (None if spec == FilterSpec() else spec), excluded


def filter_of(message: types_pb2.Filter) -> tuple[FilterSpec | None, tuple[str, ...]]:
    """`filter_spec` of a request's only filter; INVALID_ARGUMENT when it is bad."""
    violations: list[FieldViolation] = []
    spec, excluded = filter_spec(message, "", violations)
    if violations:
        raise InvalidArgument.of(violations)
    return spec, excluded


def boost_spec(message, prefix: str, violations: list[FieldViolation]) -> BoostSpec | None:
    """A proto Boost as a BoostSpec (None when every weight is 0)."""
    weights = {"popularity": message.popularity, "rating": message.rating, "margin": message.margin}
    for name, value in weights.items():
        if not math.isfinite(value) or abs(value) > MAX_BOOST_WEIGHT:
            violations.append(
                FieldViolation(
                    f"{prefix}boost.{name}", f"must be in [-{MAX_BOOST_WEIGHT}, {MAX_BOOST_WEIGHT}]"
                )
            )
    if violations or not any(weights.values()):
        return None
    return BoostSpec(**weights)


def search_params(effort, prefix: str, violations: list[FieldViolation]) -> dict[str, int]:
    """A proto SearchEffort's FAISS parameters ({"nprobe": n, "efSearch": n}, those set)."""
    params: dict[str, int] = {}
    for name, value, key in (
        ("nprobe", effort.nprobe, "nprobe"),
        ("ef_search", effort.ef_search, "efSearch"),
    ):
        if value < 0 or value > MAX_EFFORT:
            violations.append(
                FieldViolation(f"{prefix}effort.{name}", f"must be between 1 and {MAX_EFFORT}")
            )
        elif value:
            params[key] = value
    return params


def _diversity(message, prefix: str, violations: list[FieldViolation]) -> DiversitySpec | None:
    if not 0 <= message.max_per_category <= MAX_K:
        violations.append(
            FieldViolation(f"{prefix}diversity.max_per_category", f"must be 0..{MAX_K}")
        )
    if not (math.isfinite(message.mmr_lambda) and 0.0 <= message.mmr_lambda <= 1.0):
        violations.append(FieldViolation(f"{prefix}diversity.mmr_lambda", "must be in [0, 1]"))
    if violations or not (message.max_per_category or message.mmr_lambda):
        return None
    return DiversitySpec(max_per_category=message.max_per_category, mmr_lambda=message.mmr_lambda)


MODES = {
    retrieval_pb2.SEARCH_MODE_UNSPECIFIED: MODE_DEFAULT,
    retrieval_pb2.SEARCH_MODE_DENSE: MODE_DENSE,
    retrieval_pb2.SEARCH_MODE_LEXICAL: MODE_LEXICAL,
    retrieval_pb2.SEARCH_MODE_HYBRID: MODE_HYBRID,
}
MODE_ENUMS = {name: value for value, name in MODES.items()}
MAX_RRF_K = 1000


def _fusion(request, prefix: str, violations: list[FieldViolation]) -> FusionParams | None:
    """The request's fusion settings; None (the server default) when unset."""
    if not request.HasField("fusion"):
        return None
    f = request.fusion
    field = f"{prefix}fusion"
    if f.HasField("dense_weight") and not (
        math.isfinite(f.dense_weight) and 0.0 <= f.dense_weight <= 1.0
    ):
        violations.append(FieldViolation(f"{field}.dense_weight", "must be in [0, 1]"))
    if not 0 <= f.rrf_k <= MAX_RRF_K:
        violations.append(FieldViolation(f"{field}.rrf_k", f"must be 0..{MAX_RRF_K}"))
    if f.method not in (
        retrieval_pb2.FUSION_METHOD_UNSPECIFIED,
        retrieval_pb2.FUSION_METHOD_RRF,
        retrieval_pb2.FUSION_METHOD_BLEND,
    ):
        violations.append(FieldViolation(f"{field}.method", f"unknown method {f.method}"))
    if violations:
        return None
    if f.method == retrieval_pb2.FUSION_METHOD_RRF:
        return FusionParams(method="rrf", k_rrf=f.rrf_k or 60)
    alpha = f.dense_weight if f.HasField("dense_weight") else DEFAULT_FUSION.alpha
    return FusionParams(method="blend", alpha=alpha, norm=DEFAULT_FUSION.norm)


def _with_price(
    spec: FilterSpec | None, price_min: float | None, price_max: float | None
) -> FilterSpec:
    """`spec` with a parsed price range intersected into its own."""
    spec = spec or FilterSpec()
    lo = [v for v in (spec.price_min, price_min) if v is not None]
    hi = [v for v in (spec.price_max, price_max) if v is not None]
    if lo and hi and max(lo) > min(hi):
        raise InvalidArgument.field(
            "query",
            f"its price expression ({price_min} to {price_max}) contradicts filter.price; "
            "fix one, or set disable_query_parsing",
        )
    return dataclasses.replace(
        spec, price_min=max(lo) if lo else None, price_max=min(hi) if hi else None
    )


def search_query(
    request: retrieval_pb2.SearchRequest, index_version: int, prefix: str = ""
) -> SearchQuery:
    """Validate a SearchRequest; `prefix` names its place in a batch ("requests[3].")."""
    violations: list[FieldViolation] = []
    text = request.query.strip()
    if not text:
        violations.append(FieldViolation(f"{prefix}query", "must not be empty"))
    elif len(text) > MAX_QUERY_CHARS:
        violations.append(
            FieldViolation(
                f"{prefix}query", f"is {len(text)} characters; at most {MAX_QUERY_CHARS}"
            )
        )
    if not 1 <= request.k <= MAX_K:
        violations.append(
            FieldViolation(f"{prefix}k", f"must be between 1 and {MAX_K}, got {request.k}")
        )
    if len(request.recent_item_ids) > MAX_RECENT_ITEMS:
        violations.append(
            FieldViolation(f"{prefix}recent_item_ids", f"at most {MAX_RECENT_ITEMS} ids")
        )
    if len(request.user_id) > 256:
        violations.append(FieldViolation(f"{prefix}user_id", "at most 256 characters"))
    if any(not i for i in request.recent_item_ids):
        violations.append(FieldViolation(f"{prefix}recent_item_ids", "contains an empty id"))
    weight = request.personalization_weight
    if math.isnan(weight) or not 0.0 <= weight <= 1.0:
        violations.append(
            FieldViolation(f"{prefix}personalization_weight", f"must be in [0, 1], got {weight}")
        )
    effort = request.effort
    params = search_params(effort, prefix, violations)
    if effort.candidates and not request.k <= effort.candidates <= MAX_CANDIDATES:
        violations.append(
            FieldViolation(f"{prefix}effort.candidates", f"must be between k and {MAX_CANDIDATES}")
        )
    if not request.include_fields and request.field_names:
        violations.append(
            FieldViolation(f"{prefix}field_names", "only meaningful with include_fields")
        )
    spec, excluded = filter_spec(request.filter, prefix, violations)
    boost = boost_spec(request.boost, prefix, violations)
    diversity = _diversity(request.diversity, prefix, violations)
    for i, name in enumerate(request.facets):
        if name not in FACET_FIELDS:
            violations.append(
                FieldViolation(f"{prefix}facets[{i}]", f"must be one of {', '.join(FACET_FIELDS)}")
            )
    if request.HasField("sort") and not request.sort.attribute:
        violations.append(FieldViolation(f"{prefix}sort.attribute", "must be set"))
    mode = MODES.get(request.mode)
    if mode is None:
        violations.append(FieldViolation(f"{prefix}mode", f"unknown mode {request.mode}"))
    fusion = _fusion(request, prefix, violations)
    if violations:
        raise InvalidArgument.of(violations)
    parsed = None
    encoded = text
    if not request.disable_query_parsing:
        understood = parse_query(text)
        if understood.expressions:
            parsed = understood
            encoded = understood.text or text  # a query that was only a price: keep it all
            spec = _with_price(spec, understood.price_min, understood.price_max)
    offset = page_offset(request, index_version, request.k, prefix)
    return SearchQuery(
        text=encoded,
        lexical_text=encoded,
        parsed=parsed,
        mode=mode,
        fusion=fusion,
        k=request.k,
        offset=offset,
        recent_item_ids=tuple(request.recent_item_ids),
        user_id=request.user_id,
        personalization_weight=weight or DEFAULT_PERSONALIZATION_WEIGHT,
        search_params=params,
        fetch_depth=effort.candidates,
        filter=spec,
        exclude_item_ids=excluded,
        boost=boost,
        diversity=diversity,
        sort_attribute=request.sort.attribute,
        sort_descending=request.sort.descending,
        facets=tuple(dict.fromkeys(request.facets)),
        field_prefix=prefix,
    )


def embed_texts(request: retrieval_pb2.EmbedRequest) -> list[str]:
    """The texts of an EmbedRequest, each 1 to MAX_EMBED_CHARS characters."""
    if not 1 <= len(request.texts) <= MAX_EMBED_TEXTS:
        raise InvalidArgument.field(
            "texts", f"give 1 to {MAX_EMBED_TEXTS} texts, got {len(request.texts)}"
        )
    violations = [
        FieldViolation(f"texts[{i}]", f"must be 1 to {MAX_EMBED_CHARS} characters")
        for i, t in enumerate(request.texts)
        if not t.strip() or len(t) > MAX_EMBED_CHARS
    ]
    if violations:
        raise InvalidArgument(violations[0].field + ": " + violations[0].description, violations)
    return list(request.texts)


def upsert_records(request: index_admin_pb2.UpsertRequest) -> list[dict[str, Any]]:
    """The items of an UpsertRequest as catalog records (fields plus item_id)."""
    if not 1 <= len(request.items) <= MAX_UPSERT:
        raise InvalidArgument.field(
            "items", f"give 1 to {MAX_UPSERT} items, got {len(request.items)}"
        )
    records = []
    for i, item in enumerate(request.items):
        if not 1 <= len(item.item_id) <= MAX_ID_CHARS:
            raise InvalidArgument.field(f"items[{i}].item_id", f"1 to {MAX_ID_CHARS} characters")
        size = item.fields.ByteSize()
        if size > MAX_ITEM_FIELDS_BYTES:
            raise InvalidArgument.field(
                f"items[{i}].fields", f"is {size} bytes serialized; at most {MAX_ITEM_FIELDS_BYTES}"
            )
        fields = MessageToDict(item.fields)
        if "item_id" in fields and fields["item_id"] != item.item_id:
            raise InvalidArgument.field(f"items[{i}].fields.item_id", "differs from item_id")
        records.append({**fields, "item_id": item.item_id})
    if len({r["item_id"] for r in records}) != len(records):
        raise InvalidArgument.field("items", "an item id appears twice")
    return records


def events(request: events_pb2.RecordRequest, received: datetime) -> list[Event]:
    """The events of a RecordRequest; one without a time gets `received` (aware UTC)."""
    if not 1 <= len(request.events) <= MAX_EVENTS:
        raise InvalidArgument.field(
            "events", f"give 1 to {MAX_EVENTS} events, got {len(request.events)}"
        )
    violations = []
    out = []
    for i, e in enumerate(request.events):
        if not 1 <= len(e.user_id) <= 256:
            violations.append(FieldViolation(f"events[{i}].user_id", "1 to 256 characters"))
        if not e.item_id:
            violations.append(FieldViolation(f"events[{i}].item_id", "must be set"))
        if e.type not in EVENT_TYPE_NAMES:
            violations.append(
                FieldViolation(f"events[{i}].type", "must be VIEW, CLICK, ADD_TO_CART or PURCHASE")
            )
        if len(e.query) > MAX_QUERY_CHARS:
            violations.append(FieldViolation(f"events[{i}].query", "at most 1000 characters"))
        when = received
        if e.HasField("time"):
            if not (
                MIN_TIMESTAMP_S <= e.time.seconds <= MAX_TIMESTAMP_S
                and 0 <= e.time.nanos < 1_000_000_000
            ):
                violations.append(
                    FieldViolation(f"events[{i}].time", "must be within 0001-01-01..9999-12-31")
                )
                continue
            when = e.time.ToDatetime(tzinfo=UTC)
        if len(e.request_id) > MAX_REQUEST_ID_CHARS:
            violations.append(
                FieldViolation(
                    f"events[{i}].request_id", f"at most {MAX_REQUEST_ID_CHARS} characters"
                )
            )
        if not 0 <= e.position <= MAX_POSITION:
            violations.append(
                FieldViolation(
                    f"events[{i}].position",
                    f"0 (unknown) or a 1-based position up to {MAX_POSITION}",
                )
            )
        out.append(
            Event(
                e.user_id,
                e.item_id,
                EVENT_TYPE_NAMES.get(e.type, ""),
                e.query,
                when,
                request_id=e.request_id,
                position=e.position,
            )
        )
    if violations:
        raise InvalidArgument.of(violations)
    return out


def query_vector(values, dim: int) -> np.ndarray:
    """A shard request's query vector as (dim,) float32, finite."""
    xq = np.asarray(values, dtype=np.float32)  # (dim,)
    if xq.shape != (dim,):
        raise InvalidArgument.field("query_vector", f"must hold {dim} values, got {len(xq)}")
    if not np.isfinite(xq).all():
        raise InvalidArgument.field("query_vector", "holds NaN or infinite values")
    return xq


def vectors_from_bytes(data: bytes, dim: int) -> np.ndarray:
    """The inverse of `vectors_bytes`: (m, dim) float32 (a read-only view of `data`)."""
    if dim < 1 or len(data) % (4 * dim):
        raise ValueError(f"{len(data)} bytes are not whole float32 vectors of dim {dim}")
    return np.frombuffer(data, dtype="<f4").reshape(-1, dim).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- domain → proto


def index_info(summary: IndexSummary) -> types_pb2.IndexInfo:
    """The IndexInfo of a served index version."""
    return types_pb2.IndexInfo(
        version=summary.version,
        model_fingerprint=summary.model_fingerprint,
        item_count=summary.item_count,
        shard_count=summary.shard_count,
        factory=summary.factory,
    )


def filter_proto(spec: FilterSpec | None) -> types_pb2.Filter:
    """The proto form of a validated FilterSpec; exclude_rows travel separately."""
    if spec is None:
        return types_pb2.Filter()
    message = types_pb2.Filter(category_prefix=spec.category_prefix, brands=list(spec.brands))
    if spec.price_min is not None:
        message.price.min = spec.price_min
    if spec.price_max is not None:
        message.price.max = spec.price_max
    for name, lo, hi in spec.attribute_ranges:
        entry = message.attributes.add(name=name)
        if lo is not None:
            entry.range.min = lo
        if hi is not None:
            entry.range.max = hi
    if spec.in_stock is not None:
        message.in_stock = spec.in_stock
    return message


def boost_proto(boost: BoostSpec) -> types_pb2.Boost:
    """The proto form of a BoostSpec."""
    return types_pb2.Boost(popularity=boost.popularity, rating=boost.rating, margin=boost.margin)


def vectors_bytes(vectors: np.ndarray) -> bytes:
    """(m, dim) vectors as the wire format: little-endian float32, row-major."""
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def _json_safe(value: Any) -> Any:
    """Struct holds JSON values only: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


def fill_results(
    response: Any,
    result: SearchResult,
    request: Any,
    started: float,
    *,
    fields: list[dict[str, Any]] | None = None,
    offset: int = 0,
    k: int = 0,
) -> None:
    """Put a page of results on a Search, Recommend or SimilarItems response: the hits (with
    `fields`, each hit's record), the next page's token, the index and the timings (the total
    since `started`, a time.perf_counter())."""
    for i, hit in enumerate(result.hits):
        # A hit with no similarity (a popularity-fallback recommendation: no query or user
        # vector to compare with) reports 0.0, the API's "unrelated", never NaN.
        similarity = hit.similarity if math.isfinite(hit.similarity) else 0.0
        out = response.hits.add(item_id=hit.item_id, score=hit.score, similarity=similarity)
        if fields is not None:
            out.fields.update({key: _json_safe(v) for key, v in fields[i].items()})
    if result.has_more:
        response.next_page_token = encode_token(
            PageToken(offset + k, result.index.version, request_digest(request))
        )
    response.index.CopyFrom(index_info(result.index))
    response.request_id = result.request_id
    timings = result.timings_ms
    response.timings.CopyFrom(
        types_pb2.Timings(
            encode_ms=timings.get("encode_ms", 0.0),
            search_ms=timings.get("search_ms", 0.0),
            rerank_ms=timings.get("rerank_ms", 0.0),
            total_ms=(time.perf_counter() - started) * 1e3,
        )
    )


def fill_search(
    response: retrieval_pb2.SearchResponse,
    request: retrieval_pb2.SearchRequest,
    query: SearchQuery,
    result: SearchResult,
    started: float,
    fields: list[dict[str, Any]] | None = None,
) -> None:
    """A SearchResponse: `fill_results`, and the facets, the mode that answered, what query
    understanding took out of the query, and which shards a partial answer lacks."""
    response.personalized = result.personalized
    for name, values in result.facets.items():
        facet = response.facets.add(field=name)
        for value, count in values:
            facet.values.add(value=value, count=count)
    response.mode = MODE_ENUMS[result.mode]
    parsed = query.parsed
    if parsed is not None:
        response.parsed_query.text = parsed.text
        if parsed.price_min is not None:
            response.parsed_query.price.min = parsed.price_min
        if parsed.price_max is not None:
            response.parsed_query.price.max = parsed.price_max
    response.partial = result.partial
    response.missing_shards.extend(result.missing_shards)
    fill_results(response, result, request, started, fields=fields, offset=query.offset, k=query.k)
