"""Tests for trainer.evaluate: exact search, the item-vector cache, the recommendation protocol on
a 4-item toy catalog, evaluate_search end to end with the tiny model, and the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from trainer.data.catalog import Catalog
from trainer.data.labels import Interactions, Labels
from trainer.encoder.load import load_encoder
from trainer.evaluation.evaluate import (
    EvalConfig,
    catalog_vectors,
    dataset_preset,
    evaluate_recommendation,
    evaluate_search,
    exact_search,
    infer_dataset,
    main,
    mean_history_vectors,
    next_item_targets,
)
from trainer.text import item_text


def _catalog(records: list[dict], path: str = "catalog.jsonl") -> Catalog:
    return Catalog(table=pa.Table.from_pylist(records), path=path)


# ---------------------------------------------------------------------------------------------
# exact_search


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


# ---------------------------------------------------------------------------------------------
# Item vectors and their cache


class FakeEncoder:
    """Deterministic vectors from text content; counts item-encoding calls."""

    dim = 4
    fingerprint = "f" * 64

    def __init__(self) -> None:
        self.item_calls = 0

    def _vectors(self, texts: Sequence[str]) -> np.ndarray:
        out = np.array(
            [[len(t), t.count("a") + 1, t.count("e") + 1, sum(map(ord, t)) % 7] for t in texts],
            dtype=np.float32,
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_items(self, texts, *, batch_size=32, show_progress=False, max_length=None):
        self.item_calls += 1
        return self._vectors(texts)

    def encode_queries(self, texts, *, batch_size=64):
        return self._vectors(texts)


def test_catalog_vectors_are_cached_by_content(tmp_path: Path) -> None:
    catalog = _catalog([{"item_id": "a", "title": "red sofa"}, {"item_id": "b", "title": "lamp"}])
    encoder = FakeEncoder()
    xb, cached = catalog_vectors(encoder, catalog)
    assert (xb.shape, xb.dtype, cached, encoder.item_calls) == ((2, 4), np.float32, False, 1)

    cache = tmp_path / "cache"
    first, cached = catalog_vectors(encoder, catalog, cache_dir=cache)
    assert not cached and encoder.item_calls == 2
    files = list(cache.glob("items-*.npy"))
    assert len(files) == 1 and not list(cache.glob(".*tmp"))  # written atomically
    again, cached = catalog_vectors(encoder, catalog, cache_dir=cache)
    assert cached and encoder.item_calls == 2
    np.testing.assert_array_equal(first, again)

    # another max length or another item text → another key
    _, cached = catalog_vectors(encoder, catalog, cache_dir=cache, max_item_length=16)
    assert not cached
    changed = _catalog([{"item_id": "a", "title": "red sofa"}, {"item_id": "b", "title": "lamps"}])
    _, cached = catalog_vectors(encoder, changed, cache_dir=cache)
    assert not cached and len(list(cache.glob("items-*.npy"))) == 3

    # a cache file of the wrong shape is ignored and rewritten
    np.save(files[0], np.zeros((3, 4), np.float32))
    xb, cached = catalog_vectors(encoder, catalog, cache_dir=cache)
    assert not cached and xb.shape == (2, 4)
    assert np.load(files[0]).shape == (2, 4)


# ---------------------------------------------------------------------------------------------
# Recommendation protocol on a 4-item toy catalog

TOY = _catalog([{"item_id": i, "title": i} for i in "abcd"])
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


# ---------------------------------------------------------------------------------------------
# evaluate_search end to end with the tiny model

RECORDS = [
    {"item_id": "S1", "title": "red velvet sofa", "brand": "Acme"},
    {"item_id": "S2", "title": "stainless steel cordless drill", "category": "tools > drill"},
    {"item_id": "S3", "title": "usb cable", "bullets": ["two pack", "black"]},
    {"item_id": "S4", "title": "oak desk with three drawers"},
    {"item_id": "S5", "title": "blue cotton shirt"},
    {"item_id": "S6", "title": "coffee maker with glass pot"},
]


def _search_labels() -> Labels:
    # each query is an item's full item text → that item ranks first (same tower, same text)
    queries = {"q1": item_text(RECORDS[0]), "q2": item_text(RECORDS[3]), "q3": "garden hose"}
    judgments = {"q1": {"S1": 3, "S5": 0}, "q2": {"S4": 3}, "q3": {"S2": 0}}
    return Labels(queries=queries, judgments=judgments, path="labels.jsonl")


def test_evaluate_search_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    encoder = load_encoder(tiny_model_dir)
    catalog = _catalog(RECORDS)
    labels = _search_labels()
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
        evaluate_search(encoder, _catalog(RECORDS), labels, gains="esci", recall_grade=3)


# ---------------------------------------------------------------------------------------------
# Presets, config and the CLI


def test_presets_and_config() -> None:
    assert dataset_preset("ESCI").gains == "esci" and dataset_preset("esci").recall_grade == 3
    assert dataset_preset("homedepot").gains == "grade"
    assert dataset_preset("homedepot").recall_grade == 2
    assert dataset_preset("scientific").task == "recommendation"
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_preset("movielens")
    assert infer_dataset("/data/homedepot/products.jsonl.gz") == "homedepot"
    assert infer_dataset("/tmp/x/products.jsonl.gz") is None

    config = EvalConfig(catalog=Path("/d/esci/products.jsonl.gz"), labels=Path("l.jsonl"))
    assert config.settings() == ("esci", "esci", 3, (10, 100))
    config = EvalConfig(
        catalog=Path("/d/x/p.jsonl"), labels=Path("l"), dataset="homedepot", ks=(5,)
    )
    assert config.settings() == ("homedepot", "grade", 2, (5,))
    config = EvalConfig(catalog=Path("p"), labels=Path("l"), gains="esci", recall_grade=2)
    assert config.settings() == (None, "esci", 2, (10, 100))
    config = EvalConfig(
        catalog=Path("/d/scientific/p"), interactions_train=Path("t"), interactions_dev=Path("d")
    )
    assert config.task == "recommendation" and config.settings()[3] == (10, 50)

    with pytest.raises(ValueError, match="cannot tell which dataset"):
        EvalConfig(catalog=Path("p.jsonl"), labels=Path("l"))
    with pytest.raises(ValueError, match="not both or neither"):
        EvalConfig(catalog=Path("p"), dataset="esci")
    with pytest.raises(ValueError, match="needs both"):
        EvalConfig(catalog=Path("p"), interactions_train=Path("t"))
    with pytest.raises(ValueError, match="evaluated as recommendation"):
        EvalConfig(catalog=Path("p"), labels=Path("l"), dataset="scientific")
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(catalog=Path("p"), labels=Path("l"), dataset="esci", batch_size=0)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_search_and_recommendation(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "esci"  # the directory name selects the ESCI convention
    data.mkdir()
    catalog = _write_jsonl(data / "products.jsonl", RECORDS)
    labels = _search_labels()
    rows = [
        {"query_id": q, "query": labels.queries[q], "item_id": i, "grade": g}
        for q, judged in labels.judgments.items()
        for i, g in judged.items()
    ]
    labels_path = _write_jsonl(data / "labels_dev.jsonl", rows)
    out = tmp_path / "out" / "report.json"
    argv = ["--model", str(tiny_model_dir), "--catalog", str(catalog), "--labels", str(labels_path)]
    assert main([*argv, "--ks", "1,10", "--json", str(out), "--cache-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "search: 3 queries over 6 items (esci)" in table and "recall@1" in table
    report = json.loads(out.read_text())
    assert report["metrics"]["ndcg@10"] == {"mean": 1.0, "stderr": 0.0, "n": 2}
    assert report["info"]["dataset"] == "esci" and report["info"]["recall_grade"] == 3

    train = _write_jsonl(
        tmp_path / "train.jsonl",
        [{"user_id": "u", "item_id": i, "position": p} for p, i in enumerate(["S1", "S2"])],
    )
    dev = _write_jsonl(tmp_path / "dev.jsonl", [{"user_id": "u", "item_id": "S2", "position": 2}])
    rec = ["--model", str(tiny_model_dir), "--catalog", str(catalog)]
    rec += ["--interactions-train", str(train), "--interactions-dev", str(dev)]
    assert main([*rec, "--dataset", "scientific"]) == 0
    assert "recommendation: 1 users over 6 items" in capsys.readouterr().out

    # bad input: exit 2 with a message that says what to do
    assert main([*rec, "--labels", str(labels_path)]) == 2
    assert "not both or neither" in capsys.readouterr().err
    assert main([*argv, "--dataset", "scientific"]) == 2
    assert "evaluated as recommendation" in capsys.readouterr().err
