from aisle.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchShardRequest(_message.Message):
    __slots__ = ("query_vector", "k", "effort", "filter", "exclude_rows", "boost", "max_per_category", "include_vectors", "index_version")
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EFFORT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ROWS_FIELD_NUMBER: _ClassVar[int]
    BOOST_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    query_vector: _containers.RepeatedScalarFieldContainer[float]
    k: int
    effort: _types_pb2.SearchEffort
    filter: _types_pb2.Filter
    exclude_rows: _containers.RepeatedScalarFieldContainer[int]
    boost: _types_pb2.Boost
    max_per_category: int
    include_vectors: bool
    index_version: int
    def __init__(self, query_vector: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., effort: _Optional[_Union[_types_pb2.SearchEffort, _Mapping]] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., exclude_rows: _Optional[_Iterable[int]] = ..., boost: _Optional[_Union[_types_pb2.Boost, _Mapping]] = ..., max_per_category: _Optional[int] = ..., include_vectors: _Optional[bool] = ..., index_version: _Optional[int] = ...) -> None: ...

class SearchShardResponse(_message.Message):
    __slots__ = ("shard", "index_version", "rows", "item_ids", "scores", "similarities", "vectors", "dim", "timings")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SIMILARITIES_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    index_version: int
    rows: _containers.RepeatedScalarFieldContainer[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    similarities: _containers.RepeatedScalarFieldContainer[float]
    vectors: bytes
    dim: int
    timings: _types_pb2.Timings
    def __init__(self, shard: _Optional[int] = ..., index_version: _Optional[int] = ..., rows: _Optional[_Iterable[int]] = ..., item_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., similarities: _Optional[_Iterable[float]] = ..., vectors: _Optional[bytes] = ..., dim: _Optional[int] = ..., timings: _Optional[_Union[_types_pb2.Timings, _Mapping]] = ...) -> None: ...

class GetShardVectorsRequest(_message.Message):
    __slots__ = ("rows", "index_version")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedScalarFieldContainer[int]
    index_version: int
    def __init__(self, rows: _Optional[_Iterable[int]] = ..., index_version: _Optional[int] = ...) -> None: ...

class GetShardVectorsResponse(_message.Message):
    __slots__ = ("shard", "index_version", "dim", "vectors")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    index_version: int
    dim: int
    vectors: bytes
    def __init__(self, shard: _Optional[int] = ..., index_version: _Optional[int] = ..., dim: _Optional[int] = ..., vectors: _Optional[bytes] = ...) -> None: ...

class DescribeShardRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeShardResponse(_message.Message):
    __slots__ = ("shard", "shard_count", "item_count", "index", "vector_kind")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VECTOR_KIND_FIELD_NUMBER: _ClassVar[int]
    shard: int
    shard_count: int
    item_count: int
    index: _types_pb2.IndexInfo
    vector_kind: str
    def __init__(self, shard: _Optional[int] = ..., shard_count: _Optional[int] = ..., item_count: _Optional[int] = ..., index: _Optional[_Union[_types_pb2.IndexInfo, _Mapping]] = ..., vector_kind: _Optional[str] = ...) -> None: ...
