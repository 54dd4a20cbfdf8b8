"""The training entry points: ``train``, ``train_distributed`` and ``check_can_start``.

Training: the steps (AdamW, warm-up + linear decay, accumulation, bf16 autocast, clipping),
periodic hard-negative mining and item-bank refresh, evaluation with early stopping, atomic
checkpoints, exact resume, DDP, and export of the best weights as a model dir. The loop is
``trainer.training.loop.Trainer``; the settings live in ``trainer.training.config``; every
dataset is read and checked before any step by ``trainer.training.prepare``.

Recommendation: a user is the normalised mean of the item vectors of their last 50 items,
exactly as ``trainer.evaluation`` and the server compute users, so there is no separate user
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

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.io import write_atomic
from trainer.training.checkpoints import CheckpointDir
from trainer.training.config import TrainConfig
from trainer.training.distributed import init_from_env, spawn_workers
from trainer.training.loop import Trainer, TrainResult
from trainer.training.prepare import PreparedDataset, prepare_datasets


class SimulatedKill(Exception):  # noqa: N818 (it is a signal, not an error)
    """Raised by an ``on_step`` callback to stop a run as if the process were killed."""


def check_can_start(config: TrainConfig) -> None:
    """The cheap checks before reading any data: the base model dir is a model dir, and old
    checkpoints are not overwritten unless resuming (they would be mixed up).

    Raises:
        ValueError: a bad base model dir, or ``checkpoint_dir`` holds checkpoints and
            ``resume`` is false.
    """
    from trainer.encoder.model_dir import default_model_dir, read_model_info

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
        return Trainer(config, datasets, ctx, on_step).run()
    finally:
        torch.set_num_threads(threads)  # num_threads is process-wide; leave it as found


def _distributed_worker(config: TrainConfig, result_path: str) -> None:
    result = train(config)
    if result is not None:
        write_atomic(Path(result_path), json.dumps(result.to_dict()) + "\n")


def train_distributed(
    config: TrainConfig, nprocs: int, *, backend: str | None = None
) -> TrainResult:
    """``train`` as ``nprocs`` DDP processes on this machine (gloo on CPU, NCCL on GPUs).

    The datasets are checked here first, so bad input fails before any process starts.
    """
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
