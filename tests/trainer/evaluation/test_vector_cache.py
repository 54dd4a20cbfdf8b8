"""Tests for trainer.evaluation.vector_cache: item vectors cached on disk by content."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tests.helpers import catalog_of
from trainer.evaluation.vector_cache import catalog_vectors


class FakeEncoder:
    """Deterministic vectors from text content; counts item-encoding calls."""

    dim = 4
    fingerprint = "f" * 64

    def __init__(self) -> None:
        self.item_calls = 0

    def _vectors(self, texts: Sequence[str]) -> np.ndarray:
        out = np.array(
            [[len(t), t.count("a") + 1, t.count("e") + 1, sum(map(ord, t)) % 7] for t in texts],
            dtype=np.float32,
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_items(self, texts, *, batch_size=32, show_progress=False, max_length=None):
        self.item_calls += 1
        return self._vectors(texts)

    def encode_queries(self, texts, *, batch_size=64):
        return self._vectors(texts)


def test_catalog_vectors_are_cached_by_content(tmp_path: Path) -> None:
    catalog = catalog_of([{"item_id": "a", "title": "red sofa"}, {"item_id": "b", "title": "lamp"}])
    encoder = FakeEncoder()
    xb, cached = catalog_vectors(encoder, catalog)
    assert (xb.shape, xb.dtype, cached, encoder.item_calls) == ((2, 4), np.float32, False, 1)

    cache = tmp_path / "cache"
    first, cached = catalog_vectors(encoder, catalog, cache_dir=cache)
    assert not cached and encoder.item_calls == 2
    files = list(cache.glob("items-*.npy"))
    assert len(files) == 1 and not list(cache.glob(".*tmp"))  # written atomically
    again, cached = catalog_vectors(encoder, catalog, cache_dir=cache)
    assert cached and encoder.item_calls == 2
    np.testing.assert_array_equal(first, again)

    # another max length or another item text → another key
    _, cached = catalog_vectors(encoder, catalog, cache_dir=cache, max_item_length=16)
    assert not cached
    changed = catalog_of(
        [{"item_id": "a", "title": "red sofa"}, {"item_id": "b", "title": "lamps"}]
    )
    _, cached = catalog_vectors(encoder, changed, cache_dir=cache)
    assert not cached and len(list(cache.glob("items-*.npy"))) == 3

    # a cache file of the wrong shape is ignored and rewritten
    np.save(files[0], np.zeros((3, 4), np.float32))
    xb, cached = catalog_vectors(encoder, catalog, cache_dir=cache)
    assert not cached and xb.shape == (2, 4)
    assert np.load(files[0]).shape == (2, 4)
