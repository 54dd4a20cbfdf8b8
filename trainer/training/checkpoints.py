"""Training checkpoints on disk: one dir per step, published by rename, and a LATEST pointer.

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
from pathlib import Path
from typing import Any

import torch

from trainer.io import write_atomic

logger = logging.getLogger(__name__)

LATEST_NAME = "LATEST"
BEST_NAME = "best"
STATE_NAME = "state.json"
_STEP_DIR = re.compile(r"step-(\d{8})")


def step_dir_name(step: int) -> str:
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
        return self.root / step_dir_name(steps[-1]) if steps else None

    def staging(self, step: int) -> Path:
        """An empty temp dir for the checkpoint of ``step`` (same name on every rank)."""
        path = self.root / f".tmp-{step_dir_name(step)}"
        return path

    def begin(self, step: int) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.staging(step)
        shutil.rmtree(path, ignore_errors=True)  # a leftover of a killed run
        path.mkdir()
        return path

    def commit(self, staging: Path, step: int, keep: int) -> Path:
        """Publish ``staging`` as the checkpoint of ``step``, point LATEST at it, keep the
        newest ``keep`` checkpoints."""
        final = self.root / step_dir_name(step)
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
        write_atomic(self.root / LATEST_NAME, final.name + "\n")
        for old in self.steps()[:-keep] if keep > 0 else []:
            shutil.rmtree(self.root / step_dir_name(old), ignore_errors=True)
        logger.info("checkpoint %s", final)
        return final

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
