"""Value converters and field rules shared by the data readers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from trainer.data.rows import DataError, json_kind

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT_TEXT = re.compile(r"[+-]?\d+")


class BadValue(Exception):
    """A field value problem; the caller adds file, line and field name."""


def required_field(
    path: str | Path,
    line: int,
    obj: Mapping[str, Any],
    name: str,
    convert: Callable[[Any, bool], Any],
    text: bool,
) -> Any:
    """Field ``name`` of a record, converted (``text``: from CSV): it must be present, of its
    type and, if a string, not blank, else a DataError names the path, line and field."""
    value = obj.get(name)
    if value is None:
        raise DataError(path, line, f"missing required field {name!r}", field=name)
    try:
        converted = convert(value, text)
    except BadValue as e:
        raise DataError(path, line, f"field {name!r} {e}", field=name) from None
    if isinstance(converted, str) and not converted.strip():
        raise DataError(path, line, f"field {name!r} is empty", field=name)
    return converted


# ---------------------------------------------------------------------------------------------
# Value converters: (value, from_text) → typed value, or raise BadValue with the problem.


def _describe(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(value).__name__} {shown}"


def to_str(value: Any, text: bool) -> str:
    """``value`` as a string, else raise BadValue (``text``: from CSV, changes nothing)."""
    if not isinstance(value, str):
        raise BadValue(f"must be a string, got {_describe(value)}")
    return value


def _to_float(value: Any, text: bool) -> float:
    if text and isinstance(value, str):
        try:
            if "_" in value:  # float() accepts "1_000"; a data file should not
                raise ValueError(value)
            number = float(value.strip())
        except ValueError:
            raise BadValue(f"must be a number, got {_describe(value)}") from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise BadValue(f"must be a number, got {_describe(value)}")
    else:
        number = float(value)
    if not math.isfinite(number):
        raise BadValue(f"must be a finite number, got {_describe(value)}")
    return number


def to_weight(value: Any, text: bool) -> float:
    """``value`` as a finite number > 0 (a per-example loss weight), else raise BadValue."""
    number = _to_float(value, text)
    if number <= 0:
        raise BadValue(f"must be > 0, got {number!r}")
    return number


def to_int(value: Any, text: bool) -> int:
    """``value`` (a JSON int or integral float; ``text``: CSV digits) as an int64, else raise
    BadValue."""
    if text and isinstance(value, str):
        if not _INT_TEXT.fullmatch(value.strip()):
            raise BadValue(f"must be an integer, got {_describe(value)}")
        number = int(value)
    elif isinstance(value, bool):
        raise BadValue(f"must be an integer, got {_describe(value)}")
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        # JSON writers (pandas among them) often emit 3.0 for an integer column.
        number = int(value)
    else:
        raise BadValue(f"must be an integer, got {_describe(value)}")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise BadValue(f"is out of the 64-bit integer range: {number}")
    return number


def _to_bool(value: Any, text: bool) -> bool:
    if text and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
    elif isinstance(value, bool):
        return value
    raise BadValue(f"must be true or false, got {_describe(value)}")


def _to_str_list(value: Any, text: bool) -> list[str]:
    if text and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadValue(
                f'must be a JSON array of strings such as ["a", "b"], got {_describe(value)}'
            ) from None
    if not isinstance(value, list | tuple):
        raise BadValue(f"must be a list of strings, got {_describe(value)}")
    for element in value:
        if not isinstance(element, str):
            raise BadValue(f"must be a list of strings, but holds {_describe(element)}")
    return list(value)


def _non_negative(value: float) -> None:
    if value < 0:
        raise BadValue(f"must be >= 0, got {value!r}")


@dataclass(frozen=True)
class FieldSpec:
    """A known catalog field: its converter, its Arrow type and an optional check of the value."""

    convert: Callable[[Any, bool], Any]
    arrow_type: pa.DataType
    check: Callable[[Any], None] | None = None


# Declared order is the column order of the catalog table.
KNOWN_FIELDS: dict[str, FieldSpec] = {
    "item_id": FieldSpec(to_str, pa.string()),
    "title": FieldSpec(to_str, pa.string()),
    "description": FieldSpec(to_str, pa.string()),
    "brand": FieldSpec(to_str, pa.string()),
    "category": FieldSpec(to_str, pa.string()),
    "bullets": FieldSpec(_to_str_list, pa.list_(pa.string())),
    "color": FieldSpec(to_str, pa.string()),
    "price": FieldSpec(_to_float, pa.float64(), _non_negative),
    "rating": FieldSpec(_to_float, pa.float64()),
    "rating_count": FieldSpec(to_int, pa.int64(), _non_negative),
    "in_stock": FieldSpec(_to_bool, pa.bool_()),
    "margin": FieldSpec(_to_float, pa.float64()),
}

# Extra (unknown) catalog attributes: kind → Arrow type, and kind → words for messages.
EXTRA_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}
KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string"}


def scalar_kind(value: Any) -> str:
    """An extra attribute's kind: "int", "float", "bool" or "str"; BadValue for any other
    value, a non-finite number or an int beyond int64."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise BadValue(f"is out of the 64-bit integer range: {value}")
        return "int"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadValue(f"must be a finite number, got {_describe(value)}")
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict | list | tuple):
        raise BadValue(
            f"is {json_kind(value)}; extra attributes must be scalars (string, number or boolean)"
        )
    raise BadValue(f"has unsupported type {type(value).__name__}; use a string, number or boolean")


def infer_text_column(values: list[str | None]) -> tuple[str, list[Any]]:
    """Type a CSV extra column: int64, else float64, else bool ("true"/"false"), else string.
    Returns (kind, the values converted; None stays None)."""
    present = [v.strip() for v in values if v is not None]
    for kind, convert in (("int", to_int), ("float", _to_float), ("bool", _to_bool)):
        try:
            [convert(v, True) for v in present]
        except BadValue:
            continue
        return kind, [None if v is None else convert(v, True) for v in values]
    return "str", values
