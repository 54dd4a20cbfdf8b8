from aisle.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_LEXICAL: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]
    SEARCH_MODE_RANKED: _ClassVar[SearchMode]

class FusionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_METHOD_UNSPECIFIED: _ClassVar[FusionMethod]
    FUSION_METHOD_RRF: _ClassVar[FusionMethod]
    FUSION_METHOD_BLEND: _ClassVar[FusionMethod]

class EmbedKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBED_KIND_UNSPECIFIED: _ClassVar[EmbedKind]
    EMBED_KIND_QUERY: _ClassVar[EmbedKind]
    EMBED_KIND_ITEM: _ClassVar[EmbedKind]
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_LEXICAL: SearchMode
SEARCH_MODE_HYBRID: SearchMode
SEARCH_MODE_RANKED: SearchMode
FUSION_METHOD_UNSPECIFIED: FusionMethod
FUSION_METHOD_RRF: FusionMethod
FUSION_METHOD_BLEND: FusionMethod
EMBED_KIND_UNSPECIFIED: EmbedKind
EMBED_KIND_QUERY: EmbedKind
EMBED_KIND_ITEM: EmbedKind

class SearchRequest(_message.Message):
    __slots__ = ("query", "k", "filter", "user_id", "recent_item_ids", "personalization_weight", "effort", "page_token", "include_fields", "field_names", "boost", "mode", "sort", "facets", "diversity", "disable_query_parsing", "fusion", "explain")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EFFORT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    FIELD_NAMES_FIELD_NUMBER: _ClassVar[int]
    BOOST_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    FACETS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    DISABLE_QUERY_PARSING_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    query: str
    k: int
    filter: _types_pb2.Filter
    user_id: str
    recent_item_ids: _containers.RepeatedScalarFieldContainer[str]
    personalization_weight: float
    effort: _types_pb2.SearchEffort
    page_token: str
    include_fields: bool
    field_names: _containers.RepeatedScalarFieldContainer[str]
    boost: _types_pb2.Boost
    mode: SearchMode
    sort: _types_pb2.SortBy
    facets: _containers.RepeatedScalarFieldContainer[str]
    diversity: _types_pb2.Diversity
    disable_query_parsing: bool
    fusion: Fusion
    explain: bool
    def __init__(self, query: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., user_id: _Optional[str] = ..., recent_item_ids: _Optional[_Iterable[str]] = ..., personalization_weight: _Optional[float] = ..., effort: _Optional[_Union[_types_pb2.SearchEffort, _Mapping]] = ..., page_token: _Optional[str] = ..., include_fields: _Optional[bool] = ..., field_names: _Optional[_Iterable[str]] = ..., boost: _Optional[_Union[_types_pb2.Boost, _Mapping]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., sort: _Optional[_Union[_types_pb2.SortBy, _Mapping]] = ..., facets: _Optional[_Iterable[str]] = ..., diversity: _Optional[_Union[_types_pb2.Diversity, _Mapping]] = ..., disable_query_parsing: _Optional[bool] = ..., fusion: _Optional[_Union[Fusion, _Mapping]] = ..., explain: _Optional[bool] = ...) -> None: ...

class Fusion(_message.Message):
    __slots__ = ("method", "dense_weight", "rrf_k")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    method: FusionMethod
    dense_weight: float
    rrf_k: int
    def __init__(self, method: _Optional[_Union[FusionMethod, str]] = ..., dense_weight: _Optional[float] = ..., rrf_k: _Optional[int] = ...) -> None: ...

class ParsedQuery(_message.Message):
    __slots__ = ("text", "price")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    text: str
    price: _types_pb2.Range
    def __init__(self, text: _Optional[str] = ..., price: _Optional[_Union[_types_pb2.Range, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "next_page_token", "index", "timings", "partial", "missing_shards", "facets", "parsed_query", "personalized", "mode", "request_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    FACETS_FIELD_NUMBER: _ClassVar[int]
    PARSED_QUERY_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_types_pb2.Hit]
    next_page_token: str
    index: _types_pb2.IndexInfo
    timings: _types_pb2.Timings
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    facets: _containers.RepeatedCompositeFieldContainer[_types_pb2.Facet]
    parsed_query: ParsedQuery
    personalized: bool
    mode: SearchMode
    request_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[_types_pb2.Hit, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., index: _Optional[_Union[_types_pb2.IndexInfo, _Mapping]] = ..., timings: _Optional[_Union[_types_pb2.Timings, _Mapping]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[int]] = ..., facets: _Optional[_Iterable[_Union[_types_pb2.Facet, _Mapping]]] = ..., parsed_query: _Optional[_Union[ParsedQuery, _Mapping]] = ..., personalized: _Optional[bool] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "history_item_ids", "k", "filter", "include_seen", "include_fields", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    filter: _types_pb2.Filter
    include_seen: bool
    include_fields: bool
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., history_item_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., include_seen: _Optional[bool] = ..., include_fields: _Optional[bool] = ..., page_token: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("hits", "next_page_token", "index", "timings", "popularity_fallback", "request_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_types_pb2.Hit]
    next_page_token: str
    index: _types_pb2.IndexInfo
    timings: _types_pb2.Timings
    popularity_fallback: bool
    request_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[_types_pb2.Hit, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., index: _Optional[_Union[_types_pb2.IndexInfo, _Mapping]] = ..., timings: _Optional[_Union[_types_pb2.Timings, _Mapping]] = ..., popularity_fallback: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "filter", "include_fields", "page_token")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    filter: _types_pb2.Filter
    include_fields: bool
    page_token: str
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., include_fields: _Optional[bool] = ..., page_token: _Optional[str] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("hits", "next_page_token", "index", "timings", "request_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_types_pb2.Hit]
    next_page_token: str
    index: _types_pb2.IndexInfo
    timings: _types_pb2.Timings
    request_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[_types_pb2.Hit, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., index: _Optional[_Union[_types_pb2.IndexInfo, _Mapping]] = ..., timings: _Optional[_Union[_types_pb2.Timings, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "kind")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    kind: EmbedKind
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[EmbedKind, str]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "dim", "model_fingerprint")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dim: int
    model_fingerprint: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dim: _Optional[int] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...
