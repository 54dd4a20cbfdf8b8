"""Value converters and field rules shared by the data readers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from trainer.data.rows import _INT64_MAX, _INT64_MIN, _INT_TEXT, _Bad, _json_kind

# ---------------------------------------------------------------------------------------------
# Value converters: (value, from_text) → typed value, or raise _Bad with the problem.


def _describe(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(value).__name__} {shown}"


def _to_str(value: Any, text: bool) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_describe(value)}")
    return value


def _to_float(value: Any, text: bool) -> float:
    if text and isinstance(value, str):
        try:
            if "_" in value:  # float() accepts "1_000"; a data file should not
                raise ValueError(value)
            number = float(value.strip())
        except ValueError:
            raise _Bad(f"must be a number, got {_describe(value)}") from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"must be a number, got {_describe(value)}")
    else:
        number = float(value)
    if not math.isfinite(number):
        raise _Bad(f"must be a finite number, got {_describe(value)}")
    return number


def _to_int(value: Any, text: bool) -> int:
    if text and isinstance(value, str):
        if not _INT_TEXT.fullmatch(value.strip()):
            raise _Bad(f"must be an integer, got {_describe(value)}")
        number = int(value)
    elif isinstance(value, bool):
        raise _Bad(f"must be an integer, got {_describe(value)}")
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        # JSON writers (pandas among them) often emit 3.0 for an integer column.
        number = int(value)
    else:
        raise _Bad(f"must be an integer, got {_describe(value)}")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _Bad(f"is out of the 64-bit integer range: {number}")
    return number


def _to_bool(value: Any, text: bool) -> bool:
    if text and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
    elif isinstance(value, bool):
        return value
    raise _Bad(f"must be true or false, got {_describe(value)}")


def _to_str_list(value: Any, text: bool) -> list[str]:
    if text and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _Bad(
                f'must be a JSON array of strings such as ["a", "b"], got {_describe(value)}'
            ) from None
    if not isinstance(value, list | tuple):
        raise _Bad(f"must be a list of strings, got {_describe(value)}")
    for element in value:
        if not isinstance(element, str):
            raise _Bad(f"must be a list of strings, but holds {_describe(element)}")
    return list(value)


def _non_negative(value: float) -> None:
    if value < 0:
        raise _Bad(f"must be >= 0, got {value!r}")


@dataclass(frozen=True)
class _Field:
    convert: Callable[[Any, bool], Any]
    arrow_type: pa.DataType
    check: Callable[[Any], None] | None = None


# Declared order is the column order of the catalog table.
KNOWN_FIELDS: dict[str, _Field] = {
    "item_id": _Field(_to_str, pa.string()),
    "title": _Field(_to_str, pa.string()),
    "description": _Field(_to_str, pa.string()),
    "brand": _Field(_to_str, pa.string()),
    "category": _Field(_to_str, pa.string()),
    "bullets": _Field(_to_str_list, pa.list_(pa.string())),
    "color": _Field(_to_str, pa.string()),
    "price": _Field(_to_float, pa.float64(), _non_negative),
    "rating": _Field(_to_float, pa.float64()),
    "rating_count": _Field(_to_int, pa.int64(), _non_negative),
    "in_stock": _Field(_to_bool, pa.bool_()),
    "margin": _Field(_to_float, pa.float64()),
}

_EXTRA_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}
_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string"}


def _scalar_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Bad(f"is out of the 64-bit integer range: {value}")
        return "int"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"must be a finite number, got {_describe(value)}")
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict | list | tuple):
        raise _Bad(
            f"is {_json_kind(value)}; extra attributes must be scalars (string, number or boolean)"
        )
    raise _Bad(f"has unsupported type {type(value).__name__}; use a string, number or boolean")


def _infer_text_column(values: list[str | None]) -> tuple[str, list[Any]]:
    """Type a CSV extra column: int64, else float64, else bool ("true"/"false"), else string."""
    present = [v.strip() for v in values if v is not None]
    for kind, convert in (("int", _to_int), ("float", _to_float), ("bool", _to_bool)):
        try:
            [convert(v, True) for v in present]
        except _Bad:
            continue
        return kind, [None if v is None else convert(v, True) for v in values]
    return "str", values
