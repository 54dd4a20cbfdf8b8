"""Serving the optional parts of a model dir: the user tower's history_decay (how a user's
history is pooled) and the trigram sketch appended to both towers' vectors."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from aisle.v1 import retrieval_pb2
from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import read_model_info, write_model_info
from trainer.encoder.trigram import LexicalSketch
from trainer.encoder.user import pool_history


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir):
    """The tiny model with an aisle_model.json (decay 1), and the same with decay 0.3."""
    root = tmp_path_factory.mktemp("towers")
    plain, decayed = root / "plain", root / "decayed"
    shutil.copytree(tiny_model_dir, plain)
    write_model_info(plain, read_model_info(plain))
    shutil.copytree(plain, decayed)
    write_model_info(decayed, replace(read_model_info(plain), history_decay=0.3))
    return plain, decayed


@pytest.fixture(scope="module")
def plain_index(tmp_path_factory, title_catalog, models):
    root = tmp_path_factory.mktemp("index")
    build_index(BuildConfig(catalog=title_catalog[0], out=root, model=models[0], shards=2))
    return root


def _similarities(index_root, model, history, k=60):
    server = create_server(ServerConfig(index=index_root, model=model, port=0, workers=2))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            response = client.recommend(history, k, include_seen=True)
            return {h.item_id: h.similarity for h in response.hits}
    finally:
        server.stop(0)


def test_recommend_pools_the_history_with_the_models_decay(
    plain_index, title_catalog, models
) -> None:
    plain_model, decayed_model = models
    # the decay is outside the fingerprint: the index built with the plain model serves both
    records = title_catalog[1]
    encoder = load_encoder(plain_model)
    xb = encoder.encode_items([r["title"] for r in records])  # item text = title here
    row = {r["item_id"]: i for i, r in enumerate(records)}
    history = ["SKU0001", "SKU0020", "SKU0042"]  # oldest first
    for model, decay in ((plain_model, 1.0), (decayed_model, 0.3)):
        got = _similarities(plain_index, model, history)
        user = pool_history(xb[[row[i] for i in history]], decay)
        expected = {item: float(xb[row[item]] @ user) for item in got}
        assert len(got) == 60
        np.testing.assert_allclose(list(got.values()), list(expected.values()), atol=1e-4)
    # the two towers really differ: decay 0.3 ranks the newest item's neighbours higher
    plain = _similarities(plain_index, plain_model, history)
    decayed = _similarities(plain_index, decayed_model, history)
    assert decayed["SKU0042"] > plain["SKU0042"]


def test_a_model_with_a_trigram_sketch_serves_end_to_end(
    tmp_path_factory, title_catalog, models
) -> None:
    model = tmp_path_factory.mktemp("lexical") / "model"
    shutil.copytree(models[0], model)
    titles = [r["title"] for r in title_catalog[1]]
    sketch = LexicalSketch.fit(titles, dim=16, weight=0.5, buckets=1 << 12)
    sketch.save(model)
    write_model_info(model, replace(read_model_info(model), lexical=sketch.settings()))
    root = tmp_path_factory.mktemp("lexical-index")
    build_index(BuildConfig(catalog=title_catalog[0], out=root, model=model, shards=2))
    server = create_server(ServerConfig(index=root, port=0, workers=2))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            embedded = client.embed(["blue lamp model 7"])
            assert embedded.dim == 32 + 16
            expected = load_encoder(model).encode_queries(["blue lamp model 7"])
            np.testing.assert_allclose(list(embedded.embeddings[0].values), expected[0], atol=1e-5)
            dense = client.search("blue lamp model 7", 5, mode=retrieval_pb2.SEARCH_MODE_DENSE)
            assert dense.hits[0].item_id == "SKU0007"
    finally:
        server.stop(0)
