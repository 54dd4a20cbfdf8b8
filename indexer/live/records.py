"""Checks and type coercion of live-update input: records, vectors and attribute columns.

The rules of ``trainer.data.catalog.read_catalog`` for records a caller sends
(``validate_records``: refused with a message that names the record and field), and the lenient
fit of records replayed from the update log to an index's columns (``conform_records`` /
``conform_fields``: misfits dropped with a warning, never refused).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from trainer.data.catalog import catalog_from_records
from trainer.data.rows import DataError, parse_json_line

logger = logging.getLogger(__name__)

# Fields trainer.text.item_text reads: changing one changes the item's vector, so it takes an
# upsert (with a new vector), not an attribute update.
TEXT_FIELDS = ("title", "brand", "color", "category", "bullets", "description")


def check_vectors(vectors: Any, n: int, dim: int) -> np.ndarray:
    """``vectors`` as a C-contiguous (n, dim) float32 array; ValueError unless it is a finite
    float array of that shape (one vector per record)."""
    vectors = np.asarray(vectors)
    if vectors.shape != (n, dim) or not np.issubdtype(vectors.dtype, np.floating):
        raise ValueError(
            f"vectors must be a ({n}, {dim}) float array (one per record), got "
            f"{vectors.shape} {vectors.dtype}"
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("vectors hold NaN or inf values")
    return vectors


def check_attribute_column(name: Any, schema: pa.Schema) -> None:
    """ValueError unless ``name`` is a column of ``schema`` that an attribute update may change
    (not ``item_id``, not one of ``TEXT_FIELDS``)."""
    if name == "item_id":
        raise ValueError("item_id cannot be changed by an attribute update; delete and upsert")
    if name in TEXT_FIELDS:
        raise ValueError(
            f"column {name!r} is part of the item text, so changing it changes the vector: "
            f"upsert the item with a new vector instead"
        )
    if name not in schema.names:
        raise ValueError(
            f"unknown column {name!r}; this index has columns {schema.names} (a new column "
            f"needs a full build)"
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def validate_records(
    records: Sequence[Mapping[str, Any]], schema: pa.Schema, what: str
) -> list[dict[str, Any]]:
    """Check records with the catalog reader's rules, then fit them to the index's columns.

    Each record goes through JSON (as a catalog file's lines do) and then
    ``trainer.data.catalog.catalog_from_records``: the same rules and messages as a catalog
    file.

    Returns:
        The typed records (nulls omitted), in input order.
    """
    lines = []
    for i, record in enumerate(records, 1):
        if not isinstance(record, Mapping):
            raise ValueError(f"{what} record {i} must be a mapping, got {type(record).__name__}")
        try:
            lines.append(json.dumps(dict(record), default=_json_default))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what} record {i}: not JSON-able ({e})") from None
    try:
        parsed = [parse_json_line(text, what, i) for i, text in enumerate(lines, 1)]
        catalog = catalog_from_records(parsed, what)
    except DataError as e:
        where = f"record {e.line}" if e.line is not None else "records"
        raise ValueError(f"{what} {where}: {e.problem}") from None
    typed = []
    for record in catalog.records():
        out = {}
        for name, value in record.items():
            if name not in schema.names:
                raise ValueError(
                    f"{what} item {record['item_id']!r}: unknown column {name!r}; this index "
                    f"has columns {schema.names} (a new column needs a full build)"
                )
            try:
                out[name] = _coerce(value, schema, name)
            except ValueError as e:
                raise ValueError(f"{what} item {record['item_id']!r}: {e}") from None
        typed.append(out)
    return typed


def conform_records(
    records: Sequence[Mapping[str, Any]], schema: pa.Schema, where: str
) -> list[dict[str, Any]]:
    """Fit logged records to ``schema`` (a version's or a catalog's columns), keys in schema
    order; a column it lacks or a value of the wrong type is dropped with a warning (a replayed
    update was acknowledged long ago: it is applied as far as it still fits, never refused)."""
    out = []
    for record in records:
        item = f"{where}: item {record.get('item_id')!r}"
        out.append(conform_fields(record, schema, item, keep_nulls=False))
    return out


def conform_fields(
    fields: Mapping[str, Any], schema: pa.Schema, where: str, *, keep_nulls: bool
) -> dict[str, Any]:
    """``fields`` coerced to the types of ``schema``, in schema order; misfits dropped, logged.

    ``keep_nulls`` keeps None values (an attribute update clearing a value).
    """
    kept = {}
    names = [n for n in schema.names if n in fields]
    for name in fields:
        if name not in schema.names:
            logger.warning("%s: column %r is not in this index; dropped", where, name)
    for name in names:
        value = fields[name]
        if value is None:
            if keep_nulls:
                kept[name] = None
            continue
        try:
            kept[name] = _coerce(value, schema, name)
        except ValueError as e:
            logger.warning("%s: %s; dropped", where, e)
    return kept


def _coerce(value: Any, schema: pa.Schema, name: str) -> Any:
    """``value`` as the Python value of column ``name``'s Arrow type, or ValueError."""
    kind = schema.field(name).type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        ok = isinstance(value, str)
    elif pa.types.is_floating(kind):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif pa.types.is_integer(kind):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif pa.types.is_boolean(kind):
        ok = isinstance(value, bool)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        try:
            value = pa.scalar(value, type=kind).as_py()
            ok = True
        except (pa.ArrowException, TypeError, ValueError):
            ok = False
    if not ok:
        raise ValueError(
            f"column {name!r} holds {kind} values in this index, got "
            f"{type(value).__name__} {value!r:.40}"
        )
    return value
