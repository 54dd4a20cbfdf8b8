"""The user tower: recency-weighted history pooling and its place in the model dir (its use in
evaluation: tests/trainer/evaluation/test_recommend.py)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest

from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import (
    ModelInfo,
    model_fingerprint,
    read_model_info,
    write_model_info,
)
from trainer.encoder.user import check_history_decay, history_vectors, history_weights, pool_history


def test_weights_halve_per_step_back_with_decay_one_half() -> None:
    np.testing.assert_allclose(history_weights(3, 0.5), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(history_weights(2, 1.0), [1.0, 1.0])
    assert history_weights(0, 0.5).shape == (0,)


def test_pool_history_by_hand() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # oldest first
    # decay 0.5: (0.5 * [1, 0] + 1 * [0, 1]) / 1.5 → normalised [1, 2] / sqrt(5)
    np.testing.assert_allclose(pool_history(vectors, 0.5), np.array([1, 2]) / math.sqrt(5), 1e-6)
    # decay 1: the normalised plain mean
    np.testing.assert_allclose(pool_history(vectors, 1.0), [math.sqrt(0.5)] * 2, 1e-6)
    assert not pool_history(np.zeros((0, 2), np.float32), 0.5).any()
    assert not pool_history(np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32), 1.0).any()
    xb = np.array([[3.0, 0.0], [0.0, 4.0], [0.0, 1.0]], dtype=np.float32)
    xu = history_vectors(xb, [np.array([0, 1]), np.array([], dtype=np.int64), np.array([2])], 0.5)
    # user 0: 0.5 * [3, 0] + [0, 4] = [1.5, 4] → / 4.272
    np.testing.assert_allclose(xu[0], np.array([1.5, 4.0]) / math.hypot(1.5, 4.0), 1e-6)
    assert not xu[1].any()
    np.testing.assert_allclose(xu[2], [0.0, 1.0])


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, math.nan, math.inf, True, "0.5", None])
def test_bad_decays_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="history_decay"):
        check_history_decay(bad)
    with pytest.raises(ValueError, match="ModelInfo.history_decay"):
        ModelInfo(base_model="m", history_decay=bad)


def test_model_dir_records_the_decay_outside_the_fingerprint(tiny_model_dir, tmp_path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    assert read_model_info(model).history_decay == 1.0  # no aisle_model.json: the plain mean
    write_model_info(model, read_model_info(model))
    before = model_fingerprint(model)
    assert json.loads((model / "aisle_model.json").read_text())["history_decay"] == 1.0
    assert load_encoder(model).history_decay == 1.0
    write_model_info(model, replace(read_model_info(model), history_decay=0.4))
    # the decay changes no item or query vector: indexes built before stay valid
    assert model_fingerprint(model) == before
    encoder = load_encoder(model)
    assert encoder.history_decay == 0.4 and encoder.fingerprint == before
    info_path = model / "aisle_model.json"
    meta = json.loads(info_path.read_text())
    meta["history_decay"] = 0
    info_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="history_decay"):
        read_model_info(model)
