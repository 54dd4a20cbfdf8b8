"""Ranker features against hand-computed values: BM25 per row, candidates, the feature matrix."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pytest

from indexer.lexical.analysis import analyze
from indexer.lexical.index import LexicalIndex
from indexer.ranking.features import FeatureSource, compute_features, union_candidates
from indexer.ranking.fields import FieldIndex, field_text, number_tokens, present_fields
from indexer.ranking.spec import FEATURES, FIELDS, FUSION_ALPHA
from indexer.ranking.trigrams import TRIGRAM_DIM, trigram_matrix
from indexer.rerank.columns import ItemColumns
from indexer.rerank.vectors import VectorStore

K1, B = 1.2, 0.75


def bm25_weight(tf: int, doc_len: int, df: int, n_docs: int, avgdl: float) -> float:
    """Lucene BM25 of one term in one document, by the formula."""
    idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
    return idf * tf / (tf + K1 * (1 - B + B * doc_len / avgdl))


def col(X: np.ndarray, name: str) -> np.ndarray:
    return X[:, FEATURES.index(name)]


def test_row_term_weights_by_hand_and_against_search():
    texts = ["red sofa", "red red lamp", "blue sofa bed"]
    index = LexicalIndex.build(texts, np.arange(3), np.array([0, 1, 0]), 2)
    # analysed lengths 2, 3, 3 (no stopwords); avgdl 8/3; df(red) = 2, df(sofa) = 2
    avgdl = 8 / 3
    got = index.row_term_weights("red sofa", np.array([2, 0, 1, 7]))
    expected = np.array(
        [
            [0.0, bm25_weight(1, 3, 2, 3, avgdl)],
            [bm25_weight(1, 2, 2, 3, avgdl), bm25_weight(1, 2, 2, 3, avgdl)],
            [bm25_weight(2, 3, 2, 3, avgdl), 0.0],
            [0.0, 0.0],  # a row the index does not hold
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    D, I = index.search("red sofa", 3)
    np.testing.assert_allclose(got[[list([2, 0, 1]).index(r) for r in I]].sum(1), D, rtol=1e-5)


def test_row_term_weights_follow_live_updates():
    index = LexicalIndex.build(["red sofa", "blue lamp"], np.arange(2), np.zeros(2, int), 1)
    index.upsert(np.array([1, 2]), ["red lamp", "red red chair"])
    w = index.row_term_weights("red", np.array([0, 1, 2]))
    assert (w[:, 0] > 0).all()
    assert w[2, 0] > w[1, 0]  # tf 2 beats tf 1 at equal length statistics
    index.delete(np.array([0]))
    assert index.row_term_weights("red", np.array([0]))[0, 0] == 0.0


def test_union_candidates():
    c = union_candidates(np.array([5, 3, -1, 3]), np.array([3, 9, 5]), depth=4)
    assert c.rows.tolist() == [5, 3, 9]
    assert c.dense_rank.tolist() == [1, 2, 5]
    assert c.lexical_rank.tolist() == [3, 1, 2]


def test_number_tokens_and_fields():
    assert number_tokens("Dewalt DW7800 3/4 in. 12-gauge, 2x4 2x4") == [
        "dw7800",
        "3/4",
        "12-gauge",
        "2x4",
    ]
    assert number_tokens("red sofa") == []
    record = {"title": "T", "category": ["a", "b"], "bullets": ["x <b>y</b>"], "description": "z"}
    assert field_text(record, "category") == "a > b"
    assert field_text(record, "description").split() == ["x", "y", "z"]
    assert field_text(record, "brand") == ""
    assert present_fields(["item_id", "title", "bullets"]) == ("title", "description")


@pytest.fixture()
def source():
    items = pa.table(
        {
            "item_id": ["A", "B", "C", "D"],
            "title": ["Acme drill DW7800", "red sofa", "red lamp", "blue sofa bed"],
            "brand": ["Acme", None, "Lumo", None],
            "category": ["tools", "furniture", "lighting", "furniture"],
            "price": [99.0, None, 19.0, 250.0],
            "rating": [4.5, 3.0, None, 5.0],
            "rating_count": [10, 0, 3, None],
            "in_stock": [True, False, None, True],
        }
    )
    texts = [
        f"{t} {b or ''}"
        for t, b in zip(items["title"].to_pylist(), items["brand"].to_pylist(), strict=True)
    ]
    xb = np.eye(4, 3, dtype=np.float32)  # rows 0..2 are unit axes, row 3 is zero
    return FeatureSource(
        columns=ItemColumns.from_table(items),
        vectors=VectorStore("f32", xb),
        lexical=LexicalIndex.build(texts, np.arange(4), np.zeros(4, int), 1),
        fields=FieldIndex.build(items),
    )


def test_compute_features_by_hand(source):
    xq = np.array([0.6, 0.8, 0.0], np.float32)
    cands = union_candidates(np.array([1, 0]), np.array([1, 3, 2]), depth=2)
    assert cands.rows.tolist() == [1, 0, 3, 2]
    X = compute_features(source, "red sofa DW7800", xq, cands)
    assert X.shape == (4, len(FEATURES)) and X.dtype == np.float32
    np.testing.assert_allclose(col(X, "dense_score"), [0.8, 0.6, 0.0, 0.0], atol=1e-6)
    assert col(X, "dense_rank").tolist() == [1, 2, 3, 3]  # absent = depth + 1
    assert col(X, "lexical_rank").tolist() == [1, 3, 2, 3]
    assert col(X, "both_channels").tolist() == [1, 0, 0, 0]
    assert np.isnan(col(X, "sketch_score")).all()  # no sketch
    # query terms: red, sofa, dw7800 -> "dw", "7800": 4 analysed terms
    assert col(X, "query_terms").tolist() == [4] * 4
    np.testing.assert_allclose(col(X, "term_coverage"), [2 / 4, 2 / 4, 1 / 4, 1 / 4])
    np.testing.assert_allclose(col(X, "title_coverage"), [2 / 4, 2 / 4, 1 / 4, 1 / 4])
    assert col(X, "number_matches").tolist() == [0, 1, 0, 0]  # "dw7800" verbatim in A only
    assert col(X, "query_has_number").tolist() == [1] * 4
    # title BM25 of B ("red sofa") by hand: 4 titles of lengths 3 (acme drill dw 7800 -> 4),
    # 2, 2, 3; avgdl = (4 + 2 + 2 + 3) / 4
    avgdl = 11 / 4
    red_b = bm25_weight(1, 2, 2, 4, avgdl)
    sofa_b = bm25_weight(1, 2, 2, 4, avgdl)
    assert col(X, "bm25_title")[0] == pytest.approx(red_b + sofa_b, rel=1e-5)
    assert col(X, "bm25_brand").tolist() == [0, 0, 0, 0]
    assert col(X, "bm25_category").tolist() == [0, 0, 0, 0]
    assert np.isnan(col(X, "bm25_description")).all()  # the items have no description field
    np.testing.assert_allclose(
        col(X, "log_price"), [np.nan, math.log1p(99), math.log1p(250), math.log1p(19)]
    )
    np.testing.assert_allclose(col(X, "popularity"), [0.0, math.log1p(10), np.nan, math.log1p(3)])
    np.testing.assert_allclose(col(X, "rating"), [3.0, 4.5, 5.0, np.nan])
    np.testing.assert_allclose(col(X, "in_stock"), [0, 1, 1, np.nan])
    # dense top (B, A, then D and C tied at rank 3 in row order): furniture 2 of 4
    np.testing.assert_allclose(col(X, "category_share"), [2 / 4, 1 / 4, 2 / 4, 1 / 4])
    assert col(X, "query_dense_max").tolist() == pytest.approx([0.8] * 4)
    lexical = col(X, "lexical_score")
    assert col(X, "query_lexical_max")[0] == pytest.approx(lexical.max())
    # min-max within each list: dense list = B (0.8), A (0.6); lexical list = B, D, C
    np.testing.assert_allclose(col(X, "dense_norm"), [1.0, 0.0, 0.0, 0.0], atol=1e-6)
    in_lex = [0, 2, 3]
    lo, hi = lexical[in_lex].min(), lexical[in_lex].max()
    expected_lexical_norm = np.array(
        [(lexical[i] - lo) / (hi - lo) if i in in_lex else 0.0 for i in range(4)]
    )
    np.testing.assert_allclose(col(X, "lexical_norm"), expected_lexical_norm, rtol=1e-5)
    np.testing.assert_allclose(
        col(X, "fused_score"), 0.3 * col(X, "dense_norm") + 0.7 * expected_lexical_norm, rtol=1e-5
    )
    np.testing.assert_allclose(col(X, "dense_gap"), [0.0, 0.2, 0.8, 0.8], atol=1e-6)
    np.testing.assert_allclose(col(X, "lexical_ratio"), lexical / lexical.max(), rtol=1e-6)


def test_fused_score_is_the_servers_default_blend():
    from engine.search.types import DEFAULT_FUSION

    assert (DEFAULT_FUSION.method, DEFAULT_FUSION.norm) == ("blend", "minmax")
    assert DEFAULT_FUSION.alpha == FUSION_ALPHA


def test_compute_features_empty(source):
    X = compute_features(
        source, "x", np.ones(3, np.float32), union_candidates(np.zeros(0, int), np.zeros(0, int), 5)
    )
    assert X.shape == (0, len(FEATURES))


def test_spec_fields():
    assert {f"bm25_{f}" for f in FIELDS} <= set(FEATURES)
    assert len(set(FEATURES)) == len(FEATURES)


def exact_trigram_cosine(a: str, b: str) -> float:
    """Cosine of the exact (unhashed) trigram count vectors of two texts' normalised words."""
    from collections import Counter

    def grams(t: str) -> Counter:
        s = " " + " ".join(re.findall(r"\w+", t.lower())) + " "
        return Counter(s[i : i + 3] for i in range(len(s) - 2))

    ga, gb = grams(a), grams(b)
    dot = sum(ga[g] * gb[g] for g in ga)
    return dot / math.sqrt(sum(v * v for v in ga.values()) * sum(v * v for v in gb.values()))


def test_title_match_features_by_hand(source):
    cands = union_candidates(np.array([1, 0]), np.array([1, 3, 2]), depth=2)  # rows 1, 0, 3, 2
    X = compute_features(source, "red sofa DW7800", np.zeros(3, np.float32), cands)
    titles = ["red sofa", "Acme drill DW7800", "blue sofa bed", "red lamp"]
    np.testing.assert_allclose(
        col(X, "title_trigram_cosine"),
        [exact_trigram_cosine("red sofa DW7800", t) for t in titles],
        rtol=1e-5,
    )
    assert col(X, "phrase_in_title").tolist() == [0, 0, 0, 0]
    # word pairs "red sofa", "sofa dw7800": only B has one of them
    assert col(X, "bigram_coverage").tolist() == [0.5, 0, 0, 0]
    # analysed terms red, sofa, dw, 7800: first "red" (B, C), last "7800" (A)
    assert col(X, "first_term_in_title").tolist() == [1, 0, 0, 1]
    assert col(X, "last_term_in_title").tolist() == [0, 1, 0, 0]
    assert col(X, "title_terms").tolist() == [2, 4, 3, 2]
    X = compute_features(source, "Sofa  BED", np.zeros(3, np.float32), cands)
    assert col(X, "phrase_in_title").tolist() == [0, 0, 1, 0]
    assert col(X, "bigram_coverage").tolist() == [0, 0, 1, 0]
    X = compute_features(source, "sofa", np.zeros(3, np.float32), cands)
    assert np.isnan(col(X, "bigram_coverage")).all()  # one word: no pairs


def test_title_match_features_of_rows_added_since_the_build(source):
    # an item upserted after the build has a row past the field index (its features read 0)
    fields, rows = source.fields, np.array([7, 1])
    assert fields.title_trigram_cosine("red sofa", rows).tolist() == pytest.approx([0, 1])
    m = fields.phrase_matches(
        "red sofa", rows, fields.term_weights("title", "red sofa", rows), analyze("red sofa")
    )
    assert m.phrase.tolist() == [0, 1] and m.last_term.tolist() == [0, 1]
    assert m.bigrams.tolist() == [0, 1] and m.first_term.tolist() == [0, 1]


def test_trigram_cosine_tolerates_typos():
    items = pa.table({"item_id": ["a", "b"], "title": ["Drywall Screws 1-5/8 in.", "Deck Paint"]})
    fields = FieldIndex.build(items)
    cos = fields.title_trigram_cosine("drywal screw", np.array([0, 1]))
    assert cos[0] > 0.6 and cos[1] < 0.2
    assert fields.title_trigram_cosine("x", np.array([0, 1])).tolist() == [0, 0]  # " x " only
    assert trigram_matrix([]).shape == (0, TRIGRAM_DIM)
    m = trigram_matrix(["", "ab"])
    assert m.getrow(0).nnz == 0 and m.getrow(1).nnz == 2  # " ab " -> " ab", "ab "
