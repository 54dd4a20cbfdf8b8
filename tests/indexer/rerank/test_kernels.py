"""Each numba kernel against a plain NumPy reference, on random data and the corner cases."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.rerank import kernels as K

NEG_INF = np.float32(-np.inf)


# ----------------------------------------------------------------------------- references


def ref_scores(xq: np.ndarray, xb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Inner products in float64; -inf for -1 rows."""
    safe = np.where(rows < 0, 0, rows)
    scores = xb[safe].astype(np.float64) @ xq.astype(np.float64)
    return np.where(rows < 0, -np.inf, scores).astype(np.float32)


def ref_filter(
    rows, cat, cat_ok, brand, brand_ok, price, pmin, pmax, attrs, amin, amax, stock, req
):
    out = np.zeros(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        if r < 0:
            continue
        if len(cat_ok) and (cat[r] < 0 or not cat_ok[cat[r]]):
            continue
        if len(brand_ok) and (brand[r] < 0 or not brand_ok[brand[r]]):
            continue
        if (pmin, pmax) != (-np.inf, np.inf) and not pmin <= price[r] <= pmax:
            continue
        constrained = [j for j in range(attrs.shape[1]) if (amin[j], amax[j]) != (-np.inf, np.inf)]
        if any(not amin[j] <= attrs[r, j] <= amax[j] for j in constrained):
            continue
        if req >= 0 and stock[r] != req:
            continue
        out[i] = True
    return out


def ref_dedupe(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    best: dict[int, int] = {}
    for i, r in enumerate(rows.tolist()):
        if r >= 0 and (r not in best or scores[i] > scores[best[r]]):
            best[r] = i
    keep = np.zeros(len(rows), dtype=bool)
    keep[list(best.values())] = True
    return keep


def ref_topk_positions(scores: np.ndarray, rows: np.ndarray, k: int) -> list[int]:
    valid = [i for i in range(len(rows)) if rows[i] >= 0 and scores[i] > -np.inf]
    return sorted(valid, key=lambda i: (-float(scores[i]), int(rows[i])))[:k]


def ref_cap(order: np.ndarray, groups: np.ndarray, cap: int, k: int) -> list[int]:
    counts: dict[int, int] = {}
    out = []
    for i, r in enumerate(order.tolist()):
        if len(out) == k:
            break
        if r < 0:
            continue
        g = int(groups[r])
        if g >= 0:
            if counts.get(g, 0) >= cap:
                continue
            counts[g] = counts.get(g, 0) + 1
        out.append(i)
    return out


def ref_mmr(xb, rows, scores, lam, k) -> list[int]:
    remaining = [i for i in range(len(rows)) if rows[i] >= 0 and scores[i] > -np.inf]
    picked: list[int] = []
    while remaining and len(picked) < k:

        def value(i: int) -> float:
            if not picked:
                return float(scores[i])
            max_sim = max(float(xb[rows[i]] @ xb[rows[j]]) for j in picked)
            return lam * float(scores[i]) - (1 - lam) * max_sim

        best = max(remaining, key=lambda i: (value(i), -int(rows[i])))
        picked.append(best)
        remaining.remove(best)
    return picked


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    xb = rng.standard_normal((n, dim)).astype(np.float32)
    return xb / np.linalg.norm(xb, axis=1, keepdims=True)


def i8_encode(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scales = (np.abs(xb).max(axis=1) / 127).astype(np.float32)
    safe = np.where(scales > 0, scales, 1)[:, None]
    return np.clip(np.rint(xb / safe), -127, 127).astype(np.int8), scales


# ----------------------------------------------------------------------------- exact scores


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    xb = unit_vectors(rng, 500, 48)
    xb[7] = 0.0  # a zero vector
    rows = rng.integers(-1, 500, size=300).astype(np.int64)
    rows[:3] = [7, -1, 7]
    return xb, rng.standard_normal(48).astype(np.float32), rows


def test_exact_scores_f32(data):
    xb, xq, rows = data
    got = K.exact_scores_f32(xq, xb, rows)
    assert got.dtype == np.float32 and got.shape == rows.shape
    np.testing.assert_allclose(got, ref_scores(xq, xb, rows), rtol=1e-5, atol=1e-5)
    assert got[0] == 0.0 and got[1] == NEG_INF and not np.isnan(got).any()


def test_exact_scores_f16_matches_decoded_reference(data):
    xb, xq, rows = data
    xb_u16 = xb.astype(np.float16).view(np.uint16)
    decoded = xb.astype(np.float16).astype(np.float32)
    got = K.exact_scores_f16(xq, xb_u16, rows)
    np.testing.assert_allclose(got, ref_scores(xq, decoded, rows), rtol=1e-5, atol=1e-5)
    assert got[0] == 0.0 and got[1] == NEG_INF
    np.testing.assert_allclose(got, K.exact_scores_f32(xq, xb, rows), atol=5e-3)


def test_f16_decode_exact_for_all_bit_patterns():
    bits = np.arange(1 << 16, dtype=np.uint16).reshape(-1, 1)  # (65536, 1)
    expected = bits.view(np.float16).astype(np.float32)[:, 0]
    all_rows = np.arange(1 << 16, dtype=np.int64)
    nan = np.isnan(expected)
    decoded = K.decode_f16(bits, all_rows)[:, 0]
    assert np.array_equal(np.isnan(decoded), nan)
    # Bitwise: catches -0.0 vs 0.0 and every subnormal.
    assert np.array_equal(decoded[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    # The scoring kernel decodes the same way: x * 1.0 == x (a sum starting at 0 turns -0 into 0).
    scores = K.exact_scores_f16(np.ones(1, np.float32), bits, all_rows)
    assert np.array_equal(np.isnan(scores), nan)
    assert np.array_equal(scores[~nan], expected[~nan])


def test_exact_scores_i8(data):
    xb, xq, rows = data
    codes, scales = i8_encode(xb)
    assert scales[7] == 0 and not codes[7].any()
    got = K.exact_scores_i8(xq, codes, scales, rows)
    decoded = codes.astype(np.float32) * scales[:, None]
    np.testing.assert_allclose(got, ref_scores(xq, decoded, rows), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        K.decode_i8(codes, scales, rows[rows >= 0]), decoded[rows[rows >= 0]]
    )
    assert got[0] == 0.0 and got[1] == NEG_INF and not np.isnan(got).any()


def test_i8_recall_at_10_vs_f32():
    rng = np.random.default_rng(1)
    xb = unit_vectors(rng, 4000, 64)
    queries = unit_vectors(rng, 20, 64)
    codes, scales = i8_encode(xb)
    rows = np.arange(len(xb), dtype=np.int64)
    hits = 0
    for xq in queries:
        _, exact = K.topk(K.exact_scores_f32(xq, xb, rows), rows, 10)
        _, approx = K.topk(K.exact_scores_i8(xq, codes, scales, rows), rows, 10)
        hits += len(set(exact.tolist()) & set(approx.tolist()))
    assert hits / (10 * len(queries)) >= 0.9


def test_scores_empty_and_all_missing():
    xb = np.ones((3, 4), np.float32)
    xq = np.ones(4, np.float32)
    assert K.exact_scores_f32(xq, xb, np.zeros(0, np.int64)).shape == (0,)
    missing = np.full(2, -1, np.int64)
    assert (K.exact_scores_f32(xq, xb, missing) == NEG_INF).all()
    assert (K.exact_scores_f16(xq, xb.astype(np.float16).view(np.uint16), missing) == NEG_INF).all()
    codes, scales = i8_encode(xb)
    assert (K.exact_scores_i8(xq, codes, scales, missing) == NEG_INF).all()
    assert K.exact_scores_f32(np.zeros(4, np.float32), xb, np.arange(3)).tolist() == [0.0] * 3


# ----------------------------------------------------------------------------- filters, boosts


@pytest.fixture(scope="module")
def columns():
    rng = np.random.default_rng(2)
    n = 400
    cat = rng.integers(-1, 6, n).astype(np.int32)
    brand = rng.integers(-1, 4, n).astype(np.int32)
    price = rng.uniform(0, 100, n)
    price[rng.random(n) < 0.2] = np.nan
    attrs = rng.uniform(0, 5, (n, 3))
    attrs[rng.random((n, 3)) < 0.2] = np.nan
    stock = rng.integers(-1, 2, n).astype(np.int8)
    rows = rng.integers(-1, n, 600).astype(np.int64)
    return rows, cat, brand, price, attrs, stock


NO_ATTR = (np.full(3, -np.inf), np.full(3, np.inf))
# fmt: off
CASES = {
    "none": (np.zeros(0, bool), np.zeros(0, bool), -np.inf, np.inf, *NO_ATTR, -1),
    "category": (
        np.array([1, 0, 1, 0, 0, 1], bool), np.zeros(0, bool), -np.inf, np.inf, *NO_ATTR, -1,
    ),
    "brand": (np.zeros(0, bool), np.array([0, 1, 1, 0], bool), -np.inf, np.inf, *NO_ATTR, -1),
    "price": (np.zeros(0, bool), np.zeros(0, bool), 10.0, 60.0, *NO_ATTR, -1),
    "price_open_high": (np.zeros(0, bool), np.zeros(0, bool), 50.0, np.inf, *NO_ATTR, -1),
    "attrs": (
        np.zeros(0, bool), np.zeros(0, bool), -np.inf, np.inf,
        np.array([1.0, -np.inf, -np.inf]), np.array([np.inf, np.inf, 2.5]), -1,
    ),
    "in_stock": (np.zeros(0, bool), np.zeros(0, bool), -np.inf, np.inf, *NO_ATTR, 1),
    "out_of_stock": (np.zeros(0, bool), np.zeros(0, bool), -np.inf, np.inf, *NO_ATTR, 0),
    "all": (
        np.array([1, 1, 1, 0, 1, 1], bool), np.array([1, 1, 0, 1], bool), 5.0, 95.0,
        np.array([0.5, -np.inf, -np.inf]), np.array([4.5, np.inf, np.inf]), 1,
    ),
    "nothing": (np.zeros(6, bool), np.zeros(0, bool), -np.inf, np.inf, *NO_ATTR, -1),
}
# fmt: on


@pytest.mark.parametrize("case", sorted(CASES))
def test_filter_mask(columns, case):
    rows, cat, brand, price, attrs, stock = columns
    cat_ok, brand_ok, pmin, pmax, amin, amax, req = CASES[case]
    args = (rows, cat, cat_ok, brand, brand_ok, price, pmin, pmax, attrs, amin, amax, stock)
    got = K.filter_mask(*args, np.int8(req))
    expected = ref_filter(*args, req)
    assert np.array_equal(got, expected)
    assert not got[rows < 0].any()
    if case == "none":  # nothing set: every real row passes, NaN prices included
        assert np.array_equal(got, rows >= 0)
    if case == "nothing":
        assert not got.any()
    if case in ("price", "price_open_high"):  # a missing price never matches a set range
        assert not got[np.isnan(price[np.maximum(rows, 0)])].any()


def test_filter_mask_empty(columns):
    _, cat, brand, price, attrs, stock = columns
    cat_ok, brand_ok, pmin, pmax, amin, amax, _ = CASES["all"]
    got = K.filter_mask(
        np.zeros(0, np.int64), cat, cat_ok, brand, brand_ok, price, pmin, pmax, attrs, amin, amax,
        stock, np.int8(1),
    )  # fmt: skip
    assert got.shape == (0,) and got.dtype == np.bool_


def test_boost_scores():
    rng = np.random.default_rng(3)
    signals = rng.random((50, 3)).astype(np.float32)
    weights = np.array([0.2, -0.1, 0.05], np.float32)
    rows = rng.integers(-1, 50, 80).astype(np.int64)
    sim = rng.standard_normal(80).astype(np.float32)
    got = K.boost_scores(sim, rows, signals, weights)
    expected = np.where(rows < 0, -np.inf, sim + signals[np.maximum(rows, 0)] @ weights)
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-6, atol=1e-6)
    zero = K.boost_scores(sim, rows, signals, np.zeros(3, np.float32))
    assert np.array_equal(zero[rows >= 0], sim[rows >= 0])
    assert K.boost_scores(sim[:0], rows[:0], signals, weights).shape == (0,)


def test_dedupe_max():
    rng = np.random.default_rng(4)
    for m in (0, 1, 7, 300, 2000):
        rows = rng.integers(-1, max(m // 3, 1), m).astype(np.int64)  # many duplicates and -1
        scores = rng.integers(0, 5, m).astype(np.float32)  # many ties: first occurrence wins
        got = K.dedupe_max(rows, scores)
        assert np.array_equal(got, ref_dedupe(rows, scores)), m
        kept = rows[got]
        assert len(kept) == len(set(kept.tolist())) and (kept >= 0).all()
    # Rows far apart in value, and a NaN score losing to a real one.
    rows = np.array([10**12, 5, 10**12, 5, -1], np.int64)
    scores = np.array([np.nan, 1.0, 2.0, 3.0, 9.0], np.float32)
    assert K.dedupe_max(rows, scores).tolist() == [False, False, True, True, False]


# ----------------------------------------------------------------------------- selection


@pytest.mark.parametrize("k", [0, 1, 10, 299, 300, 1000])
def test_topk_random(k):
    rng = np.random.default_rng(5)
    scores = rng.standard_normal(300).astype(np.float32)
    rows = rng.permutation(300).astype(np.int64)
    positions = K.topk_indices(scores, rows, k)
    assert positions.tolist() == ref_topk_positions(scores, rows, k)
    D, I = K.topk(scores, rows, k)
    assert D.shape == (k,) and I.shape == (k,) and D.dtype == np.float32 and I.dtype == np.int64
    n = min(k, 300)
    assert np.array_equal(I[:n], rows[positions]) and np.array_equal(D[:n], scores[positions])
    assert (I[n:] == -1).all() and (D[n:] == NEG_INF).all()  # k > n: padding


def test_topk_ties_missing_and_nan():
    scores = np.array([1, 2, 2, 2, np.nan, -np.inf, 5, 2, 1], np.float32)
    rows = np.array([9, 8, 3, -1, 1, 2, 4, 5, 0], np.int64)
    D, I = K.topk(scores, rows, 8)
    # Ties by lower row; the -1 row, the NaN and the -inf score are not results.
    assert I.tolist() == [4, 3, 5, 8, 0, 9, -1, -1]
    assert D.tolist()[:6] == [5, 2, 2, 2, 1, 1]
    D, I = K.topk(scores[:0], rows[:0], 3)
    assert I.tolist() == [-1, -1, -1] and (D == NEG_INF).all()
    everything_filtered = np.full(4, -np.inf, np.float32)
    assert K.topk_indices(everything_filtered, np.arange(4), 2).shape == (0,)


def test_topk_all_ties_large():
    rows = np.random.default_rng(6).permutation(10_000).astype(np.int64)
    _, I = K.topk(np.ones(10_000, np.float32), rows, 10)
    assert I.tolist() == list(range(10))


def test_cap_per_group():
    rng = np.random.default_rng(7)
    groups = rng.integers(-1, 5, 200).astype(np.int32)
    order = rng.permutation(200).astype(np.int64)
    order[::17] = -1
    for cap, k in [(1, 10), (2, 10), (3, 1000), (100, 50), (1, 0)]:
        got = K.cap_per_group(order, groups, cap, k)
        assert got.tolist() == ref_cap(order, groups, cap, k)
    # Items without a group are never capped.
    got = K.cap_per_group(np.arange(5, dtype=np.int64), np.full(5, -1, np.int32), 1, 10)
    assert got.tolist() == [0, 1, 2, 3, 4]
    assert K.cap_per_group(np.zeros(0, np.int64), groups, 1, 10).shape == (0,)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_mmr_select(lam):
    rng = np.random.default_rng(8)
    xb = unit_vectors(rng, 60, 16)
    xb[10] = xb[11]  # a near-duplicate pair
    rows = rng.permutation(60)[:40].astype(np.int64)
    rows[5] = -1
    scores = rng.random(40).astype(np.float32)
    scores[6] = -np.inf
    got = K.mmr_select(xb, rows, scores, lam, 10)
    assert got.tolist() == ref_mmr(xb, rows, scores, lam, 10)
    if lam == 1.0:  # pure relevance = top-k
        assert got.tolist() == ref_topk_positions(scores, rows, 10)


def test_mmr_corner_cases():
    xb = np.zeros((4, 3), np.float32)  # zero vectors: similarity 0, no NaN
    rows = np.array([0, 1, -1, 3], np.int64)
    scores = np.array([0.5, 0.5, 0.9, 0.1], np.float32)
    assert K.mmr_select(xb, rows, scores, 0.5, 10).tolist() == [0, 1, 3]  # k > m; tie: lower row
    assert K.mmr_select(xb, rows[:0], scores[:0], 0.5, 3).shape == (0,)
    assert K.mmr_select(xb, rows, np.full(4, -np.inf, np.float32), 0.5, 3).shape == (0,)
    # Diversity at work: with the duplicate of the best item next in relevance, a low lambda
    # picks the orthogonal item second.
    xb = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    rows = np.arange(3, dtype=np.int64)
    scores = np.array([0.9, 0.8, 0.5], np.float32)
    assert K.mmr_select(xb, rows, scores, 0.3, 2).tolist() == [0, 2]
    assert K.mmr_select(xb, rows, scores, 1.0, 2).tolist() == [0, 1]
