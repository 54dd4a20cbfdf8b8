"""Tests for trainer.training.batches and the training loop: graded pairs, batches and masks,
mining, one step that lowers the loss, exact resume after a kill, early stopping, checkpoints,
DDP."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import train_config
from trainer.data.catalog import Catalog, read_catalog
from trainer.data.labels import Interactions, Labels
from trainer.data.rows import DataError
from trainer.data.synthetic import write_synthetic_dataset
from trainer.encoder.load import load_encoder
from trainer.encoder.user import history_vectors
from trainer.training.batches import (
    epoch_batches,
    mine_hard_negatives,
    recommend_batch,
    recommend_data,
    relevance_mask,
    rng_for,
    search_batch,
    search_data,
    split_interactions,
    split_labels,
    tokenize,
)
from trainer.training.checkpoints import LATEST_NAME, CheckpointDir
from trainer.training.config import DatasetSpec, TrainConfig, read_config_file
from trainer.training.losses import sampled_softmax_loss
from trainer.training.model import build_two_tower
from trainer.training.prepare import prepare_datasets
from trainer.training.run import SimulatedKill, train, train_distributed


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), n_items=200, n_queries=30, n_users=40, seed=0
    )


def _catalog(ids: list[str]) -> Catalog:
    import pyarrow as pa

    return Catalog(
        table=pa.table({"item_id": ids, "title": [f"item {i}" for i in ids]}), path="cat"
    )


# ---------------------------------------------------------------------------------------------
# Pairs, batches, masks


LABELS = Labels(
    queries={"q1": "sofa", "q2": "drill"},
    judgments={
        "q1": {"a": 3, "b": 2, "c": 1, "d": 0},
        "q2": {"b": 3, "e": 3, "d": 0},
    },
    path="labels",
)


def test_graded_labels_become_weighted_pairs_and_masks() -> None:
    catalog = _catalog(["a", "b", "c", "d", "e"])
    data = search_data("t", catalog, LABELS, partial_weight=0.1)
    pairs = sorted(
        zip(
            data.pair_query.tolist(),
            data.pair_item.tolist(),
            data.pair_weight.tolist(),
            strict=True,
        )
    )
    # E (3) → weight 1; S (2) → partial weight; C (1) and I (0) are not positives.
    assert pairs == [(0, 0, 1.0), (0, 1, pytest.approx(0.1)), (1, 1, 1.0), (1, 4, 1.0)]
    assert [r.tolist() for r in data.relevant] == [[0, 1], [1, 4]]  # never negatives
    assert [r.tolist() for r in data.labeled_negatives] == [[3], [3]]
    # Item b is the positive of 2 of 4 pairs: q = 1/2; a: 1/4.
    assert data.log_q[1] == pytest.approx(np.log(0.5))
    assert data.log_q[0] == pytest.approx(np.log(0.25))
    # partial_weight 0: S is no positive, but still masked out of q1's negatives.
    strict = search_data("t", catalog, LABELS, partial_weight=0.0)
    assert len(strict.pair_item) == 3 and strict.relevant[0].tolist() == [0, 1]
    only_bad = Labels({"q": "x"}, {"q": {"a": 0}}, "bad")
    with pytest.raises(ValueError, match="no positive pairs"):
        search_data("t", catalog, only_bad, partial_weight=0.1, top_grade=3)


def test_epoch_batches_have_no_duplicates_and_are_deterministic() -> None:
    rng = np.random.default_rng(0)
    queries = rng.integers(0, 20, size=300)
    items = rng.integers(0, 150, size=300)
    batches = epoch_batches((queries, items), 16, rng_for(7, 1))
    assert batches and all(len(b) == 16 for b in batches)
    for b in batches:
        assert len(set(queries[b])) == 16 and len(set(items[b])) == 16
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == len(flat)  # each example at most once per epoch
    assert len(flat) > 250
    again = epoch_batches((queries, items), 16, rng_for(7, 1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    # Smaller than one batch: the partial batch is kept.
    small = epoch_batches((np.arange(5),), 16, rng_for(0, 1))
    assert [len(b) for b in small] == [5]


def test_search_batch_masks_relevant_items_and_adds_hard_negatives(tiny_model_dir) -> None:
    catalog = _catalog(["a", "b", "c", "d", "e"])
    data = search_data("t", catalog, LABELS, partial_weight=0.5)
    model = build_two_tower(tiny_model_dir)
    data.item_tokens = tokenize(model.item_tower.tokenizer, ["a", "b", "c", "d", "e"], 8)
    data.query_tokens = tokenize(model.query_tower.tokenizer, ["sofa", "drill"], 8)
    data.mined = [np.array([2]), np.array([0, 2])]
    # Pairs (q1, a) and (q2, e): q2's mined "a" is q1's positive (already a column, and
    # masked for nobody: a is not relevant to q2), c is an extra column, d a labeled negative.
    rows = np.array(
        [
            i
            for i, (q, r) in enumerate(zip(data.pair_query, data.pair_item, strict=True))
            if (q, r) in ((0, 0), (1, 4))
        ]
    )
    batch = search_batch(
        data, rows, hard_negatives=5, labeled_negatives=True, rng=rng_for(0, 3), pad_id=0
    )
    assert batch.items[:2].tolist() == [0, 4]
    assert sorted(batch.items[2:].tolist()) == [2, 3]
    assert batch.query_ids.shape[0] == 2 and batch.item_ids.shape[0] == 4
    # No column is relevant to the other row here; q1's positive a is not relevant to q2.
    assert not batch.mask.any()
    # Now a batch with both of b's pairs would be prevented by the sampler; the mask still
    # protects: (q1, a) and (q2, b): b is relevant (S) to q1 → masked for row 0.
    rows = np.array(
        [
            i
            for i, (q, r) in enumerate(zip(data.pair_query, data.pair_item, strict=True))
            if (q, r) in ((0, 0), (1, 1))
        ]
    )
    batch = search_batch(
        data, rows, hard_negatives=0, labeled_negatives=False, rng=rng_for(0, 3), pad_id=0
    )
    assert batch.mask.tolist() == [[False, True], [False, False]]
    assert batch.weights.tolist() == [1.0, 1.0]


def test_labeled_negatives_alone_without_mining(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], caplog
) -> None:
    # mine = false: the extra negatives are the grade-0 items alone (feedback's skip-above
    # items), drawn before any mining has run; training never mines.
    catalog = _catalog(["a", "b", "c", "d", "e"])
    sd = search_data("t", catalog, LABELS, partial_weight=0.5)
    model = build_two_tower(tiny_model_dir)
    sd.item_tokens = tokenize(model.item_tower.tokenizer, ["a", "b", "c", "d", "e"], 8)
    sd.query_tokens = tokenize(model.query_tower.tokenizer, ["sofa", "drill"], 8)
    assert not any(len(m) for m in sd.mined)  # nothing mined
    rows = np.array([0, len(sd.pair_item) - 1])  # (q1, a) and (q2, e)
    batch = search_batch(
        sd, rows, hard_negatives=1, labeled_negatives=True, rng=rng_for(0, 3), pad_id=0
    )
    assert batch.items.tolist() == [0, 4, 3]  # d: both queries' only grade-0 item
    caplog.set_level(logging.INFO, logger="trainer.training.loop")
    train(train_config(tmp_path / "on", tiny_model_dir, data, hard_negatives=1, max_steps=1))
    assert "mined" in caplog.text
    caplog.clear()
    config = train_config(tmp_path, tiny_model_dir, data, hard_negatives=1, mine=False)
    train(config)
    assert "mined" not in caplog.text
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_relevance_mask() -> None:
    mask = relevance_mask([np.array([1, 5]), np.array([], dtype=np.int64)], np.array([5, 2, 1]))
    # Row 0's own positive (column 0) is never masked.
    assert mask.tolist() == [[False, False, True], [False, False, False]]


def test_recommendation_examples_and_user_vectors() -> None:
    catalog = _catalog(["a", "b", "c", "d"])
    inter = Interactions({"u1": ["a", "b", "c"], "u2": ["d"], "u3": ["c", "a"]}, "inter")
    data = recommend_data("r", catalog, inter, history_length=1)
    # u1: (a → b), (a b → c); u2: none; u3: (c → a).
    assert data.n_examples == 3
    assert data.targets(np.arange(3)).tolist() == [1, 2, 0]
    data.bank = np.eye(4, dtype=np.float32)
    data.item_tokens = [np.array([101, i, 102], dtype=np.int32) for i in range(4)]
    batch = recommend_batch(data, np.arange(3), pad_id=0)
    # history_length 1: each user is their last item's (unit) vector.
    np.testing.assert_allclose(batch.user_vectors, np.eye(4, dtype=np.float32)[[0, 1, 2]])
    assert batch.items.tolist() == [1, 2, 0] and not batch.mask.any()
    xu = history_vectors(np.array([[3.0, 0.0], [0.0, 4.0]], dtype=np.float32), [np.array([0, 1])])
    np.testing.assert_allclose(xu, [[0.6, 0.8]], atol=1e-6)
    with pytest.raises(ValueError, match="not in the catalog"):
        recommend_data("r", catalog, Interactions({"u": ["a", "zz"]}, "x"), history_length=5)
    with pytest.raises(ValueError, match="no user has two or more items"):
        recommend_data("r", catalog, Interactions({"u": ["a"]}, "x"), history_length=5)


def test_holdout_splits() -> None:
    train, held = split_labels(LABELS, 0.5, seed=0)
    assert len(train.queries) == len(held.queries) == 1
    assert set(train.queries) | set(held.queries) == {"q1", "q2"}
    inter = Interactions({"u1": ["a", "b", "c"], "u2": ["d"], "u3": ["c", "a"]}, "inter")
    rest, history, targets = split_interactions(inter, 0.5, seed=0)
    assert list(history.histories) == list(targets.histories)  # the held-out users
    for user, (target,) in targets.histories.items():
        assert inter.histories[user][-1] == target
        assert rest.histories[user] == inter.histories[user][:-1]
    assert rest.histories["u2"] == ["d"]  # one-item users are never held out


def test_mining_skips_the_top_and_relevant_items() -> None:
    xb = np.eye(6, dtype=np.float32)
    xq = np.array([[6, 5, 4, 3, 2, 1]], dtype=np.float32)  # ranks items 0, 1, 2, ...
    mined = mine_hard_negatives(xq, xb, [np.array([2])], (1, 4))
    assert mined[0].tolist() == [1, 3]  # ranks 1-3 = items 1, 2, 3; 2 is relevant
    assert mine_hard_negatives(xq, xb, [np.array([])], (0, 100))[0].tolist() == list(range(6))
    with pytest.raises(ValueError, match="mining window"):
        mine_hard_negatives(xq, xb, [np.array([])], (5, 5))


# ---------------------------------------------------------------------------------------------
# Training


def test_one_step_reduces_the_loss(tiny_model_dir: Path, data: dict[str, Path]) -> None:
    torch.manual_seed(0)
    catalog = read_catalog(data["products"])
    from trainer.data.labels import read_labels
    from trainer.text import item_text

    labels = read_labels(data["labels_train"])
    model = build_two_tower(tiny_model_dir, dropout=False)
    sd = search_data("t", catalog, labels, partial_weight=0.1)
    sd.item_tokens = tokenize(
        model.item_tower.tokenizer, [item_text(r) for r in catalog.records()], 32
    )
    sd.query_tokens = tokenize(model.query_tower.tokenizer, sd.query_texts, 16)
    rows = epoch_batches(sd.batch_keys(), 16, rng_for(0, 1))[0]
    batch = search_batch(
        sd, rows, hard_negatives=0, labeled_negatives=False, rng=rng_for(0, 2), pad_id=0
    )

    def loss() -> torch.Tensor:
        xq, xb, scale = model(
            torch.from_numpy(batch.query_ids),
            torch.from_numpy(batch.query_mask),
            torch.from_numpy(batch.item_ids),
            torch.from_numpy(batch.item_mask),
        )
        return sampled_softmax_loss(
            xq,
            xb,
            temperature=1 / scale,
            log_q=torch.from_numpy(batch.log_q),
            mask=torch.from_numpy(batch.mask),
            weights=torch.from_numpy(batch.weights),
        )

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item() - 1e-3


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for file in sorted(path.rglob("*.safetensors")):
        for name, tensor in load_file(str(file)).items():
            out[f"{file.relative_to(path)}:{name}"] = tensor
    return out


def test_resume_after_a_kill_matches_a_straight_run(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    # Everything that carries state: two datasets mixed (search with mined + labeled hard
    # negatives, recommendation with an item bank), accumulation, dropout, a learnable
    # temperature, evaluation with best-checkpoint tracking, periodic re-mining and refresh.
    datasets = (
        DatasetSpec(catalog=data["products"], train=data["labels_train"], dev=data["labels_dev"]),
        DatasetSpec(
            catalog=data["products"],
            train=data["interactions_train"],
            dev=data["interactions_dev"],
            task="recommend",
            name="rec",
            weight=0.5,
        ),
    )
    common = {
        "datasets": datasets,
        "max_steps": 6,
        "grad_accum": 2,
        "hard_negatives": 1,
        "mine_every": 2,
        "refresh_every": 2,
        "learnable_temperature": True,
        "eval_every": 2,
        "patience": 10,
        "warmup_steps": 2,
        "projection_dim": 16,
    }
    straight = train(train_config(tmp_path / "a", tiny_model_dir, data, **common))

    def kill_at_3(step: int, logs: dict) -> None:
        if step == 3:
            raise SimulatedKill

    killed = train_config(tmp_path / "b", tiny_model_dir, data, checkpoint_every=3, **common)
    with pytest.raises(SimulatedKill):
        train(killed, on_step=kill_at_3)
    assert not (tmp_path / "b" / "model").exists()
    assert CheckpointDir(killed.checkpoint_root).steps() == [3]
    resumed = train(
        train_config(
            tmp_path / "b", tiny_model_dir, data, checkpoint_every=3, resume=True, **common
        )
    )

    assert resumed.steps == straight.steps == 6
    assert resumed.param_digests == straight.param_digests  # the final parameters
    assert resumed.history == [
        {**h, "seconds": r["seconds"]}
        for h, r in zip(straight.history, resumed.history, strict=True)
    ]
    a, b = _safetensors(straight.out), _safetensors(resumed.out)  # the exported best
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_early_stopping_exports_the_best(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    # lr ~ 0: the dev metric never improves after the first evaluation.
    config = train_config(
        tmp_path,
        tiny_model_dir,
        data,
        lr=1e-12,
        max_steps=50,
        eval_every=1,
        patience=2,
        holdout_fraction=0.25,
        eval_max_items=60,  # rank the judged items + a sample, not the whole catalog
        checkpoint_every=2,
        keep_checkpoints=1,
    )
    result = train(config)
    assert result.stopped_early and result.steps == 3 and result.best_step == 1
    sources = [next(iter(h["datasets"].values()))["source"] for h in result.history]
    assert sources == ["holdout"] * 3
    meta = json.loads((config.out / "training_metrics.json").read_text())
    assert meta["best_step"] == 1 and meta["config"]["patience"] == 2
    # Checkpoints: the newest only (the early stop saves one), LATEST, best/, no temp dirs.
    root = config.checkpoint_root
    assert CheckpointDir(root).steps() == [3]
    assert (root / LATEST_NAME).read_text().strip() == "step-00000003"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    load_encoder(config.out)  # the export loads
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(config)


def test_resume_refuses_other_settings(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    config = train_config(tmp_path, tiny_model_dir, data, max_steps=2, checkpoint_every=1)
    train(config)
    changed = train_config(
        tmp_path, tiny_model_dir, data, max_steps=2, checkpoint_every=1, lr=5e-4, resume=True
    )
    with pytest.raises(ValueError, match="other settings .*lr: 0.001 -> 0.0005"):
        train(changed)
    # A finished run resumed with the same settings just exports again.
    again = train(
        train_config(
            tmp_path,
            tiny_model_dir,
            data,
            max_steps=2,
            checkpoint_every=1,
            resume=True,
            num_threads=2,
        )
    )
    assert again.steps == 2


def test_bad_data_fails_before_training(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    bad = tmp_path / "labels.jsonl"
    bad.write_text(json.dumps({"query_id": "1", "query": "x", "item_id": "nope", "grade": 3}))
    config = TrainConfig(
        datasets=(DatasetSpec(catalog=data["products"], train=bad),),
        out=tmp_path / "model",
        base_model=tiny_model_dir,
    )
    with pytest.raises(DataError, match="not in the catalog"):
        train(config)
    assert not config.checkpoint_root.exists() and not config.out.exists()
    # A bad base model dir is found even before the data is read.
    no_model = TrainConfig(
        datasets=(DatasetSpec(catalog=tmp_path / "missing.jsonl", train=bad),),
        out=tmp_path / "model",
        base_model=tmp_path / "nope",
    )
    with pytest.raises(ValueError, match="model dir .*nope' does not exist"):
        train(no_model)
    wrong_task = TrainConfig(
        datasets=(DatasetSpec(catalog=data["products"], train=data["interactions_train"]),),
        out=tmp_path / "model",
    )
    with pytest.raises(DataError, match="looks like interactions: set task to recommend"):
        prepare_datasets(wrong_task)
    bad_dev = TrainConfig(
        datasets=(
            DatasetSpec(
                catalog=data["products"],
                train=data["interactions_train"],
                dev=data["labels_dev"],
                task="recommend",
            ),
        ),
        out=tmp_path / "model",
    )
    with pytest.raises(DataError, match="looks like labels"):
        prepare_datasets(bad_dev)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"datasets": ()}, "no dataset to train on"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"max_query_length": 1}, "max_query_length must be an int >= 2"),
        ({"temperature": 0}, "temperature must be in"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"partial_weight": 2.0}, "partial_weight must be in"),
        ({"holdout_fraction": 0.9}, "holdout_fraction must be in"),
        ({"mine_window": (5, 2)}, "mine_window must be two ints"),
        ({"amp": "fp16"}, "amp must be one of"),
        ({"epochs": 0}, "epochs must be > 0"),
        ({"max_steps": 0}, "max_steps must be an int >= 1"),
        ({"hard_negatives": -1}, "hard_negatives must be an int >= 0"),
        ({"mine": "no"}, "mine must be true or false"),
        ({"hard_negatives": 1, "mine": False, "labeled_negatives": False}, "must be true"),
        ({"history_decay": 0}, "history_decay must be in"),
        ({"history_decay": 1.5}, "history_decay must be in"),
        ({"fit_history_decay": "yes"}, "fit_history_decay must be true or false"),
        ({"lexical_dim": 4}, "lexical.dim must be an int in"),
        ({"lexical_weight": 0.5}, "lexical_weight and lexical_rerank need it"),
        ({"lexical_dim": 64, "lexical_weight": 0}, "lexical.weight must be in"),
        ({"lexical_dim": 64}, "lexical_weight is unset"),
    ],
)
def test_config_validation(tmp_path: Path, kwargs, match) -> None:
    settings = {
        "datasets": (DatasetSpec(catalog=tmp_path / "c.jsonl", train=tmp_path / "t.jsonl"),),
        "out": tmp_path / "m",
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        TrainConfig(**settings)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "rank"}, "task must be one of"),
        ({"weight": 0}, "weight must be a number > 0"),
        ({"dataset": "scientific"}, "is a recommendation dataset but task is 'search'"),
        ({"dataset": "nope"}, "unknown dataset"),
    ],
)
def test_dataset_spec_validation(tmp_path: Path, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        DatasetSpec(catalog=tmp_path / "c", train=tmp_path / "t", **kwargs)


def test_config_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        'out = "model"\nmax_steps = 5\nmine_window = [5, 50]\n'
        '[[datasets]]\ncatalog = "data/products.jsonl.gz"\ntrain = "data/labels.jsonl.gz"\n'
        '[[datasets]]\ncatalog = "x.jsonl"\ntrain = "i.jsonl"\ntask = "recommend"\nweight = 2\n'
    )
    settings = read_config_file(tmp_path / "a.toml")
    config = TrainConfig(**settings)
    assert config.out == tmp_path / "model" and config.max_steps == 5
    assert config.mine_window == (5, 50)
    assert config.datasets[0].catalog == tmp_path / "data" / "products.jsonl.gz"
    assert config.datasets[1].task == "recommend" and config.datasets[1].weight == 2
    assert config.checkpoint_root == tmp_path / "model.checkpoints"
    (tmp_path / "b.json").write_text(json.dumps({"out": "m", "datasets": [], "lr": 1e-4}))
    assert read_config_file(tmp_path / "b.json")["lr"] == 1e-4

    for name, text, match in [
        ("c.json", '{"lr": 1, "speed": 2}', r"unknown key\(s\) \['speed'\]"),
        ("d.json", '{"datasets": [{"catalog": "c", "train": "t", "colour": 1}]}', "colour"),
        (
            "e.json",
            '{"datasets": [{"catalog": "c", "train": "t", "task": "x"}]}',
            r"datasets\[0\]: dataset task",
        ),
        ("f.toml", "out = [", "cannot parse"),
        ("g.yaml", "out: m", "must be a .json or .toml"),
        ("h.json", "[1]", "expected a table"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=match):
            read_config_file(tmp_path / name)
    with pytest.raises(ValueError, match="cannot read config"):
        read_config_file(tmp_path / "missing.json")


@pytest.mark.slow
@pytest.mark.parametrize("mini_batch_size", [None, 3])  # 3: gradient caching under DDP
def test_ddp_two_processes_end_with_identical_parameters(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], mini_batch_size: int | None
) -> None:
    config = train_config(
        tmp_path,
        tiny_model_dir,
        data,
        datasets=(
            DatasetSpec(catalog=data["products"], train=data["labels_train"]),
            DatasetSpec(
                catalog=data["products"], train=data["interactions_train"], task="recommend"
            ),
        ),
        max_steps=3,
        batch_size=4,
        grad_accum=2,
        hard_negatives=1,
        checkpoint_every=3,
        mini_batch_size=mini_batch_size,
    )
    result = train_distributed(config, 2, backend="gloo")
    assert result.steps == 3 and len(result.param_digests) == 2
    assert result.param_digests[0] == result.param_digests[1]
    assert result.pairs == 3 * 2 * 8  # steps x accumulation x (2 ranks x 4 pairs)
    start = build_two_tower(tiny_model_dir)
    trained = load_encoder(config.out)
    assert trained.dim == 32
    # It trained: the exported weights differ from the base model's.
    a = _safetensors(config.out)
    base = {k.split(":", 1)[1]: v for k, v in _safetensors(tiny_model_dir).items()}
    assert any(not torch.equal(v, base[k.split(":", 1)[1]]) for k, v in a.items())
    del start
    state = json.loads((CheckpointDir(config.checkpoint_root).latest() / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 3


def test_eval_sample_keeps_the_judged_items() -> None:
    from trainer.training.prepare import sample_eval_rows

    needed = np.array([5, 7, 7, 99])
    rows = sample_eval_rows(1000, needed, 50, seed=0, k=0)
    assert len(rows) == 50 and set(needed.tolist()) <= set(rows.tolist())
    assert np.array_equal(rows, np.unique(rows))  # sorted, no repeats
    assert np.array_equal(rows, sample_eval_rows(1000, needed, 50, seed=0, k=0))  # fixed per run
    assert sample_eval_rows(40, needed, 50, seed=0, k=0) is None  # small catalog: rank all of it


def test_tensorboard_logs_the_loss_and_the_dev_metric(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    pytest.importorskip("tensorboard")  # the `train` extra installs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    config = train_config(
        tmp_path,
        tiny_model_dir,
        data,
        max_steps=4,
        log_every=1,
        eval_every=2,
        holdout_fraction=0.25,
        eval_max_items=60,
        tensorboard_dir=logs,
    )
    result = train(config)
    events = EventAccumulator(str(logs))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/pairs_per_second", "eval/metric"} <= set(scalars)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    evals = events.Scalars("eval/metric")
    assert [e.step for e in evals] == [2, 4]
    assert evals[-1].value == pytest.approx(result.history[-1]["metric"], rel=1e-6)
