"""Request validation: protobuf requests in, validated domain queries out, or a typed error."""

from __future__ import annotations

import math

from aisle.v1 import retrieval_pb2
from engine.errors import FieldViolation, InvalidArgument, Unimplemented
from engine.paging import MAX_DEPTH, decode_token, request_digest
from engine.service import SearchQuery

MAX_K = 1000
MAX_QUERY_CHARS = 1000
MAX_RECENT_ITEMS = 100
MAX_BATCH = 256
MAX_EMBED_TEXTS = 256
MAX_EMBED_CHARS = 10_000
MAX_EFFORT = 65_536
MAX_CANDIDATES = 10_000
DEFAULT_PERSONALIZATION_WEIGHT = 0.3


def check_k(k: int, field: str = "k") -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument.field(field, f"must be between 1 and {MAX_K}, got {k}")


def page_offset(request, index_version: int, k: int, prefix: str = "") -> int:
    """The page's start offset from the request's page token (0 without one)."""
    if not request.page_token:
        return 0
    offset = decode_token(
        request.page_token, digest=request_digest(request), index_version=index_version
    )
    if offset + k > MAX_DEPTH:
        raise InvalidArgument.field(f"{prefix}page_token", f"pages end at result {MAX_DEPTH}")
    return offset


def _unsupported(request: retrieval_pb2.SearchRequest) -> list[str]:
    """Published fields of SearchRequest that this server does not serve yet."""
    names = []
    if request.HasField("filter"):
        names.append("filter")
    if request.HasField("boost"):
        names.append("boost")
    if request.HasField("sort"):
        names.append("sort")
    if request.facets:
        names.append("facets")
    if request.HasField("diversity"):
        names.append("diversity")
    if request.user_id:
        names.append("user_id")
    if request.mode in (retrieval_pb2.SEARCH_MODE_LEXICAL, retrieval_pb2.SEARCH_MODE_HYBRID):
        names.append("mode (only dense retrieval is served)")
    return names


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
    if any(not i for i in request.recent_item_ids):
        violations.append(FieldViolation(f"{prefix}recent_item_ids", "contains an empty id"))
    weight = request.personalization_weight
    if math.isnan(weight) or not 0.0 <= weight <= 1.0:
        violations.append(
            FieldViolation(f"{prefix}personalization_weight", f"must be in [0, 1], got {weight}")
        )
    params: dict[str, int] = {}
    effort = request.effort
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
    if effort.candidates and not request.k <= effort.candidates <= MAX_CANDIDATES:
        violations.append(
            FieldViolation(f"{prefix}effort.candidates", f"must be between k and {MAX_CANDIDATES}")
        )
    if not request.include_fields and request.field_names:
        violations.append(
            FieldViolation(f"{prefix}field_names", "only meaningful with include_fields")
        )
    if violations:
        raise InvalidArgument(
            "; ".join(f"{v.field}: {v.description}" for v in violations), violations
        )
    unsupported = _unsupported(request)
    if unsupported:
        raise Unimplemented(
            f"this server does not serve {', '.join(prefix + n for n in unsupported)} yet; "
            "send the request without them"
        )
    offset = page_offset(request, index_version, request.k, prefix)
    return SearchQuery(
        text=text,
        k=request.k,
        offset=offset,
        recent_item_ids=tuple(request.recent_item_ids),
        personalization_weight=weight or DEFAULT_PERSONALIZATION_WEIGHT,
        search_params=params,
        fetch_depth=effort.candidates,
    )


def embed_texts(request: retrieval_pb2.EmbedRequest) -> list[str]:
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
