"""Differential privacy in aisle-train: the --dp-* flags run DP-SGD (Opacus) and report the
budget; --dp-logq-epsilon noises the logQ frequencies of shopper datasets only, at the stated
scale; combinations DP-SGD cannot do are refused with a message naming them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from trainer.cli import main
from trainer.data.synthetic import write_synthetic_dataset
from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import read_model_info
from trainer.training.batches import log_sampling_probability
from trainer.training.config import DatasetSpec, TrainConfig
from trainer.training.model import TRAINING_METRICS_NAME
from trainer.training.prepare import prepare_datasets
from trainer.training.private import noise_logq, private_log_q


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), n_items=120, n_queries=20, n_users=30, seed=3
    )


FAST = [
    "--export-onnx", "false", "--batch-size", "8", "--max-query-length", "16",
    "--max-item-length", "24", "--num-threads", "1", "--no-progress", "--lr", "1e-3",
]  # fmt: skip


def run(tmp_path, tiny_model_dir, data, *extra: str) -> int:
    return main(
        [
            "--catalog", str(data["products"]),
            "--train", str(data["labels_train"]),
            "--dev", str(data["labels_dev"]),
            "--base-model", str(tiny_model_dir),
            "--out", str(tmp_path / "model"),
            *FAST,
            *extra,
        ]
    )  # fmt: skip


def test_dp_epsilon_runs_dp_sgd_and_reports_epsilon_delta_and_noise(
    tmp_path, tiny_model_dir, data, capsys
) -> None:
    code = run(tmp_path, tiny_model_dir, data, "--max-steps", "4", "--dp-epsilon", "2",
               "--dp-delta", "1e-4", "--dp-max-grad-norm", "0.5")  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    privacy = summary["privacy"]
    # calibrated to the target at Opacus' own sampling rate: spent is the target, not less
    assert 0.9 * 2 <= privacy["epsilon"] <= 2 * 1.01 and privacy["delta"] == 1e-4
    assert privacy["noise_multiplier"] > 0
    out = tmp_path / "model"
    metrics = json.loads((out / TRAINING_METRICS_NAME).read_text())
    dp = metrics["privacy"]["dp_sgd"]
    assert dp["steps"] == summary["steps"] == 4 and dp["max_grad_norm"] == 0.5
    assert dp["items_in_softmax"] == 120 and metrics["privacy"]["logq"] is None
    assert summary["best_ndcg@10"] is not None  # evaluated on --dev like any run
    # Separate towers: the query tower moved, the item tower is the base model's.
    info = read_model_info(out)
    assert not info.shared_towers
    trained, base = load_encoder(out), load_encoder(tiny_model_dir)
    texts = ["red velvet sofa", "oak desk"]
    np.testing.assert_allclose(trained.encode_items(texts), base.encode_items(texts), atol=1e-5)
    assert not np.allclose(trained.encode_queries(texts), base.encode_queries(texts), atol=1e-4)


def test_a_tighter_budget_means_more_noise(tmp_path, tiny_model_dir, data, capsys) -> None:
    noise = {}
    for eps in ("8", "1"):
        assert (
            run(tmp_path / eps, tiny_model_dir, data, "--max-steps", "2", "--dp-epsilon", eps) == 0
        )
        noise[eps] = json.loads(capsys.readouterr().out.splitlines()[-1])["privacy"]
    assert noise["1"]["noise_multiplier"] > noise["8"]["noise_multiplier"]
    assert noise["1"]["epsilon"] <= 1.01 and noise["8"]["epsilon"] <= 8.08


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--mini-batch-size", "4"], "mini_batch_size"),
        (["--hard-negatives", "2"], "hard_negatives"),
        (["--symmetric", "true"], "symmetric"),
        (["--grad-accum", "2"], "grad_accum"),
        (["--compile", "true"], "compile"),
        (["--nproc", "2"], "--dp-epsilon runs in one process"),
        (["--dp-logq-epsilon", "1"], "dp_logq_epsilon"),
        (["--dp-delta", "0"], "dp_delta"),
        (["--dp-max-grad-norm", "0"], "dp_max_grad_norm"),
    ],
)
def test_what_dp_sgd_cannot_do_is_refused(
    tmp_path, tiny_model_dir, data, capsys, flags, named
) -> None:
    assert run(tmp_path, tiny_model_dir, data, "--dp-epsilon", "4", *flags) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "model").exists()


def test_dp_sgd_refuses_recommend_datasets(tiny_model_dir, data, tmp_path) -> None:
    spec = DatasetSpec(catalog=data["products"], train=data["interactions_train"], task="recommend")
    with pytest.raises(ValueError, match="recommend datasets"):
        TrainConfig(datasets=(spec,), out=tmp_path / "m", dp_epsilon=4.0)


def test_logq_epsilon_needs_a_shopper_dataset(data, tmp_path, capsys, tiny_model_dir) -> None:
    assert run(tmp_path, tiny_model_dir, data, "--dp-logq-epsilon", "1") == 2
    assert "no dataset sets shoppers = true" in capsys.readouterr().err


def test_logq_noise_touches_shopper_datasets_only_and_is_reported(data, tmp_path) -> None:
    labeled = DatasetSpec(catalog=data["products"], train=data["labels_train"], name="labeled")
    shoppers = DatasetSpec(
        catalog=data["products"], train=data["labels_train"], name="feedback", shoppers=True
    )
    config = TrainConfig(datasets=(labeled, shoppers), out=tmp_path / "m", dp_logq_epsilon=0.5)
    prepared = prepare_datasets(config)
    exact = [p.data.log_q.copy() for p in prepared]
    record = noise_logq(config, prepared)
    np.testing.assert_array_equal(prepared[0].data.log_q, exact[0])  # labeled: exact
    assert not np.allclose(prepared[1].data.log_q, exact[1])
    assert np.isfinite(prepared[1].data.log_q).all()
    assert record["logq"]["datasets"] == ["feedback"]
    assert record["logq"]["exact_datasets"] == ["labeled"]
    assert record["logq"]["scale"] == 2.0 and record["total_epsilon"] == 0.5
    assert record["model_weights_private"] is False
    again = prepare_datasets(config)
    noise_logq(config, again)  # seeded: every DDP rank draws the same noise
    np.testing.assert_array_equal(again[1].data.log_q, prepared[1].data.log_q)


def test_private_log_q_noise_has_the_stated_laplace_scale() -> None:
    """Counts recovered from the released log q follow count + Laplace(1/ε) (where the floor
    at 1 does not bind): a Kolmogorov-Smirnov test against the stated scale."""
    epsilon, n_items = 0.5, 20000
    rows = np.repeat(np.arange(n_items), 50)  # every item 50 examples: far above the floor
    log_q = private_log_q(rows, n_items, epsilon, np.random.default_rng(7))
    q = np.exp(log_q.astype(np.float64))
    # Normalisation divides by the noisy total; rescale by the exact total, whose noise
    # (sum of n Laplace draws) is tiny against 1e6 examples.
    noise = q * len(rows) - 50
    assert stats.kstest(noise, stats.laplace(scale=1 / epsilon).cdf).pvalue > 0.01
    assert abs(noise.std() - np.sqrt(2) / epsilon) < 0.05 * np.sqrt(2) / epsilon
    # The exact frequencies, for contrast, have no noise at all.
    exact = np.exp(log_sampling_probability(rows, n_items).astype(np.float64)) * len(rows)
    np.testing.assert_allclose(exact, 50, rtol=1e-5)


def test_toml_config_keys_mark_shopper_data_and_noise_its_logq(
    tmp_path, tiny_model_dir, data, capsys
) -> None:
    config = tmp_path / "train.toml"
    config.write_text(
        f'out = "{tmp_path / "model"}"\nbase_model = "{tiny_model_dir}"\nmax_steps = 2\n'
        "dp_logq_epsilon = 0.5\n"
        f'[[datasets]]\ncatalog = "{data["products"]}"\ntrain = "{data["labels_train"]}"\n'
        'name = "feedback"\nshoppers = true\n'
        f'[[datasets]]\ncatalog = "{data["products"]}"\ntrain = "{data["labels_train"]}"\n'
        'name = "labeled"\n'
    )
    assert main(["--config", str(config), *FAST]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["privacy"] == {"epsilon": 0.5, "delta": 0.0, "logq_laplace_scale": 2.0}
    metrics = json.loads((tmp_path / "model" / TRAINING_METRICS_NAME).read_text())
    assert metrics["privacy"]["logq"]["exact_datasets"] == ["labeled"]
    assert metrics["config"]["datasets"][0]["shoppers"] is True


def test_dp_trainable_layers_leaves_the_earlier_layers_as_they_were(
    tmp_path, tiny_model_dir, data, capsys
) -> None:
    from safetensors.torch import load_file

    code = run(tmp_path, tiny_model_dir, data, "--max-steps", "3", "--dp-epsilon", "8",
               "--dp-trainable-layers", "1")  # fmt: skip
    assert code == 0
    out = tmp_path / "model"
    metrics = json.loads((out / TRAINING_METRICS_NAME).read_text())
    assert metrics["privacy"]["dp_sgd"]["trainable_layers"] == 1
    (base_file,) = tiny_model_dir.glob("*.safetensors")
    base = load_file(str(base_file))
    trained = load_file(str(out / read_model_info(out).query_tower / "model.safetensors"))
    layers = sorted({int(k.split("layer.")[1].split(".")[0]) for k in base if "layer." in k})
    assert len(layers) >= 2
    for key, value in base.items():
        if "embeddings" in key or f"layer.{layers[0]}." in key:
            assert (trained[key] == value).all(), f"{key} changed but was frozen"
    last = [k for k in base if f"layer.{layers[-1]}." in k and k.endswith("weight")]
    assert any(not (trained[k] == base[k]).all() for k in last)
