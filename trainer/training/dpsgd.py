"""Differentially private fine-tuning of the query tower on shopper-derived pairs (DP-SGD with
Opacus: per-example gradient clipping plus Gaussian noise, ε accounted by Opacus' RDP
accountant).

Each example is one (query text, engaged item) pair from shoppers' behaviour. The loss is a
softmax over the whole catalog's item vectors, which are frozen (the item tower runs on the
public catalog, not on shoppers' data), so each example's loss depends on that example alone:
the condition for DP-SGD's per-example clipping to bound one example's influence. The
guarantee is per example; it is per shopper when each shopper contributes at most one example
(cap examples per user before calling this, e.g. one pair per user and window).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.encoder.torch_tower import pool_embeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPSGDConfig:
    """`epsilon` None trains without DP (the baseline); else the (ε, δ) budget the noise is
    calibrated to over `epochs` passes with Poisson-sampled batches of expected `batch_size`."""

    epsilon: float | None = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    epochs: int = 1
    batch_size: int = 64
    lr: float = 5e-5
    temperature: float = 0.05
    max_length: int = 32
    pooling: str = "mean"
    train_embeddings: bool = False  # the word embeddings stay frozen (faster, and often better)
    # Only the last N transformer layers train (None: all): fewer parameters to clip and noise,
    # and per-example gradients of those only (memory: batch x trained parameters).
    trainable_layers: int | None = None

    def __post_init__(self) -> None:
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be > 0 (or None: no DP), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.max_grad_norm <= 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("max_grad_norm, epochs, batch_size and lr must be positive")


@dataclass(frozen=True)
class DPSGDReport:
    """What a run spent: ε at `delta` (None without DP), the noise multiplier, the steps."""

    epsilon: float | None
    delta: float
    noise_multiplier: float
    steps: int
    examples: int
    mean_loss: float
    sample_rate: float = 0.0  # each example's chance to be in a batch (Poisson sampling)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _QueryTower:
    """nn.Module factory: the HF model plus pooling and L2 normalisation (built lazily so this
    module imports without torch)."""

    @staticmethod
    def build(model: Any, pooling: str) -> Any:
        import torch

        class QueryTower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)
                pooled = pool_embeddings(hidden.last_hidden_state, attention_mask, pooling)
                return torch.nn.functional.normalize(pooled, dim=-1)

        return QueryTower()


def freeze_for_dp(encoder: Any, config: DPSGDConfig) -> None:
    """Freeze what DP-SGD leaves alone in a Hugging Face encoder: the pooler (unused by the
    pooled output), the word embeddings unless ``train_embeddings``, and all but the last
    ``trainable_layers`` transformer layers."""
    frozen = [getattr(encoder, "pooler", None)]
    if not config.train_embeddings:
        frozen.append(getattr(encoder, "embeddings", None))
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if config.trainable_layers is not None and layers is not None:
        frozen.extend(layers[: max(len(layers) - config.trainable_layers, 0)])
    for part in filter(None, frozen):
        for p in part.parameters():
            p.requires_grad_(False)


def dp_train(
    tower: Any,
    input_ids: Any,
    attention_mask: Any,
    targets: np.ndarray,
    item_vectors: Any,
    config: DPSGDConfig,
    *,
    weights: np.ndarray | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> DPSGDReport:
    """DP-SGD on ``tower`` (an ``nn.Module``: (ids, mask) → unit query vectors) in place.

    Each example's loss is ``weight`` × the cross-entropy of a softmax over all of
    ``item_vectors`` (frozen) at ``config.temperature``; Opacus clips each example's gradient
    to ``max_grad_norm`` (so a weight cannot raise one example's influence past the clip) and
    adds Gaussian noise whose multiplier its RDP accountant calibrates to (ε, δ) over ``steps``
    Poisson-sampled batches of expected size ``batch_size`` (None: ``epochs`` passes).

    Args:
        input_ids, attention_mask: (n, seq) int64 tensors on CPU.
        targets: (n,) int row in ``item_vectors`` of each example's engaged item.
        item_vectors: (n_items, dim) float32 unit vectors (array or tensor; moved to the
            tower's device).
        weights: (n,) float loss weights (None: 1).
    """
    import torch
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from torch.utils.data import DataLoader, TensorDataset

    n = len(targets)
    if n == 0 or len(input_ids) != n:
        raise ValueError("give one target per query, and at least one query")
    torch.manual_seed(seed)
    device = next(tower.parameters()).device
    w = np.ones(n, dtype=np.float32) if weights is None else np.asarray(weights, np.float32)
    data = TensorDataset(
        input_ids,
        attention_mask,
        torch.as_tensor(np.asarray(targets), dtype=torch.long),
        torch.as_tensor(w),
    )
    batch = min(config.batch_size, n)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch, shuffle=True, generator=generator)
    per_epoch = len(loader)  # = ceil(n / batch)
    total = steps if steps is not None else config.epochs * per_epoch
    # Opacus' Poisson loader samples each example with probability 1 / len(loader), and its
    # accountant uses that rate: calibrate the noise to the same one.
    sample_rate = 1.0 / per_epoch
    tower.train()
    params = [p for p in tower.parameters() if p.requires_grad]
    if not params:
        raise ValueError("DP-SGD: the tower has no trainable parameter left")
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    items = torch.as_tensor(item_vectors, dtype=torch.float32).to(device)  # (n_items, dim)
    engine = None
    noise = 0.0
    model = tower
    if config.epsilon is not None:
        noise = float(
            get_noise_multiplier(
                target_epsilon=config.epsilon,
                target_delta=config.delta,
                sample_rate=sample_rate,
                steps=total,
                accountant="rdp",
            )
        )
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        model, optimizer, loader = engine.make_private(
            module=tower,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise,
            max_grad_norm=config.max_grad_norm,
            noise_generator=torch.Generator(device=device).manual_seed(seed + 1),
        )
    done, losses = 0, []
    try:
        while done < total:
            for ids, mask, y, wy in loader:
                if done >= total:
                    break
                done += 1  # an empty Poisson batch is a step too (the accountant counts it)
                if not len(y):
                    optimizer.zero_grad()
                    continue
                optimizer.zero_grad()
                q = model(ids.to(device), mask.to(device))  # (b, dim)
                ce = torch.nn.functional.cross_entropy(
                    q @ items.T / config.temperature, y.to(device), reduction="none"
                )
                loss = (ce * wy.to(device)).mean()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        if engine is not None:
            model.remove_hooks()  # leave the tower a plain module (export, evaluation)
    tower.eval()
    spent = engine.get_epsilon(config.delta) if engine is not None else None
    report = DPSGDReport(
        epsilon=spent,
        delta=config.delta,
        noise_multiplier=noise,
        steps=done,
        examples=n,
        mean_loss=float(np.mean(losses)) if losses else float("nan"),
        sample_rate=sample_rate,
    )
    log.info("DP-SGD: %s", report.to_json())
    return report


def dp_finetune(
    model: Any,
    tokenizer: Any,
    queries: list[str],
    targets: np.ndarray,
    item_vectors: np.ndarray,
    config: DPSGDConfig,
    *,
    seed: int = 0,
) -> DPSGDReport:
    """Fine-tune `model` (a Hugging Face encoder: the query tower) in place with ``dp_train``
    for ``config.epochs`` passes.

    Args:
        queries: the examples' query texts.
        targets: (n,) int row in `item_vectors` of each example's engaged item.
        item_vectors: (n_items, dim) float32 unit item vectors, frozen.
    """
    if len(queries) != len(targets) or not len(queries):
        raise ValueError("give one target per query, and at least one query")
    encoded = tokenizer(
        queries,
        padding="max_length",
        truncation=True,
        max_length=config.max_length,
        return_tensors="pt",
    )
    freeze_for_dp(model, config)
    tower = _QueryTower.build(model, config.pooling)
    report = dp_train(
        tower,
        encoded["input_ids"],
        encoded["attention_mask"],
        targets,
        item_vectors,
        config,
        seed=seed,
    )
    model.eval()
    return report


def encode_queries(
    model: Any, tokenizer: Any, queries: list[str], config: DPSGDConfig
) -> np.ndarray:
    """(n, dim) float32 unit vectors of `queries` from `model` as `dp_finetune` pools them."""
    import torch

    tower = _QueryTower.build(model, config.pooling).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(queries), 256):
            enc = tokenizer(
                queries[start : start + 256],
                padding=True,
                truncation=True,
                max_length=config.max_length,
                return_tensors="pt",
            )
            out.append(tower(enc["input_ids"], enc["attention_mask"]).numpy())
    return np.concatenate(out).astype(np.float32)
