"""Data schema and readers: the catalog, labeled queries and user interactions.

Readers stream their file once, validate every row and fail with a ``DataError`` that names the
file, the 1-based line (the row for Parquet, the line of the record for CSV, header = line 1),
the field and the problem. Nothing is dropped silently. Supported files: JSON lines
(``.jsonl``, ``.jsonl.gz``, ``.json.gz``; blank lines are skipped), ``.parquet`` and
``.csv``/``.csv.gz`` (header row; an empty cell is null).

The catalog rules are public pieces (``check_data_file``, ``parse_json_line``,
``validate_catalog_record`` with ``extra_kind_problem`` and ``note_extra_kinds``,
``catalog_schema``, ``catalog_table``) so that the Spark reader (``indexer.spark_validate``)
applies the very same rules, with the same messages, on executors.

This module imports no torch, so anything may import it cheaply.
"""

from __future__ import annotations

from trainer.data_catalog import (  # noqa: F401
    Catalog,
    _catalog_from_rows,
    catalog_from_records,
    catalog_item_id,
    catalog_schema,
    catalog_table,
    extra_kind_problem,
    note_extra_kinds,
    read_catalog,
    validate_catalog_record,
)
from trainer.data_fields import (  # noqa: F401
    _EXTRA_TYPES,
    _KIND_WORDS,
    KNOWN_FIELDS,
    _describe,
    _Field,
    _infer_text_column,
    _non_negative,
    _scalar_kind,
    _to_bool,
    _to_float,
    _to_int,
    _to_str,
    _to_str_list,
)
from trainer.data_labels import (  # noqa: F401
    Interactions,
    Labels,
    _add_query,
    _required,
    check_labels_against_catalog,
    read_interactions,
    read_labels,
    read_queries,
)
from trainer.data_rows import (  # noqa: F401
    _INT64_MAX,
    _INT64_MIN,
    _INT_TEXT,
    _UNDECODABLE,
    DataError,
    _Bad,
    _file_format,
    _iter_csv,
    _iter_jsonl,
    _iter_parquet,
    _iter_rows,
    _json_kind,
    _open_parquet,
    _open_text,
    _rebuild_data_error,
    check_data_file,
    parse_json_line,
)
