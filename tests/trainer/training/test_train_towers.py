"""Training runs that fit the optional parts of a model dir: the user tower's history decay
and the character-trigram sketch's weight (see trainer.encoder.user, trainer.encoder.trigram)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers import train_config
from trainer.data.catalog import read_catalog
from trainer.data.synthetic import write_synthetic_dataset
from trainer.encoder.load import load_encoder
from trainer.encoder.trigram import DEFAULT_WEIGHT
from trainer.evaluation.metrics import weighted_dcg_at_k
from trainer.training.config import DatasetSpec
from trainer.training.run import train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), n_items=200, n_queries=30, n_users=40, seed=0
    )


def test_fit_history_decay_exports_the_best_decay(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    config = train_config(
        tmp_path,
        tiny_model_dir,
        data,
        datasets=(
            DatasetSpec(
                catalog=data["products"], train=data["interactions_train"], task="recommend"
            ),
        ),
        max_steps=2,
        eval_every=1,
        holdout_fraction=0.25,
        history_decay=0.55,
        fit_history_decay=True,
    )
    result = train(config)
    for record in result.history:
        fit = record["history_decay_fit"]
        # the grid plus the training decay, each scored; the best is kept (ties: larger decay)
        assert set(fit) == {"1", "0.9", "0.8", "0.7", "0.6", "0.55", "0.5", "0.4", "0.3"}
        best = max(fit.values())
        assert fit[f"{record['history_decay']:g}"] == best
        assert record["datasets"][config.datasets[0].name]["ndcg@10"] == pytest.approx(best)
        assert all(float(d) <= record["history_decay"] for d, v in fit.items() if v == best)
    chosen = next(r for r in result.history if r["step"] == result.best_step)["history_decay"]
    assert load_encoder(config.out).history_decay == chosen
    meta = json.loads((config.out / "training_metrics.json").read_text())
    assert meta["history_decay"] == chosen
    # Without fitting, the model keeps the training decay.
    plain = train_config(
        tmp_path / "plain",
        tiny_model_dir,
        data,
        datasets=config.datasets,
        max_steps=1,
        eval_every=1,
        holdout_fraction=0.25,
        history_decay=0.55,
    )
    result = train(plain)
    assert "history_decay_fit" not in result.history[0]
    assert load_encoder(plain.out).history_decay == 0.55


def test_lexical_sketch_is_fitted_and_exported(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    config = train_config(
        tmp_path, tiny_model_dir, data, max_steps=1, holdout_fraction=0.25, lexical_dim=64
    )
    train(config)
    encoder = load_encoder(config.out)
    meta = json.loads((config.out / "training_metrics.json").read_text())
    fit = meta["lexical"]["weight_fit_ndcg@10"]
    assert set(fit) == {"0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.8", "1"}
    chosen = encoder.info.lexical["weight"]
    assert fit[f"{chosen:g}"] == max(v for k, v in fit.items() if k != "0")
    settings = {k: v for k, v in meta["lexical"].items() if k != "weight_fit_ndcg@10"}
    assert (
        settings
        == encoder.info.lexical
        == {"dim": 64, "weight": chosen, "hashes": 2, "buckets": 1 << 20}
    )
    assert encoder.dim == 32 + 64 and (config.out / "lexical_tower.safetensors").is_file()
    # Both towers append the same sketch: a query equal to an item text scores it like BERT
    # does, plus the full trigram weight.
    title = next(iter(read_catalog(data["products"]).records()))["title"]
    xq, xb = encoder.encode_queries([title]), encoder.encode_items([title])
    np.testing.assert_allclose(np.linalg.norm(xq, axis=1), 1.0, atol=1e-5)
    w = chosen
    bert = float(xq[0, :32] @ xb[0, :32]) * (1 + w)  # the BERT cosine
    lex = float(xq[0, 32:] @ xb[0, 32:]) * (1 + w) / w  # the sketch cosine
    assert lex == pytest.approx(1.0, abs=1e-5)
    assert float(xq[0] @ xb[0]) == pytest.approx((bert + w * lex) / (1 + w), abs=1e-5)
    # A fixed weight is kept as given.
    fixed = train_config(
        tmp_path / "fixed", tiny_model_dir, data, max_steps=1, lexical_dim=64, lexical_weight=0.7
    )
    train(fixed)
    assert load_encoder(fixed.out).info.lexical["weight"] == 0.7


def test_lexical_weight_falls_back_when_no_query_can_score_it(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], monkeypatch, caplog
) -> None:
    import trainer.training.selection as train_eval

    nan = SimpleNamespace(metrics={"ndcg@10": SimpleNamespace(mean=float("nan"))})
    monkeypatch.setattr(train_eval, "evaluate_rankings", lambda *args, **kwargs: nan)
    config = train_config(
        tmp_path, tiny_model_dir, data, max_steps=1, holdout_fraction=0.25, lexical_dim=64
    )
    train(config)  # the trained weights are exported, not lost
    assert load_encoder(config.out).info.lexical["weight"] == DEFAULT_WEIGHT
    assert "no eval query could score a weight" in caplog.text


def _fit_on_weighted_labels(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], monkeypatch, weight_of, **config
) -> tuple[list[dict], list[tuple[dict, object, float]], dict[str, float], dict]:
    """Train one step on the train labels with ``weight_of(row)`` as each row's weight, the
    sketch's weight fitted on a 25 % hold-out; returns (the rows, each ``weighted_dcg_at_k``
    call's (rankings, labels, value), the recorded fit, training_metrics.json)."""
    import trainer.training.selection as selection

    with gzip.open(data["labels_train"], "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        row["weight"] = weight_of(row)
    weighted = tmp_path / "weighted.jsonl"
    weighted.write_text("".join(json.dumps(row) + "\n" for row in rows))
    calls: list[tuple[dict, object, float]] = []

    def spy(rankings, labels, gains, k):
        value = weighted_dcg_at_k(rankings, labels, gains, k)
        calls.append((rankings, labels, value))
        return value

    monkeypatch.setattr(selection, "weighted_dcg_at_k", spy)
    settings = train_config(
        tmp_path,
        tiny_model_dir,
        data,
        datasets=(DatasetSpec(catalog=data["products"], train=weighted),),
        max_steps=1,
        holdout_fraction=0.25,
        lexical_dim=64,
        **config,
    )
    train(settings)
    metrics = json.loads((settings.out / "training_metrics.json").read_text())
    return rows, calls, metrics["lexical"]["weight_fit_ndcg@10"], metrics


def test_lexical_weight_fit_scores_weighted_labels_by_their_weights(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], monkeypatch
) -> None:
    """Labels learned from logs carry IPS weights: the sketch's weight is fitted on their
    weighted DCG@10 (``weighted_dcg_at_k``), with the held-out judgments' own weights."""
    rng = np.random.default_rng(0)
    rows, calls, fit, metrics = _fit_on_weighted_labels(
        tmp_path, tiny_model_dir, data, monkeypatch, lambda row: float(rng.uniform(1, 10))
    )
    assert len(calls) == len(fit) == 9  # one score per weight tried, all weighted
    given = {(r["query_id"], r["item_id"]): r["weight"] for r in rows}
    held_out = calls[0][1]
    assert 0 < len(held_out.judgments) < len({r["query_id"] for r in rows})
    for query_id, judged in held_out.judgments.items():
        for item_id in judged:
            assert held_out.weight(query_id, item_id) == pytest.approx(given[query_id, item_id])
    assert [value for _, _, value in calls] == pytest.approx(list(fit.values()))
    chosen = load_encoder(Path(metrics["config"]["out"])).info.lexical["weight"]
    assert fit[f"{chosen:g}"] == max(v for key, v in fit.items() if key != "0")


def test_lexical_rerank_fits_on_each_query_reordering_its_judged_items(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], monkeypatch
) -> None:
    """``lexical_rerank``: every weight's towers reorder each held-out query's judged items (a
    logged result list), never the rest of the catalog, and the fit records what they scored."""
    _, calls, fit, metrics = _fit_on_weighted_labels(
        tmp_path, tiny_model_dir, data, monkeypatch,
        lambda row: 2.0 if row["grade"] > 0 else 1.0, lexical_rerank=True,
    )  # fmt: skip
    assert len(calls) == len(fit) == 9 and metrics["config"]["lexical_rerank"] is True
    orders = set()
    for rankings, labels, _ in calls:
        assert rankings.keys() == labels.judgments.keys()
        for query_id, ranking in rankings.items():
            assert sorted(ranking) == sorted(labels.judgments[query_id])  # a permutation
        orders.add(tuple(tuple(r) for r in rankings.values()))
    assert len(orders) > 1  # the weight moved some query's order
    assert [value for _, _, value in calls] == pytest.approx(list(fit.values()))


def test_lexical_rerank_needs_the_sketch(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    with pytest.raises(ValueError, match="lexical_weight and lexical_rerank need it"):
        train_config(tmp_path, tiny_model_dir, data, lexical_rerank=True)
    with pytest.raises(ValueError, match="lexical_rerank must be true or false"):
        train_config(
            tmp_path, tiny_model_dir, data, lexical_dim=64, lexical_weight=0.5, lexical_rerank="y"
        )
