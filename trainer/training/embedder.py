"""Vectors under the current weights during training: token ids through a tower of the model
being trained, the work split between the ranks, and whole catalogs encoded once per step."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainer.training.batches import RecommendData, SearchData, length_batches, pad_ids
from trainer.training.distributed import DistContext
from trainer.training.model import Tower, TwoTowerModel

logger = logging.getLogger(__name__)


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op for None (AMP off)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Embedder:
    """Encodes token ids with the towers of ``model`` in inference mode (on ``device``, autocast
    to ``amp_dtype``, ``batch_size`` texts per pass), for hard-negative mining, item banks and
    dev evaluation; ``progress`` draws a bar on rank 0 for long inputs."""

    def __init__(
        self,
        model: TwoTowerModel,
        ctx: DistContext,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        *,
        pad_id: int,
        batch_size: int,
        progress: bool,
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.device = device
        self.amp_dtype = amp_dtype
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.progress = progress
        self._vectors: dict[tuple[str, int], np.ndarray] = {}  # (catalog, step) → item vectors
        self.texts_per_second: float | None = None  # measured on the last long embed

    def eta(self, n_texts: int) -> str:
        """A human estimate of encoding ``n_texts`` at the last measured rate."""
        if self.texts_per_second is None:
            return "ETA after the first batch"
        seconds = n_texts / self.texts_per_second
        if seconds < 90:
            return f"ETA ~{seconds:.0f} s"
        return f"ETA ~{seconds / 60:.1f} min" if seconds < 5400 else f"ETA ~{seconds / 3600:.1f} h"

    def embed(
        self, tower: Tower, seqs: Sequence[np.ndarray], desc: str = "", *, collective: bool = True
    ) -> np.ndarray:
        """(len(seqs), dim) float32 vectors, the work split between ranks (``collective``:
        every rank must call it), or all of it on this rank alone."""
        from tqdm.auto import tqdm

        mine = self.ctx.shard(len(seqs)) if collective else np.arange(len(seqs), dtype=np.int64)
        local = np.zeros((len(mine), self.model.dim), dtype=np.float32)
        was_training = tower.training
        tower.eval()
        bar = tqdm(
            total=len(mine),
            desc=desc or "encode",
            unit="text",
            leave=False,
            disable=not (self.progress and self.ctx.is_main and len(mine) >= 2000),
        )
        t0 = time.perf_counter()
        announce = self.texts_per_second is None and len(mine) >= 2000 and self.ctx.is_main
        try:
            with torch.inference_mode(), autocast(self.device, self.amp_dtype):
                part = [seqs[i] for i in mine.tolist()]
                for b, rows in enumerate(length_batches(part, self.batch_size)):
                    ids, mask = pad_ids([part[r] for r in rows.tolist()], self.pad_id)
                    out = tower(
                        torch.from_numpy(ids).to(self.device),
                        torch.from_numpy(mask).to(self.device),
                    )
                    local[rows] = out.float().cpu().numpy()
                    bar.update(len(rows))
                    if announce and b == 0:  # longest texts first: an upper bound
                        rate = len(rows) / max(time.perf_counter() - t0, 1e-9)
                        logger.info(
                            "encoding %d texts (%s): at most ~%.0f s at the first batch's rate",
                            len(mine), desc or "encode", len(mine) / rate,
                        )  # fmt: skip
        finally:
            bar.close()
            tower.train(was_training)
        if len(mine) >= 256:
            self.texts_per_second = len(mine) / max(time.perf_counter() - t0, 1e-9)
        return self.ctx.gather_rows(local, len(seqs), self.device) if collective else local

    def catalog_vectors(
        self, data: SearchData | RecommendData, step: int, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Item vectors of the catalog (or of its ``rows``) under the weights of ``step``
        (collective); the whole catalog is encoded once per step however many users (mining,
        bank, eval) ask for it."""
        key = (data.catalog.path, step)
        if key in self._vectors:
            xb = self._vectors[key]
            return xb if rows is None else xb[rows]
        t0 = time.perf_counter()
        if rows is not None:  # a sample for evaluation: encode only that
            xb = self.embed(self.model.item_tower, [data.item_tokens[r] for r in rows.tolist()])
        else:
            self._vectors = {k: v for k, v in self._vectors.items() if k[1] == step}
            if self.ctx.is_main:
                n = len(data.item_tokens)
                logger.info("encoding the %d items of %s, %s", n, data.name, self.eta(n))
            xb = self.embed(self.model.item_tower, data.item_tokens, desc=f"encode {data.name}")
            self._vectors[key] = xb
        logger.info(
            "encoded %d items of %s in %.1f s",
            len(xb),
            data.catalog.path,
            time.perf_counter() - t0,
        )
        return xb
