"""Tests for the BM25 lexical index: analysis, scores (vs a NumPy reference and bm25s), shards,
files, live updates and concurrent readers."""

from __future__ import annotations

import functools
import json
import math
import threading
from collections import Counter

import numpy as np
import pytest

from indexer.lexical.analysis import ANALYZER, analyze
from indexer.lexical.bm25 import BM25Params
from indexer.lexical.files import FORMAT_VERSION, LEXICAL_META_FILE, lexical_file_names
from indexer.lexical.index import MAX_SEGMENTS, LexicalIndex
from indexer.storage.manifest import IndexFormatError
from indexer.storage.sharding import shard_of

_MISSING = np.float32(-np.finfo(np.float32).max)
_WORDS = (
    "red blue green black white sofa chair table lamp drill cordless steel wood oak pine "
    "towel rug desk mug kettle screw bolt hinge faucet chrome brass 2x4 12-gauge 3/4 led"
).split()


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        words = rng.choice(_WORDS, size=int(rng.integers(1, 12)))
        texts.append(" ".join(words) + (f" model {i % 7}" if i % 3 else ""))
    texts[3] = ""  # an item without text: counted in N and avgdl, never matches
    return texts


def _reference_scores(
    docs: list[list[str]], n_docs: int, avgdl: float, df: Counter, query: list[str], k1, b
) -> np.ndarray:
    """Plain BM25 (Lucene idf) of every doc, from token lists, with the given statistics."""
    out = np.zeros(len(docs))
    for i, terms in enumerate(docs):
        tf = Counter(terms)
        for t in query:
            if tf[t] == 0:
                continue
            d = df.get(t, 1)  # unseen at build time: the rarest (df = 1), as upserts do
            idf = math.log(1 + (n_docs - d + 0.5) / (d + 0.5))
            out[i] += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(terms) / avgdl))
    return out


def _expected_top(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    keep = scores > 0
    s, r = scores[keep].astype(np.float32), rows[keep]
    order = np.lexsort((r, -s))[:k]
    D = np.full(k, _MISSING, np.float32)
    I = np.full(k, -1, np.int64)
    D[: len(order)], I[: len(order)] = s[order], r[order]
    return D, I


def _assert_same(got, expected, *, rtol=1e-5):
    D, I = got
    D_e, I_e = expected
    np.testing.assert_allclose(D, D_e, rtol=rtol, atol=1e-6)
    # Rows must agree except where two reference scores are within float noise of each other.
    for j in np.flatnonzero(I != I_e):
        assert abs(float(D_e[j]) - float(D[j])) < 1e-5, (j, I, I_e)


# ---------------------------------------------------------------------------------- analysis


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("Red Sofas and the Chairs", ["red", "sofa", "chair"]),
        ("2x4 lumber", ["2", "4", "lumber"]),
        ("Simpson Strong-Tie 12-Gauge Angle", ["simpson", "strong", "tie", "12", "gaug", "angl"]),
        ("1.9 cu. ft. in Stainless", ["1", "9", "cu", "ft", "stainless"]),
        ("Crème BRÛLÉE dish", ["creme", "brule", "dish"]),
        # Fullwidth letters and digits fold to ASCII (NFKC); a lone letter ("w") is not indexed.
        ("ＬＥＤ bulb ６０W", ["led", "bulb", "60"]),
        ("", []),
        ("a an the of", []),
    ],
)
def test_analyze(text, terms):
    assert analyze(text) == terms


def test_analyze_is_what_search_uses():
    index = LexicalIndex.build(["Cordless Drills"], np.array([0]), np.array([0]), 1)
    D, I = index.search("CORDLESS drill", 1)
    assert I[0] == 0 and D[0] > 0


def test_params_validate():
    with pytest.raises(ValueError, match="k1"):
        BM25Params(k1=-1)
    with pytest.raises(ValueError, match="b must"):
        BM25Params(b=1.5)
    with pytest.raises(ValueError, match="k1"):
        BM25Params(k1=float("nan"))


# ---------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("params", [BM25Params(), BM25Params(k1=0.9, b=0.4)])
def test_scores_match_numpy_reference(params):
    texts = _corpus(300)
    rows = np.arange(300) + 1000  # ids are the given rows, whatever they are
    index = LexicalIndex.build(texts, rows, np.zeros(300, np.int64), 1, params=params)
    docs = [analyze(t) for t in texts]
    df = Counter(t for d in docs for t in set(d))
    avgdl = float(np.mean([len(d) for d in docs]))
    for query in ["red sofa", "cordless drill steel", "oak oak pine", "model 3", "zzz", "2x4"]:
        ref = _reference_scores(docs, 300, avgdl, df, analyze(query), params.k1, params.b)
        _assert_same(index.search(query, 50), _expected_top(ref, rows, 50))


def test_scores_equal_bm25s():
    bm25s = pytest.importorskip("bm25s")
    texts = _corpus(200, seed=1)
    index = LexicalIndex.build(texts, np.arange(200), np.zeros(200, np.int64), 1)
    retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75)  # bm25s defaults to k1=1.5
    retriever.index([analyze(t) for t in texts], show_progress=False)
    for query in ["red sofa", "cordless drill", "steel steel hinge", "model 5 led", "3/4 brass"]:
        terms = [t for t in analyze(query) if t in retriever.vocab_dict]
        expected = retriever.get_scores(terms)  # (200,) every doc's score
        D, I = index.search(query, 200)
        valid = I >= 0
        np.testing.assert_allclose(D[valid], expected[I[valid]], rtol=1e-5, atol=1e-6)
        # Every doc bm25s scores above zero is returned, and nothing else.
        assert set(I[valid].tolist()) == set(np.flatnonzero(expected > 0).tolist())


def test_ties_go_to_the_lower_row_and_padding():
    texts = ["blue lamp", "red sofa", "blue lamp", "blue lamp"]
    index = LexicalIndex.build(texts, np.array([7, 3, 5, 1]), np.zeros(4, np.int64), 1)
    D, I = index.search("blue lamp", 5)
    assert I.tolist() == [1, 5, 7, -1, -1]
    assert D[0] == D[1] == D[2] > 0
    assert (D[3:] == _MISSING).all()
    D, I = index.search("blue lamp", 2)  # the cut falls inside a tie
    assert I.tolist() == [1, 5]


def test_no_match_and_empty_query():
    index = LexicalIndex.build(["red sofa"], np.array([0]), np.array([0]), 1)
    for query in ["purple", "", "the and of"]:
        D, I = index.search(query, 3)
        assert (I == -1).all() and (D == _MISSING).all()
        assert D.dtype == np.float32 and I.dtype == np.int64


def test_empty_catalog():
    index = LexicalIndex.build([], np.zeros(0, np.int64), np.zeros(0, np.int64), 2)
    assert (index.search("sofa", 3)[1] == -1).all()
    index.upsert(np.array([0]), ["red sofa"], np.array([1]))
    assert index.search("sofa", 3)[1][0] == 0


def test_query_repeats_count_like_bm25s():
    index = LexicalIndex.build(["red sofa", "blue sofa"], np.arange(2), np.zeros(2, np.int64), 1)
    once = index.search("red", 1)[0][0]
    twice = index.search("red red", 1)[0][0]
    assert twice == pytest.approx(2 * once)


def test_term_ids_can_be_passed_instead_of_text():
    index = LexicalIndex.build(_corpus(50), np.arange(50), np.zeros(50, np.int64), 1)
    ids = index.term_ids("red sofa zzz")
    assert len(ids) == 2  # the unknown term is dropped
    for got, exp in zip(index.search(ids, 10), index.search("red sofa", 10), strict=True):
        np.testing.assert_array_equal(got, exp)


def test_bad_arguments():
    index = LexicalIndex.build(["a sofa"], np.array([0]), np.array([0]), 1)
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must"):
            index.search("sofa", k)
    with pytest.raises(ValueError, match="not loaded"):
        index.search("sofa", 1, shards=[1])
    with pytest.raises(ValueError, match="unique"):
        LexicalIndex.build(["a", "b"], np.array([1, 1]), np.zeros(2, np.int64), 1)
    with pytest.raises(ValueError, match=">= 0"):
        LexicalIndex.build(["a"], np.array([-1]), np.zeros(1, np.int64), 1)
    with pytest.raises(ValueError, match="shard_ids"):
        LexicalIndex.build(["a"], np.array([0]), np.array([2]), 2)
    with pytest.raises(ValueError, match="rows"):
        LexicalIndex.build(["a", "b"], np.array([0]), np.zeros(2, np.int64), 1)
    with pytest.raises(ValueError, match="n_shards"):
        LexicalIndex.build(["a"], np.array([0]), np.array([0]), 0)
    with pytest.raises(ValueError, match="not one string"):
        LexicalIndex.build("a", np.array([0]), np.array([0]), 1)
    with pytest.raises(ValueError, match="not one string"):
        index.upsert(np.array([0]), "a sofa")


# ---------------------------------------------------------------------------------- shards


def test_shards_share_global_statistics():
    texts = _corpus(400, seed=2)
    item_ids = [f"SKU{i}" for i in range(400)]
    shard_ids = shard_of(item_ids, 3)
    rows = np.arange(400)
    whole = LexicalIndex.build(texts, rows, np.zeros(400, np.int64), 1)
    split = LexicalIndex.build(texts, rows, shard_ids, 3)
    for query in ["red sofa", "oak table", "cordless drill 2x4", "model 1"]:
        for got, exp in zip(split.search(query, 30), whole.search(query, 30), strict=True):
            np.testing.assert_array_equal(got, exp)
        # One shard alone: its rows, with the same scores they have in the whole index.
        D_all, I_all = whole.search(query, 400)
        D_1, I_1 = split.search(query, 400, shards=[1])
        in_shard = (I_all >= 0) & (shard_ids[np.maximum(I_all, 0)] == 1)
        np.testing.assert_array_equal(I_1[: in_shard.sum()], I_all[in_shard])
        np.testing.assert_array_equal(D_1[: in_shard.sum()], D_all[in_shard])


# ---------------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path):
    texts = _corpus(120, seed=3)
    shard_ids = shard_of([f"SKU{i}" for i in range(120)], 2)
    index = LexicalIndex.build(texts, np.arange(120), shard_ids, 2)
    names = index.save(tmp_path)
    assert (
        names
        == lexical_file_names(2)
        == [
            "lexical.json",
            "lexical.df.npy",
            "shard_000.lexical.npz",
            "shard_001.lexical.npz",
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    loaded = LexicalIndex.load(tmp_path)
    assert loaded.n_docs == 120 and loaded.n_terms == index.n_terms
    for query in ["red sofa", "steel hinge", "model 2"]:
        for got, exp in zip(loaded.search(query, 20), index.search(query, 20), strict=True):
            np.testing.assert_array_equal(got, exp)
    one = LexicalIndex.load(tmp_path, shards=[1])
    assert one.loaded_shards == (1,)
    for got, exp in zip(
        one.search("red sofa", 20), index.search("red sofa", 20, shards=[1]), strict=True
    ):
        np.testing.assert_array_equal(got, exp)
    with pytest.raises(ValueError, match="every shard"):
        one.save(tmp_path / "again")


def test_load_rejects_bad_files(tmp_path):
    index = LexicalIndex.build(["red sofa", "oak desk"], np.arange(2), np.zeros(2, np.int64), 1)
    index.save(tmp_path)
    meta = json.loads((tmp_path / LEXICAL_META_FILE).read_text())
    assert meta["analyzer"] == ANALYZER
    meta["analyzer"] = "someone-else-1"
    (tmp_path / LEXICAL_META_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="analyzer"):
        LexicalIndex.load(tmp_path)
    meta["analyzer"] = ANALYZER
    meta["format_version"] = 99
    (tmp_path / LEXICAL_META_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="format"):
        LexicalIndex.load(tmp_path)
    meta["format_version"] = FORMAT_VERSION
    (tmp_path / LEXICAL_META_FILE).write_text(json.dumps(meta))
    (tmp_path / "shard_000.lexical.npz").write_bytes(b"not a zip")
    with pytest.raises(IndexFormatError, match="shard_000"):
        LexicalIndex.load(tmp_path)
    with pytest.raises(IndexFormatError):
        LexicalIndex.load(tmp_path / "missing")


def test_save_refuses_live_changes(tmp_path):
    index = LexicalIndex.build(["red sofa"], np.array([0]), np.array([0]), 1)
    index.delete(np.array([0]))
    with pytest.raises(ValueError, match="live updates"):
        index.save(tmp_path)


# ---------------------------------------------------------------------------------- updates


@functools.cache
def _cached_analyze(text: str) -> list[str]:
    return analyze(text)


class _Model:
    """What the index should hold: row -> (text, shard), with the build's statistics."""

    def __init__(self, texts, rows, shards, params=None):
        self.docs = {int(r): (t, int(s)) for t, r, s in zip(texts, rows, shards, strict=True)}
        terms = [analyze(t) for t in texts]
        self.n = len(texts)
        self.avgdl = float(np.mean([len(t) for t in terms])) if self.n else 1.0
        self.df = Counter(t for d in terms for t in set(d))
        self.params = params or BM25Params()

    def expected(self, query: str, k: int, shards=None):
        rows = np.array(sorted(self.docs), dtype=np.int64)
        keep = [r for r in rows if shards is None or self.docs[r][1] in shards]
        docs = [_cached_analyze(self.docs[r][0]) for r in keep]
        scores = _reference_scores(
            docs, self.n, self.avgdl, self.df, analyze(query), self.params.k1, self.params.b
        )
        return _expected_top(scores, np.array(keep, dtype=np.int64), k)


def test_upsert_and_delete_against_reference():
    rng = np.random.default_rng(5)
    n, n_shards = 150, 3
    texts = _corpus(n, seed=5)
    shard_ids = rng.integers(0, n_shards, n)
    index = LexicalIndex.build(texts, np.arange(n), shard_ids, n_shards)
    model = _Model(texts, np.arange(n), shard_ids)
    next_row = n
    queries = ["red sofa", "oak table", "drill", "walnut credenza", "model 2 led", "zebra"]
    merged, n_segments = False, 0
    for step in range(40):  # > MAX_SEGMENTS upserts: segments get merged along the way
        action = rng.integers(0, 3)
        if action == 0:  # new items, some with words the build never saw
            m = int(rng.integers(1, 4))
            rows = np.arange(next_row, next_row + m)
            next_row += m
            new_texts = [
                " ".join(rng.choice(_WORDS + ["walnut", "credenza", "zebra"], size=4))
                for _ in range(m)
            ]
            new_shards = rng.integers(0, n_shards, m)
            index.upsert(rows, new_texts, new_shards)
            model.docs.update(
                {int(r): (t, int(s)) for r, t, s in zip(rows, new_texts, new_shards, strict=True)}
            )
        elif action == 1 and model.docs:  # replace texts of live rows (build or delta)
            rows = rng.choice(sorted(model.docs), size=min(2, len(model.docs)), replace=False)
            new_texts = [f"walnut credenza {step} " + model.docs[int(r)][0] for r in rows]
            index.upsert(rows, new_texts)  # known rows keep their shard
            model.docs.update(
                {int(r): (t, model.docs[int(r)][1]) for r, t in zip(rows, new_texts, strict=True)}
            )
        elif model.docs:
            rows = rng.choice(sorted(model.docs), size=min(3, len(model.docs)), replace=False)
            rows = np.append(rows, 10_000)  # unknown rows are ignored
            assert index.delete(rows) == len(rows) - 1
            for r in rows[:-1]:
                del model.docs[int(r)]
        assert index.n_segments <= MAX_SEGMENTS
        merged |= index.n_segments < n_segments  # only a merge makes fewer
        n_segments = index.n_segments
        for query in queries:
            _assert_same(index.search(query, 25), model.expected(query, 25))
        _assert_same(
            index.search("red oak", 25, shards=[0, 2]), model.expected("red oak", 25, {0, 2})
        )


def test_upsert_uses_frozen_statistics():
    index = LexicalIndex.build(["red sofa", "blue sofa"], np.arange(2), np.zeros(2, np.int64), 1)
    before = index.search("sofa", 2)
    index.upsert(np.array([2]), ["green sofa"])
    # N, df and avgdl are the build's: the old rows keep their scores, the new one is scored
    # as if it had been in the build with the same statistics.
    D, I = index.search("sofa", 3)
    np.testing.assert_array_equal(D[:2], before[0])
    assert D[2] == pytest.approx(before[0][0]) and I.tolist() == [0, 1, 2]
    index.upsert(np.array([3]), ["zebra"])  # unseen: idf of df = 1
    D, I = index.search("zebra", 1)
    idf = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    assert I[0] == 3 and D[0] == pytest.approx(idf / (1 + 1.2 * (0.25 + 0.75 * 1 / 2)))


def test_upsert_replaces_and_delete_removes():
    index = LexicalIndex.build(["red sofa", "blue lamp"], np.arange(2), np.zeros(2, np.int64), 1)
    index.upsert(np.array([0]), ["green chair"])
    assert index.search("sofa", 2)[1].tolist() == [-1, -1]
    assert index.search("chair", 2)[1].tolist() == [0, -1]
    index.upsert(np.array([0]), ["purple chair"])  # replace a delta doc
    assert index.search("green purple", 2)[1].tolist() == [0, -1]  # once, not twice
    assert index.delete(np.array([0, 0, 1])) == 2
    assert index.search("chair lamp", 2)[1].tolist() == [-1, -1]
    assert index.delete(np.array([0])) == 0
    assert index.n_delta == 0


def test_upsert_needs_shards_for_new_rows():
    index = LexicalIndex.build(["red sofa", "oak desk"], np.arange(2), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="shard_ids"):
        index.upsert(np.array([5]), ["new sofa"])
    index.upsert(np.array([1]), ["oak sofa"])  # known row: keeps shard 1
    assert index.search("sofa", 3, shards=[1])[1].tolist() == [1, -1, -1]
    index.upsert(np.array([5]), ["new sofa"], np.array([0]))
    assert set(index.search("sofa", 3, shards=[0])[1].tolist()) == {0, 5, -1}
    with pytest.raises(ValueError, match="shard_ids must be in"):
        index.upsert(np.array([6]), ["x sofa"], np.array([2]))
    with pytest.raises(ValueError, match="unique"):
        index.upsert(np.array([6, 6]), ["a", "b"], np.array([0, 0]))


def test_concurrent_readers_see_whole_updates():
    texts = _corpus(200, seed=7)
    index = LexicalIndex.build(texts, np.arange(200), np.zeros(200, np.int64), 1)
    index.upsert(np.array([7]), ["zebra credenza"])  # before the readers start
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        try:
            for i in range(150):
                # Row 7 alternates between two texts; rows 300+ come and go.
                index.upsert(np.array([7]), ["walnut credenza" if i % 2 else "zebra credenza"])
                index.upsert(np.array([300 + i % 5]), ["zebra walnut"])
                if i % 3 == 0:
                    index.delete(np.array([300 + (i + 2) % 5]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            stop.set()

    def reader():
        try:
            while not stop.is_set():
                D, I = index.search("walnut zebra credenza", 10)
                found = I[I >= 0].tolist()
                assert len(found) == len(set(found)), found  # a row never appears twice
                assert 7 in found  # row 7 always holds one of its texts
                assert (np.diff(D) <= 0).all()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [
        threading.Thread(target=writer)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
