"""Tests for the stable shard hash."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from indexer.storage.sharding import shard_of

IDS = ["B00X", "item-1", "", "ü-ñ", "B07XJ8C8F5"]


def test_fixed_values():
    # Computed once with blake2b(utf-8 id, digest_size=8) read little-endian, modulo n. If these
    # change, every existing index would be sharded differently: that is a format break.
    assert shard_of(IDS, 7).tolist() == [5, 3, 5, 2, 5]
    assert shard_of(IDS, 1000).tolist() == [690, 428, 756, 974, 898]
    assert shard_of(IDS, 1).tolist() == [0, 0, 0, 0, 0]
    raw = int.from_bytes(hashlib.blake2b(b"B00X", digest_size=8).digest(), "little")
    assert raw == 17131524162659661690


def test_dtype_and_shape():
    out = shard_of(IDS, 4)
    assert out.dtype == np.int32 and out.shape == (5,)
    assert shard_of([], 3).shape == (0,)


def test_same_in_another_process():
    # Python's own hash() is salted per process; the shard hash must not be.
    code = (
        "from indexer.storage.sharding import shard_of; "
        "print(shard_of(['B00X', 'item-1', 'ü-ñ'], 7))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[5 3 2]"


def test_distribution_roughly_even():
    ids = [f"SKU{i:06d}" for i in range(20_000)]
    counts = np.bincount(shard_of(ids, 8), minlength=8)
    # Expected 2,500 each; a fair hash stays well within ±10 % (binomial sd ≈ 47).
    assert counts.min() > 2250 and counts.max() < 2750, counts


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_bad_shard_count(n):
    with pytest.raises(ValueError, match="n_shards"):
        shard_of(IDS, n)


def test_non_str_id():
    with pytest.raises(ValueError, match="position 1"):
        shard_of(["a", 3], 2)
