"""Item vectors given to a build instead of encoded (``BuildConfig.item_vectors``): the file's
header and row checks, and the catalog-order chunks the build writes into its shards."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.build.embed import encode_chunks
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
        xb: (n_file_rows, dim) read-only memmap of it: float32, float16 or float64.
        source_rows: (n_items,) int64 file row of each catalog row once live updates are
            replayed (``replayed_source_rows``), -1 for replayed upserts; None: row r of the
            catalog is row r of the file.
    """

    path: Path
    xb: np.ndarray
    source_rows: np.ndarray | None = None

    def chunks(
        self, catalog: Any, encoder: Any, config: Any, updates: Any = None
    ) -> Iterator[np.ndarray]:
        """(m, dim) float32 vectors of the catalog rows in order, ``_VECTOR_CHUNK_ROWS`` rows
        at a time, each row checked (``check_item_vectors``).

        A replayed upsert (source row -1) gets zeros here that ``updates.patch`` replaces with
        its logged vector; an upsert logged by another model has none of this model's and is
        encoded, as a normal build does.
        """
        n_items = len(catalog)
        encoded_rows, encoded = np.zeros(0, np.int64), np.zeros((0, encoder.dim), np.float32)
        if self.source_rows is not None:
            kept = updates.kept_rows if updates is not None else np.zeros(0, np.int64)
            encoded_rows = np.setdiff1d(np.flatnonzero(self.source_rows < 0), kept)
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
            if self.source_rows is None:
                # A view of the memmap when it is float32: the writer makes the only copy.
                xb = np.asarray(self.xb[start:end], dtype=np.float32)  # (m, dim)
                check_item_vectors(xb, np.arange(start, end), self.path)
            else:
                source = self.source_rows[start:end]
                have = np.flatnonzero(source >= 0)
                xb = np.zeros((end - start, self.xb.shape[1]), np.float32)  # (m, dim)
                xb[have] = self.xb[source[have]]
                check_item_vectors(xb[have], source[have], self.path)
                lo, hi = np.searchsorted(encoded_rows, [start, end])
                xb[encoded_rows[lo:hi] - start] = encoded[lo:hi]
            yield xb


def open_item_vectors(path: Path, n_items: int, dim: int) -> np.ndarray:
    """A read-only memmap of an item-vectors ``.npy`` file, its header checked.

    Returns:
        (n_items, dim) array, float32, float16 or float64 (converted as it is read).

    Raises:
        ValueError: not a ``.npy`` array, another dtype, or another shape.
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
            f"({n_items}, {dim}): one row per catalog item, in catalog order, of the model's "
            f"dim"
        )
    return xb


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


def replayed_source_rows(original_ids: list[str], updates: Any) -> np.ndarray:
    """(n_items,) int64: for each row of ``updates.catalog`` (the catalog with live updates
    replayed: kept rows in order, then the upserted items), its row in the original catalog
    (``original_ids``), or -1 for an upserted item, whose old vector (if any) is stale."""
    ids = updates.catalog.item_ids
    first_new = len(ids) - int(updates.summary.get("upserted", 0))
    row_of = {item_id: r for r, item_id in enumerate(original_ids)}
    source = np.full(len(ids), -1, dtype=np.int64)
    source[:first_new] = [row_of[item_id] for item_id in ids[:first_new]]
    return source
