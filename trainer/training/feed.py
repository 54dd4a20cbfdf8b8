"""Which micro-batch trains next: each dataset's epochs of duplicate-free batches, the dataset of
each micro-batch, and this rank's slice of the global batch.

Every draw is a pure function of (seed, counters), so ``micro`` (micro-batches drawn so far) and
each dataset's stream position are all a checkpoint needs to resume the feed exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trainer.training.batches import (
    STREAM_EPOCH,
    STREAM_HARD,
    STREAM_MIX,
    Batch,
    SearchData,
    epoch_batches,
    recommend_batch,
    rng_for,
    search_batch,
)
from trainer.training.config import TrainConfig
from trainer.training.distributed import DistContext
from trainer.training.gradcache import length_chunks
from trainer.training.prepare import PreparedDataset


class BatchFeed:
    """The micro-batches of a run, in order: every rank walks the same global batches and takes
    its own slice of each.

    Attributes:
        micro: micro-batches drawn so far (it seeds the dataset pick and the hard negatives).
        streams: per dataset, [epoch, next batch in that epoch].
    """

    def __init__(
        self,
        config: TrainConfig,
        datasets: list[PreparedDataset],
        ctx: DistContext,
        pad_id: int,
    ) -> None:
        self.config = config
        self.datasets = datasets
        self.ctx = ctx
        self.pad_id = pad_id
        self.micro = 0
        self.streams = [[0, 0] for _ in datasets]
        self._epoch_cache: dict[int, tuple[int, list[np.ndarray]]] = {}

    def next(self) -> tuple[str, Batch]:
        """The next micro-batch of this rank, and the name of its dataset."""
        k = self._pick_dataset()
        batch = self._batch(k)
        self.micro += 1
        return self.datasets[k].spec.name, batch

    def state(self) -> dict[str, Any]:
        """The feed's part of a checkpoint: ``micro`` and ``streams``."""
        return {"micro": self.micro, "streams": self.streams}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's ``state()``."""
        self.micro = int(state["micro"])
        self.streams = [list(s) for s in state["streams"]]

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
        size = self.config.mini_batch_size
        if not isinstance(data, SearchData):
            batch = recommend_batch(data, rows, pad_id=self.pad_id)
        else:
            batch = search_batch(
                data,
                rows,
                hard_negatives=self.config.hard_negatives,
                labeled_negatives=self.config.labeled_negatives,
                rng=rng_for(self.config.seed, STREAM_HARD, self.micro, self.ctx.rank),
                pad_id=self.pad_id,
            )
            if size is not None:
                queries = data.pair_query[rows].tolist()
                batch.query_chunks = length_chunks(
                    [data.query_tokens[q] for q in queries], size, self.pad_id
                )
        if size is not None:  # gradient caching: length-sorted mini-batches, padded here
            batch.item_chunks = length_chunks(
                [data.item_tokens[r] for r in batch.items.tolist()], size, self.pad_id
            )
        return batch
