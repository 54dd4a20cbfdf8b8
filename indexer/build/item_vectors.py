"""Item vectors given to a build instead of encoded (``BuildConfig.item_vectors``): the file's
header and row checks, and the catalog-order chunks the build writes into its shards."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.build.config import BuildConfig
from indexer.build.embed import encode_chunks
from indexer.live.fold import BuildUpdates
from trainer.data.catalog import Catalog
from trainer.text import item_text

logger = logging.getLogger(__name__)

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
