from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Range(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class AttributeRange(_message.Message):
    __slots__ = ("name", "range")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    range: Range
    def __init__(self, name: _Optional[str] = ..., range: _Optional[_Union[Range, _Mapping]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("category_prefix", "brands", "price", "attributes", "in_stock", "exclude_item_ids")
    CATEGORY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    BRANDS_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    category_prefix: str
    brands: _containers.RepeatedScalarFieldContainer[str]
    price: Range
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeRange]
    in_stock: bool
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, category_prefix: _Optional[str] = ..., brands: _Optional[_Iterable[str]] = ..., price: _Optional[_Union[Range, _Mapping]] = ..., attributes: _Optional[_Iterable[_Union[AttributeRange, _Mapping]]] = ..., in_stock: _Optional[bool] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Boost(_message.Message):
    __slots__ = ("popularity", "rating", "margin")
    POPULARITY_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    popularity: float
    rating: float
    margin: float
    def __init__(self, popularity: _Optional[float] = ..., rating: _Optional[float] = ..., margin: _Optional[float] = ...) -> None: ...

class SearchEffort(_message.Message):
    __slots__ = ("nprobe", "ef_search", "candidates")
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    nprobe: int
    ef_search: int
    candidates: int
    def __init__(self, nprobe: _Optional[int] = ..., ef_search: _Optional[int] = ..., candidates: _Optional[int] = ...) -> None: ...

class Diversity(_message.Message):
    __slots__ = ("max_per_category", "mmr_lambda")
    MAX_PER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MMR_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    max_per_category: int
    mmr_lambda: float
    def __init__(self, max_per_category: _Optional[int] = ..., mmr_lambda: _Optional[float] = ...) -> None: ...

class SortBy(_message.Message):
    __slots__ = ("attribute", "descending")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    DESCENDING_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    descending: bool
    def __init__(self, attribute: _Optional[str] = ..., descending: _Optional[bool] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("item_id", "score", "similarity", "fields", "explanation")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    similarity: float
    fields: _struct_pb2.Struct
    explanation: Explanation
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., similarity: _Optional[float] = ..., fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class FeatureContribution(_message.Message):
    __slots__ = ("name", "value", "contribution")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    contribution: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., contribution: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("features", "bias", "ranker_score", "feature_spec_version")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    RANKER_SCORE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureContribution]
    bias: float
    ranker_score: float
    feature_spec_version: str
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureContribution, _Mapping]]] = ..., bias: _Optional[float] = ..., ranker_score: _Optional[float] = ..., feature_spec_version: _Optional[str] = ...) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("version", "model_fingerprint", "item_count", "shard_count", "factory")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    version: int
    model_fingerprint: str
    item_count: int
    shard_count: int
    factory: str
    def __init__(self, version: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., item_count: _Optional[int] = ..., shard_count: _Optional[int] = ..., factory: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("encode_ms", "search_ms", "rerank_ms", "total_ms", "rank_ms")
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    RERANK_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    RANK_MS_FIELD_NUMBER: _ClassVar[int]
    encode_ms: float
    search_ms: float
    rerank_ms: float
    total_ms: float
    rank_ms: float
    def __init__(self, encode_ms: _Optional[float] = ..., search_ms: _Optional[float] = ..., rerank_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., rank_ms: _Optional[float] = ...) -> None: ...

class FacetValue(_message.Message):
    __slots__ = ("value", "count")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    value: str
    count: int
    def __init__(self, value: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Facet(_message.Message):
    __slots__ = ("field", "values")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    field: str
    values: _containers.RepeatedCompositeFieldContainer[FacetValue]
    def __init__(self, field: _Optional[str] = ..., values: _Optional[_Iterable[_Union[FacetValue, _Mapping]]] = ...) -> None: ...
