"""The two-tower trainer's step loop: one process's share of a run and the final export."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.training.batches import Batch
from trainer.training.checkpoints import CheckpointDir
from trainer.training.config import TrainConfig
from trainer.training.distributed import DistContext
from trainer.training.feed import _DataMixin
from trainer.training.losses import in_batch_accuracy, sampled_softmax_loss
from trainer.training.model import TwoTowerModel, build_two_tower, save_model_dir
from trainer.training.prepare import PreparedDataset
from trainer.training.resume import _CheckpointMixin
from trainer.training.selection import _EvalMixin
from trainer.training.setup import (
    TrainResult,
    _amp_dtype,
    _lr_lambda,
    _param_digest,
    _resolve_device,
    _SetupMixin,
)

logger = logging.getLogger(__name__)


class _Trainer(_SetupMixin, _DataMixin, _EvalMixin, _CheckpointMixin):
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
        self._tokenize()
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
        self.total_steps, self.warmup = self._plan()
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(self.total_steps, self.warmup)
        )
        self.step = 0
        self.micro = 0
        self.streams = [[0, 0] for _ in datasets]  # per dataset: [epoch, next batch]
        self._epoch_cache: dict[int, tuple[int, list[np.ndarray]]] = {}
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.pairs = 0
        self._vectors: dict[tuple[str, int], np.ndarray] = {}  # (catalog, step) → item vectors
        self._writer: Any = None

    # -- the loop ------------------------------------------------------------------------

    def _train_step(self) -> dict[str, Any]:
        cfg = self.config
        t0 = time.perf_counter()
        losses, accs, pairs, tasks = [], [], 0, []
        for a in range(cfg.grad_accum):
            k = self._pick_dataset()
            batch = self._batch(k)
            last = a == cfg.grad_accum - 1
            sync = self.ddp.no_sync() if self.ctx.enabled and not last else contextlib.nullcontext()
            with sync:
                loss, acc = self._loss(batch)
                (loss / cfg.grad_accum).backward()
            losses.append(float(loss.detach()))
            accs.append(float(acc))
            pairs += batch.size * self.ctx.world_size
            tasks.append(self.datasets[k].spec.name)
            self.micro += 1
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

        with self._autocast():
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

    def run(self) -> TrainResult:
        cfg = self.config
        resumed = False
        if cfg.resume:
            latest = self.checkpoints.latest()
            if latest is not None:
                self.load_checkpoint(latest)
                resumed = True
            elif self.ctx.is_main:
                logger.info(
                    "--resume: no checkpoint in %s yet, starting fresh", cfg.checkpoint_root
                )
        self._open_writer()
        if not resumed:
            self._maintain(start=True)
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
            while self.step < self.total_steps and not self.stopped_early:
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
                    self._maintain(start=False)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or final:
                    self._eval_and_track()
                if cfg.checkpoint_every and (
                    self.step % cfg.checkpoint_every == 0 or final or self.stopped_early
                ):
                    self.save_checkpoint()
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
        if self.ctx.is_main:
            best = self.checkpoints.load_best() if self.best_step is not None else None
            history_decay = cfg.history_decay
            if best is not None:
                self.model.load_state_dict(best[0])
                history_decay = best[1].get("history_decay", history_decay)
                logger.info("exporting the best weights (step %d)", best[1]["step"])
            lexical, lexical_fit = self._fit_lexical() if cfg.lexical_dim else (None, {})
            result = TrainResult(
                out=cfg.out,
                steps=self.step,
                planned_steps=self.total_steps,
                stopped_early=self.stopped_early,
                best_metric=self.best_metric,
                best_step=self.best_step,
                history=self.history,
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
