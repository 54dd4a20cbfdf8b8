"""Ranker training and the ranker file: orders its own training data better than chance, saves
and loads exactly, explains additively, and refuses an index it does not fit."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from indexer.build.compact import compact
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.cli import rank_main
from indexer.ranking.model import RANKER_FILE, Ranker, RankerMismatchError
from indexer.ranking.training import (
    CV_BELOW,
    CV_GRID,
    RankerConfig,
    evaluate_ranker,
    prepare_queries,
    rankings_metrics,
    train_ranker,
    version_source,
)
from indexer.storage.layout import resolve_version_dir
from indexer.version import IndexVersion
from tests.helpers import ranking_labels
from trainer.data.labels import Labels
from trainer.encoder.load import load_encoder
from trainer.evaluation.metrics import resolve_gains


@pytest.fixture(scope="module")
def prepared(index_root, title_catalog, tiny_model_dir):
    version = IndexVersion.open(resolve_version_dir(index_root))
    encoder = load_encoder(tiny_model_dir)
    source = version_source(version, encoder)
    qs = prepare_queries(version, source, encoder, ranking_labels(title_catalog[1]), depth=20)
    return version, encoder, source, qs


@pytest.fixture(scope="module")
def ranker(prepared):
    version, encoder, source, qs = prepared
    config = RankerConfig(
        min_data_in_leaf=2, num_leaves=7, max_rounds=60, early_stopping=20, validation="holdout"
    )
    return train_ranker(
        qs, config, model_fingerprint=encoder.fingerprint, fields=source.fields.fields
    )


def test_ranker_orders_its_training_data_better_than_chance(prepared, ranker):
    _, _, _, qs = prepared
    gains = resolve_gains("grade")
    ranked = evaluate_ranker(qs, ranker, "grade", recall_grade=2)["ranked"]["ndcg@10"]["mean"]
    rng = np.random.default_rng(0)
    chance = np.mean(
        [
            rankings_metrics(qs, {"random": [rng.permutation(len(y)) for y in qs.labels]}, gains)[
                "random"
            ]["ndcg@10"]["mean"]
            for _ in range(5)
        ]
    )
    assert ranked > chance + 0.2, (ranked, chance)
    assert ranker.training["queries_held_out"] >= 1
    assert ranker.training["rounds"] >= 1


def test_few_queries_cross_validate_then_train_on_all(prepared):
    """Below CV_BELOW usable queries "auto" cross-validates: every CV_GRID setting is tried on
    K folds, the best one trains on every query, and it still beats chance."""
    _, encoder, source, qs = prepared
    config = RankerConfig(max_rounds=60, early_stopping=10, cv_folds=3)
    ranker = train_ranker(
        qs, config, model_fingerprint=encoder.fingerprint, fields=source.fields.fields
    )
    training = ranker.training
    useful = sum(1 for y in qs.labels if len(y) and y.max() > 0)
    assert useful < CV_BELOW
    assert training["validation"] == "cv" and training["cv_folds"] == 3
    assert training["queries_fit"] == useful and training["queries_held_out"] == 0
    trials = training["cv_trials"]
    assert [(t["num_leaves"], t["min_data_in_leaf"]) for t in trials] == list(CV_GRID)
    best = max(trials, key=lambda t: t["ndcg@10"])
    assert training["held_out_ndcg@10"] == best["ndcg@10"]
    assert training["rounds"] == best["rounds"] >= 1
    ranked = evaluate_ranker(qs, ranker, "grade", recall_grade=2)["ranked"]["ndcg@10"]["mean"]
    dense = evaluate_ranker(qs, ranker, "grade", recall_grade=2)["dense"]["ndcg@10"]["mean"]
    assert ranked > dense, (ranked, dense)
    with pytest.raises(ValueError, match="validation must be one of"):
        RankerConfig(validation="dev")
    with pytest.raises(ValueError, match="cv_folds"):
        RankerConfig(cv_folds=1)


def test_contributions_sum_to_the_score(prepared, ranker):
    X = prepared[3].features[0]
    contrib = ranker.contributions(X)
    assert contrib.shape == (len(X), len(ranker.features) + 1)
    np.testing.assert_allclose(contrib.sum(axis=1), ranker.predict(X), rtol=1e-6, atol=1e-9)


def test_ranker_file_round_trip(tmp_path, prepared, ranker):
    path = tmp_path / "ranker.json"
    ranker.save(path)
    loaded = Ranker.load(path)
    X = np.concatenate(prepared[3].features)
    np.testing.assert_array_equal(loaded.predict(X), ranker.predict(X))
    assert loaded.fields == ranker.fields and loaded.model_fingerprint == ranker.model_fingerprint


def test_mismatches_are_refused_with_a_clear_message(tmp_path, ranker):
    with pytest.raises(RankerMismatchError, match=r"fingerprint .*\(aisle-rank train\)"):
        ranker.check("0" * 64, ranker.fields, "here")
    with pytest.raises(RankerMismatchError, match=r"fields \['title'\].*\['title', 'brand'\]"):
        ranker.check(ranker.model_fingerprint, ("title", "brand"), "here")
    doc = json.loads(ranker.to_json())
    doc["feature_spec_version"] = "aisle-rank-0"
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RankerMismatchError, match="feature spec 'aisle-rank-0'"):
        Ranker.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable ranker file"):
        Ranker.load(path)


def test_build_with_a_ranker_of_other_fields_is_refused(tmp_path, tiny_model_dir, ranker):
    """The ranker was trained on a title-only catalog; a catalog with brands is refused."""
    (tmp_path / "ranker.json").write_text(ranker.to_json())
    catalog = tmp_path / "products.jsonl"
    catalog.write_text(
        "".join(
            json.dumps({"item_id": f"X{i}", "title": f"red sofa {i}", "brand": "Acme"}) + "\n"
            for i in range(20)
        )
    )
    config = BuildConfig(
        catalog=catalog, out=tmp_path / "idx", model=tiny_model_dir, ranker=tmp_path / "ranker.json"
    )
    with pytest.raises(RankerMismatchError, match="fields"):
        build_index(config)
    assert not (tmp_path / "idx" / "CURRENT").exists()  # nothing published


def test_build_with_a_ranker_publishes_it(tmp_path, title_catalog, tiny_model_dir, ranker):
    (tmp_path / "ranker.json").write_text(ranker.to_json())
    version_dir = build_index(
        BuildConfig(
            catalog=title_catalog[0],
            out=tmp_path / "idx",
            model=tiny_model_dir,
            ranker=tmp_path / "ranker.json",
        )
    )
    version = IndexVersion.open(version_dir, verify=True)
    assert (version_dir / RANKER_FILE).read_text() == ranker.to_json()
    assert RANKER_FILE in version.manifest.files
    assert version.manifest.build["ranker"]["feature_spec_version"] == ranker.feature_spec_version


def test_version_without_lexical_cannot_train(tmp_path, title_catalog, tiny_model_dir):
    version_dir = build_index(
        BuildConfig(catalog=title_catalog[0], out=tmp_path, model=tiny_model_dir, lexical=False)
    )
    with pytest.raises(ValueError, match="no-lexical"):
        version_source(IndexVersion.open(version_dir))


def test_too_few_labelled_queries(prepared):
    version, encoder, source, qs = prepared
    few = Labels({"q": "red sofa"}, {"q": {"SKU0000": 2}}, "few")
    small = prepare_queries(version, source, encoder, few, depth=5)
    with pytest.raises(ValueError, match="at least 4"):
        train_ranker(small, RankerConfig(), model_fingerprint="f", fields=("title",))


def test_compaction_carries_the_ranker(tmp_path, title_catalog, tiny_model_dir, ranker):
    (tmp_path / "ranker.json").write_text(ranker.to_json())
    root = tmp_path / "idx"
    build_index(
        BuildConfig(
            catalog=title_catalog[0],
            out=root,
            model=tiny_model_dir,
            ranker=tmp_path / "ranker.json",
        )
    )
    version_dir = compact(root)
    assert (version_dir / RANKER_FILE).read_text() == ranker.to_json()
    assert IndexVersion.open(version_dir, verify=True).manifest.build["ranker"]


def write_labels(path, labels: Labels):
    """``labels`` as a labels file (query_id, query, item_id, grade per line)."""
    path.write_text(
        "".join(
            json.dumps({"query_id": q, "query": labels.queries[q], "item_id": i, "grade": g}) + "\n"
            for q, grades in labels.judgments.items()
            for i, g in grades.items()
        )
    )
    return path


def test_aisle_rank_train_and_evaluate(tmp_path, index_root, title_catalog, capsys):
    labels = ranking_labels(title_catalog[1])
    path = write_labels(tmp_path / "labels.jsonl", labels)
    out = tmp_path / "ranker.json"
    assert (
        rank_main(
            [
                "train",
                "--index",
                str(index_root),
                "--labels",
                str(path),
                "--out",
                str(out),
                "--max-rounds",
                "20",
            ]
        )
        == 0
    )
    trained = json.loads(capsys.readouterr().out)
    assert trained["ranker"] == str(out) and trained["rounds"] >= 1
    assert Ranker.load(out).fields == ("title",)
    assert (
        rank_main(
            ["evaluate", "--index", str(index_root), "--labels", str(path), "--ranker", str(out)]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"dense", "lexical", "ranked"}
    assert report["ranked"]["ndcg@10"]["n"] == len(labels.queries)
    # the index root has no ranker of its own
    assert rank_main(["evaluate", "--index", str(index_root), "--labels", str(path)]) == 2
    assert "not a readable ranker file" in capsys.readouterr().err


def test_aisle_rank_train_reads_engagement_from_an_events_dir(
    tmp_path, index_root, title_catalog, capsys
):
    labels = ranking_labels(title_catalog[1])
    path = write_labels(tmp_path / "labels.jsonl", labels)
    events = tmp_path / "events"
    events.mkdir()
    now = datetime.now(UTC).isoformat()
    bought = sorted({i for grades in labels.judgments.values() for i, g in grades.items() if g})
    (events / "events.jsonl").write_text(
        "".join(
            json.dumps({"user_id": "u1", "item_id": i, "type": "purchase", "time": now}) + "\n"
            for i in bought
        )
    )
    out = tmp_path / "ranker.json"
    args = ["train", "--index", str(index_root), "--labels", str(path), "--out", str(out),
            "--max-rounds", "20"]  # fmt: skip
    assert rank_main([*args, "--events", str(events)]) == 0
    used = json.loads(capsys.readouterr().out)["engagement"]
    assert used["events"] == used["items"] == len(bought) and used["days"] == 30
    assert Ranker.load(out).training["engagement"] == used  # the file says what it read
    assert rank_main([*args, "--events", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--events" in err and "not a directory" in err
