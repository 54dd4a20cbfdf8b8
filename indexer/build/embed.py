"""Batch embedding of a catalog: read records → item texts → encode → write per-shard vectors.

Each step is a separate, replaceable piece (clip-retrieval style): ``item_text_chunks`` turns
records into text chunks, ``encode_chunks`` turns text chunks into vector chunks, and
``ShardVectorWriter`` scatters vector chunks into one ``.npy`` file per shard. Only one chunk
of texts and vectors is in memory at a time; the per-shard files are written through memmaps.
``StoredItemVectors`` replaces the encoding with vectors given in a file
(``BuildConfig.item_vectors``): its header and row checks, and its catalog-order chunks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer.build.config import BuildConfig
from indexer.live.fold import BuildUpdates
from indexer.storage.layout import rows_file_name, vectors_file_name
from trainer.data.catalog import Catalog
from trainer.text import item_text

__all__ = ["ShardVectorWriter", "StoredItemVectors", "encode_chunks", "item_text_chunks"]

logger = logging.getLogger(__name__)


class ItemEncoder(Protocol):
    """What embedding needs from ``trainer.encoder.load.Encoder``."""

    dim: int

    def encode_items(
        self,
        texts: list[str],
        *,
        batch_size: int = 32,
        show_progress: bool = False,
        max_length: int | None = None,
        on_batch: Callable[[int], None] | None = None,
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
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Encode each chunk of item texts (max_length: token cap, None = the model's default;
    on_batch: called with the item count after every forward pass, for progress).

    Yields:
        (len(chunk), encoder.dim) float32 arrays, one per chunk, in order.
    """
    for texts in text_chunks:
        progress = {"on_batch": on_batch} if on_batch is not None else {}
        xb = encoder.encode_items(texts, batch_size=batch_size, max_length=max_length, **progress)
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


# Rows read from an item_vectors file per chunk: 96 MiB at dim 384, float32.
_VECTOR_CHUNK_ROWS = 65536
# How far from unit length a given item vector may be (the encoder's output is within ~1e-6).
_NORM_TOLERANCE = 1e-3
_VECTOR_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))


@dataclass(frozen=True, eq=False)
class StoredItemVectors:
    """Item vectors read from ``BuildConfig.item_vectors`` instead of encoded.

    Attributes:
        path: the ``.npy`` file.
        xb: (n_items, dim) read-only memmap of it: float32, float16 or float64.
    """

    path: Path
    xb: np.ndarray

    @classmethod
    def open(cls, path: Path, n_items: int, dim: int) -> StoredItemVectors:
        """The item-vectors ``.npy`` file at ``path``, its header checked (the rows are checked
        as they are read).

        Raises:
            ValueError: not a ``.npy`` array, another dtype, or not of shape (n_items, dim).
        """
        try:
            xb = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(
                f"item_vectors {path} is not a readable .npy array ({e}); write it with numpy.save"
            ) from e
        if not isinstance(xb, np.ndarray):  # an .npz archive
            getattr(xb, "close", lambda: None)()
            raise ValueError(
                f"item_vectors {path} is not a .npy array (an .npz archive?); save the "
                f"(n_items, dim) array itself with numpy.save"
            )
        if xb.dtype not in _VECTOR_DTYPES:
            raise ValueError(
                f"item_vectors {path} has dtype {xb.dtype}; it must be float32 (float16 and "
                f"float64 are converted to float32)"
            )
        if xb.shape != (n_items, dim):
            raise ValueError(
                f"item_vectors {path} has shape {xb.shape}, but this build needs shape "
                f"({n_items}, {dim}): one row per catalog item, in catalog order, of the "
                f"model's dim"
            )
        return cls(path, xb)

    def chunks(
        self, catalog: Catalog, encoder: Any, config: BuildConfig, updates: BuildUpdates
    ) -> Iterator[np.ndarray]:
        """(m, dim) float32 vectors of the catalog rows in order, ``_VECTOR_CHUNK_ROWS`` rows
        at a time, each row checked (``check_item_vectors``).

        ``catalog`` is the file's catalog with ``updates`` replayed: a replayed upsert (source
        row -1) gets zeros here that the build replaces with its logged vector
        (``updates.kept``); an upsert logged by another model has none of this model's and is
        encoded, as a normal build does.
        """
        n_items, source_rows = len(catalog), updates.source_rows
        encoded_rows, encoded = np.zeros(0, np.int64), np.zeros((0, encoder.dim), np.float32)
        if source_rows is not None:
            encoded_rows = np.setdiff1d(np.flatnonzero(source_rows < 0), updates.kept.rows)
            if len(encoded_rows):
                logger.info("encoding %d replayed upserts of another model", len(encoded_rows))
                texts = [item_text(catalog.record(int(r))) for r in encoded_rows]
                encoded = next(
                    encode_chunks(
                        encoder,
                        [texts],
                        batch_size=config.batch_size,
                        max_length=config.max_item_length,
                    )
                )
        for start in range(0, n_items, _VECTOR_CHUNK_ROWS):
            end = min(n_items, start + _VECTOR_CHUNK_ROWS)
            if source_rows is None:
                # A view of the memmap when it is float32: the writer makes the only copy.
                xb = np.asarray(self.xb[start:end], dtype=np.float32)  # (m, dim)
                check_item_vectors(xb, np.arange(start, end), self.path)
            else:
                source = source_rows[start:end]
                have = np.flatnonzero(source >= 0)
                xb = np.zeros((end - start, self.xb.shape[1]), np.float32)  # (m, dim)
                xb[have] = self.xb[source[have]]
                check_item_vectors(xb[have], source[have], self.path)
                lo, hi = np.searchsorted(encoded_rows, [start, end])
                xb[encoded_rows[lo:hi] - start] = encoded[lo:hi]
            yield xb


def check_item_vectors(xb: np.ndarray, rows: np.ndarray, path: str | Path) -> None:
    """Raise ValueError unless every row of ``xb`` (m, dim) is finite and of unit L2 norm
    within ``_NORM_TOLERANCE``; ``rows`` (m,) are their rows in ``path``, for the message."""
    norms = np.sqrt(np.einsum("ij,ij->i", xb, xb))  # (m,); NaN or inf for non-finite rows
    bad = np.flatnonzero(~(np.abs(norms - 1) <= _NORM_TOLERANCE))
    if not len(bad):
        return
    first = int(bad[0])
    if not np.isfinite(xb[first]).all():
        problem = "has non-finite values (NaN or inf)"
    else:
        problem = f"has L2 norm {norms[first]:.6g}"
    raise ValueError(
        f"item_vectors {path}: row {int(rows[first])} {problem} ({len(bad)} bad rows in "
        f"this chunk); item vectors must be the model's normalised output (finite, unit "
        f"length within {_NORM_TOLERANCE:g})"
    )
