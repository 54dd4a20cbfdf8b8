"""The two-tower trainer: one ``Trainer`` per process runs its share of a run and rank 0 exports.

The trainer owns the model (and its DDP wrapper), the optimizer and LR schedule and the step
loop; it composes a ``BatchFeed`` (which micro-batch comes next), an ``Embedder`` (vectors under
the current weights, for mining, item banks and evaluation), a ``Selection`` (dev evaluation,
best step, early stopping, fitted settings) and the run's ``CheckpointDir``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.training.batches import (
    Batch,
    RecommendData,
    SearchData,
    item_texts,
    mine_hard_negatives,
    tokenize,
)
from trainer.training.checkpoints import CheckpointDir
from trainer.training.config import TrainConfig, jsonable
from trainer.training.distributed import DistContext
from trainer.training.embedder import Embedder, autocast
from trainer.training.feed import BatchFeed
from trainer.training.losses import in_batch_accuracy, sampled_softmax_loss
from trainer.training.model import TwoTowerModel, build_two_tower, save_model_dir
from trainer.training.prepare import PreparedDataset
from trainer.training.selection import Selection

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


class Trainer:
    """One process's share of a run (rank 0 also evaluates, saves and reports)."""

    def __init__(
        self,
        config: TrainConfig,
        datasets: list[PreparedDataset],
        ctx: DistContext,
        on_step: Callable[[int, dict[str, Any]], None] | None,
    ) -> None:
        self.config = config
        self.datasets = datasets
        self.ctx = ctx
        self.on_step = on_step
        self.device = _resolve_device(config.device, ctx)
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        self.checkpoints = CheckpointDir(config.checkpoint_root)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
        # Dropout differs per rank (different data anyway); all draws are reproducible.
        torch.manual_seed(config.seed + 1000 * ctx.rank)

        self.model: TwoTowerModel = build_two_tower(
            config.base_model,
            shared_towers=config.shared_towers,
            projection_dim=config.projection_dim,
            pooling=config.pooling,
            temperature=config.temperature,
            learnable_temperature=config.learnable_temperature,
            seed=config.seed,
        )
        for tower, length in (
            (self.model.query_tower, config.max_query_length),
            (self.model.item_tower, config.max_item_length),
        ):
            if tower.max_positions and length > tower.max_positions:
                raise ValueError(
                    f"token length {length} exceeds the base model's {tower.max_positions} "
                    "positions; lower --max-query-length / --max-item-length"
                )
        pad_id = _tokenize(self.model, datasets, config)
        self.model.length_buckets = config.length_buckets or (2 if self.device.type == "cpu" else 1)
        self.model.to(self.device)
        self.ddp = self.model
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            unused = not self.model.shared_towers and any(d.task == "recommend" for d in datasets)
            # The buffers (position ids, a fixed scale) never change: no per-forward sync.
            params = inspect.signature(DistributedDataParallel).parameters
            no_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in params
                else {"broadcast_buffers": False}
            )
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused,
                **no_sync,
            )
        self.total_steps, self.warmup = _plan(config, datasets, ctx.world_size)
        self.optimizer = _optimizer(self.model, config, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(self.total_steps, self.warmup)
        )
        # What a checkpoint saves with state_dict(), by file name.
        self.stateful = dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
        self.feed = BatchFeed(config, datasets, ctx, pad_id)
        self.embedder = Embedder(
            self.model,
            ctx,
            self.device,
            self.amp_dtype,
            pad_id=pad_id,
            batch_size=config.eval_batch_size,
            progress=config.progress,
        )
        self.selection = Selection(
            config, datasets, ctx, self.model, self.embedder, self.checkpoints
        )
        self.step = 0
        self.train_seconds = 0.0
        self.pairs = 0
        self._writer: Any = None

    # -- the loop ------------------------------------------------------------------------

    def _train_step(self) -> dict[str, Any]:
        cfg = self.config
        t0 = time.perf_counter()
        losses, accs, pairs, tasks = [], [], 0, []
        for a in range(cfg.grad_accum):
            name, batch = self.feed.next()
            last = a == cfg.grad_accum - 1
            sync = self.ddp.no_sync() if self.ctx.enabled and not last else contextlib.nullcontext()
            with sync:
                loss, acc = self._loss(batch)
                (loss / cfg.grad_accum).backward()
            losses.append(float(loss.detach()))
            accs.append(float(acc))
            pairs += batch.size * self.ctx.world_size
            tasks.append(name)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        self.pairs += pairs
        return {
            "loss": float(np.mean(losses)),
            "accuracy": float(np.mean(accs)),
            "lr": self.scheduler.get_last_lr()[0],
            "temperature": self.model.temperature,
            "pairs": pairs,
            "seconds": seconds,
            "datasets": tasks,
        }

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device

        def tensor(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x).to(dev, non_blocking=True)

        with autocast(self.device, self.amp_dtype):
            if batch.task == "search":
                xq, xb, scale = self.ddp(
                    tensor(batch.query_ids),
                    tensor(batch.query_mask),
                    tensor(batch.item_ids),
                    tensor(batch.item_mask),
                )
            else:
                _, xb, scale = self.ddp(None, None, tensor(batch.item_ids), tensor(batch.item_mask))
                xq = tensor(batch.user_vectors)
        mask = tensor(batch.mask)
        loss = sampled_softmax_loss(
            xq,
            xb,
            temperature=1.0 / scale,
            log_q=tensor(batch.log_q) if self.config.logq else None,
            mask=mask,
            weights=tensor(batch.weights),
            symmetric=self.config.symmetric and batch.task == "search",
        )
        return loss, in_batch_accuracy(xq, xb, mask)

    def _refresh(self, *, start: bool) -> None:
        """Refresh recommendation item banks and re-mine hard negatives when due."""
        cfg = self.config
        for prepared in self.datasets:
            data = prepared.data
            if isinstance(data, RecommendData):
                if start or self.step % cfg.refresh_every == 0:
                    data.bank = self.embedder.catalog_vectors(data, self.step)
            elif cfg.hard_negatives > 0 and (
                start or (cfg.mine_every and self.step % cfg.mine_every == 0)
            ):
                xb = self.embedder.catalog_vectors(data, self.step)
                xq = self.embedder.embed(self.model.query_tower, data.query_tokens)
                data.mined = mine_hard_negatives(xq, xb, data.relevant, cfg.mine_window)
                logger.info(
                    "%s: mined %.1f hard negatives per query (ranks %d-%d)",
                    data.name,
                    float(np.mean([len(m) for m in data.mined])),
                    *cfg.mine_window,
                )

    def run(self) -> TrainResult:
        cfg = self.config
        resumed = False
        if cfg.resume:
            latest = self.checkpoints.latest()
            if latest is not None:
                self._resume(latest)
                resumed = True
            elif self.ctx.is_main:
                logger.info(
                    "--resume: no checkpoint in %s yet, starting fresh", cfg.checkpoint_root
                )
        self._open_writer()
        if not resumed:
            self._refresh(start=True)
        self.model.train()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            desc="train",
            disable=not (cfg.progress and self.ctx.is_main),
            dynamic_ncols=True,
        )
        recent: list[dict[str, Any]] = []
        try:
            while self.step < self.total_steps and not self.selection.stopped_early:
                logs = self._train_step()
                recent.append(logs)
                if len(recent) > cfg.log_every:
                    recent.pop(0)
                pairs_per_s = sum(r["pairs"] for r in recent) / max(
                    sum(r["seconds"] for r in recent), 1e-9
                )
                bar.update(1)
                bar.set_postfix(
                    loss=f"{np.mean([r['loss'] for r in recent]):.4f}",
                    pairs_s=f"{pairs_per_s:.1f}",
                    lr=f"{logs['lr']:.2e}",
                )
                if self.step % cfg.log_every == 0:
                    self._log_scalars(
                        {
                            "train/loss": logs["loss"],
                            "train/in_batch_accuracy": logs["accuracy"],
                            "train/lr": logs["lr"],
                            "train/temperature": logs["temperature"],
                            "train/pairs_per_second": pairs_per_s,
                        },
                        self.step,
                    )
                    logger.debug("step %d: %s", self.step, logs)
                final = self.step >= self.total_steps
                if not final:
                    self._refresh(start=False)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or final:
                    record = self.selection.evaluate(self.step)
                    if record is not None:
                        self._log_scalars({"eval/metric": record["metric"]}, self.step)
                if cfg.checkpoint_every and (
                    self.step % cfg.checkpoint_every == 0 or final or self.selection.stopped_early
                ):
                    self._save_checkpoint()
                if self.on_step is not None:
                    self.on_step(self.step, logs)
        finally:
            bar.close()
        return self._finish()

    def _finish(self) -> TrainResult:
        digests = self.ctx.all_gather_object(_param_digest(self.model))
        if len(set(digests)) > 1:
            logger.error("DDP ranks ended with different parameters: %s", digests)
        cfg = self.config
        selection = self.selection
        if self.ctx.is_main:
            best = self.checkpoints.load_best() if selection.best_step is not None else None
            history_decay = cfg.history_decay
            if best is not None:
                self.model.load_state_dict(best[0])
                history_decay = best[1].get("history_decay", history_decay)
                logger.info("exporting the best weights (step %d)", best[1]["step"])
            lexical, lexical_fit = selection.fit_lexical() if cfg.lexical_dim else (None, {})
            result = TrainResult(
                out=cfg.out,
                steps=self.step,
                planned_steps=self.total_steps,
                stopped_early=selection.stopped_early,
                best_metric=selection.best_metric,
                best_step=selection.best_step,
                history=selection.history,
                train_seconds=round(self.train_seconds, 3),
                pairs=self.pairs,
                pairs_per_second=self.pairs / self.train_seconds if self.train_seconds else 0.0,
                param_digests=digests,
            )
            metrics = {
                **result.to_dict(),
                "temperature": self.model.temperature,
                "world_size": self.ctx.world_size,
                "device": str(self.device),
                "amp": str(self.amp_dtype) if self.amp_dtype else "off",
                "history_decay": history_decay,
                "lexical": None
                if lexical is None
                else {**lexical.settings(), "weight_fit_ndcg@10": lexical_fit},
                "config": cfg.to_dict(),
            }
            save_model_dir(
                self.model,
                cfg.out,
                max_query_length=cfg.max_query_length,
                max_item_length=cfg.max_item_length,
                history_decay=history_decay,
                lexical=lexical,
                metrics=metrics,
            )
            if cfg.export_onnx:
                _export_onnx(cfg.out)
            if self._writer is not None:
                self._writer.close()
        else:
            result = None
        self.ctx.barrier()
        return result  # type: ignore[return-value]  (None on ranks > 0)

    # -- checkpoints ---------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        """What ``state.json`` records: the counters of the trainer and its collaborators."""
        return {
            "step": self.step,
            **self.feed.state(),
            **self.selection.state(),
            "train_seconds": self.train_seconds,
            "pairs": self.pairs,
            "total_steps": self.total_steps,
            "world_size": self.ctx.world_size,
            "config": self.config.to_dict(),
        }

    def _save_checkpoint(self) -> None:
        state, keep = self._state(), self.config.keep_checkpoints
        self.checkpoints.save(
            self.step, self.ctx, self.device, self.stateful, self.datasets, state, keep
        )

    def _resume(self, path: Path) -> None:
        cfg, ctx = self.config, self.ctx
        state = self.checkpoints.load(path, cfg, ctx, self.device, self.stateful, self.datasets)
        self.step = int(state["step"])
        self.feed.restore(state)
        self.selection.restore(state)
        self.train_seconds, self.pairs = float(state["train_seconds"]), int(state["pairs"])
        logger.info("resumed from %s (step %d of %d)", path, self.step, self.total_steps)

    # -- TensorBoard ---------------------------------------------------------------------

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

    def _log_scalars(self, values: Mapping[str, float], step: int) -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)


# ---------------------------------------------------------------------------------------------
# The trainer's setup: device, precision, token ids, the step plan, the optimizer and schedule


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


def _tokenize(model: TwoTowerModel, datasets: list[PreparedDataset], config: TrainConfig) -> int:
    """Token ids of every text, once: catalogs (shared between datasets), queries, eval queries
    (stored on the datasets). Returns the padding id."""
    item_tok = model.item_tower.tokenizer
    query_tok = model.query_tower.tokenizer
    by_catalog: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for prepared in datasets:
        data = prepared.data
        key = data.catalog.path
        if key not in by_catalog:
            by_catalog[key] = tokenize(item_tok, item_texts(data.catalog), config.max_item_length)
        data.item_tokens = by_catalog[key]
        if isinstance(data, SearchData):
            data.query_tokens = tokenize(query_tok, data.query_texts, config.max_query_length)
        if prepared.eval_query_texts:
            prepared.eval_query_tokens = tokenize(
                query_tok, prepared.eval_query_texts, config.max_query_length
            )
    logger.info("tokenised every text in %.1f s", time.perf_counter() - t0)
    return int(item_tok.pad_token_id or 0)


def _plan(config: TrainConfig, datasets: list[PreparedDataset], world_size: int) -> tuple[int, int]:
    """(optimizer steps, warm-up steps) of the run."""
    global_batch = config.batch_size * world_size
    per_epoch = sum(max(1, d.data.n_examples // global_batch) for d in datasets)
    by_epochs = math.ceil((config.epochs or 1.0) * per_epoch / config.grad_accum)
    if config.max_steps is not None and config.epochs is None:
        total = config.max_steps
    elif config.max_steps is not None:
        total = min(config.max_steps, by_epochs)
    else:
        total = by_epochs
    total = max(1, total)
    warmup = config.warmup_steps if config.warmup_steps is not None else math.ceil(0.1 * total)
    return total, min(warmup, total)


def _optimizer(
    model: TwoTowerModel, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    decay, no_decay, scale = [], [], []
    for name, param in model.named_parameters():
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
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if scale:
        # At a fine-tuning lr (2e-5) a learnable temperature would hardly move in a few
        # thousand steps; its log gets 100x the rate and the same schedule.
        groups.append({"params": scale, "weight_decay": 0.0, "lr": 100 * config.lr})
    return torch.optim.AdamW(groups, lr=config.lr, fused=device.type == "cuda")


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


def _export_onnx(model_dir: Path) -> None:
    """Add the ONNX query tower when the exporter and its packages are available; a model dir
    without it is still complete (the torch backend serves it), so problems only warn."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if importlib.util.find_spec("trainer.encoder.onnx_export") is None or missing:
        logger.warning(
            "no ONNX export of the query tower (missing: %s); install them (pip install "
            "'aisle[train]') and run: python -m trainer.encoder.onnx_export %s",
            ", ".join(missing) or "trainer.encoder.onnx_export",
            model_dir,
        )
        return
    from trainer.encoder.onnx_export import export_query_tower

    try:
        path = export_query_tower(model_dir)
    except (ImportError, ValueError) as exc:
        logger.warning(
            "ONNX export of %s failed (%s); the model dir is usable without it", model_dir, exc
        )
        return
    logger.info("exported the query tower to %s", path)
