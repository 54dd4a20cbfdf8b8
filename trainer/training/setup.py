"""Training-run basics: result type, device/AMP/schedule helpers, plan, optimizer, TensorBoard."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.training.batches import SearchData, item_texts, tokenize
from trainer.training.config import jsonable
from trainer.training.distributed import DistContext

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run did. ``out`` is the exported model dir; ``history`` the evaluations."""

    out: Path
    steps: int
    planned_steps: int
    stopped_early: bool
    best_metric: float | None
    best_step: int | None
    history: list[dict[str, Any]]
    train_seconds: float
    pairs: int
    pairs_per_second: float
    param_digests: list[str]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


class SimulatedKill(Exception):  # noqa: N818 (it is a signal, not an error)
    """Raised by an ``on_step`` callback to stop a run as if the process were killed."""


def _resolve_device(device: str, ctx: DistContext) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use cpu")
        if dev.index is None:
            dev = torch.device("cuda", ctx.local_rank if ctx.enabled else 0)
    return dev


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    # CPU: off by default, by decision; on this repo's 2-core Zen 4 (avx512_bf16) bf16 autocast
    # cut CPU time per step by ~36 % (MiniLM, batch 32, q32/i64), so pass amp="bf16" there.
    return None


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _param_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _SetupMixin:
    """The trainer's setup: token ids, the step plan, the optimizer, scalar logging."""

    # -- setup ---------------------------------------------------------------------------

    def _tokenize(self) -> None:
        """Token ids of every text, once: catalogs (shared between datasets), queries."""
        item_tok = self.model.item_tower.tokenizer
        query_tok = self.model.query_tower.tokenizer
        by_catalog: dict[str, list[np.ndarray]] = {}
        t0 = time.perf_counter()
        for prepared in self.datasets:
            data = prepared.data
            key = data.catalog.path
            if key not in by_catalog:
                by_catalog[key] = tokenize(
                    item_tok, item_texts(data.catalog), self.config.max_item_length
                )
            data.item_tokens = by_catalog[key]
            if isinstance(data, SearchData):
                data.query_tokens = tokenize(
                    query_tok, data.query_texts, self.config.max_query_length
                )
            if prepared.eval_query_texts:
                prepared.eval_query_tokens = tokenize(
                    query_tok, prepared.eval_query_texts, self.config.max_query_length
                )
        logger.info("tokenised every text in %.1f s", time.perf_counter() - t0)
        self.pad_id = int(item_tok.pad_token_id or 0)

    def _plan(self) -> tuple[int, int]:
        cfg = self.config
        global_batch = cfg.batch_size * self.ctx.world_size
        per_epoch = sum(max(1, d.data.n_examples // global_batch) for d in self.datasets)
        by_epochs = math.ceil((cfg.epochs or 1.0) * per_epoch / cfg.grad_accum)
        if cfg.max_steps is not None and cfg.epochs is None:
            total = cfg.max_steps
        elif cfg.max_steps is not None:
            total = min(cfg.max_steps, by_epochs)
        else:
            total = by_epochs
        total = max(1, total)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(0.1 * total)
        return total, min(warmup, total)

    def _optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay, scale = [], [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            if name == "logit_scale":
                scale.append(param)
            # The usual BERT recipe: no weight decay on biases and LayerNorm.
            elif param.ndim < 2 or "LayerNorm" in name:
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if scale:
            # At a fine-tuning lr (2e-5) a learnable temperature would hardly move in a few
            # thousand steps; its log gets 100x the rate and the same schedule.
            groups.append({"params": scale, "weight_decay": 0.0, "lr": 100 * self.config.lr})
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=self.config.lr, fused=fused)

    # -- logging -------------------------------------------------------------------------

    def _log_scalars(self, values: Mapping[str, float], step: int) -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)

    def _open_writer(self) -> None:
        if not self.ctx.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning(
                "TensorBoard logs are off: the tensorboard package is not installed "
                "(pip install tensorboard to get them)"
            )
            return
        log_dir = self.config.tensorboard_dir or self.config.checkpoint_root / "tensorboard"
        self._writer = SummaryWriter(log_dir=str(log_dir))
