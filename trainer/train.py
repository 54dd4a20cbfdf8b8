"""The training loop: the steps (AdamW, warm-up + linear decay, accumulation, bf16 autocast,
clipping), periodic hard-negative mining and item-bank refresh, evaluation with early stopping,
atomic checkpoints, exact resume, DDP, and export of the best weights as a model dir. The
settings live in ``trainer.config``; every dataset is read and checked before any step by
``trainer.prepare``.

Recommendation: a user is the normalised mean of the item vectors of their last 50 items,
exactly as ``trainer.evaluate`` and the server compute users, so there is no separate user
tower to serve. Encoding every history through BERT each step is too slow on CPU, so the
history side comes from an item bank (the item tower over the catalog, refreshed every
``refresh_every`` steps) and gradients flow through the freshly encoded target items (and the
in-batch negatives), which pulls each next item towards the histories that precede it.

Determinism: every random draw of the data side (epoch order, the dataset of each micro-batch,
hard-negative picks, held-out slices) is a pure function of (seed, counters), and the torch RNG
(dropout) is saved in each checkpoint, so a run resumed from step k ends with the same
parameters as one that never stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.batches import (
    STREAM_EPOCH,
    STREAM_HARD,
    STREAM_MIX,
    Batch,
    RecommendData,
    SearchData,
    epoch_batches,
    item_texts,
    length_batches,
    mine_hard_negatives,
    pad_ids,
    recommend_batch,
    rng_for,
    search_batch,
    tokenize,
)
from trainer.checkpoints import STATE_NAME, CheckpointDir, write_text_atomic
from trainer.config import (
    EARLY_STOP_METRIC,
    RECOMMEND_EVAL_KS,
    SEARCH_EVAL_KS,
    TrainConfig,
    jsonable,
)
from trainer.data import (
    Catalog,
)
from trainer.distributed import DistContext, init_from_env
from trainer.evaluate import (
    evaluate_recommendation,
    exact_search,
)
from trainer.losses import in_batch_accuracy, sampled_softmax_loss
from trainer.metrics import evaluate_rankings
from trainer.model import Tower, TwoTowerModel, build_two_tower, save_model_dir
from trainer.prepare import PreparedDataset, prepare_datasets

logger = logging.getLogger(__name__)


# Settings a resumed run may change without breaking the "same parameters as a straight run"
# promise (where it runs, how it reports, how often it saves).
_RESUME_FREE = frozenset(
    {
        "resume",
        "progress",
        "log_every",
        "num_threads",
        "device",
        "tensorboard_dir",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_batch_size",
        "out",
        "checkpoint_dir",
    }
)


# ---------------------------------------------------------------------------------------------
# The run


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


class _Trainer:
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

    # -- data ----------------------------------------------------------------------------

    def _epoch(self, k: int, epoch: int) -> list[np.ndarray]:
        cached = self._epoch_cache.get(k)
        if cached is None or cached[0] != epoch:
            data = self.datasets[k].data
            rng = rng_for(self.config.seed, STREAM_EPOCH, k, epoch)
            size = self.config.batch_size * self.ctx.world_size
            cached = (epoch, epoch_batches(data.batch_keys(), size, rng))
            self._epoch_cache[k] = cached
        return cached[1]

    def _next_rows(self, k: int) -> np.ndarray:
        epoch, cursor = self.streams[k]
        batches = self._epoch(k, epoch)
        if cursor >= len(batches):
            epoch, cursor = epoch + 1, 0
            batches = self._epoch(k, epoch)
        self.streams[k] = [epoch, cursor + 1]
        # Every rank walks the same global batch and takes its own slice of it.
        return np.array_split(batches[cursor], self.ctx.world_size)[self.ctx.rank]

    def _pick_dataset(self) -> int:
        if len(self.datasets) == 1:
            return 0
        weights = np.array([d.spec.weight for d in self.datasets], dtype=np.float64)
        rng = rng_for(self.config.seed, STREAM_MIX, self.micro)
        return int(rng.choice(len(weights), p=weights / weights.sum()))

    def _batch(self, k: int) -> Batch:
        rows = self._next_rows(k)
        data = self.datasets[k].data
        if isinstance(data, SearchData):
            return search_batch(
                data,
                rows,
                hard_negatives=self.config.hard_negatives,
                labeled_negatives=self.config.labeled_negatives,
                rng=rng_for(self.config.seed, STREAM_HARD, self.micro, self.ctx.rank),
                pad_id=self.pad_id,
            )
        return recommend_batch(data, rows, pad_id=self.pad_id)

    # -- inference over whole catalogs ---------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _embed(self, tower: Tower, seqs: Sequence[np.ndarray], desc: str = "") -> np.ndarray:
        """(len(seqs), dim) float32 vectors, the work split between ranks."""
        from tqdm.auto import tqdm

        mine = self.ctx.shard(len(seqs))
        local = np.zeros((len(mine), self.model.dim), dtype=np.float32)
        was_training = tower.training
        tower.eval()
        bar = tqdm(
            total=len(mine),
            desc=desc or "encode",
            unit="text",
            leave=False,
            disable=not (self.config.progress and self.ctx.is_main and len(mine) >= 2000),
        )
        try:
            with torch.inference_mode(), self._autocast():
                part = [seqs[i] for i in mine.tolist()]
                for rows in length_batches(part, self.config.eval_batch_size):
                    ids, mask = pad_ids([part[r] for r in rows.tolist()], self.pad_id)
                    out = tower(
                        torch.from_numpy(ids).to(self.device),
                        torch.from_numpy(mask).to(self.device),
                    )
                    local[rows] = out.float().cpu().numpy()
                    bar.update(len(rows))
        finally:
            bar.close()
            tower.train(was_training)
        return self.ctx.gather_rows(local, len(seqs), self.device)

    def _catalog_vectors(
        self, data: SearchData | RecommendData, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Item vectors of the catalog (or of its ``rows``) under the current weights; the
        whole catalog is encoded once per step however many users (mining, bank, eval)."""
        key = (data.catalog.path, self.step)
        if key in self._vectors:
            xb = self._vectors[key]
            return xb if rows is None else xb[rows]
        t0 = time.perf_counter()
        if rows is not None:  # a sample for evaluation: encode only that
            xb = self._embed(self.model.item_tower, [data.item_tokens[r] for r in rows.tolist()])
        else:
            self._vectors = {k: v for k, v in self._vectors.items() if k[1] == self.step}
            xb = self._embed(self.model.item_tower, data.item_tokens, desc=f"encode {data.name}")
            self._vectors[key] = xb
        logger.info(
            "encoded %d items of %s in %.1f s",
            len(xb),
            data.catalog.path,
            time.perf_counter() - t0,
        )
        return xb

    def _maintain(self, *, start: bool) -> None:
        """Refresh recommendation item banks and re-mine hard negatives when due."""
        cfg = self.config
        for prepared in self.datasets:
            data = prepared.data
            if isinstance(data, RecommendData):
                if start or self.step % cfg.refresh_every == 0:
                    data.bank = self._catalog_vectors(data)
            elif cfg.hard_negatives > 0 and (
                start or (cfg.mine_every and self.step % cfg.mine_every == 0)
            ):
                xb = self._catalog_vectors(data)
                xq = self._embed(self.model.query_tower, data.query_tokens)
                data.mined = mine_hard_negatives(xq, xb, data.relevant, cfg.mine_window)
                logger.info(
                    "%s: mined %.1f hard negatives per query (ranks %d-%d)",
                    data.name,
                    float(np.mean([len(m) for m in data.mined])),
                    *cfg.mine_window,
                )

    # -- evaluation ----------------------------------------------------------------------

    def _evaluate(self) -> dict[str, Any] | None:
        """Dev metrics of every dataset that has an eval split (collective; rank 0 scores)."""
        results: dict[str, Any] = {}
        weighted, weights = 0.0, 0.0
        t0 = time.perf_counter()
        for prepared in self.datasets:
            if prepared.eval_source == "none":
                continue
            data = prepared.data
            rows = prepared.eval_rows
            xb = self._catalog_vectors(data, rows)
            ids = np.asarray(data.catalog.item_ids, dtype=object)
            if rows is not None:
                ids = ids[rows]
            if prepared.task == "search":
                xq = self._embed(self.model.query_tower, prepared.eval_query_tokens)
                if not self.ctx.is_main:
                    continue
                _, I = exact_search(xq, xb, max(SEARCH_EVAL_KS))
                labels = prepared.eval_labels
                rankings = {q: ids[I[i]].tolist() for i, q in enumerate(labels.queries)}
                report = evaluate_rankings(
                    rankings, labels, prepared.gains, prepared.recall_grade, SEARCH_EVAL_KS
                )
            else:
                if not self.ctx.is_main:
                    continue
                catalog = data.catalog
                if rows is not None:
                    catalog = Catalog(table=catalog.table.take(rows), path=catalog.path)
                report = evaluate_recommendation(
                    xb,
                    catalog,
                    prepared.eval_train,
                    prepared.eval_dev,
                    ks=RECOMMEND_EVAL_KS,
                    history_length=self.config.history_length,
                )
            metrics = {name: m.mean for name, m in report.metrics.items()}
            results[prepared.spec.name] = {"source": prepared.eval_source, **metrics}
            value = metrics.get(EARLY_STOP_METRIC, math.nan)
            if math.isfinite(value):
                weighted += prepared.spec.weight * value
                weights += prepared.spec.weight
        if not self.ctx.is_main or not results:
            return None
        score = weighted / weights if weights else math.nan
        return {
            "step": self.step,
            "metric": score,
            "datasets": results,
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def _eval_and_track(self) -> None:
        record = self._evaluate()
        improved = False
        if self.ctx.is_main and record is not None:
            self.history.append(record)
            score = record["metric"]
            improved = math.isfinite(score) and (
                self.best_metric is None or score > self.best_metric
            )
            if improved:
                self.best_metric, self.best_step, self.bad_evals = score, self.step, 0
                self.checkpoints.save_best(
                    {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                    {"step": self.step, "metric": score},
                )
            else:
                self.bad_evals += 1
            logger.info(
                "step %d: dev %s %.4f%s (best %.4f at step %s) %s",
                self.step,
                EARLY_STOP_METRIC,
                score,
                " *" if improved else "",
                self.best_metric if self.best_metric is not None else math.nan,
                self.best_step,
                json.dumps(record["datasets"]),
            )
            self._log_scalars({"eval/metric": score}, self.step)
        stop = self.ctx.is_main and self.bad_evals >= self.config.patience
        self.stopped_early = bool(self.ctx.broadcast(stop))
        if self.stopped_early and self.ctx.is_main:
            logger.info(
                "early stopping at step %d: no improvement in %d evaluations",
                self.step,
                self.bad_evals,
            )

    # -- checkpoints ---------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for k, prepared in enumerate(self.datasets):
            data = prepared.data
            if isinstance(data, SearchData):
                lengths = np.array([len(m) for m in data.mined], dtype=np.int64)
                out[f"mined_{k}_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
                out[f"mined_{k}_rows"] = (
                    np.concatenate(data.mined) if data.mined else np.zeros(0, dtype=np.int64)
                )
            elif data.bank is not None:
                out[f"bank_{k}"] = data.bank
        return out

    def _restore_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        for k, prepared in enumerate(self.datasets):
            data = prepared.data
            if isinstance(data, SearchData) and f"mined_{k}_rows" in arrays:
                offsets, rows = arrays[f"mined_{k}_offsets"], arrays[f"mined_{k}_rows"]
                data.mined = [rows[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
            elif isinstance(data, RecommendData) and f"bank_{k}" in arrays:
                data.bank = np.array(arrays[f"bank_{k}"], dtype=np.float32)

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "micro": self.micro,
            "streams": self.streams,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "pairs": self.pairs,
            "total_steps": self.total_steps,
            "world_size": self.ctx.world_size,
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self) -> None:
        """Write the checkpoint of the current step (collective: each rank adds its RNG)."""
        if self.ctx.is_main:
            self.checkpoints.begin(self.step)
        self.ctx.barrier()
        staging = self.checkpoints.staging(self.step)
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        torch.save(rng, staging / f"rng-rank{self.ctx.rank}.pt")
        self.ctx.barrier()
        if self.ctx.is_main:
            torch.save(self.model.state_dict(), staging / "model.pt")
            torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), staging / "scheduler.pt")
            np.savez(staging / "arrays.npz", **self._arrays())
            write_text_atomic(staging / STATE_NAME, json.dumps(self._state(), indent=1) + "\n")
            self.checkpoints.commit(staging, self.step, self.config.keep_checkpoints)
        self.ctx.barrier()

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
        _check_resumable(path, state, self.config, self.ctx.world_size)
        self.model.load_state_dict(
            torch.load(path / "model.pt", map_location=self.device, weights_only=True)
        )
        self.optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True)
        )
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = torch.load(path / f"rng-rank{self.ctx.rank}.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        with np.load(path / "arrays.npz") as arrays:
            self._restore_arrays({name: arrays[name] for name in arrays.files})
        self.step, self.micro = int(state["step"]), int(state["micro"])
        self.streams = [list(s) for s in state["streams"]]
        self.best_metric, self.best_step = state["best_metric"], state["best_step"]
        self.bad_evals, self.stopped_early = int(state["bad_evals"]), bool(state["stopped_early"])
        self.history = list(state["history"])
        self.train_seconds, self.pairs = float(state["train_seconds"]), int(state["pairs"])
        logger.info("resumed from %s (step %d of %d)", path, self.step, self.total_steps)

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
            if best is not None:
                self.model.load_state_dict(best[0])
                logger.info("exporting the best weights (step %d)", best[1]["step"])
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
                "config": cfg.to_dict(),
            }
            save_model_dir(
                self.model,
                cfg.out,
                max_query_length=cfg.max_query_length,
                max_item_length=cfg.max_item_length,
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
    if importlib.util.find_spec("trainer.onnx_export") is None or missing:
        logger.warning(
            "no ONNX export of the query tower (missing: %s); install them (pip install "
            "'aisle[train]') and run: python -m trainer.onnx_export %s",
            ", ".join(missing) or "trainer.onnx_export",
            model_dir,
        )
        return
    from trainer.onnx_export import export_query_tower

    try:
        path = export_query_tower(model_dir)
    except (ImportError, ValueError) as exc:
        logger.warning(
            "ONNX export of %s failed (%s); the model dir is usable without it", model_dir, exc
        )
        return
    logger.info("exported the query tower to %s", path)


def _check_resumable(path: Path, state: Mapping[str, Any], config: TrainConfig, world: int) -> None:
    if int(state.get("world_size", 1)) != world:
        raise ValueError(
            f"checkpoint {path} was written by {state.get('world_size')} processes, this run has "
            f"{world}; resume with the same number of processes"
        )
    saved = state.get("config", {})
    current = config.to_dict()
    changed = [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if key not in _RESUME_FREE and saved.get(key) != current.get(key)
    ]
    if changed:
        raise ValueError(
            f"checkpoint {path} was written with other settings ({'; '.join(changed)}); resume "
            "with the same settings, or start a new run with another --out/--checkpoint-dir"
        )


def check_can_start(config: TrainConfig) -> None:
    """The cheap checks before reading any data: the base model dir is a model dir, and old
    checkpoints are not overwritten unless resuming (they would be mixed up).

    Raises:
        ValueError: a bad base model dir, or ``checkpoint_dir`` holds checkpoints and
            ``resume`` is false.
    """
    from trainer.encoder import default_model_dir, read_model_info

    read_model_info(config.base_model or default_model_dir())
    steps = CheckpointDir(config.checkpoint_root).steps()
    if steps and not config.resume:
        raise ValueError(
            f"{config.checkpoint_root} already holds checkpoints (up to step {steps[-1]}); pass "
            "--resume to continue that run, or delete the dir / choose another --checkpoint-dir"
        )


def train(
    config: TrainConfig,
    *,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    datasets: list[PreparedDataset] | None = None,
) -> TrainResult | None:
    """Train the two towers and export the best weights as a model dir at ``config.out``.

    Every dataset is read and checked first (``prepare_datasets``); then the model is built,
    resumed if asked, trained, evaluated and exported. Under torchrun (or ``spawn_workers``)
    it runs as one rank of a DDP job.

    Args:
        config: the run.
        on_step: called after each optimizer step (and its checkpoint) with (step, logs);
            raising ``SimulatedKill`` there stops the run like a kill (tests).
        datasets: already prepared datasets (skips reading them again).

    Returns:
        The TrainResult on rank 0; None on other ranks.

    Raises:
        ValueError: bad data or config (``DataError`` names the file and line), found before
            any training step.
    """
    check_can_start(config)
    if datasets is None:
        datasets = prepare_datasets(config)
    ctx = init_from_env()
    threads = torch.get_num_threads()
    try:
        return _Trainer(config, datasets, ctx, on_step).run()
    finally:
        torch.set_num_threads(threads)  # num_threads is process-wide; leave it as found


def _distributed_worker(config: TrainConfig, result_path: str) -> None:
    result = train(config)
    if result is not None:
        write_text_atomic(Path(result_path), json.dumps(result.to_dict()) + "\n")


def train_distributed(
    config: TrainConfig, nprocs: int, *, backend: str | None = None
) -> TrainResult:
    """``train`` as ``nprocs`` DDP processes on this machine (gloo on CPU, NCCL on GPUs).

    The datasets are checked here first, so bad input fails before any process starts.
    """
    import tempfile

    from trainer.distributed import spawn_workers

    check_can_start(config)
    prepare_datasets(config)
    with tempfile.TemporaryDirectory(prefix="aisle-train-") as tmp:
        result_path = Path(tmp) / "result.json"
        spawn_workers(
            _distributed_worker,
            nprocs,
            (config, str(result_path)),
            backend=backend,
            num_threads=config.num_threads,
        )
        data = json.loads(result_path.read_text(encoding="utf-8"))
    data["out"] = Path(data["out"])
    return TrainResult(**data)
