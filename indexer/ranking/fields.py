"""The fielded lexical index the ranker reads: one BM25 index per catalog field, plus the
lower-cased title and brand that number-bearing query tokens are matched against verbatim, and
the title's words and hashed character trigrams for phrase and typo-tolerant matches.

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from indexer.lexical.analysis import analyze
from indexer.lexical.index import LexicalIndex
from indexer.ranking.spec import FIELDS
from indexer.ranking.trigrams import normalized_words, row_cosines, trigram_matrix, trigram_vector

__all__ = ["FieldIndex", "PhraseMatches", "field_text", "number_tokens", "present_fields"]

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


@dataclass(frozen=True)
class PhraseMatches:
    """How the query's words sit in each candidate's title (``FieldIndex.phrase_matches``).

    Attributes:
        phrase: (m,) 1 when the query's words appear in the title as one contiguous run.
        bigrams: (m,) share of the query's adjacent word pairs found adjacent in the title; NaN
            for a one-word query.
        first_term, last_term: (m,) 1 when the query's first / last analysed term is a term of
            the title (the last is often the product type: "... angle bracket"); NaN for a
            query without terms.
    """

    phrase: np.ndarray
    bigrams: np.ndarray
    first_term: np.ndarray
    last_term: np.ndarray


class FieldIndex:
    """BM25 per field (``FIELDS``) over the items of one version, by global row.

    Attributes:
        fields: the fields the items table has (a catalog without brands has no brand index).
        n_items: rows covered: 0 .. n_items - 1.
        title_terms: (n_items,) float32 analysed terms per title.
    """

    def __init__(
        self,
        indexes: dict[str, LexicalIndex],
        haystacks: np.ndarray,
        title_words: np.ndarray,
        title_trigrams: sp.csr_matrix,
        title_terms: np.ndarray,
    ) -> None:
        self._indexes = indexes
        self._haystacks = haystacks  # (n,) object: "title brand", lower-cased
        self._title_words = title_words  # (n,) object: normalized_words(title)
        self._title_trigrams = title_trigrams  # (n, TRIGRAM_DIM) CSR, rows L2-normalised
        self.title_terms = title_terms
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
        titles = [field_text(r, "title") for r in records]
        title_words = np.asarray([normalized_words(t) for t in titles], dtype=object)
        title_terms = np.asarray([len(analyze(t)) for t in titles], dtype=np.float32)
        logger.info("ranker field index: %d items, fields %s, %.1f s", n, present,
                    time.perf_counter() - t)  # fmt: skip
        return cls(indexes, haystacks, title_words, trigram_matrix(titles), title_terms)

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

    def title_trigram_cosine(self, text: str, rows: np.ndarray) -> np.ndarray:
        """(m,) float32 cosine of the query's and each row's title trigram vectors (0 for rows
        past ``n_items`` and for a query shorter than a trigram)."""
        out = np.zeros(len(rows), dtype=np.float32)
        buckets, weights = trigram_vector(text)
        held = rows < self.n_items
        if len(buckets) and held.any():
            out[held] = row_cosines(self._title_trigrams, rows[held], buckets, weights)
        return out

    def phrase_matches(
        self, text: str, rows: np.ndarray, title_weights: np.ndarray, terms: list[str]
    ) -> PhraseMatches:
        """Where the query's words and terms sit in each row's title (rows past ``n_items``:
        0, as if their titles were empty).

        Args:
            title_weights: ``term_weights("title", text, rows)``, already computed by the
                caller: its columns are the query's known terms in order, so the first and
                last terms' columns say whether they are in a title.
            terms: ``analyze(text)``, already computed by the caller.
        """
        m = len(rows)
        words = normalized_words(text).split()
        held = rows < self.n_items
        titles = self._title_words[np.where(held, rows, 0)] if self.n_items else None
        phrase_in = np.zeros(m, dtype=np.float32)
        bigrams = np.full(m, np.nan, dtype=np.float32)
        if titles is not None and words:
            phrase = " " + " ".join(words) + " "
            phrase_in = np.asarray([phrase in t for t in titles], dtype=np.float32) * held
            if len(words) > 1:
                bigrams = np.zeros(m, dtype=np.float32)
                for a, b in zip(words, words[1:], strict=False):
                    pair = f" {a} {b} "
                    bigrams += np.asarray([pair in t for t in titles], dtype=np.float32)
                bigrams = bigrams * held / np.float32(len(words) - 1)
        elif len(words) > 1:
            bigrams = np.zeros(m, dtype=np.float32)
        if not terms:
            nan = np.full(m, np.nan, dtype=np.float32)
            return PhraseMatches(phrase_in, bigrams, nan, nan)
        title = self._indexes.get("title")
        known = [
            title.term_id(t) >= 0 if title is not None else False for t in (terms[0], terms[-1])
        ]
        present = title_weights > 0
        first = present[:, 0] if known[0] else np.zeros(m, dtype=bool)
        last = present[:, -1] if known[1] else np.zeros(m, dtype=bool)
        return PhraseMatches(phrase_in, bigrams, first.astype(np.float32), last.astype(np.float32))
