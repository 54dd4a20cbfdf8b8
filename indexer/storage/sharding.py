"""Stable assignment of items to shards by a hash of their id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["shard_of"]


def _shard_hash(item_id: str) -> int:
    # blake2b rather than hash(): Python's str hash is salted per process (PYTHONHASHSEED), and the
    # assignment must agree across runs, machines, processes and the Spark job.
    return int.from_bytes(
        hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little"
    )


def shard_of(item_ids: Sequence[str], n_shards: int) -> np.ndarray:
    """Shard number of each item id.

    Args:
        item_ids: n item ids (str).
        n_shards: number of shards, >= 1.

    Returns:
        (n,) int32 array with values in [0, n_shards), the same on every run and machine.
    """
    if isinstance(n_shards, bool) or not isinstance(n_shards, int | np.integer) or n_shards < 1:
        raise ValueError(f"n_shards must be an integer >= 1, got {n_shards!r}")
    out = np.empty(len(item_ids), dtype=np.int32)
    if n_shards == 1:
        out.fill(0)
        return out
    for i, item_id in enumerate(item_ids):
        if not isinstance(item_id, str):
            raise ValueError(f"item ids must be str, got {type(item_id).__name__} at position {i}")
        out[i] = _shard_hash(item_id) % n_shards
    return out
