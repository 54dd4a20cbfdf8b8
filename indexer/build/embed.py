"""Batch embedding of a catalog: read records → item texts → encode → write per-shard vectors.

Each step is a separate, replaceable piece (clip-retrieval style): ``item_text_chunks`` turns
records into text chunks, ``encode_chunks`` turns text chunks into vector chunks, and
``ShardVectorWriter`` scatters vector chunks into one ``.npy`` file per shard. Only one chunk
of texts and vectors is in memory at a time; the per-shard files are written through memmaps.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer.storage.layout import rows_file_name, vectors_file_name
from trainer.text import item_text

__all__ = [
    "ShardVectorWriter",
    "encode_chunks",
    "item_text_chunks",
]

logger = logging.getLogger(__name__)


class ItemEncoder(Protocol):
    """What embedding needs from ``trainer.encoder.Encoder``."""

    dim: int

    def encode_items(
        self,
        texts: list[str],
        *,
        batch_size: int = 32,
        show_progress: bool = False,
        max_length: int | None = None,
    ) -> np.ndarray: ...


def item_text_chunks(records: Iterable[Mapping[str, Any]], chunk_size: int) -> Iterator[list[str]]:
    """Item texts (``trainer.text.item_text``) of ``records`` in order, ``chunk_size`` at a time."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    it = iter(records)
    while chunk := list(itertools.islice(it, chunk_size)):
        yield [item_text(r) for r in chunk]


def encode_chunks(
    encoder: ItemEncoder,
    text_chunks: Iterable[list[str]],
    *,
    batch_size: int,
    max_length: int | None = None,
) -> Iterator[np.ndarray]:
    """Encode each chunk of item texts (max_length: token cap, None = the model's default).

    Yields:
        (len(chunk), encoder.dim) float32 arrays, one per chunk, in order.
    """
    for texts in text_chunks:
        xb = encoder.encode_items(texts, batch_size=batch_size, max_length=max_length)
        xb = np.asarray(xb, dtype=np.float32)  # (len(texts), dim)
        if xb.shape != (len(texts), encoder.dim):
            raise ValueError(
                f"encoder returned shape {xb.shape} for {len(texts)} texts, expected "
                f"({len(texts)}, {encoder.dim})"
            )
        if not np.isfinite(xb).all():
            # A NaN vector would silently poison every inner product it meets.
            raise ValueError("encoder returned non-finite values (NaN or inf) for some items")
        yield xb


class ShardVectorWriter:
    """Scatters row-ordered vector chunks into per-shard ``shard_XXX.vectors.npy`` files.

    Global row r (catalog order) goes to shard ``shard_ids[r]``; within a shard, rows keep
    ascending order. ``shard_XXX.rows.npy`` holds each shard's global rows, (n_s,) int64.

    Args:
        out_dir: directory the files are written into (must exist).
        shard_ids: (n_items,) int shard number per global row.
        n_shards: number of shards (shards may be empty).
        dim: vector dimension.
    """

    def __init__(self, out_dir: str | Path, shard_ids: np.ndarray, n_shards: int, dim: int) -> None:
        self.out_dir = Path(out_dir)
        self.n_items = len(shard_ids)
        self.n_shards = n_shards
        self.dim = dim
        self._shard_ids = np.asarray(shard_ids, dtype=np.int64)
        self.counts = np.bincount(self._shard_ids, minlength=n_shards)
        # A stable sort keeps rows ascending within each shard, so local position = rank in shard.
        order = np.argsort(self._shard_ids, kind="stable")
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self._local = np.empty(self.n_items, dtype=np.int64)
        self._local[order] = np.arange(self.n_items) - np.repeat(starts, self.counts)
        self.rows = [order[starts[s] : starts[s] + self.counts[s]] for s in range(n_shards)]
        self._memmaps = [
            np.lib.format.open_memmap(
                self.out_dir / vectors_file_name(s),
                mode="w+",
                dtype=np.float32,
                shape=(int(self.counts[s]), dim),
            )
            for s in range(n_shards)
        ]
        self._next_row = 0

    def write(self, xb: np.ndarray) -> None:
        """Append the vectors of the next ``len(xb)`` global rows; xb is (m, dim) float32."""
        start, end = self._next_row, self._next_row + len(xb)
        if end > self.n_items:
            raise ValueError(f"got vectors for {end} rows, but there are only {self.n_items} items")
        chunk_shards = self._shard_ids[start:end]
        chunk_local = self._local[start:end]
        for s in np.unique(chunk_shards):
            mask = chunk_shards == s
            self._memmaps[s][chunk_local[mask]] = xb[mask]
        self._next_row = end

    def close(self) -> None:
        """Flush the vector files and write the rows files; every row must have been written."""
        if self._next_row != self.n_items:
            raise ValueError(f"only {self._next_row} of {self.n_items} rows were written")
        for s, mm in enumerate(self._memmaps):
            mm.flush()
            np.save(self.out_dir / rows_file_name(s), self.rows[s].astype(np.int64))
        self._memmaps = []
        logger.debug("wrote vectors for %d items into %d shards", self.n_items, self.n_shards)
