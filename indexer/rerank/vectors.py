"""Stored item vectors for exact re-scoring, in float32, float16 or int8 encoding.

``VectorStore`` holds the vectors by global row, scores a query against rows with the numba
kernels of ``indexer.rerank.kernels``, decodes rows back to float32, and saves / loads its files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from indexer.rerank import kernels
from indexer.storage.manifest import IndexFormatError

__all__ = ["VECTOR_KINDS", "VectorStore", "as_query", "vector_file_names"]

VECTOR_KINDS = ("f32", "f16", "i8")
_F16_MAX = 65504.0


class VectorStore:
    """Item vectors for exact re-scoring, indexed by global row, in one of three encodings.

    ``f32``: (n, dim) float32, 4 bytes per value. ``f16``: (n, dim) IEEE half, kept as uint16 bit
    patterns (numba has no float16) and decoded inside the kernel, 2 bytes. ``i8``: (n, dim) int8
    codes and one float32 scale per vector (vector = codes * scale, scale = max|x| / 127),
    1 byte + 4 per vector.
    """

    def __init__(self, kind: str, data: np.ndarray, scales: np.ndarray | None = None) -> None:
        expected = {"f32": np.float32, "f16": np.uint16, "i8": np.int8}
        if kind not in expected:
            raise ValueError(f"vector kind must be one of {VECTOR_KINDS}, got {kind!r}")
        if data.ndim != 2 or data.dtype != expected[kind]:
            raise ValueError(
                f"{kind} vectors must be a 2-D {np.dtype(expected[kind]).name} array, "
                f"got shape {data.shape} {data.dtype}"
            )
        if (kind == "i8") != (scales is not None):
            raise ValueError("scales are required for i8 vectors and only for them")
        if scales is not None and (scales.shape != (len(data),) or scales.dtype != np.float32):
            raise ValueError(f"i8 scales must be ({len(data)},) float32, got {scales.shape}")
        self.kind = kind
        # np.asarray drops the np.memmap subclass (same memory): numba takes plain arrays.
        self.data = np.asarray(data)
        self.scales = None if scales is None else np.asarray(scales)

    def __repr__(self) -> str:
        return f"VectorStore(kind={self.kind!r}, n={self.n}, dim={self.dim}, nbytes={self.nbytes})"

    @property
    def n(self) -> int:
        return self.data.shape[0]

    @property
    def dim(self) -> int:
        return self.data.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held (codes plus scales)."""
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    @classmethod
    def encode(cls, xb: np.ndarray, kind: str = "f32") -> VectorStore:
        """Encode (n, dim) float vectors as ``kind`` ("f32", "f16" or "i8")."""
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if xb.ndim != 2:
            raise ValueError(f"xb must have shape (n, dim), got {xb.shape}")
        if not np.isfinite(xb).all():
            raise ValueError("xb holds NaN or inf values; re-embed the catalog before indexing")
        if kind == "f32":
            return cls("f32", xb)
        if kind == "f16":
            if xb.size and np.abs(xb).max() > _F16_MAX:
                raise ValueError(f"f16 holds values up to {_F16_MAX}; use f32 for these vectors")
            return cls("f16", xb.astype(np.float16).view(np.uint16))
        if kind == "i8":
            scales = (np.abs(xb).max(axis=1) / 127.0).astype(np.float32)  # (n,)
            safe = np.where(scales > 0, scales, 1.0)[:, None]  # a zero vector keeps codes 0
            codes = np.clip(np.rint(xb / safe), -127, 127).astype(np.int8)
            return cls("i8", codes, scales)
        raise ValueError(f"vector kind must be one of {VECTOR_KINDS}, got {kind!r}")

    @classmethod
    def from_index(cls, version: Any, kind: str = "f32", *, chunk: int = 65536) -> VectorStore:
        """Gather every stored vector of an opened ``IndexVersion`` by global row."""
        n, dim = version.n_items, version.dim
        parts = []
        for start in range(0, n, chunk):  # chunks bound the float32 copy for compact kinds
            part = version.vectors(np.arange(start, min(n, start + chunk)))
            parts.append(cls.encode(part, kind))
        if not parts:
            return cls.encode(np.zeros((0, dim), np.float32), kind)
        data = np.concatenate([p.data for p in parts])
        scales = None if kind != "i8" else np.concatenate([p.scales for p in parts])
        return cls(kind, data, scales)

    def check_rows(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` as (m,) int64, checked to lie in [-1, n) (the kernels do not check bounds)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        if rows.size and (rows.min() < -1 or rows.max() >= self.n):
            raise ValueError(
                f"rows must be -1 (none) or in [0, {self.n}), got {rows.min()}..{rows.max()}"
            )
        return rows

    def scores(self, xq: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact inner products.

        Args:
            xq: (dim,) float query.
            rows: (m,) int global rows; -1 = none.

        Returns:
            (m,) float32; -inf for -1 rows.
        """
        xq = as_query(xq, self.dim)
        rows = self.check_rows(rows)
        if self.kind == "f32":
            return kernels.exact_scores_f32(xq, self.data, rows)
        if self.kind == "f16":
            return kernels.exact_scores_f16(xq, self.data, rows)
        return kernels.exact_scores_i8(xq, self.data, self.scales, rows)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Decoded vectors of ``rows`` (each >= 0) as (m, dim) float32."""
        rows = self.check_rows(rows)
        if rows.size and rows.min() < 0:
            raise ValueError("gather needs real rows, got -1")
        if self.kind == "f32":
            return self.data[rows]
        if self.kind == "f16":
            return kernels.decode_f16(self.data, rows)
        return kernels.decode_i8(self.data, self.scales, rows)

    def save(self, directory: str | Path, prefix: str) -> list[str]:
        """Write ``<prefix>.vectors.npy`` (f32), ``<prefix>.vectors_f16.npy`` (f16, stored as
        float16) or ``<prefix>.vectors_i8.npy`` + ``<prefix>.scales.npy`` (i8) into
        ``directory``; returns the file names written (for the manifest checksums)."""
        directory = Path(directory)
        names = vector_file_names(prefix, self.kind)
        data = self.data.view(np.float16) if self.kind == "f16" else self.data
        np.save(directory / names[0], data, allow_pickle=False)
        if self.scales is not None:
            np.save(directory / names[1], self.scales, allow_pickle=False)
        return names

    @classmethod
    def load(
        cls, directory: str | Path, prefix: str, kind: str | None = None, *, mmap: bool = True
    ) -> VectorStore:
        """Read what ``save`` wrote, memory-mapped read-only by default.

        ``kind`` None picks the one encoding present; pass it when several are.

        Raises:
            IndexFormatError: no (or an ambiguous, or a malformed) vector file.
        """
        directory = Path(directory)
        kinds = [kind] if kind is not None else VECTOR_KINDS
        found = [k for k in kinds if (directory / vector_file_names(prefix, k)[0]).is_file()]
        if len(found) != 1:
            wanted = [vector_file_names(prefix, k)[0] for k in kinds]
            problem = "none of" if not found else "several of"
            raise IndexFormatError(f"{directory}: found {problem} {wanted}; pass kind=")
        kind = found[0]
        names = vector_file_names(prefix, kind)
        try:
            arrays = [
                np.load(directory / name, mmap_mode="r" if mmap else None, allow_pickle=False)
                for name in names
            ]
            data = arrays[0].view(np.uint16) if kind == "f16" else arrays[0]
            return cls(kind, data, arrays[1] if kind == "i8" else None)
        except (OSError, ValueError) as e:
            raise IndexFormatError(
                f"{directory / names[0]}: unreadable {kind} vectors ({e})"
            ) from e


def vector_file_names(prefix: str, kind: str) -> list[str]:
    """The files ``VectorStore.save`` writes for ``prefix`` in encoding ``kind``: the vectors
    file first, then (i8) the scales file."""
    if kind == "f32":
        return [f"{prefix}.vectors.npy"]  # the same name as the f32 vectors beside each shard
    if kind == "f16":
        return [f"{prefix}.vectors_f16.npy"]
    if kind == "i8":
        return [f"{prefix}.vectors_i8.npy", f"{prefix}.scales.npy"]
    raise ValueError(f"vector kind must be one of {VECTOR_KINDS}, got {kind!r}")


def as_query(xq: np.ndarray, dim: int) -> np.ndarray:
    """One query as a contiguous (dim,) float32 vector ((1, dim) is accepted); ValueError
    otherwise."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xq.ndim == 2 and xq.shape[0] == 1:
        xq = xq[0]
    if xq.shape != (dim,):
        raise ValueError(f"xq must have shape ({dim},) (one query), got {xq.shape}")
    return xq
