"""Training checkpoints: one dir per step, published by rename, a LATEST pointer, exact resume.

Layout of a checkpoint dir (``CKPT/step-00000100/``): ``model.pt``, ``optimizer.pt``,
``scheduler.pt`` (state dicts), ``rng-rank<r>.pt`` (each rank's torch RNG states),
``arrays.npz`` (mined negatives, item banks) and ``state.json`` (step, data-stream positions,
early-stopping state, the config). It is written under a temporary name and renamed into place,
so a kill at any moment leaves either the previous checkpoint or the new one, never half of
one; ``LATEST`` (replaced atomically) names the newest. ``best/`` holds the weights with the
best dev metric so far, published the same way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.io import write_atomic
from trainer.training.batches import RecommendData, SearchData
from trainer.training.config import TrainConfig
from trainer.training.distributed import DistContext
from trainer.training.prepare import PreparedDataset

logger = logging.getLogger(__name__)

LATEST_NAME = "LATEST"
BEST_NAME = "best"
STATE_NAME = "state.json"
_STEP_DIR = re.compile(r"step-(\d{8})")
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
        "prefetch",
        "compile",
        "fast_query_tower",  # made after training, from the exported model dir
    }
)


def _step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointDir:
    """The checkpoints of one training run under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints (those with a state.json), ascending."""
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.iterdir():
            match = _STEP_DIR.fullmatch(path.name)
            if match and (path / STATE_NAME).is_file():
                out.append(int(match.group(1)))
        return sorted(out)

    def latest(self) -> Path | None:
        """The newest complete checkpoint dir (LATEST, or the highest step if it is stale)."""
        pointer = self.root / LATEST_NAME
        if pointer.is_file():
            path = self.root / pointer.read_text(encoding="utf-8").strip()
            if (path / STATE_NAME).is_file():
                return path
            logger.warning("%s names %s, which is incomplete; using the newest", pointer, path)
        steps = self.steps()
        return self.root / _step_dir_name(steps[-1]) if steps else None

    def save(
        self,
        step: int,
        ctx: DistContext,
        device: torch.device,
        stateful: Mapping[str, Any],
        datasets: Sequence[PreparedDataset],
        state: Mapping[str, Any],
        keep: int,
    ) -> None:
        """Write the checkpoint of ``step`` (collective: each rank adds its RNG states, rank 0
        the rest), point LATEST at it and keep the newest ``keep`` checkpoints (0 = all).

        Args:
            stateful: name → object with ``state_dict()`` (model, optimizer, scheduler), saved
                as ``<name>.pt``.
            datasets: their mined negatives and item banks go into ``arrays.npz``.
            state: what ``state.json`` records (the trainer's counters and the config).
        """
        staging = self.root / f".tmp-{_step_dir_name(step)}"  # the same name on every rank
        if ctx.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)  # a leftover of a killed run
            staging.mkdir()
        ctx.barrier()
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        torch.save(rng, staging / f"rng-rank{ctx.rank}.pt")
        ctx.barrier()
        if ctx.is_main:
            for name, part in stateful.items():
                torch.save(part.state_dict(), staging / f"{name}.pt")
            np.savez(staging / "arrays.npz", **_dataset_arrays(datasets))
            write_atomic(staging / STATE_NAME, json.dumps(state, indent=1) + "\n")
            final = self.root / _step_dir_name(step)
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging, final)
            write_atomic(self.root / LATEST_NAME, final.name + "\n")
            for old in self.steps()[:-keep] if keep > 0 else []:
                shutil.rmtree(self.root / _step_dir_name(old), ignore_errors=True)
            logger.info("checkpoint %s", final)
        ctx.barrier()

    def update_state(self, step: int, ctx: DistContext, state: Mapping[str, Any]) -> None:
        """Replace the ``state.json`` of step ``step``'s checkpoint (atomically; rank 0), e.g.
        once the evaluation that followed it has run."""
        if ctx.is_main:
            path = self.root / _step_dir_name(step)
            if (path / STATE_NAME).is_file():
                write_atomic(path / STATE_NAME, json.dumps(state, indent=1) + "\n")
        ctx.barrier()

    def load(
        self,
        path: Path,
        config: TrainConfig,
        ctx: DistContext,
        device: torch.device,
        stateful: Mapping[str, Any],
        datasets: Sequence[PreparedDataset],
    ) -> dict[str, Any]:
        """Restore the checkpoint at ``path`` into ``stateful`` (as ``save`` names them), this
        rank's RNG and the datasets' mined negatives and item banks.

        Returns:
            Its ``state.json``: the counters the trainer and its collaborators continue from.

        Raises:
            ValueError: it was written by another number of processes, or with other settings
                than ``config`` (those a resumed run may change aside).
        """
        state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
        _check_resumable(path, state, config, ctx.world_size)
        for name, part in stateful.items():
            part.load_state_dict(
                torch.load(path / f"{name}.pt", map_location=device, weights_only=True)
            )
        rng = torch.load(path / f"rng-rank{ctx.rank}.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        with np.load(path / "arrays.npz") as arrays:
            _restore_dataset_arrays(datasets, {name: arrays[name] for name in arrays.files})
        return state

    def save_best(self, state_dict: dict[str, Any], meta: dict[str, Any]) -> None:
        """Publish ``best/`` (model.pt + meta.json) by rename, replacing the previous best."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".best.", suffix=".tmp", dir=self.root))
        try:
            torch.save(state_dict, tmp / "model.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            best = self.root / BEST_NAME
            old = self.root / f".{BEST_NAME}.old"
            shutil.rmtree(old, ignore_errors=True)
            if best.exists():
                os.rename(best, old)
            os.rename(tmp, best)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load_best(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(state dict, meta) of ``best/``, or None if there is none."""
        best = self.root / BEST_NAME
        if not (best / "model.pt").is_file():
            return None
        meta = json.loads((best / "meta.json").read_text(encoding="utf-8"))
        return torch.load(best / "model.pt", map_location="cpu", weights_only=True), meta


def _dataset_arrays(datasets: Sequence[PreparedDataset]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, prepared in enumerate(datasets):
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


def _restore_dataset_arrays(
    datasets: Sequence[PreparedDataset], arrays: Mapping[str, np.ndarray]
) -> None:
    for k, prepared in enumerate(datasets):
        data = prepared.data
        if isinstance(data, SearchData) and f"mined_{k}_rows" in arrays:
            offsets, rows = arrays[f"mined_{k}_offsets"], arrays[f"mined_{k}_rows"]
            data.mined = [rows[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        elif isinstance(data, RecommendData) and f"bank_{k}" in arrays:
            data.bank = np.array(arrays[f"bank_{k}"], dtype=np.float32)


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
