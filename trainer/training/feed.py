"""The trainer's data side: batches, catalog encoding, hard-negative mining, item-bank refresh."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainer.training.batches import (
    STREAM_EPOCH,
    STREAM_HARD,
    STREAM_MIX,
    Batch,
    RecommendData,
    SearchData,
    epoch_batches,
    length_batches,
    mine_hard_negatives,
    pad_ids,
    recommend_batch,
    rng_for,
    search_batch,
)
from trainer.training.model import Tower

logger = logging.getLogger(__name__)


class _DataMixin:
    """Batches of each dataset, whole-catalog vectors, and their periodic refresh."""

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

    def _embed(
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
        return self.ctx.gather_rows(local, len(seqs), self.device) if collective else local

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
