"""Tests for trainer.evaluation.search: exact search, and evaluate_search end to end with the
tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SEARCH_RECORDS, catalog_of, search_labels
from trainer.data.labels import Labels
from trainer.encoder.load import load_encoder
from trainer.evaluation.search import evaluate_search, exact_search


def test_exact_search_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((300, 8)).astype(np.float32)
    xq = rng.standard_normal((7, 8)).astype(np.float32)
    D, I = exact_search(xq, xb, 20, block_size=3)  # several blocks, the last one short
    scores = xq @ xb.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(I, expected)
    np.testing.assert_allclose(D, np.take_along_axis(scores, expected, axis=1), rtol=1e-6)
    assert D.dtype == np.float32 and I.dtype == np.int64


def test_exact_search_ties_go_to_the_lower_row_and_k_above_n() -> None:
    xb = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.0], [1.0, 0.0]], np.float32)
    xq = np.array([[1.0, 0.0]], np.float32)
    D, I = exact_search(xq, xb, 2)
    assert I.tolist() == [[1, 2]]  # rows 1, 2, 4 tie at 1.0
    D, I = exact_search(xq, xb, 10)  # k > n → all n rows
    assert I.tolist() == [[1, 2, 4, 3, 0]]
    assert D.tolist() == [[1.0, 1.0, 1.0, 0.5, 0.0]]
    D, I = exact_search(xq, xb[:0], 3)  # an empty database: no results, no error
    assert D.shape == I.shape == (1, 0)
    with pytest.raises(ValueError, match="finite"):
        exact_search(xq, np.full((2, 2), np.nan, np.float32), 1)


def test_evaluate_search_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    encoder = load_encoder(tiny_model_dir)
    catalog = catalog_of(SEARCH_RECORDS)
    labels = search_labels()
    report = evaluate_search(encoder, catalog, labels, gains="esci", recall_grade=3, ks=(1, 10))
    for name in ("ndcg@1", "ndcg@10", "recall@1", "recall@10", "mrr@10"):
        # q3 has only an Irrelevant judgment: it counts for no metric
        assert (report.metrics[name].mean, report.metrics[name].n) == (pytest.approx(1.0), 2)
        assert report.metrics[name].stderr == pytest.approx(0.0)
    assert report.per_query["q3"] == {}
    assert report.info["n_items"] == 6 and report.info["fingerprint"] == encoder.fingerprint
    assert not report.info["item_vectors_cached"]

    cached = evaluate_search(
        encoder, catalog, labels, gains="esci", recall_grade=3, cache_dir=tmp_path / "c"
    )
    again = evaluate_search(
        encoder, catalog, labels, gains="esci", recall_grade=3, cache_dir=tmp_path / "c"
    )
    assert again.info["item_vectors_cached"] and not cached.info["item_vectors_cached"]
    assert again.per_query == cached.per_query


def test_evaluate_search_rejects_items_missing_from_the_catalog(tiny_model_dir: Path) -> None:
    encoder = load_encoder(tiny_model_dir)
    labels = Labels(queries={"q": "sofa"}, judgments={"q": {"NOPE": 3}}, path="labels.jsonl")
    with pytest.raises(ValueError, match="NOPE"):
        evaluate_search(encoder, catalog_of(SEARCH_RECORDS), labels, gains="esci", recall_grade=3)
