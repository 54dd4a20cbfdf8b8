"""OpenAPI (JSON Schema) components generated from the proto descriptors, so the HTTP document
says exactly what the gRPC API says and follows every new field without code changes."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
# Protobuf's JSON mapping writes 64-bit integers as strings and reads both forms.
_INT64 = {"type": ["string", "integer"], "format": "int64"}
# Well-known types have their own JSON forms.
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string"},
}


def ref_name(descriptor: Descriptor) -> str:
    return descriptor.full_name


def _field_schema(fd: FieldDescriptor, out: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        if fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": _single(value_fd, out)}
    single = _single(fd, out)
    return {"type": "array", "items": single} if fd.is_repeated else single


def _single(fd: FieldDescriptor, out: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        add_message(fd.message_type, out)
        return {"$ref": f"#/components/schemas/{ref_name(fd.message_type)}"}
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": [v.name for v in fd.enum_type.values]}
    if fd.type in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return dict(_INT64)
    return dict(_SCALARS[fd.type])


def add_message(descriptor: Descriptor, out: dict[str, dict[str, Any]]) -> None:
    """Put the schema of `descriptor` and of every message it uses into `out` (by full name)."""
    name = ref_name(descriptor)
    if name in out:
        return
    if name in _WELL_KNOWN:
        out[name] = dict(_WELL_KNOWN[name])
        return
    out[name] = {}  # placeholder first: messages may refer to themselves
    properties = {fd.name: _field_schema(fd, out) for fd in descriptor.fields}
    out[name] = {"type": "object", "title": descriptor.name, "properties": properties}
