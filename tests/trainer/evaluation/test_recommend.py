"""Tests for trainer.evaluation.recommend: the next-item protocol on a 4-item toy catalog."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import catalog_of
from trainer.data.labels import Interactions
from trainer.evaluation.recommend import (
    evaluate_recommendation,
    mean_history_vectors,
    next_item_targets,
)

TOY = catalog_of([{"item_id": i, "title": i} for i in "abcd"])
# a → [1, 0], b → [0.8, 0.6], c → [0, 1], d → [-1, 0]
TOY_XB = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)


def _interactions(histories: dict[str, list[str]], name: str) -> Interactions:
    return Interactions(histories=histories, path=name)


def test_recommendation_protocol_by_hand() -> None:
    train = _interactions(
        {"u1": ["a"], "u2": ["a"], "u3": ["c", "d"], "u4": ["b", "c", "d"]}, "train"
    )
    dev = _interactions({"u1": ["c"], "u2": ["a"], "u3": ["b"], "u4": ["b"], "u5": ["a"]}, "dev")
    report = evaluate_recommendation(TOY_XB, TOY, train, dev, ks=(2, 10))
    per = report.per_query
    # u1 = a: scores a 1, b 0.8, c 0, d -1 → target c at rank 3: NDCG@10 = 1/log2(4) = 0.5
    assert per["u1"] == {
        "ndcg@2": 0.0,
        "ndcg@10": pytest.approx(0.5),
        "recall@2": 0.0,
        "recall@10": 1.0,
        "mrr@10": pytest.approx(1 / 3),
    }
    # u2: the target a is also the history item; it is NOT removed, so rank 1
    assert per["u2"]["ndcg@2"] == pytest.approx(1.0) and per["u2"]["recall@2"] == 1.0
    # u3 = normalised mean of c, d = [-0.71, 0.71]: c 0.71, d 0.71 (tie → lower row c first),
    # b -0.14, a -0.71 → target b at rank 3 → 0.5
    assert per["u3"]["ndcg@10"] == pytest.approx(0.5)
    # u4: mean of b, c, d = [-0.07, 0.53]: c 0.53, b 0.26, a -0.07, d 0.07 → c, b, d, a:
    # b at rank 2 → 1/log2(3)
    assert per["u4"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    # u5 has no train history: left out
    assert "u5" not in per and report.n_queries == 4
    assert report.metrics["recall@10"].mean == 1.0
    assert report.metrics["ndcg@10"].mean == pytest.approx((0.5 + 1 + 0.5 + 1 / math.log2(3)) / 4)
    assert report.task == "recommendation" and report.info["n_items"] == 4


def test_recommendation_history_is_the_most_recent_items() -> None:
    train = _interactions({"u": ["d", "c"]}, "train")
    dev = _interactions({"u": ["b"]}, "dev")
    # the whole history: mean of d, c → b at rank 3 (see above) → 0.5
    full = evaluate_recommendation(TOY_XB, TOY, train, dev, ks=(10,))
    assert full.per_query["u"]["ndcg@10"] == pytest.approx(0.5)
    # only the last item c: c 1, b 0.6, a 0, d 0 → b at rank 2
    last = evaluate_recommendation(TOY_XB, TOY, train, dev, ks=(10,), history_length=1)
    assert last.per_query["u"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    targets = next_item_targets(
        _interactions({"u": [str(i) for i in range(80)]}, "t"), dev, history_length=50
    )
    assert targets["u"] == ([str(i) for i in range(30, 80)], "b")


def test_recommendation_errors() -> None:
    train = _interactions({"u": ["a"]}, "train")
    with pytest.raises(ValueError, match="exactly one per user"):
        evaluate_recommendation(TOY_XB, TOY, train, _interactions({"u": ["a", "b"]}, "dev"))
    with pytest.raises(ValueError, match="not in the catalog"):
        evaluate_recommendation(TOY_XB, TOY, train, _interactions({"u": ["zz"]}, "dev"))
    with pytest.raises(ValueError, match="expected \\(4, dim\\)"):
        evaluate_recommendation(TOY_XB[:3], TOY, train, _interactions({"u": ["a"]}, "dev"))


def test_mean_history_vectors() -> None:
    xu = mean_history_vectors(TOY_XB, [np.array([0, 2]), np.array([0, 3])])
    np.testing.assert_allclose(xu, [[math.sqrt(0.5), math.sqrt(0.5)], [0.0, 0.0]], atol=1e-6)


def test_evaluation_uses_the_decay() -> None:
    # history c then d, target c. Mean of c, d = [-0.71, 0.71]: c and d tie, c first (rank 1).
    # decay 0.3 leans on d = [-1, 0]: d 1st, a last, c ([0, 1]) scores 0.29 → rank 2.
    train = _interactions({"u": ["c", "d"]}, "train")
    dev = _interactions({"u": ["c"]}, "dev")
    mean = evaluate_recommendation(TOY_XB, TOY, train, dev, ks=(10,))
    assert mean.per_query["u"]["ndcg@10"] == pytest.approx(1.0)
    assert mean.info["history_decay"] == 1.0
    recent = evaluate_recommendation(TOY_XB, TOY, train, dev, ks=(10,), history_decay=0.3)
    assert recent.per_query["u"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert recent.info["history_decay"] == 0.3
    with pytest.raises(ValueError, match="history_decay"):
        evaluate_recommendation(TOY_XB, TOY, train, dev, history_decay=2.0)
