"""Differential privacy in ``aisle-train`` (docs/privacy.md): DP-SGD runs and noisy logQ.

**DP-SGD** (``dp_epsilon``): the query tower is trained with Opacus (``trainer.training.dpsgd``)
on every dataset's (query, positive item) pairs, with the pair's weight as its loss weight.
The loss is a softmax over the items of every catalog in the run, their vectors computed once by
the base model's item tower and frozen (the towers are separate in the exported model; the item
tower is the base's), so one example's loss depends on that example alone, which per-example
clipping needs. Noise is calibrated by Opacus' RDP accountant to (``dp_epsilon``, ``dp_delta``)
over the run's planned steps at sampling rate batch_size / examples. The transformer layers
(all, or the last ``dp_trainable_layers``) and a projection train; the embedding tables stay
frozen (Opacus cannot take per-example gradients of BERT's position embeddings). The learning
rate is constant (no warm-up or decay). The guarantee is per example, one (query, item) pair
of the labels file; it is per shopper only when each shopper contributes at most one pair.

**logQ frequencies** (``dp_logq_epsilon``, the usual in-batch loss): the frequencies behind the
logQ correction of the datasets marked ``shoppers`` (built from shoppers' behaviour, e.g. the
learning loop's feedback) are released with the Laplace mechanism of ``trainer.privacy.noise``:
each example adds one count to its positive item (contribution bound 1, L1 sensitivity 1), so
the noise scale is 1 / ε; every catalog item gets noise, counts are floored at 1 and normalised
(post-processing). Labeled datasets (not shopper data) keep exact frequencies. Only the
frequencies are private then: the trained weights are not (say so in any claim).

The budget of a run is the sum of its releases (basic composition), reported in
``training_metrics.json`` under ``privacy``. The DP noise is drawn from seeded generators
(reproducible runs; not a cryptographically secure source, like Opacus' ``secure_mode=False``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from trainer.privacy.noise import DPConfig, add_noise
from trainer.training.batches import pad_ids, rng_for
from trainer.training.config import TrainConfig
from trainer.training.dpsgd import DPSGDConfig, dp_train, freeze_for_dp
from trainer.training.embedder import Embedder
from trainer.training.model import TwoTowerModel
from trainer.training.prepare import PreparedDataset

logger = logging.getLogger(__name__)

STREAM_LOGQ_NOISE = 6  # rng stream of the logQ noise (batches.py uses 1-5)
UNIT = "one example: a (query, item) pair of the train file"


def private_log_q(
    rows: np.ndarray, n_items: int, epsilon: float, rng: np.random.Generator
) -> np.ndarray:
    """log q_j from Laplace-noised counts of examples whose positive is item j (each example
    one count: L1 sensitivity 1, scale 1/ε), floored at 1 and normalised.

    Returns:
        (n_items,) float32.
    """
    exact = np.bincount(rows, minlength=n_items).astype(np.float64)  # (n_items,)
    noisy = np.maximum(add_noise(exact, DPConfig(epsilon, max_items_per_user=1), rng), 1.0)
    return np.log(noisy / noisy.sum()).astype(np.float32)


def noise_logq(config: TrainConfig, datasets: list[PreparedDataset]) -> dict[str, Any] | None:
    """Replace the exact logQ of every ``shoppers`` dataset with ``private_log_q`` at
    ``config.dp_logq_epsilon`` (each dataset its own disjoint data: parallel composition).

    Returns:
        The privacy record for ``training_metrics.json``; None when the option is off.
    """
    epsilon = config.dp_logq_epsilon
    if epsilon is None:
        return None
    noised, exact = [], []
    for k, prepared in enumerate(datasets):
        data = prepared.data
        if not prepared.spec.shoppers:
            exact.append(data.name)
            continue
        rows = data.pair_item if data.task == "search" else data.batch_keys()[0]
        rng = rng_for(config.seed, STREAM_LOGQ_NOISE, k)
        data.log_q = private_log_q(np.asarray(rows), len(data.catalog), epsilon, rng)
        noised.append(data.name)
    record = {
        "logq": {
            "epsilon": epsilon,
            "delta": 0.0,
            "mechanism": "laplace",
            "scale": 1.0 / epsilon,
            "unit": UNIT,
            "datasets": noised,
            "exact_datasets": exact,
        },
        "dp_sgd": None,
        "model_weights_private": False,
        "total_epsilon": epsilon,
        "total_delta": 0.0,
        "composition": "each shopper dataset is released once (disjoint data)",
    }
    logger.info(
        "logQ frequencies of %s noised (Laplace, ε = %g per example); exact for %s; the "
        "model's weights are not differentially private",
        noised,
        epsilon,
        exact or "none",
    )
    return record


def dp_sgd(
    model: TwoTowerModel,
    datasets: list[PreparedDataset],
    embedder: Embedder,
    config: TrainConfig,
    device: torch.device,
    steps: int,
) -> dict[str, Any]:
    """Train ``model.query_tower`` with DP-SGD for ``steps`` steps (see the module docstring);
    the item tower (separate) stays frozen.

    Returns:
        The privacy record for ``training_metrics.json``.
    """
    if model.shared_towers:
        raise ValueError("DP-SGD needs separate towers: the item tower stays the base's")
    if config.dp_epsilon is None:
        raise ValueError("dp_sgd needs dp_epsilon")
    model.item_tower.requires_grad_(False)
    model.logit_scale.requires_grad_(False)
    banks: list[np.ndarray] = []
    offsets: dict[str, int] = {}
    tokens: list[np.ndarray] = []
    targets: list[int] = []
    weights: list[float] = []
    for prepared in datasets:
        data = prepared.data
        key = str(data.catalog.path)
        if key not in offsets:
            offsets[key] = sum(len(b) for b in banks)
            banks.append(embedder.catalog_vectors(data, 0))  # (n_items, dim), base item tower
        for q, item, weight in zip(data.pair_query, data.pair_item, data.pair_weight, strict=True):
            tokens.append(data.query_tokens[q])
            targets.append(offsets[key] + int(item))
            weights.append(float(weight))
    ids, mask = pad_ids(tokens, embedder.pad_id)
    settings = DPSGDConfig(
        epsilon=config.dp_epsilon,
        delta=config.dp_delta,
        max_grad_norm=config.dp_max_grad_norm,
        batch_size=config.batch_size,
        lr=config.lr,
        temperature=config.temperature,
        # The embedding tables stay frozen: Opacus cannot take per-example gradients of the
        # position embeddings (their input, position_ids, has no batch dimension).
        train_embeddings=False,
        trainable_layers=config.dp_trainable_layers,
    )
    freeze_for_dp(model.query_tower.encoder, settings)  # the pooler and the embeddings
    report = dp_train(
        model.query_tower,
        torch.from_numpy(ids),
        torch.from_numpy(mask),
        np.asarray(targets, dtype=np.int64),
        np.concatenate(banks),
        settings,
        weights=np.asarray(weights, dtype=np.float32),
        steps=steps,
        seed=config.seed,
    )
    model.to(device)
    return {
        "dp_sgd": {
            **report.to_json(),
            "target_epsilon": config.dp_epsilon,
            "max_grad_norm": config.dp_max_grad_norm,
            "trainable_layers": config.dp_trainable_layers,
            "accountant": "rdp (Opacus)",
            "unit": UNIT,
            "items_in_softmax": int(sum(len(b) for b in banks)),
        },
        "logq": None,
        "model_weights_private": True,
        "total_epsilon": report.epsilon,
        "total_delta": config.dp_delta,
        "composition": "DP-SGD only: its softmax over the whole catalog uses no logQ "
        "frequencies, so the whole budget is DP-SGD's",
    }
