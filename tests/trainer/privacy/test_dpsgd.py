"""DP-SGD fine-tuning of a (tiny, real) query tower with Opacus: ε is reported and within the
budget, the model changes, and the no-DP baseline runs the same loop."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.encoder.torch_tower import load_hf_model
from trainer.training.dpsgd import DPSGDConfig, dp_finetune, encode_queries


@pytest.fixture()
def tower(tiny_model_dir):
    tokenizer, model = load_hf_model(tiny_model_dir)
    return tokenizer, model


def data(n: int = 48, n_items: int = 8, dim: int = 32):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    words = ["red", "blue", "chair", "lamp", "desk", "sofa", "rug", "pillow"]
    targets = rng.integers(0, n_items, n)
    queries = [f"{words[t]} {words[(t + 3) % 8]}" for t in targets]
    return queries, targets, items


@pytest.mark.parametrize("epsilon", [4.0, None])
def test_dp_finetune_reports_its_budget_and_trains(tower, epsilon) -> None:
    tokenizer, model = tower
    queries, targets, items = data()
    config = DPSGDConfig(epsilon=epsilon, epochs=1, batch_size=16, lr=1e-3, max_length=8)
    before = encode_queries(model, tokenizer, queries[:4], config)
    report = dp_finetune(model, tokenizer, queries, targets, items, config, seed=1)
    after = encode_queries(model, tokenizer, queries[:4], config)
    assert report.steps > 0 and report.examples == 48 and np.isfinite(report.mean_loss)
    assert not np.allclose(before, after)  # the tower was updated
    if epsilon is None:
        assert report.epsilon is None and report.noise_multiplier == 0.0
    else:
        assert 0 < report.epsilon <= epsilon * 1.01 and report.noise_multiplier > 0


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        DPSGDConfig(epsilon=0)
    with pytest.raises(ValueError, match="delta"):
        DPSGDConfig(delta=0)
