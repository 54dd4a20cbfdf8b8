"""The two-tower trainer: one ``Trainer`` per process runs its share of a run and rank 0 exports.

The trainer owns the model (and its DDP wrapper), the optimizer and LR schedule and the step
loop; it composes a ``BatchFeed`` (which micro-batch comes next), an ``Embedder`` (vectors under
the current weights, for mining, item banks and evaluation), a ``Selection`` (dev evaluation,
best step, early stopping, fitted settings) and the run's ``CheckpointDir``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.training.batches import Batch, RecommendData, mine_hard_negatives
from trainer.training.checkpoints import CheckpointDir
from trainer.training.config import TrainConfig, jsonable
from trainer.training.distributed import DistContext
from trainer.training.embedder import Embedder, autocast
from trainer.training.feed import BatchFeed
from trainer.training.gradcache import GradCache, to_device
from trainer.training.heap import heap_trimmer
from trainer.training.losses import in_batch_accuracy, sampled_softmax_loss
from trainer.training.model import TwoTowerModel, build_two_tower, save_model_dir
from trainer.training.padfree import dense_gradients
from trainer.training.prefetch import Prefetcher
from trainer.training.prepare import PreparedDataset
from trainer.training.private import dp_sgd, noise_logq
from trainer.training.selection import Selection
from trainer.training.setup import (
    amp_dtype,
    build_optimizer,
    compile_towers,
    export_onnx,
    faster_amp,
    lr_lambda,
    param_digest,
    plan_steps,
    resolve_device,
    tokenize_datasets,
    use_padding_free,
)

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
    best_evaluated_on: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


class RefreshInterrupted(Exception):  # noqa: N818 (a stop, not a failure)
    """SIGTERM during a catalog refresh (hard-negative mining, item banks): raised from the
    signal handler so a long encoding stops at once; the trainer checkpoints and stops."""


class TrainingInterrupted(Exception):  # noqa: N818 (a stop, not a failure)
    """SIGTERM stopped the run; the checkpoint of the last finished step is on disk (unless
    checkpoints are off), and ``--resume`` continues from it."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        where = (
            f"checkpoint {checkpoint}; rerun with --resume to continue"
            if checkpoint is not None
            else "no checkpoint (checkpoint_every is 0)"
        )
        super().__init__(f"stopped by SIGTERM after step {step}: {where}")
        self.step = step
        self.checkpoint = checkpoint


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
        self.device = resolve_device(config.device, ctx)
        # CPU steps fragment glibc's heap (trainer/training/heap.py): trim it after each step.
        self.trim_heap = heap_trimmer() if self.device.type == "cpu" else None
        self.amp_dtype = amp_dtype(config.amp, self.device)
        self.checkpoints = CheckpointDir(config.checkpoint_root)
        # What of the run is differentially private (trainer.training.private); None: nothing.
        # Before the batch feed (and its prefetch thread) reads any log_q.
        self.privacy = noise_logq(config, datasets)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
        # Dropout differs per rank (different data anyway); all draws are reproducible.
        torch.manual_seed(config.seed + 1000 * ctx.rank)

        self.model: TwoTowerModel = build_two_tower(
            config.base_model,
            # DP-SGD trains the query tower against the base's frozen item tower
            shared_towers=config.shared_towers and config.dp_epsilon is None,
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
        pad_id = tokenize_datasets(self.model, datasets, config)
        self.model.length_buckets = config.length_buckets or (2 if self.device.type == "cpu" else 1)
        if config.mini_batch_size is not None:
            self.model.length_buckets = 1  # the feed already cut the batch by length
        self.model.to(self.device)
        compiled = config.compile and compile_towers(self.model, self.device)
        if config.amp == "auto" and self.amp_dtype is not None:
            # bf16 only where it is faster: timed at this run's (mini-)batch size
            size = config.mini_batch_size or config.batch_size
            fast, _ = faster_amp(self.model, self.device, size, config.max_item_length)
            if ctx.broadcast(fast is None):  # every rank takes rank 0's choice
                self.amp_dtype = None
        # DP-SGD's per-example gradients come from hooks on the encoder's own modules.
        padding_free = "off" if config.dp_epsilon is not None else config.padding_free
        free = use_padding_free(
            self.model,
            padding_free,
            self.device,
            self.amp_dtype,
            compiled=compiled,
            sparse_embedding_grad=not ctx.enabled,  # DDP reduces dense gradients
        )
        if free and not config.length_buckets:
            self.model.length_buckets = 1  # no padding left to cut by length
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
        self.total_steps, self.warmup = plan_steps(config, datasets, ctx.world_size)
        self.optimizer = build_optimizer(self.model, config, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.total_steps, self.warmup)
        )
        # What a checkpoint saves with state_dict(), by file name.
        self.stateful = dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
        feed = BatchFeed(config, datasets, ctx, pad_id)
        self.feed: BatchFeed | Prefetcher = (
            Prefetcher(feed, config.prefetch) if config.prefetch else feed
        )
        self.cache = GradCache(
            self.model,
            self.ddp,
            self.device,
            lambda: autocast(self.device, self.amp_dtype),
            ddp_enabled=ctx.enabled,
        )
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
        self._terminate = False  # SIGTERM seen: stop after the step in flight
        self._evaluating = False  # SIGTERM now stops at once (the step's checkpoint is saved)
        self._refreshing = False  # SIGTERM now stops the refresh at once (single process only)
        self._saved_step = -1

    # -- the loop ------------------------------------------------------------------------

    def _train_step(self) -> dict[str, Any]:
        """One optimizer step. Nothing here waits for the device: loss and accuracy stay
        tensors (summed over the step's micro-batches) until ``_materialize`` at log time."""
        cfg = self.config
        t0 = time.perf_counter()
        loss_sum: torch.Tensor | None = None
        acc_sum: torch.Tensor | None = None
        pairs, tasks = 0, []
        for a in range(cfg.grad_accum):
            name, batch = self.feed.next()
            last = a == cfg.grad_accum - 1
            if cfg.mini_batch_size is not None:
                loss, acc = self._cached_loss(batch, last)
            else:
                sync = (
                    self.ddp.no_sync()
                    if self.ctx.enabled and not last
                    else contextlib.nullcontext()
                )
                with sync:
                    loss, acc = self._loss(batch)
                    (loss / cfg.grad_accum).backward()
                loss = loss.detach()
            loss_sum = loss if loss_sum is None else loss_sum + loss
            acc_sum = acc if acc_sum is None else acc_sum + acc
            pairs += batch.size * self.ctx.world_size
            tasks.append(name)
        dense_gradients(self.model.parameters())  # the padding-free lookup's sparse ones
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.trim_heap is not None:
            self.trim_heap()
        self.step += 1
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        self.pairs += pairs
        return {
            "loss_sum": loss_sum,
            "accuracy_sum": acc_sum,
            "micro_batches": cfg.grad_accum,
            "lr": self.scheduler.get_last_lr()[0],
            "pairs": pairs,
            "seconds": seconds,
            "datasets": tasks,
        }

    def _materialize(self, recent: list[dict[str, Any]]) -> dict[str, float]:
        """Means over ``recent`` steps of loss and accuracy: the one device sync per log."""
        n = sum(r["micro_batches"] for r in recent)
        loss = torch.stack([r["loss_sum"] for r in recent]).sum() / n
        acc = torch.stack([r["accuracy_sum"] for r in recent]).sum() / n
        values = torch.stack([loss, acc]).cpu().tolist()
        return {"loss": values[0], "accuracy": values[1], "temperature": self.model.temperature}

    def _loss_fn(self, batch: Batch) -> Callable[..., torch.Tensor]:
        """The batch's loss as a function of (xq, xb, scale)."""

        def tensor(x: np.ndarray) -> torch.Tensor:
            return to_device(x, self.device)

        mask = tensor(batch.mask)
        log_q = tensor(batch.log_q) if self.config.logq else None
        weights = tensor(batch.weights)
        symmetric = self.config.symmetric and batch.task == "search"

        def loss(xq: torch.Tensor, xb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return sampled_softmax_loss(
                xq,
                xb,
                temperature=1.0 / scale,
                log_q=log_q,
                mask=mask,
                weights=weights,
                symmetric=symmetric,
            )

        loss.mask = mask  # type: ignore[attr-defined]
        return loss

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device

        def tensor(x: np.ndarray) -> torch.Tensor:
            return to_device(x, dev)

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
        loss_fn = self._loss_fn(batch)
        return loss_fn(xq, xb, scale), in_batch_accuracy(xq, xb, loss_fn.mask)

    def _cached_loss(self, batch: Batch, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy of ``batch`` with gradient caching; its gradient (divided by
        ``grad_accum``) is accumulated already."""
        loss_fn = self._loss_fn(batch)
        out = self.cache.step(batch, loss_fn, grad_scale=1.0 / self.config.grad_accum, sync=last)
        return out.loss, in_batch_accuracy(out.xq, out.xb, loss_fn.mask)

    def _refresh(self, *, start: bool) -> None:
        """Refresh recommendation item banks and re-mine hard negatives when due."""
        cfg = self.config
        changed = False
        for prepared in self.datasets:
            data = prepared.data
            if isinstance(data, RecommendData):
                if start or self.step % cfg.refresh_every == 0:
                    data.bank = self.embedder.catalog_vectors(data, self.step)
                    changed = True
            elif (
                cfg.hard_negatives > 0
                and cfg.mine
                and (start or (cfg.mine_every and self.step % cfg.mine_every == 0))
            ):
                xb = self.embedder.catalog_vectors(data, self.step)
                xq = self.embedder.embed(self.model.query_tower, data.query_tokens)
                data.mined = mine_hard_negatives(xq, xb, data.relevant, cfg.mine_window)
                changed = True
                logger.info(
                    "%s: mined %.1f hard negatives per query (ranks %d-%d)",
                    data.name,
                    float(np.mean([len(m) for m in data.mined])),
                    *cfg.mine_window,
                )
        if changed and isinstance(self.feed, Prefetcher):
            self.feed.invalidate()  # batches built ahead saw the old negatives / bank

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._terminate = True
        if self._evaluating:  # the step before this evaluation is checkpointed already
            raise TrainingInterrupted(self.step, self._checkpoint_path())
        if self._refreshing:  # a long encoding: stop it now, checkpoint, then stop
            raise RefreshInterrupted
        logger.warning("SIGTERM: stopping after step %d, saving a checkpoint", self.step + 1)

    def _checkpoint_path(self) -> Path | None:
        if self._saved_step != self.step:
            return None
        return self.checkpoints.latest()

    @contextlib.contextmanager
    def _sigterm_handler(self) -> Any:
        """SIGTERM → stop after the step in flight, checkpointed (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _stop_requested(self) -> bool:
        """Whether to stop for a SIGTERM (the same answer on every rank: under DDP rank 0's
        flag, shared every ``log_every`` steps, the one collective it costs)."""
        if not self.ctx.enabled:
            return self._terminate
        if self.step % self.config.log_every != 0:
            return False
        return bool(self.ctx.broadcast(self._terminate))

    def _refresh_or_stop(self, *, start: bool, eval_due: bool = False) -> None:
        """``_refresh``, stopped at once by SIGTERM (it can encode a whole catalog: an hour on
        a CPU): the step is checkpointed with the refresh still to do (``pending_refresh``;
        ``--resume`` runs it first), or, before the first step, nothing is lost. Under DDP
        the refresh runs to its end (its collectives must complete on every rank)."""
        self._refreshing = not self.ctx.enabled
        try:
            if self._refreshing and self._terminate:
                raise RefreshInterrupted
            self._refresh(start=start)
        except RefreshInterrupted:
            self._refreshing = False
            logger.warning("SIGTERM during the catalog refresh of step %d: stopping", self.step)
            if self.step > 0 and self.config.checkpoint_every:
                self._save_checkpoint(pending_eval=eval_due, pending_refresh=True)
            raise TrainingInterrupted(self.step, self._checkpoint_path()) from None
        finally:
            self._refreshing = False

    def _evaluate(self, step: int) -> None:
        self._evaluating = True
        try:
            if self._terminate:
                raise TrainingInterrupted(self.step, self._checkpoint_path())
            record = self.selection.evaluate(step)
        finally:
            self._evaluating = False
        if record is not None:
            self._log_scalars({"eval/metric": record["metric"]}, step)
        if self._saved_step == step:  # the checkpoint now records this evaluation
            self.checkpoints.update_state(step, self.ctx, self._state(pending_eval=False))

    def run(self) -> TrainResult:
        with self._sigterm_handler():
            try:
                return self._run() if self.config.dp_epsilon is None else self._run_private()
            finally:
                if isinstance(self.feed, Prefetcher):
                    self.feed.close()

    def _run(self) -> TrainResult:
        cfg = self.config
        resumed, pending_eval, pending_refresh = False, False, False
        if cfg.resume:
            latest = self.checkpoints.latest()
            if latest is not None:
                pending_eval, pending_refresh = self._resume(latest)
                resumed = True
            elif self.ctx.is_main:
                logger.info(
                    "--resume: no checkpoint in %s yet, starting fresh", cfg.checkpoint_root
                )
        self._open_writer()
        if not resumed:
            self._refresh_or_stop(start=True)
        elif pending_refresh:  # the refresh due at this step, cut short by a SIGTERM
            self._refresh_or_stop(start=False, eval_due=pending_eval)
        if pending_eval:  # killed during the evaluation after its checkpoint: run it again
            self._evaluate(self.step)
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
                bar.update(1)
                final = self.step >= self.total_steps
                if self.step % cfg.log_every == 0 or final:
                    logs.update(self._materialize(recent))
                    pairs_per_s = sum(r["pairs"] for r in recent) / max(
                        sum(r["seconds"] for r in recent), 1e-9
                    )
                    bar.set_postfix(
                        loss=f"{logs['loss']:.4f}",
                        pairs_s=f"{pairs_per_s:.1f}",
                        lr=f"{logs['lr']:.2e}",
                    )
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
                    logger.log(
                        logging.DEBUG if cfg.progress else logging.INFO,  # no bar: say it
                        "step %d of %d: loss %.4f, %.1f pairs/s",
                        self.step,
                        self.total_steps,
                        logs["loss"],
                        pairs_per_s,
                    )
                    recent = []
                eval_due = bool(cfg.eval_every and self.step % cfg.eval_every == 0) or final
                if not final:
                    self._refresh_or_stop(start=False, eval_due=eval_due)
                stop = self._stop_requested()
                if cfg.checkpoint_every and (
                    self.step % cfg.checkpoint_every == 0 or final or stop
                ):
                    # before the evaluation: a kill during a long evaluation loses no training
                    self._save_checkpoint(pending_eval=eval_due)
                if stop:
                    raise TrainingInterrupted(self.step, self._checkpoint_path())
                if eval_due:
                    self._evaluate(self.step)
                    if (
                        self.selection.stopped_early
                        and cfg.checkpoint_every
                        and self._saved_step != self.step
                    ):
                        self._save_checkpoint(pending_eval=False)
                if self.on_step is not None:
                    self.on_step(self.step, logs)
        finally:
            bar.close()
        return self._finish()

    def _run_private(self) -> TrainResult:
        """DP-SGD (``trainer.training.private.dp_sgd``) for the planned steps, one evaluation,
        the export; no mid-run checkpoints."""
        if self.ctx.enabled:
            raise ValueError("dp_epsilon: DP-SGD runs in one process (no DDP / --nproc > 1)")
        started = time.perf_counter()
        self.privacy = dp_sgd(
            self.model, self.datasets, self.embedder, self.config, self.device, self.total_steps
        )
        self.train_seconds = time.perf_counter() - started
        self.step = self.privacy["dp_sgd"]["steps"]
        report = self.privacy["dp_sgd"]
        self.pairs = round(report["sample_rate"] * report["examples"] * self.step)
        self._evaluate(self.step)
        return self._finish()

    def _finish(self) -> TrainResult:
        digests = self.ctx.all_gather_object(param_digest(self.model))
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
                best_evaluated_on=selection.best_label(),
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
                "privacy": self.privacy,
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
                export_onnx(cfg.out)
            if self._writer is not None:
                self._writer.close()
        else:
            result = None
        self.ctx.barrier()
        return result  # type: ignore[return-value]  (None on ranks > 0)

    # -- checkpoints ---------------------------------------------------------------------

    def _state(self, *, pending_eval: bool, pending_refresh: bool = False) -> dict[str, Any]:
        """What ``state.json`` records: the counters of the trainer and its collaborators, and
        whether the evaluation of this step is still to run (checkpoints precede it), and its
        catalog refresh (a SIGTERM cut it short)."""
        return {
            "step": self.step,
            "pending_eval": pending_eval,
            "pending_refresh": pending_refresh,
            **self.feed.state(),
            **self.selection.state(),
            "train_seconds": self.train_seconds,
            "pairs": self.pairs,
            "total_steps": self.total_steps,
            "world_size": self.ctx.world_size,
            "config": self.config.to_dict(),
        }

    def _save_checkpoint(self, *, pending_eval: bool, pending_refresh: bool = False) -> None:
        state = self._state(pending_eval=pending_eval, pending_refresh=pending_refresh)
        keep = self.config.keep_checkpoints
        self.checkpoints.save(
            self.step, self.ctx, self.device, self.stateful, self.datasets, state, keep
        )
        self._saved_step = self.step

    def _resume(self, path: Path) -> tuple[bool, bool]:
        """Continue from the checkpoint at ``path``; returns whether its evaluation and its
        catalog refresh are still due."""
        cfg, ctx = self.config, self.ctx
        state = self.checkpoints.load(path, cfg, ctx, self.device, self.stateful, self.datasets)
        self.step = int(state["step"])
        self.feed.restore(state)
        self.selection.restore(state)
        self.train_seconds, self.pairs = float(state["train_seconds"]), int(state["pairs"])
        self._saved_step = self.step
        logger.info("resumed from %s (step %d of %d)", path, self.step, self.total_steps)
        return bool(state.get("pending_eval", False)), bool(state.get("pending_refresh", False))

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
