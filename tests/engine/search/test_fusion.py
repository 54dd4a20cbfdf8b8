"""Tests for rank fusion and score blending, against plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest

from engine.search.fusion import FusionParams, blend, fuse, normalize_scores, rrf


def _rrf_reference(lists, k_rrf=60.0, weights=None):
    weights = weights or [1.0] * len(lists)
    scores: dict[int, float] = {}
    for ranked, w in zip(lists, weights, strict=True):
        seen: set[int] = set()
        rank = 0
        for row in ranked:
            if row < 0:
                continue
            rank += 1
            if row in seen:
                continue
            seen.add(row)
            scores[row] = scores.get(row, 0.0) + w / (k_rrf + rank)
    items = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [r for r, _ in items], [s for _, s in items]


def test_rrf_small_example():
    scores, rows = rrf([np.array([10, 20, 30]), np.array([30, 10, -1, -1])], k_rrf=1)
    # 10: 1/2 + 1/3; 30: 1/4 + 1/2; 20: 1/3
    assert rows.tolist() == [10, 30, 20]
    np.testing.assert_allclose(scores, [1 / 2 + 1 / 3, 1 / 4 + 1 / 2, 1 / 3], rtol=1e-6)
    assert scores.dtype == np.float32 and rows.dtype == np.int64


@pytest.mark.parametrize("seed", range(5))
def test_rrf_matches_reference(seed):
    rng = np.random.default_rng(seed)
    lists = [rng.integers(-1, 40, size=int(rng.integers(0, 30))) for _ in range(3)]
    weights = [float(w) for w in rng.uniform(0, 2, 3)]
    scores, rows = rrf(lists, k_rrf=10, weights=weights)
    ref_rows, ref_scores = _rrf_reference([list(x) for x in lists], 10, weights)
    assert rows.tolist() == ref_rows
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)


def test_rrf_ties_and_repeats():
    # 1 and 2 swap places: equal scores, the lower row first. A repeated row keeps its best rank.
    scores, rows = rrf([np.array([2, 1]), np.array([1, 2, 1])])
    assert rows.tolist() == [1, 2] and scores[0] == scores[1]


def test_rrf_edges_and_validation():
    scores, rows = rrf([])
    assert len(scores) == len(rows) == 0
    scores, rows = rrf([np.array([], dtype=np.int64), np.array([-1, -1])])
    assert len(rows) == 0
    assert rrf([np.array([5])], k_rrf=0)[0][0] == pytest.approx(1.0)
    assert rrf([np.array([5]), np.array([6])], weights=[0, 1])[1].tolist() == [6, 5]
    with pytest.raises(ValueError, match="k_rrf"):
        rrf([np.array([1])], k_rrf=-1)
    with pytest.raises(ValueError, match="one weight per list"):
        rrf([np.array([1])], weights=[1, 2])
    with pytest.raises(ValueError, match="weight must be > 0"):
        rrf([np.array([1])], weights=[0])
    with pytest.raises(ValueError, match="integer array"):
        rrf([np.array([1.5])])


def test_normalize_scores():
    z, floor = normalize_scores(np.array([1.0, 3.0, 2.0]), "minmax")
    np.testing.assert_allclose(z, [0, 1, 0.5])
    assert floor == 0
    z, floor = normalize_scores(np.array([4.0, 4.0]), "minmax")
    assert z.tolist() == [1.0, 1.0] and floor == 0  # what it retrieved beats what it did not
    z, floor = normalize_scores(np.array([1.0, 2.0, 3.0]), "zscore")
    np.testing.assert_allclose(z, np.array([-1, 0, 1]) / np.std([1, 2, 3]))
    assert floor == pytest.approx(z.min())
    z, floor = normalize_scores(np.array([7.0]), "zscore")
    assert z.tolist() == [0.0] and floor == -1.0
    assert normalize_scores(np.zeros(0), "zscore")[0].shape == (0,)
    with pytest.raises(ValueError, match="norm"):
        normalize_scores(np.ones(2), "rank")


def test_blend_minmax_by_hand():
    dense = (np.array([0.9, 0.7, 0.5, -3.4e38]), np.array([1, 2, 3, -1]))
    lexical = (np.array([12.0, 4.0]), np.array([3, 4]))
    scores, rows = blend(dense, lexical, alpha=0.5)
    # dense norm: 1 -> 1, 2 -> .5, 3 -> 0, 4 -> floor 0; lexical: 3 -> 1, 4 -> 0, 1, 2 -> floor 0
    expected = {1: 0.5, 2: 0.25, 3: 0.5, 4: 0.0}
    assert rows.tolist() == [1, 3, 2, 4]  # 1 and 3 tie: the lower row first
    np.testing.assert_allclose(scores, [expected[r] for r in rows.tolist()], atol=1e-7)


def test_blend_alpha_extremes_follow_one_channel():
    rng = np.random.default_rng(0)
    d_rows, l_rows = rng.permutation(50)[:20], rng.permutation(50)[:20]
    dense = (rng.normal(size=20), d_rows)
    lexical = (rng.uniform(0, 20, size=20), l_rows)
    # The worst row of the followed list normalises to its floor, 0, and ties with the rows it
    # lacks: only the first 19 follow its order.
    _, rows = blend(dense, lexical, alpha=1.0)
    assert rows[:19].tolist() == d_rows[np.argsort(-dense[0])][:19].tolist()
    _, rows = blend(dense, lexical, alpha=0.0)
    assert rows[:19].tolist() == l_rows[np.argsort(-lexical[0])][:19].tolist()


def test_blend_zscore_by_hand():
    dense = (np.array([3.0, 2.0, 1.0]), np.array([10, 11, 12]))
    lexical = (np.array([5.0]), np.array([12]))
    scores, rows = blend(dense, lexical, alpha=0.25, norm="zscore")
    z = (np.array([3.0, 2.0, 1.0]) - 2.0) / np.std([3.0, 2.0, 1.0])
    # The lexical list has one row: z 0 for it, floor -1 for the others.
    expected = {10: 0.25 * z[0] - 0.75, 11: 0.25 * z[1] - 0.75, 12: 0.25 * z[2]}
    assert rows.tolist() == [12, 10, 11]
    np.testing.assert_allclose(scores, [expected[r] for r in rows.tolist()], rtol=1e-6)


def test_blend_repeats_and_empty_lists():
    scores, rows = blend((np.array([1.0, 5.0]), np.array([4, 4])), (np.zeros(0), np.zeros(0, int)))
    assert rows.tolist() == [4] and scores[0] == pytest.approx(0.5)  # its best score, alpha .5
    scores, rows = blend((np.zeros(0), np.zeros(0, int)), (np.zeros(0), np.zeros(0, int)))
    assert len(rows) == 0


def test_blend_validation():
    ok = (np.array([1.0]), np.array([1]))
    with pytest.raises(ValueError, match="alpha"):
        blend(ok, ok, alpha=1.5)
    with pytest.raises(ValueError, match="norm"):
        blend(ok, ok, norm="l2")
    with pytest.raises(ValueError, match="shape"):
        blend((np.array([1.0, 2.0]), np.array([1])), ok)
    with pytest.raises(ValueError, match="finite"):
        blend((np.array([np.nan]), np.array([1])), ok)
    # Padding scores of -1 rows may be anything (IndexVersion pads with -FLT_MAX).
    assert blend((np.array([np.inf]), np.array([-1])), ok)[1].tolist() == [1]


def test_fuse_dispatches_and_cuts():
    dense = (np.array([0.2, 0.9, 0.5]), np.array([1, 2, 3]))  # not sorted: fuse ranks it
    lexical = (np.array([7.0, 3.0]), np.array([3, 5]))
    scores, rows = fuse(dense, lexical, FusionParams(method="rrf", k_rrf=1))
    ref_rows, _ = _rrf_reference([[2, 3, 1], [3, 5]], k_rrf=1)
    assert rows.tolist() == ref_rows
    scores, rows = fuse(dense, lexical, FusionParams(method="blend", alpha=0.3), k=2)
    full = blend(dense, lexical, 0.3)
    assert rows.tolist() == full[1][:2].tolist() and len(scores) == 2
    assert fuse(dense, lexical)[1].tolist() == _rrf_reference([[2, 3, 1], [3, 5]])[0]  # rrf, 60
    with pytest.raises(ValueError, match="k must"):
        fuse(dense, lexical, k=0)


def test_fusion_params_validate():
    FusionParams()
    FusionParams(method="blend", alpha=0.0, norm="zscore", rrf_weights=(0.0, 1.0))
    for bad in (
        {"method": "max"},
        {"k_rrf": -5},
        {"k_rrf": float("inf")},
        {"alpha": -0.1},
        {"alpha": True},
        {"norm": "softmax"},
        {"rrf_weights": (1.0,)},
        {"rrf_weights": (0.0, 0.0)},
        {"rrf_weights": (1.0, float("nan"))},
    ):
        with pytest.raises(ValueError):
            FusionParams(**bad)
