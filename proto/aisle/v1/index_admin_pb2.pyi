from aisle.v1 import types_pb2 as _types_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpsertMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPSERT_MODE_UNSPECIFIED: _ClassVar[UpsertMode]
    UPSERT_MODE_FULL: _ClassVar[UpsertMode]
    UPSERT_MODE_ATTRIBUTES_ONLY: _ClassVar[UpsertMode]
UPSERT_MODE_UNSPECIFIED: UpsertMode
UPSERT_MODE_FULL: UpsertMode
UPSERT_MODE_ATTRIBUTES_ONLY: UpsertMode

class Item(_message.Message):
    __slots__ = ("item_id", "fields")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    fields: _struct_pb2.Struct
    def __init__(self, item_id: _Optional[str] = ..., fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("items", "mode")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    mode: UpsertMode
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., mode: _Optional[_Union[UpsertMode, str]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "log_sequence")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    LOG_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    log_sequence: int
    def __init__(self, upserted: _Optional[int] = ..., log_sequence: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "not_found", "log_sequence")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    LOG_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    log_sequence: int
    def __init__(self, deleted: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ..., log_sequence: _Optional[int] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("previous_version", "index")
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    previous_version: int
    index: _types_pb2.IndexInfo
    def __init__(self, previous_version: _Optional[int] = ..., index: _Optional[_Union[_types_pb2.IndexInfo, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("shard", "item_count", "location")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    shard: int
    item_count: int
    location: str
    def __init__(self, shard: _Optional[int] = ..., item_count: _Optional[int] = ..., location: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("index", "shards", "pending_updates", "available_versions", "uptime_s", "server_version", "query_tower")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    PENDING_UPDATES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_TOWER_FIELD_NUMBER: _ClassVar[int]
    index: _types_pb2.IndexInfo
    shards: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    pending_updates: int
    available_versions: _containers.RepeatedScalarFieldContainer[int]
    uptime_s: float
    server_version: str
    query_tower: str
    def __init__(self, index: _Optional[_Union[_types_pb2.IndexInfo, _Mapping]] = ..., shards: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ..., pending_updates: _Optional[int] = ..., available_versions: _Optional[_Iterable[int]] = ..., uptime_s: _Optional[float] = ..., server_version: _Optional[str] = ..., query_tower: _Optional[str] = ...) -> None: ...
