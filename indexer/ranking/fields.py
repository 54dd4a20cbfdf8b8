"""The fielded lexical index the ranker reads: one BM25 index per catalog field, plus the
lower-cased title and brand that number-bearing query tokens are matched against verbatim.

It is built from a version's ``items`` table when a ranker is loaded (about 20 µs per item per
field: a second or two for 50,000 items), not stored: it is a pure function of the items, so it
cannot go stale against them. Items upserted after the build are not in it (their field
features read 0 until the next build or compaction).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.lexical.index import LexicalIndex
from indexer.ranking.spec import FIELDS

__all__ = ["FieldIndex", "field_text", "number_tokens", "present_fields"]

logger = logging.getLogger(__name__)

_TAG = re.compile(r"<[^>]*>")
# A number-bearing token: a run of letters, digits and - . / that holds a digit ("dw7800",
# "2x4", "3/4", "12-gauge").
_TOKEN = re.compile(r"[\w\-./]+")


def field_text(record: Mapping[str, Any], field: str) -> str:
    """The text of one ranker field of a catalog record ("" when absent)."""
    if field == "description":
        bullets = record.get("bullets") or []
        if isinstance(bullets, str):
            bullets = [bullets]
        text = " ".join([*map(str, bullets), str(record.get("description") or "")])
        return _TAG.sub(" ", text)
    value = record.get(field)
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " > ".join(map(str, value))
    return str(value)


def present_fields(column_names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The ranker fields (``FIELDS``) an items table with these columns has."""
    names = set(column_names)
    return tuple(f for f in FIELDS if f in names or (f == "description" and "bullets" in names))


def number_tokens(text: str) -> list[str]:
    """The query's number-bearing tokens, lower-cased, trailing punctuation stripped, unique."""
    out = []
    for token in _TOKEN.findall(text.lower()):
        token = token.strip("-./")
        if any(c.isdigit() for c in token) and token not in out:
            out.append(token)
    return out


class FieldIndex:
    """BM25 per field (``FIELDS``) over the items of one version, by global row.

    Attributes:
        fields: the fields the items table has (a catalog without brands has no brand index).
        n_items: rows covered: 0 .. n_items - 1.
    """

    def __init__(self, indexes: dict[str, LexicalIndex], haystacks: np.ndarray) -> None:
        self._indexes = indexes
        self._haystacks = haystacks  # (n,) object: "title brand", lower-cased
        self.fields = tuple(f for f in FIELDS if f in indexes)
        self.n_items = len(haystacks)

    @classmethod
    def build(cls, items: pa.Table) -> FieldIndex:
        """Index the fields of ``items`` (``IndexVersion.items``: row r is global row r)."""
        t = time.perf_counter()
        names = set(items.column_names)
        present = present_fields(items.column_names)
        columns = [
            c for c in ("title", "brand", "category", "description", "bullets") if c in names
        ]
        records = items.select(columns).to_pylist()
        n = len(records)
        rows = np.arange(n, dtype=np.int64)
        shards = np.zeros(n, dtype=np.int64)
        indexes = {
            f: LexicalIndex.build([field_text(r, f) for r in records], rows, shards, 1)
            for f in present
        }
        haystacks = np.asarray(
            [f"{field_text(r, 'title')} {field_text(r, 'brand')}".lower() for r in records],
            dtype=object,
        )
        logger.info("ranker field index: %d items, fields %s, %.1f s", n, present,
                    time.perf_counter() - t)  # fmt: skip
        return cls(indexes, haystacks)

    def term_weights(self, field: str, text: str, rows: np.ndarray) -> np.ndarray | None:
        """(m, t) BM25 weights of the query's terms in ``field`` of ``rows``; None when the
        items have no such field. Rows past ``n_items`` (upserted since) get zeros."""
        index = self._indexes.get(field)
        if index is None:
            return None
        return index.row_term_weights(text, rows)

    def number_matches(self, tokens: list[str], rows: np.ndarray) -> np.ndarray:
        """(m,) float32 share of ``tokens`` found verbatim in each row's title or brand; NaN
        for every row when there are no tokens."""
        if not tokens:
            return np.full(len(rows), np.nan, dtype=np.float32)
        out = np.zeros(len(rows), dtype=np.float32)
        for i, r in enumerate(rows.tolist()):
            if r < self.n_items:
                hay = self._haystacks[r]
                out[i] = sum(token in hay for token in tokens)
        return out / len(tokens)
