"""Tests for trainer.evaluation.metrics: hand-computed NDCG, Recall, MRR, standard errors and
evaluate_rankings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainer.data.labels import Labels
from trainer.evaluation.metrics import (
    DEFAULT_RECALL_GRADE,
    ESCI_GAINS,
    GAIN_TABLES,
    dcg,
    evaluate_rankings,
    item_gains,
    mean_stderr,
    mrr,
    ndcg_at_k,
    recall_at_k,
    relevant_items,
    resolve_gains,
    summarize,
    weighted_dcg,
    weighted_dcg_at_k,
)

LOG2_3 = math.log2(3)


def test_dcg_by_hand() -> None:
    # gains [1, 0.1, 0] at ranks 1..3 → DCG = 1/log2(2) + 0.1/log2(3) + 0/log2(4)
    assert dcg([1.0, 0.1, 0.0]) == pytest.approx(1.0 + 0.1 / LOG2_3)
    assert dcg([]) == 0.0


def test_ndcg_esci_gains_by_hand() -> None:
    gains = {"a": 1.0, "b": 0.1, "c": 0.01}
    # ranking b, x (unjudged → 0), a: DCG@3 = 0.1/log2(2) + 0 + 1/log2(4) = 0.1 + 0.5 = 0.6
    # ideal: a, b, c → 1 + 0.1/log2(3) + 0.01/log2(4)
    ideal3 = 1.0 + 0.1 / LOG2_3 + 0.01 / 2
    assert ndcg_at_k(["b", "x", "a"], gains, 3) == pytest.approx(0.6 / ideal3)
    # k = 2 cuts both: DCG = 0.1; ideal = 1 + 0.1/log2(3)
    assert ndcg_at_k(["b", "x", "a"], gains, 2) == pytest.approx(0.1 / (1.0 + 0.1 / LOG2_3))
    # the ideal ranking scores 1
    assert ndcg_at_k(["a", "b", "c"], gains, 10) == pytest.approx(1.0)


def test_ndcg_ideal_uses_judged_items_even_if_not_ranked() -> None:
    # two judged relevant items but only one retrieved: DCG = 1, ideal = 1 + 1/log2(3)
    assert ndcg_at_k(["a"], {"a": 1.0, "b": 1.0}, 10) == pytest.approx(1.0 / (1.0 + 1.0 / LOG2_3))


def test_ndcg_undefined_without_positive_gain() -> None:
    assert ndcg_at_k(["a", "b"], {"a": 0.0, "b": 0.0}, 10) is None
    assert ndcg_at_k(["a", "b"], {}, 10) is None


def test_k_larger_than_ranking_and_empty_ranking() -> None:
    gains = {"a": 2.0, "b": 1.0}
    # grade gains (Home Depot): ranking b only, k = 100: DCG = 1; ideal = 2 + 1/log2(3)
    assert ndcg_at_k(["b"], gains, 100) == pytest.approx(1.0 / (2.0 + 1.0 / LOG2_3))
    assert recall_at_k(["b"], {"a", "b"}, 100) == 0.5
    assert mrr(["b"], {"a"}, 100) == 0.0
    assert ndcg_at_k([], gains, 10) == 0.0
    assert recall_at_k([], {"a"}, 10) == 0.0
    assert mrr([], {"a"}) == 0.0


def test_recall_at_k_by_hand() -> None:
    ranking = ["a", "x", "b", "y"]
    relevant = {"a", "b", "c"}
    assert recall_at_k(ranking, relevant, 1) == pytest.approx(1 / 3)  # a
    assert recall_at_k(ranking, relevant, 2) == pytest.approx(1 / 3)  # a, x
    assert recall_at_k(ranking, relevant, 4) == pytest.approx(2 / 3)  # a, b of a, b, c
    assert recall_at_k(ranking, set(), 4) is None  # no relevant item: no recall


def test_mrr_by_hand() -> None:
    assert mrr(["x", "y", "a", "b"], {"a", "b"}) == pytest.approx(1 / 3)  # first hit at rank 3
    assert mrr(["x", "y", "a", "b"], {"a", "b"}, 2) == 0.0  # not in the top 2
    assert mrr(["a"], {"a"}, 1) == 1.0
    assert mrr(["a"], set()) is None


def test_repeated_items_and_bad_k_are_rejected() -> None:
    with pytest.raises(ValueError, match="more than once"):
        ndcg_at_k(["a", "a"], {"a": 1.0}, 10)
    with pytest.raises(ValueError, match="more than once"):
        recall_at_k(["a", "b", "a"], {"a"}, 3)
    # a repeat below the cutoff does not matter
    assert recall_at_k(["a", "b", "a"], {"a"}, 2) == 1.0
    for k in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            recall_at_k(["a"], {"a"}, k)  # type: ignore[arg-type]


def test_mean_stderr_of_a_known_vector() -> None:
    # [1, 2, 3, 4]: mean 2.5; sample variance = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3;
    # stderr = sqrt(5/3) / sqrt(4) = 0.6454972...
    mean, stderr = mean_stderr([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert stderr == pytest.approx(math.sqrt(5 / 3) / 2)
    assert mean_stderr([5.0, 5.0, 5.0]) == (5.0, 0.0)
    mean, stderr = mean_stderr([0.7])
    assert mean == 0.7 and math.isnan(stderr)
    mean, stderr = mean_stderr([])
    assert math.isnan(mean) and math.isnan(stderr)
    assert summarize([1.0, 2.0, 3.0, 4.0]).n == 4


def test_gain_tables_and_recall_grades() -> None:
    assert GAIN_TABLES["esci"] == {3: 1.0, 2: 0.1, 1: 0.01, 0: 0.0}
    assert resolve_gains("grade") == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}
    assert resolve_gains({1: 1, 0: 0}) == {1: 1.0, 0: 0.0}
    assert DEFAULT_RECALL_GRADE == {"esci": 3, "homedepot": 2}
    with pytest.raises(ValueError, match="unknown gain table"):
        resolve_gains("ndcg")
    with pytest.raises(ValueError, match=">= 0"):
        resolve_gains({1: -1.0})
    assert item_gains({"a": 3, "b": 0}, ESCI_GAINS) == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="grade 5 of item 'a'"):
        item_gains({"a": 5}, ESCI_GAINS)
    assert relevant_items({"a": 3, "b": 2, "c": 1}, 2) == {"a", "b"}


# ---------------------------------------------------------------------------------------------
# evaluate_rankings

JUDGMENTS = {
    # E, S, C, I items of one query
    "q1": {"e1": 3, "s1": 2, "c1": 1, "i1": 0},
    # only an Irrelevant judgment: no NDCG, no Recall, no MRR
    "q2": {"i2": 0},
    # two Exact items, nothing retrieved
    "q3": {"e3": 3, "e4": 3},
}
RANKINGS = {"q1": ["s1", "e1", "i1", "x"], "q2": ["i2", "x"], "q3": [], "q9": ["x"]}


def test_evaluate_rankings_esci_by_hand() -> None:
    report = evaluate_rankings(RANKINGS, JUDGMENTS, "esci", 3, (10,))
    # q1: DCG@10 = 0.1/log2(2) + 1/log2(3) + 0 = 0.1 + 0.6309
    #     ideal = 1 + 0.1/log2(3) + 0.01/log2(4) = 1.0680930
    q1 = (0.1 + 1 / LOG2_3) / (1 + 0.1 / LOG2_3 + 0.01 / 2)
    assert report.per_query["q1"]["ndcg@10"] == pytest.approx(q1)
    assert report.per_query["q1"]["recall@10"] == 1.0  # e1 is the only Exact item
    assert report.per_query["q1"]["mrr@10"] == 0.5  # e1 at rank 2
    assert report.per_query["q2"] == {}
    assert report.per_query["q3"] == {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}
    # means over q1 and q3 (q2 excluded); for two values stderr = |a - b| / 2
    ndcg = report.metrics["ndcg@10"]
    assert (ndcg.mean, ndcg.n) == (pytest.approx(q1 / 2), 2)
    assert ndcg.stderr == pytest.approx(q1 / 2)
    assert report.metrics["recall@10"].mean == 0.5
    assert report.metrics["mrr@10"].mean == 0.25
    assert report.n_queries == 3
    assert list(report.metrics) == ["ndcg@10", "recall@10", "mrr@10"]


def test_evaluate_rankings_recall_grade_and_labels_object() -> None:
    labels = Labels(queries={q: q for q in JUDGMENTS}, judgments=JUDGMENTS, path="labels.jsonl")
    # Home Depot style: gain = grade, grade >= 2 relevant; k = 1 and 10
    report = evaluate_rankings(RANKINGS, labels, "grade", 2, (10, 1))
    assert list(report.metrics) == ["ndcg@1", "ndcg@10", "recall@1", "recall@10", "mrr@10"]
    # q1 relevant = {e1, s1}; top 1 = s1 → recall@1 = 1/2, MRR = 1
    assert report.per_query["q1"]["recall@1"] == 0.5
    assert report.per_query["q1"]["mrr@10"] == 1.0
    # q1 NDCG@1: DCG = 2 (s1), ideal = 3 (e1)
    assert report.per_query["q1"]["ndcg@1"] == pytest.approx(2 / 3)


def test_evaluate_rankings_errors() -> None:
    with pytest.raises(ValueError, match="1 judged queries have no ranking"):
        evaluate_rankings({"q1": [], "q2": []}, JUDGMENTS, "esci", 3)
    with pytest.raises(ValueError, match="has no gain"):
        evaluate_rankings(RANKINGS, {"q1": {"a": 7}}, "esci", 3)
    with pytest.raises(ValueError, match="ks must be"):
        evaluate_rankings(RANKINGS, JUDGMENTS, "esci", 3, ())
    with pytest.raises(ValueError, match="task"):
        evaluate_rankings(RANKINGS, JUDGMENTS, "esci", 3, task="ranking")


def test_weighted_dcg_by_hand() -> None:
    # hits at ranks 1 and 3 with weights 1 and 4, a miss (rank 0) and one past k (rank 11)
    ranks, weights = np.array([1, 3, 0, 11]), np.array([1.0, 4.0, 2.0, 3.0])
    assert weighted_dcg(ranks, weights, 10) == pytest.approx((1 + 4 / 2) / 10)
    assert weighted_dcg(ranks, weights, 2) == pytest.approx(1 / 10)  # rank 3 is past k = 2
    assert math.isnan(weighted_dcg(np.array([], dtype=np.int64), np.array([])))
    with pytest.raises(ValueError, match="finite and > 0"):
        weighted_dcg(np.array([1]), np.array([0.0]))
    with pytest.raises(ValueError, match="two \\(n,\\) arrays"):
        weighted_dcg(np.array([1, 2]), np.array([1.0]))
    with pytest.raises(ValueError, match="k must be"):
        weighted_dcg(ranks, weights, 0)


def test_weighted_dcg_at_k_weights_do_not_cancel_within_a_query() -> None:
    # Each query has one clicked item: NDCG would score both 1 / log2(3) and 1, whatever the
    # weights; the weighted DCG counts q2's deep click (weight 9) nine times q1's.
    labels = Labels(
        queries={"q1": "a", "q2": "b"},
        judgments={"q1": {"x": 2, "n": 0}, "q2": {"y": 2}},
        path="feedback.jsonl",
        weights={"q1": {"x": 1.0}, "q2": {"y": 9.0}},
    )
    rankings = {"q1": ["z", "x"], "q2": ["y", "x"]}
    got = weighted_dcg_at_k(rankings, labels, "grade", 10)
    # gains: grade 2 → 2 (the "grade" table), so weights 2 and 18; grade 0 is not counted
    assert got == pytest.approx((2 / LOG2_3 + 18) / 20)
    assert weighted_dcg_at_k({"q1": ["x"], "q2": ["x"]}, labels, "grade", 10) == pytest.approx(0.1)
    unweighted = Labels(labels.queries, labels.judgments, "labels.jsonl")  # every weight 1
    assert weighted_dcg_at_k(rankings, unweighted, "grade", 10) == pytest.approx(
        (1 / LOG2_3 + 1) / 2
    )
    with pytest.raises(ValueError, match="'q2' has no ranking"):
        weighted_dcg_at_k({"q1": ["x"]}, labels, "grade", 10)


def test_report_json_and_table() -> None:
    report = evaluate_rankings({"q1": ["a"]}, {"q1": {"a": 3}}, "esci", 3, (10,))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # NaN stderr → null
    assert data["metrics"]["ndcg@10"] == {"mean": 1.0, "stderr": None, "n": 1}
    assert data["per_query"] == {"q1": {"ndcg@10": 1.0, "recall@10": 1.0, "mrr@10": 1.0}}
    assert data["info"]["gains"] == {"3": 1.0, "2": 0.1, "1": 0.01, "0": 0.0}
    assert "per_query" not in report.to_dict(per_query=False)
    table = report.format_table()
    assert "ndcg@10" in table and "1.0000" in table
