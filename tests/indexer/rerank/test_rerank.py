"""Tests for the re-ranking layer: item columns, filters, the pipeline, widening, vector stores."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from indexer.rerank.columns import ItemColumns
from indexer.rerank.filters import compile_filter, matching_rows, selectivity
from indexer.rerank.plan import CandidatePlan, candidate_depth, plan_candidates
from indexer.rerank.rerank import rerank, search_and_rerank
from indexer.rerank.specs import BoostSpec, DiversitySpec, FilterSpec
from indexer.rerank.vectors import VectorStore
from indexer.storage.manifest import IndexFormatError
from indexer.version import IndexVersion

CATEGORIES = [
    "Home > Furniture > Sofas",
    "Home > Furniture > Coffee Tables",
    "Home > Furniture Sets",
    "Home > Decor > Throw Pillows",
    "Kitchen > Cookware > Skillets",
]
BRANDS = ["Acme", "Globex", "Initech"]


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    xb = rng.standard_normal((n, dim)).astype(np.float32)
    return xb / np.linalg.norm(xb, axis=1, keepdims=True)


def make_items(n: int, *, seed: int = 0) -> pa.Table:
    """An items table with the catalog's typed columns, about 10 % nulls in each optional one."""
    rng = np.random.default_rng(seed)

    def maybe(values: list) -> list:
        return [None if rng.random() < 0.1 else v for v in values]

    return pa.table(
        {
            "item_id": [f"SKU{i:06d}" for i in range(n)],
            "title": [f"item {i}" for i in range(n)],
            "category": maybe([CATEGORIES[i % len(CATEGORIES)] for i in range(n)]),
            "brand": maybe([BRANDS[int(b)] for b in rng.integers(0, 3, n)]),
            "price": pa.array(maybe(np.round(rng.uniform(1, 500, n), 2).tolist()), pa.float64()),
            "rating": pa.array(maybe(np.round(rng.uniform(1, 5, n), 1).tolist()), pa.float64()),
            "rating_count": pa.array(maybe(rng.integers(0, 5000, n).tolist()), pa.int64()),
            "in_stock": pa.array(maybe((rng.random(n) < 0.8).tolist()), pa.bool_()),
            "margin": pa.array(maybe(rng.uniform(0.05, 0.6, n).tolist()), pa.float64()),
            "weight_kg": pa.array(maybe(rng.integers(1, 40, n).tolist()), pa.int64()),
            "color": maybe(["red"] * n),
        }
    )


@pytest.fixture(scope="module")
def world():
    """(items table, columns, (n, dim) unit vectors) for 2,000 items."""
    items = make_items(2000)
    xb = unit_vectors(np.random.default_rng(1), 2000, 32)
    return items, ItemColumns.from_table(items), xb


def ref_pipeline(xq, xb, rows, k, items: pa.Table, keep, weights=(0.0, 0.0, 0.0)):
    """NumPy reference: unique valid rows passing ``keep(record)``, score = sim + boost, top-k."""
    columns = ItemColumns.from_table(items)
    records = items.to_pylist()
    unique = sorted({int(r) for r in rows if r >= 0 and keep(records[r])})
    sim = xb[unique].astype(np.float64) @ xq
    score = sim + columns.signals[unique] @ np.asarray(weights)
    order = sorted(range(len(unique)), key=lambda i: (-score[i], unique[i]))[:k]
    return [unique[i] for i in order], score[order]


# ----------------------------------------------------------------------------- columns


def test_item_columns_from_table():
    items = pa.table(
        {
            "item_id": ["a", "b", "c", "d"],
            "category": ["X > Y", None, "X > Y", "Z"],
            "brand": [None, "B1", "B2", "B1"],
            "price": pa.array([10.0, None, 5.5, 0.0]),
            "rating": pa.array([1.0, 5.0, None, 3.0]),
            "rating_count": pa.array([0, 10, None, 1000], pa.int64()),
            "in_stock": pa.array([True, None, False, True]),
            "margin": pa.array([0.1, 0.3, None, 0.2]),
            "pack": pa.array([1, 2, 3, None], pa.int64()),
            "fragile": pa.array([True, False, None, True]),
            "material": ["oak", None, "pine", "oak"],
        }
    )
    c = ItemColumns.from_table(items)
    assert c.n_items == 4
    assert [c.category_values[x] if x >= 0 else None for x in c.category_codes] == [
        "X > Y", None, "X > Y", "Z",
    ]  # fmt: skip
    assert c.brand_codes[0] == -1 and c.brand_values[c.brand_codes[1]] == "B1"
    assert c.attr_names == ("price", "rating", "rating_count", "margin", "pack")
    np.testing.assert_array_equal(c.price, [10.0, np.nan, 5.5, 0.0])
    np.testing.assert_array_equal(c.attrs[:, 4], [1, 2, 3, np.nan])
    assert c.in_stock.tolist() == [1, -1, 0, 1]
    pop = np.log1p([0.0, 10.0, 1000.0])
    np.testing.assert_allclose(
        c.signals[:, 0], [0.0, pop[1] / pop[2], 0.0, 1.0], rtol=1e-6
    )  # missing count -> 0
    np.testing.assert_allclose(c.signals[:, 1], [0.0, 1.0, 0.0, 0.5])  # (stars - 1) / 4
    np.testing.assert_allclose(c.signals[:, 2], [0.0, 1.0, 0.0, 0.5], atol=1e-6)  # min-max
    assert c.signals.dtype == np.float32


def test_item_columns_minimal_table():
    c = ItemColumns.from_table(pa.table({"item_id": ["a", "b"], "title": ["x", "y"]}))
    assert c.category_codes.tolist() == [-1, -1] and c.attr_names == ()
    assert c.attrs.shape == (2, 0) and np.isnan(c.price).all() and c.in_stock.tolist() == [-1, -1]
    assert (c.signals == 0).all()
    empty = ItemColumns.from_table(make_items(0))
    assert empty.n_items == 0 and empty.attrs.shape == (0, 5)


# ----------------------------------------------------------------------------- filter specs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"price_min": 10, "price_max": 5}, "swap the bounds"),
        ({"price_min": float("nan")}, "numbers or None"),
        ({"brands": ("Acme", "")}, "non-empty strings"),
        ({"attribute_ranges": (("rating", None, None),)}, "give lo, hi or both"),
        ({"attribute_ranges": (("rating", 1, 2), ("rating", 3, 4))}, "distinct"),
        ({"attribute_ranges": (("rating", 1),)}, "(name, lo, hi)"),
        ({"in_stock": 1}, "True, False or None"),
        ({"exclude_rows": (3, -1)}, "ints >= 0"),
        ({"category_prefix": None}, "str"),
    ],
)
def test_filter_spec_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FilterSpec(**kwargs)


def test_other_spec_validation():
    with pytest.raises(ValueError, match="finite"):
        BoostSpec(popularity=float("inf"))
    with pytest.raises(ValueError, match="mmr_lambda"):
        DiversitySpec(mmr_lambda=1.5)
    with pytest.raises(ValueError, match="max_per_category"):
        DiversitySpec(max_per_category=-1)
    assert FilterSpec(brands=["Acme"]).brands == ("Acme",)  # lists become tuples: hashable
    assert hash(FilterSpec(attribute_ranges=[["rating", 4, None]])) is not None
    numpy_values = FilterSpec(price_min=np.float32(1), price_max=np.int64(9), in_stock=np.True_)
    assert numpy_values.in_stock is True
    with pytest.raises(ValueError, match="numbers or None"):
        FilterSpec(price_min=True)


def test_compile_filter_unknown_attribute(world):
    _, columns, _ = world
    with pytest.raises(ValueError, match=r"unknown attribute 'weight'.*weight_kg"):
        compile_filter(FilterSpec(attribute_ranges=(("weight", 1, 2),)), columns)


def test_category_prefix_by_whole_levels(world):
    _, columns, _ = world
    compiled = compile_filter(FilterSpec(category_prefix=" home >  FURNITURE "), columns)
    allowed = {
        v for v, ok in zip(columns.category_values, compiled.category_allowed, strict=True) if ok
    }
    assert allowed == {"Home > Furniture > Sofas", "Home > Furniture > Coffee Tables"}
    partial_word = compile_filter(FilterSpec(category_prefix="Home > Furn"), columns)
    assert partial_word.matches_nothing and selectivity(partial_word) == 0.0


def test_brands_and_matches_nothing(world):
    items, columns, xb = world
    compiled = compile_filter(FilterSpec(brands=("acme", "Nobody")), columns)
    rows = matching_rows(compiled, columns)
    assert set(items.column("brand").take(rows).to_pylist()) == {"Acme"}
    nothing = compile_filter(FilterSpec(brands=("Nobody",)), columns)
    assert nothing.matches_nothing and len(matching_rows(nothing, columns)) == 0
    D, I, sim = rerank(xb[0], xb, np.arange(2000), 5, columns, nothing)
    assert (I == -1).all() and (D == -np.inf).all() and (sim == -np.inf).all()


def test_selectivity_and_matching_rows(world):
    items, columns, _ = world
    assert selectivity(compile_filter(FilterSpec(), columns)) == 1.0
    spec = FilterSpec(price_min=100, price_max=200, in_stock=True, exclude_rows=(0, 1, 2, 99999))
    compiled = compile_filter(spec, columns)
    records = items.to_pylist()
    expected = [
        r
        for r, rec in enumerate(records)
        if rec["price"] is not None
        and 100 <= rec["price"] <= 200
        and rec["in_stock"] is True
        and r > 2
    ]
    assert matching_rows(compiled, columns).tolist() == expected
    assert selectivity(compiled) == pytest.approx(len(expected) / 2000)
    with pytest.raises(ValueError, match="compile it again"):
        matching_rows(compiled, ItemColumns.from_table(items))


# ----------------------------------------------------------------------------- the pipeline


FILTERS = {
    "none": (FilterSpec(), lambda rec: True),
    "category": (
        FilterSpec(category_prefix="Home > Furniture"),
        lambda rec: (rec["category"] or "").startswith("Home > Furniture >"),
    ),
    "brand_price": (
        FilterSpec(brands=("Globex",), price_max=250.0),
        lambda rec: rec["brand"] == "Globex" and rec["price"] is not None and rec["price"] <= 250,
    ),
    "attrs_stock": (
        FilterSpec(
            attribute_ranges=(("rating", 3.5, None), ("weight_kg", None, 20)), in_stock=False
        ),
        lambda rec: (
            rec["rating"] is not None
            and rec["rating"] >= 3.5
            and rec["weight_kg"] is not None
            and rec["weight_kg"] <= 20
            and rec["in_stock"] is False
        ),
    ),
    "everything_filtered": (FilterSpec(price_min=1e9), lambda rec: False),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("weights", [(0.0, 0.0, 0.0), (0.3, 0.1, -0.2)])
def test_rerank_matches_reference(world, name, weights):
    items, columns, xb = world
    spec, keep = FILTERS[name]
    rng = np.random.default_rng(2)
    xq = unit_vectors(rng, 1, 32)[0]
    rows = rng.integers(-1, 2000, 1500)  # duplicates and -1 included
    k = 20
    boost = BoostSpec(*weights)
    D, I, sim = rerank(xq, xb, rows, k, columns, compile_filter(spec, columns), boost)
    expected_rows, expected_scores = ref_pipeline(xq, xb, rows, k, items, keep, weights)
    n = len(expected_rows)
    assert I[:n].tolist() == expected_rows
    np.testing.assert_allclose(D[:n], expected_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sim[:n], xb[expected_rows] @ xq, rtol=1e-5, atol=1e-5)
    assert (I[n:] == -1).all() and (D[n:] == -np.inf).all() and (sim[n:] == -np.inf).all()
    if name == "everything_filtered":
        assert n == 0


def test_rerank_corner_cases(world):
    _, columns, xb = world
    xq = xb[3]
    D, I, _ = rerank(xq, xb, np.array([3, 3, -1, 3]), 5, columns)  # k > candidates, duplicates
    assert I.tolist() == [3, -1, -1, -1, -1] and D[0] == pytest.approx(1.0)
    D, I, _ = rerank(xq, xb, np.zeros(0, np.int64), 2, columns)  # empty
    assert I.tolist() == [-1, -1]
    D, I, _ = rerank(xq[None], xb, np.full(4, -1), 1, columns)  # only -1; (1, dim) query
    assert I.tolist() == [-1]
    zero = np.zeros(32, np.float32)
    D, I, _ = rerank(zero, xb, np.array([9, 4, 7]), 3, columns)  # zero query: ties by lower row
    assert I.tolist() == [4, 7, 9] and (D == 0).all()
    with pytest.raises(ValueError, match="rows must be -1"):
        rerank(xq, xb, np.array([2000]), 1, columns)
    with pytest.raises(ValueError, match="k must be"):
        rerank(xq, xb, np.array([1]), 0, columns)
    with pytest.raises(ValueError, match="xq must have shape"):
        rerank(xq[:5], xb, np.array([1]), 1, columns)
    other = compile_filter(FilterSpec(in_stock=True), ItemColumns.from_table(make_items(2000)))
    with pytest.raises(ValueError, match="compile it again"):
        rerank(xq, xb, np.array([1]), 1, columns, other)


def test_rerank_cap_per_category(world):
    _, columns, xb = world
    rows = np.arange(2000)
    D, I, _ = rerank(xb[0], xb, rows, 12, columns, diversity=DiversitySpec(max_per_category=2))
    codes = columns.category_codes[I]
    assert (I >= 0).all() and np.all(np.diff(D) <= 0)
    named = codes[codes >= 0]
    assert np.bincount(named).max() <= 2  # 5 categories x 2, the rest have no category
    assert (codes == -1).sum() >= 2
    # The capped list is the plain ranking with the over-cap items skipped.
    _, full, _ = rerank(xb[0], xb, rows, 2000, columns)
    counts: dict[int, int] = {}
    expected = []
    for r in full:
        g = int(columns.category_codes[r])
        if g < 0 or counts.get(g, 0) < 2:
            counts[g] = counts.get(g, 0) + 1
            expected.append(int(r))
    assert I.tolist() == expected[:12]


def test_rerank_mmr(world):
    _, columns, xb = world
    xb = xb.copy()
    xb[10:15] = xb[10]  # five copies of one vector
    xq = xb[10] + 0.01 * xb[20]
    rows = np.arange(2000)
    _, plain, _ = rerank(xq, xb, rows, 5, columns)
    assert set(plain.tolist()) == {10, 11, 12, 13, 14}
    _, diverse, _ = rerank(xq, xb, rows, 5, columns, diversity=DiversitySpec(mmr_lambda=0.5))
    assert diverse[0] == 10 and len(set(diverse.tolist()) & {10, 11, 12, 13, 14}) == 1
    _, same, _ = rerank(xq, xb, rows, 5, columns, diversity=DiversitySpec(mmr_lambda=1.0))
    assert same.tolist() == plain.tolist()
    both = DiversitySpec(max_per_category=1, mmr_lambda=0.7)
    _, I, _ = rerank(xq, xb, rows, 5, columns, diversity=both)
    codes = columns.category_codes[I]
    assert (I >= 0).all() and np.bincount(codes[codes >= 0]).max() == 1


# ----------------------------------------------------------------------------- vector stores


@pytest.mark.parametrize("kind", ["f32", "f16", "i8"])
def test_vector_store_kinds(world, kind, tmp_path):
    _, _, xb = world
    xb = xb.copy()
    xb[5] = 0.0  # zero vector: score 0, no NaN, in every encoding
    store = VectorStore.encode(xb, kind)
    bytes_per_vector = {"f32": 4 * 32, "f16": 2 * 32, "i8": 32 + 4}[kind]
    assert store.nbytes == 2000 * bytes_per_vector and store.n == 2000 and store.dim == 32
    rows = np.array([5, -1, 0, 1999])
    scores = store.scores(xb[0], rows)
    tolerance = {"f32": 1e-6, "f16": 2e-3, "i8": 2e-2}[kind]
    np.testing.assert_allclose(scores[[0, 2, 3]], xb[[5, 0, 1999]] @ xb[0], atol=tolerance)
    assert scores[0] == 0 and scores[1] == -np.inf
    np.testing.assert_allclose(store.gather(np.array([0, 5])), xb[[0, 5]], atol=tolerance)
    names = store.save(tmp_path, "shard_000")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    loaded = VectorStore.load(tmp_path, "shard_000")
    assert loaded.kind == kind and isinstance(loaded.data, np.ndarray)
    assert np.array_equal(loaded.scores(xb[0], rows), scores)
    if kind == "f16":  # stored as real float16: readable without this module
        assert np.load(tmp_path / names[0]).dtype == np.float16


def test_vector_store_recall(world):
    rng = np.random.default_rng(3)
    xb = unit_vectors(rng, 5000, 64)
    queries = unit_vectors(rng, 20, 64)
    rows = np.arange(5000)
    f32 = VectorStore.encode(xb, "f32")
    for kind, floor in (("f16", 0.99), ("i8", 0.9)):
        store = VectorStore.encode(xb, kind)
        hits = 0
        for xq in queries:
            exact = np.argsort(-f32.scores(xq, rows), kind="stable")[:10]
            approx = np.argsort(-store.scores(xq, rows), kind="stable")[:10]
            hits += len(set(exact.tolist()) & set(approx.tolist()))
        assert hits / 200 >= floor, kind


def test_vector_store_errors(tmp_path):
    with pytest.raises(ValueError, match="NaN or inf"):
        VectorStore.encode(np.full((2, 3), np.nan), "f32")
    with pytest.raises(ValueError, match="use f32"):
        VectorStore.encode(np.full((2, 3), 1e6), "f16")
    with pytest.raises(ValueError, match="kind must be one of"):
        VectorStore.encode(np.ones((2, 3)), "f8")
    with pytest.raises(ValueError, match="float32"):
        VectorStore("f32", np.ones((2, 3)))
    with pytest.raises(IndexFormatError, match="none of"):
        VectorStore.load(tmp_path, "shard_000")
    store = VectorStore.encode(np.ones((2, 3)), "f32")
    store.save(tmp_path, "s")
    VectorStore.encode(np.ones((2, 3)), "i8").save(tmp_path, "s")
    with pytest.raises(IndexFormatError, match="several of"):
        VectorStore.load(tmp_path, "s")
    assert VectorStore.load(tmp_path, "s", "i8").kind == "i8"
    (tmp_path / "s.vectors.npy").write_bytes(b"garbage")
    with pytest.raises(IndexFormatError, match="unreadable"):
        VectorStore.load(tmp_path, "s", "f32")
    with pytest.raises(ValueError, match="real rows"):
        store.gather(np.array([-1]))


def test_rerank_on_an_index_version(flat_root):
    """The prepared columns and vectors of a real index version agree with its own search."""
    version = IndexVersion.open(flat_root)
    columns = ItemColumns.from_table(version.items)
    store = VectorStore.from_index(version, "f32")
    assert np.array_equal(store.data, version.vectors(np.arange(version.n_items)))
    xq = version.vectors(np.array([17]))  # (1, dim)
    D_ann, I_ann = version.search(xq, 10)
    D, I, _ = rerank(xq[0], store, I_ann[0], 10, columns)
    assert I.tolist() == I_ann[0].tolist()
    np.testing.assert_allclose(D, D_ann[0], rtol=1e-5, atol=1e-5)
    cheap = compile_filter(FilterSpec(price_max=100.0), columns)
    D, I, _ = search_and_rerank(
        xq[0], 5, lambda depth: version.search(xq, depth)[1][0], store, columns, cheap
    )
    prices = [version.record(r)["price"] for r in I]
    assert len(prices) == 5 and max(prices) <= 100.0


# ----------------------------------------------------------------------------- widening


def test_candidate_depth_and_plan():
    assert candidate_depth(10, 0, 1.0, 50_000, 100) == 100
    assert candidate_depth(200, 0, 1.0, 50_000, 100) == 200
    assert candidate_depth(10, 20, 0.1, 50_000, 100) == 600  # ceil(30 / 0.1 * 2)
    assert candidate_depth(10, 0, 0.5, 30, 100) == 30  # capped at the catalog
    assert plan_candidates(10, 0, 1.0, 50_000) == CandidatePlan(100, False)
    assert plan_candidates(10, 0, 0.3, 50_000) == CandidatePlan(100, False)
    assert plan_candidates(10, 0, 0.05, 500_000) == CandidatePlan(400, False)
    assert plan_candidates(10, 0, 0.005, 500_000).exhaustive  # under 1 %
    assert plan_candidates(10, 0, 0.03, 50_000).exhaustive  # 1,500 matches: cheap to score all
    assert plan_candidates(10, 0, 0.05, 50_000) == CandidatePlan(400, False)
    assert plan_candidates(100, 0, 0.015, 10**7).exhaustive  # depth 13,334: past MAX_ANN_DEPTH
    assert plan_candidates(10, 0, 0.0, 50_000).exhaustive
    with pytest.raises(ValueError, match="selectivity"):
        plan_candidates(10, 0, 1.5, 100)


@pytest.fixture(scope="module")
def big():
    """20,000 items; ``rare`` tags 0.5 % of them (100 items)."""
    n = 20_000
    rng = np.random.default_rng(4)
    rare = np.zeros(n, dtype=np.int64)
    rare[rng.choice(n, 100, replace=False)] = 1
    common = (rng.random(n) < 0.3).astype(np.int64)
    items = pa.table({"item_id": [f"I{i}" for i in range(n)], "rare": rare, "common": common})
    return ItemColumns.from_table(items), unit_vectors(rng, n, 16)


def exact_search(xb: np.ndarray, xq: np.ndarray, calls: list[int]):
    order = np.lexsort((np.arange(len(xb)), -(xb @ xq)))

    def search(depth: int) -> np.ndarray:
        calls.append(depth)
        return order[:depth]

    return search


@pytest.mark.parametrize(
    ("attribute", "k", "offset"), [("rare", 10, 0), ("rare", 50, 40), ("common", 10, 0)]
)
def test_widening_returns_k_results(big, attribute, k, offset):
    columns, xb = big
    compiled = compile_filter(FilterSpec(attribute_ranges=((attribute, 1, 1),)), columns)
    xq = xb[0]
    calls: list[int] = []
    D, I, _ = search_and_rerank(
        xq, k, exact_search(xb, xq, calls), xb, columns, compiled, offset=offset
    )
    matching = matching_rows(compiled, columns)
    order = matching[np.lexsort((matching, -(xb[matching] @ xq)))]
    assert I.tolist() == order[offset : offset + k].tolist()  # exact: nothing missed
    if attribute == "rare":  # 0.5 %: straight to exact scoring of the 100 matching rows
        assert calls == []
    else:  # 30 % of 20k: an ANN search of ~100 candidates is enough
        assert calls == [100]


def test_widening_when_the_neighbourhood_does_not_match(big):
    """ANN candidates near the query all fail the filter: widen, then score exhaustively."""
    columns, xb = big
    compiled = compile_filter(FilterSpec(attribute_ranges=(("common", 1, 1),)), columns)
    common = columns.attrs[:, columns.attr_names.index("common")] == 1
    non_matching_first = np.concatenate([np.flatnonzero(~common), np.flatnonzero(common)])
    calls: list[int] = []

    def adversarial(depth: int) -> np.ndarray:
        calls.append(depth)
        return non_matching_first[:depth]

    D, I, _ = search_and_rerank(xb[1], 10, adversarial, xb, columns, compiled)
    assert (I >= 0).all() and common[I].all()
    assert calls == [100, 400, 1600, 6400]  # then past MAX_ANN_DEPTH: exhaustive
    matching = np.flatnonzero(common)
    best = matching[np.lexsort((matching, -(xb[matching] @ xb[1])))][:10]
    assert I.tolist() == best.tolist()


def test_fewer_matches_than_k(big):
    columns, xb = big
    only_few = compile_filter(
        FilterSpec(attribute_ranges=(("rare", 1, 1),), exclude_rows=tuple(range(19_600))), columns
    )
    n_match = len(matching_rows(only_few, columns))
    assert 0 < n_match < 10
    _, I, _ = search_and_rerank(xb[0], 10, exact_search(xb, xb[0], []), xb, columns, only_few)
    assert (I >= 0).sum() == n_match
