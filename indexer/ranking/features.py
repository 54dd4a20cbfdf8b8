"""Ranker features of (query, candidate) pairs, from what an index version holds.

One function, ``compute_features``, for training (``indexer.ranking.training``, over an opened
``IndexVersion``) and serving (``engine.search.ranked``, over a snapshot): both build the same
``FeatureSource`` and ``Candidates`` and call it, so the two cannot drift. The columns are
``indexer.ranking.spec.FEATURES``, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.lexical.analysis import analyze
from indexer.lexical.index import LexicalIndex, LexicalState
from indexer.ranking.fields import FieldIndex, number_tokens
from indexer.ranking.spec import FEATURES, FIELDS, FUSION_ALPHA, TOP_CATEGORY_DEPTH
from indexer.rerank.columns import ItemColumns
from indexer.rerank.vectors import VectorStore
from trainer.feedback.engagement import ItemEngagement

__all__ = ["Candidates", "FeatureSource", "compute_features", "union_candidates"]

_COLUMN = {name: j for j, name in enumerate(FEATURES)}


@dataclass(frozen=True)
class Candidates:
    """The candidates of one query: the union of the two channels' lists.

    Attributes:
        rows: (n,) int64 global rows, unique: the dense list's order, then lexical-only rows.
        dense_rank: (n,) float32 1-based rank in the dense list; ``depth + 1`` when absent.
        lexical_rank: (n,) float32 1-based rank in the lexical list; ``depth + 1`` when absent.
        depth: N, the per-channel list length asked for.
    """

    rows: np.ndarray
    dense_rank: np.ndarray
    lexical_rank: np.ndarray
    depth: int


def union_candidates(dense_rows: np.ndarray, lexical_rows: np.ndarray, depth: int) -> Candidates:
    """The union of two ranked lists of rows (best first; -1 padding and repeats dropped)."""
    dense_rows = _first_unique(np.asarray(dense_rows, np.int64))
    lexical_rows = _first_unique(np.asarray(lexical_rows, np.int64))
    extra = lexical_rows[~np.isin(lexical_rows, dense_rows)]
    rows = np.concatenate([dense_rows, extra])
    absent = np.float32(depth + 1)
    dense_rank = np.full(len(rows), absent, np.float32)
    dense_rank[: len(dense_rows)] = np.arange(1, len(dense_rows) + 1)
    lexical_rank = np.full(len(rows), absent, np.float32)
    lex_pos = {r: i + 1 for i, r in enumerate(lexical_rows.tolist())}
    for i, r in enumerate(rows.tolist()):
        if r in lex_pos:
            lexical_rank[i] = lex_pos[r]
    return Candidates(rows, dense_rank, lexical_rank, depth)


def _first_unique(rows: np.ndarray) -> np.ndarray:
    rows = rows[rows >= 0]
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


@dataclass(frozen=True)
class FeatureSource:
    """What features are computed from: one moment of one index version.

    Attributes:
        columns: item attributes (price, rating, stock, category).
        vectors: stored item vectors (exact dense scores).
        lexical: the BM25 index over the item text; ``lexical_state`` the state to read.
        fields: the per-field BM25 index (``FieldIndex``).
        sketch_dim: trailing dims of the vectors that are the trigram sketch (0: none).
        item_ids: (rows,) the item id of every global row (needed with ``engagement``).
        engagement: recent engagement per item id from the event log, or None (no event
            log: the feature is NaN); looked up for the candidates only.
    """

    columns: ItemColumns
    vectors: VectorStore
    lexical: LexicalIndex
    fields: FieldIndex
    sketch_dim: int = 0
    lexical_state: LexicalState | None = None
    item_ids: np.ndarray | None = None
    engagement: ItemEngagement | None = None


def compute_features(
    source: FeatureSource, text: str, xq: np.ndarray, candidates: Candidates
) -> np.ndarray:
    """The (n, len(FEATURES)) float32 feature matrix of ``candidates`` for one query.

    Args:
        source: the version's data.
        text: the query text BM25 sees (the lexical channel's text).
        xq: (dim,) float32 query vector (after any personalisation), as the dense channel used.
        candidates: ``union_candidates`` of the two channels' lists.
    """
    rows = candidates.rows
    n = len(rows)
    X = np.full((n, len(FEATURES)), np.nan, dtype=np.float32)
    if n == 0:
        return X

    def put(name: str, values: np.ndarray | float) -> None:
        X[:, _COLUMN[name]] = values

    xb = source.vectors.gather(rows)  # (n, dim) float32
    xq = np.asarray(xq, np.float32).reshape(-1)
    dense = xb @ xq  # (n,)
    put("dense_score", dense)
    put("dense_rank", candidates.dense_rank)
    if source.sketch_dim:
        d = source.sketch_dim
        put("sketch_score", xb[:, -d:] @ xq[-d:])
    terms = analyze(text)
    n_terms = len(terms)
    weights = source.lexical.row_term_weights(text, rows, state=source.lexical_state)  # (n, t)
    lexical = weights.sum(axis=1)
    put("lexical_score", lexical)
    put("lexical_rank", candidates.lexical_rank)
    absent = candidates.depth + 1
    put("both_channels", (candidates.dense_rank < absent) & (candidates.lexical_rank < absent))
    put("term_coverage", (weights > 0).sum(axis=1) / n_terms if n_terms else 0.0)
    title_weights = np.zeros((n, 0), dtype=np.float32)
    for field in FIELDS:
        w = source.fields.term_weights(field, text, rows)
        if w is None:
            continue
        put(f"bm25_{field}", w.sum(axis=1))
        if field == "title":
            title_weights = w
            put("title_coverage", (w > 0).sum(axis=1) / n_terms if n_terms else 0.0)
    put("title_trigram_cosine", source.fields.title_trigram_cosine(text, rows))
    phrases = source.fields.phrase_matches(text, rows, title_weights, terms)
    put("phrase_in_title", phrases.phrase)
    put("bigram_coverage", phrases.bigrams)
    put("first_term_in_title", phrases.first_term)
    put("last_term_in_title", phrases.last_term)
    held = rows < source.fields.n_items
    title_terms = np.full(n, np.nan, dtype=np.float32)
    title_terms[held] = source.fields.title_terms[rows[held]]
    put("title_terms", title_terms)
    tokens = number_tokens(text)
    put("number_matches", source.fields.number_matches(tokens, rows))
    columns = source.columns
    attrs = columns.attr_names
    if "rating_count" in attrs:
        put(
            "popularity",
            np.log1p(np.clip(columns.attrs[rows, attrs.index("rating_count")], 0, None)),
        )
    if source.engagement is not None and source.item_ids is not None:
        put("engagement", source.engagement.of(source.item_ids[rows]))
    if "rating" in attrs:
        put("rating", columns.attrs[rows, attrs.index("rating")])
    put("log_price", np.log1p(np.clip(columns.price[rows], 0, None)))
    stock = columns.in_stock[rows].astype(np.float32)
    put("in_stock", np.where(stock < 0, np.nan, stock))
    codes = columns.category_codes[rows]
    top = codes[np.argsort(candidates.dense_rank, kind="stable")[:TOP_CATEGORY_DEPTH]]
    top = top[top >= 0]
    if len(top):
        counts = np.bincount(top, minlength=len(columns.category_values))
        put("category_share", np.where(codes >= 0, counts[np.maximum(codes, 0)] / len(top), np.nan))
    put("query_terms", float(n_terms))
    put("query_has_number", float(bool(tokens)))
    lexical_max, dense_max = float(lexical.max()), float(dense.max())
    put("query_lexical_max", lexical_max)
    put("query_dense_max", dense_max)
    in_dense = candidates.dense_rank < absent
    in_lexical = candidates.lexical_rank < absent
    dense_norm = _min_max_within(dense, in_dense)
    lexical_norm = _min_max_within(lexical, in_lexical)
    put("dense_norm", dense_norm)
    put("lexical_norm", lexical_norm)
    put("fused_score", FUSION_ALPHA * dense_norm + (1.0 - FUSION_ALPHA) * lexical_norm)
    put("dense_gap", dense_max - dense)
    put("lexical_ratio", lexical / lexical_max if lexical_max > 0 else np.nan)
    return X


def _min_max_within(scores: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Scores min-max scaled over the members of one channel's list, 0 for the rest (as the
    hybrid blend normalises, ``engine.search.fusion.normalize_scores``: an all-equal list is 1)."""
    out = np.zeros(len(scores), dtype=np.float64)
    if not member.any():
        return out
    s = scores[member].astype(np.float64)
    low, high = s.min(), s.max()
    out[member] = 1.0 if high == low else (s - low) / (high - low)
    return out
