"""The fast query tower in a model dir: the fingerprint rules and picking the tower."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.search.snapshot import load_snapshot
from engine.search.types import EncodingConfig
from indexer.storage.manifest import IndexFormatError
from tests.helpers import make_static_fast_tower, make_tiny_model
from trainer.encoder.fast_tower import (
    FAST_TOWER_INFO,
    StaticTower,
    fast_tower_dir,
    query_fingerprint,
    read_fast_tower_info,
)
from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import model_fingerprint


@pytest.fixture()
def fast_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model with a static fast query tower."""
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "fast"))
    make_static_fast_tower(model)
    return model


def test_the_fast_tower_is_query_side_outside_the_model_fingerprint(
    tiny_model_dir: Path, fast_model: Path
) -> None:
    assert model_fingerprint(fast_model) == model_fingerprint(tiny_model_dir)
    assert query_fingerprint(tiny_model_dir) == ""
    first = query_fingerprint(fast_model)
    assert len(first) == 64
    shutil.rmtree(fast_tower_dir(fast_model))
    make_static_fast_tower(fast_model, seed=1)  # another fast tower: a query-tower swap
    assert query_fingerprint(fast_model) not in ("", first)
    assert model_fingerprint(fast_model) == model_fingerprint(tiny_model_dir)


def test_load_picks_the_fast_tower_when_present(tiny_model_dir: Path, fast_model: Path) -> None:
    auto = load_encoder(fast_model)
    assert (auto.query_tower, auto.query_backend) == ("fast", "static")
    assert auto.query_fingerprint == query_fingerprint(fast_model)
    full = load_encoder(fast_model, query_tower="full")
    assert (full.query_tower, full.query_backend, full.query_fingerprint) == ("full", "torch", "")
    assert load_encoder(fast_model, backend="torch").query_tower == "full"
    assert load_encoder(tiny_model_dir).query_tower == "full"  # none there
    texts = ["red sofa", "usb cable", "zzqx"]
    tower = StaticTower(fast_tower_dir(fast_model))
    ids = tower.token_ids(texts, 32)
    expected = np.stack([tower.embeddings[i].mean(0) if i else np.zeros(tower.dim) for i in ids])
    expected /= np.maximum(np.linalg.norm(expected, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(auto.encode_queries(texts), expected, atol=1e-5)
    # The item side is the full item tower either way.
    np.testing.assert_array_equal(auto.encode_items(texts), full.encode_items(texts))


def test_fast_asked_for_but_missing_or_broken_is_an_error(
    tiny_model_dir: Path, fast_model: Path
) -> None:
    with pytest.raises(ValueError, match="has no fast query tower"):
        load_encoder(tiny_model_dir, query_tower="fast")
    with pytest.raises(ValueError, match="query_tower must be one of"):
        load_encoder(tiny_model_dir, query_tower="quick")
    (fast_tower_dir(fast_model) / FAST_TOWER_INFO).write_text('{"kind": "static"}')
    with pytest.raises(ValueError, match="fast_tower.json"):
        load_encoder(fast_model, query_tower="fast")
    assert load_encoder(fast_model).query_tower == "full"  # auto: logged, falls back


def test_an_index_built_with_the_full_tower_serves_with_the_fast_one(
    index_root: Path, fast_model: Path
) -> None:
    snap = load_snapshot(index_root, fast_model)
    assert (snap.encoder.query_tower, snap.encoder.query_backend) == ("fast", "static")
    full = load_snapshot(index_root, fast_model, encoding=EncodingConfig(query_tower="full"))
    assert full.encoder.query_tower == "full"


def test_an_item_tower_change_is_refused(
    index_root: Path, fast_model: Path, tmp_path: Path, caplog
) -> None:
    # Other item (and full query) weights, with the fast tower distilled for the old ones.
    changed = make_tiny_model(tmp_path / "changed", seed=1)
    shutil.copytree(fast_tower_dir(fast_model), fast_tower_dir(changed))
    assert model_fingerprint(changed) != read_fast_tower_info(changed).item_fingerprint
    with pytest.raises(ValueError, match="distilled against item tower"):
        load_encoder(changed, query_tower="fast")
    with caplog.at_level(logging.WARNING):
        assert load_encoder(changed).query_tower == "full"
    assert "distilled against item tower" in caplog.text
    # The index refuses the changed model, fast tower or not.
    with pytest.raises(IndexFormatError, match="fingerprint"):
        load_snapshot(index_root, changed)


def test_fast_tower_info_is_validated(fast_model: Path) -> None:
    path = fast_tower_dir(fast_model) / FAST_TOWER_INFO
    data = json.loads(path.read_text())
    for bad, message in (
        ({**data, "kind": "gpu"}, "kind must be one of"),
        ({**data, "item_fingerprint": "abc"}, "item_fingerprint"),
        ({**data, "dim": 0}, "dim must be a positive int"),
        ({**data, "extra": 1}, "expected a JSON object"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            read_fast_tower_info(fast_model)


def test_the_fast_tower_keeps_the_trigram_sketch(tiny_model_dir: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from trainer.encoder.model_dir import read_model_info, write_model_info
    from trainer.encoder.trigram import LexicalSketch

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "lexical"))
    titles = ["red velvet sofa", "usb c cable", "oak desk with drawers", "blue cotton shirt"]
    sketch = LexicalSketch.fit(titles, dim=16, weight=0.5, buckets=1 << 12)
    sketch.save(model)
    write_model_info(model, replace(read_model_info(model), lexical=sketch.settings()))
    make_static_fast_tower(model)
    fast, full = load_encoder(model), load_encoder(model, query_tower="full")
    assert fast.query_tower == "fast" and fast.dim == full.dim == 32 + 16
    texts = ["red sofa", "usb cable"]
    xf, xq = fast.encode_queries(texts), full.encode_queries(texts)
    np.testing.assert_allclose(xf[:, 32:], xq[:, 32:], atol=1e-6)  # the same sketch
    assert not np.allclose(xf[:, :32], xq[:, :32])  # another dense part
    np.testing.assert_allclose(np.linalg.norm(xf, axis=1), 1.0, atol=1e-5)


def test_the_static_tower_encodes_from_many_threads_at_once(fast_model: Path) -> None:
    """Concurrent requests each borrow a tokenizer (one Tokenizer refuses concurrent calls):
    every thread's vectors equal the one-thread result, small batches and large alike."""
    from concurrent.futures import ThreadPoolExecutor

    tower = StaticTower(fast_tower_dir(fast_model))
    texts = [f"red velvet sofa {i} usb cable model x{i}" for i in range(40)]
    one = [tower.encode([t], 32) for t in texts]
    batch = tower.encode(texts, 32)  # > the small-batch size: encode_batch
    np.testing.assert_allclose(np.concatenate(one), batch, atol=1e-6)
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            got = list(pool.map(lambda t: tower.encode([t], 32), texts * 5))
            np.testing.assert_array_equal(np.concatenate(got), np.concatenate(one * 5))
