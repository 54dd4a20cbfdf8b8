"""Request bytes → a checked message, never an exception: grpcio turns a deserializer's
exception into a bare INTERNAL that skips the interceptor (and the metrics), so every refusal
travels to the handler as a RejectedRequest instead and becomes INVALID_ARGUMENT there."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from engine.search.errors import FieldViolation, InvalidArgument

# Any string anywhere in a request (item field values included). Tighter per-field limits
# (ids 256, queries 1,000, Embed texts 10,000) are checked in engine.api.convert.
MAX_STRING_CHARS = 20_000
MAX_VIOLATIONS = 20  # a request with more bad fields gets the first ones: the message stays short
_VALUE = "google.protobuf.Value"
# Fields of the JSON types a field path skips, so it reads like JSON: fields['a']['b'][1].
_JSON_WRAPPERS = {
    ("google.protobuf.Struct", "fields"),
    ("google.protobuf.ListValue", "values"),
    (_VALUE, "struct_value"),
    (_VALUE, "list_value"),
    (_VALUE, "string_value"),
}


@dataclass(frozen=True)
class RejectedRequest:
    """What the deserializer hands the handler instead of a message it refused."""

    error: InvalidArgument


def _scalar_violations(fd: FieldDescriptor, values: list[Any], name: str) -> list[FieldViolation]:
    out = []
    repeated = fd.is_repeated
    for i, value in enumerate(values):
        where = f"{name}[{i}]" if repeated else name
        if fd.type == FieldDescriptor.TYPE_ENUM and value not in fd.enum_type.values_by_number:
            out.append(FieldViolation(where, f"{value} is not a {fd.enum_type.name} value"))
        elif fd.type == FieldDescriptor.TYPE_STRING and len(value) > MAX_STRING_CHARS:
            out.append(
                FieldViolation(where, f"is {len(value)} characters; at most {MAX_STRING_CHARS}")
            )
    return out


def field_violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """What no field of any request may hold, in `message` and every message inside it:
    enum numbers the enum does not define (proto3 keeps them; serving them would guess a
    meaning), strings over MAX_STRING_CHARS, and NaN or ±Infinity in a Struct value (a JSON
    value cannot hold them; they would poison stored item fields)."""
    violations: list[FieldViolation] = []
    if message.DESCRIPTOR.full_name == _VALUE and message.WhichOneof("kind") == "number_value":
        if not math.isfinite(message.number_value):
            name = prefix.rstrip(".") or "value"
            violations.append(FieldViolation(name, "must be a finite number"))
    for fd, value in message.ListFields():
        if (message.DESCRIPTOR.full_name, fd.name) in _JSON_WRAPPERS:
            name = prefix.rstrip(".")
        else:
            name = f"{prefix}{fd.name}"
        repeated = fd.is_repeated
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            violations += _scalar_violations(fd, list(value) if repeated else [value], name)
        elif fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for key, item in value.items():
                where = f"{name}[{str(key)[:40]!r}]"
                if isinstance(key, str) and len(key) > MAX_STRING_CHARS:
                    violations.append(FieldViolation(name, "a key is over the length limit"))
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    violations += field_violations(item, f"{where}.")
                else:
                    violations += _scalar_violations(value_fd, [item], where)
        elif repeated:
            for i, item in enumerate(value):
                violations += field_violations(item, f"{name}[{i}].")
        else:
            violations += field_violations(value, f"{name}.")
        if len(violations) >= MAX_VIOLATIONS:
            break
    return violations[:MAX_VIOLATIONS]


def checked_deserializer(parse: Callable[[bytes], Message]) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: bytes `parse` refuses (corrupt wire format,
    invalid UTF-8 in a string, nesting over protobuf's limit) or a message with
    `field_violations` become a RejectedRequest."""

    def deserialize(data: bytes) -> Any:
        try:
            message = parse(data)
        except Exception as error:  # DecodeError, RecursionError, ...: the caller's bytes
            return RejectedRequest(
                InvalidArgument.field(
                    "request", f"not a valid serialized request message ({type(error).__name__})"
                )
            )
        try:
            violations = field_violations(message)
        except RecursionError:
            violations = [FieldViolation("request", "nested too deeply")]
        if violations:
            return RejectedRequest(InvalidArgument.of(violations))
        return message

    return deserialize
