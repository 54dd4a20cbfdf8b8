"""Checkpoints of a training run: save, exact resume, and the resume check."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.io import write_atomic
from trainer.training.batches import RecommendData, SearchData
from trainer.training.checkpoints import STATE_NAME
from trainer.training.config import TrainConfig

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


class _CheckpointMixin:
    """Save and load the full run state (weights, optimizer, RNG, mined rows, banks)."""

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
            write_atomic(staging / STATE_NAME, json.dumps(self._state(), indent=1) + "\n")
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
