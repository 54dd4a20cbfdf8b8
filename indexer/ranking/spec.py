"""The ranker's feature spec: one versioned list of features that training and serving share.

A ranker is only valid with the spec it was trained on: ``FEATURE_SPEC_VERSION`` is saved in the
ranker file and checked when it loads (``indexer.ranking.model``). Bump it whenever a feature is
added, removed, reordered or computed differently (``indexer.ranking.features``).
"""

from __future__ import annotations

__all__ = [
    "CANDIDATES_PER_CHANNEL",
    "FEATURES",
    "FEATURE_DOCS",
    "FEATURE_SPEC_VERSION",
    "FIELDS",
    "FUSION_ALPHA",
    "TOP_CATEGORY_DEPTH",
]

FEATURE_SPEC_VERSION = "aisle-rank-3"

# The catalog fields with a BM25 index of their own (indexer.ranking.fields): a query term in
# the title or brand says more than the same term deep in a description.
FIELDS = ("title", "brand", "category", "description")

# Candidates the ranker orders: the union of each channel's top N (the server's hybrid depth).
CANDIDATES_PER_CHANNEL = 100
# "Matched category": the share of the dense channel's top this many that share the item's
# category (a query-level signal of which department the query is about).
TOP_CATEGORY_DEPTH = 20
# The dense weight of the fused_score feature: the server's default hybrid blend
# (engine.search.types.DEFAULT_FUSION, min-max normalisation; a test keeps them equal).
FUSION_ALPHA = 0.3

# (name, what it is). Missing values are NaN (LightGBM's missing), never a made-up 0.
_SPEC = (
    ("dense_score", "inner product of query and item vectors (the towers' score)"),
    ("dense_rank", "1-based rank in the dense channel's top N; N + 1 when not retrieved there"),
    ("sketch_score", "the trigram-sketch part of dense_score; NaN for a model without one"),
    ("lexical_score", "BM25 of the query over the item text (the lexical channel's score)"),
    ("lexical_rank", "1-based rank in the lexical channel's top N; N + 1 when not retrieved"),
    ("both_channels", "1 when both channels retrieved the item, else 0"),
    ("dense_norm", "dense_score min-max scaled over the dense list (0 when not in it)"),
    ("lexical_norm", "lexical_score min-max scaled over the lexical list (0 when not in it)"),
    ("fused_score", "FUSION_ALPHA * dense_norm + (1 - FUSION_ALPHA) * lexical_norm: the hybrid "
     "mode's default blend, so the ranker starts from what hybrid knows"),
    ("dense_gap", "query_dense_max - dense_score"),
    ("lexical_ratio", "lexical_score / query_lexical_max; NaN when no candidate matches a term"),
    ("bm25_title", "BM25 of the query over the title alone"),
    ("bm25_brand", "BM25 over the brand"),
    ("bm25_category", "BM25 over the category path"),
    ("bm25_description", "BM25 over the bullets and description"),
    ("term_coverage", "share of the query's terms found in the item text"),
    ("title_coverage", "share of the query's terms found in the title"),
    ("title_trigram_cosine", "cosine of the query's and the title's hashed character-trigram "
     "vectors (indexer.ranking.trigrams): a match that survives typos and word forms"),
    ("phrase_in_title", "1 when the query's words appear in the title as one contiguous run"),
    ("bigram_coverage", "share of the query's adjacent word pairs found adjacent in the title; "
     "NaN for a one-word query"),
    ("first_term_in_title", "1 when the query's first analysed term is a title term"),
    ("last_term_in_title", "1 when the query's last analysed term (often the product type) is a "
     "title term"),
    ("title_terms", "analysed terms in the title; NaN for items added since the build"),
    ("number_matches", "share of the query's number-bearing tokens found verbatim in title or "
     "brand (model numbers, sizes); NaN when the query has none"),
    ("popularity", "log1p(rating_count); NaN when missing"),
    ("engagement", "log1p of the item's engaged events in the event log's last days, weighted "
     "by action (click 1, add to cart 2, purchase 4; trainer.feedback.engagement); NaN "
     "without an event log"),
    ("rating", "mean stars 1-5; NaN when missing"),
    ("log_price", "log1p(price in USD); NaN when missing"),
    ("in_stock", "1 in stock, 0 out, NaN unknown"),
    ("category_share", "share of the dense top TOP_CATEGORY_DEPTH in the item's category"),
    ("query_terms", "number of analysed query terms"),
    ("query_has_number", "1 when the query has a number-bearing token, else 0"),
    ("query_lexical_max", "the best BM25 score among the candidates (how lexical the query is)"),
    ("query_dense_max", "the best dense score among the candidates"),
)  # fmt: skip

FEATURES: tuple[str, ...] = tuple(name for name, _ in _SPEC)
FEATURE_DOCS: dict[str, str] = dict(_SPEC)
