"""The trigram sketch both towers append: features, IDF, the count sketch, the model dir."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest

from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import (
    ModelInfo,
    model_fingerprint,
    read_model_info,
    write_model_info,
)
from trainer.encoder.trigram import LEXICAL_FILE, LexicalSketch, trigram_ids

TEXTS = [
    "KOHLER Whitehaven Undermount Apron Front Cast Iron Sink",
    "Weber Genesis E-330 3-Burner Propane Gas Grill",
    "Weber Q 3200 2-Burner Natural Gas Grill",
    "Frost King Brown Double Draft Stopper",
]


def test_trigrams_are_word_padded_and_case_free() -> None:
    ids = trigram_ids("Weber 330", buckets=1 << 20)
    # " weber " → 5 trigrams, " 330 " → 3
    assert len(ids) == 8
    assert np.array_equal(ids, trigram_ids("  weber,  330!", buckets=1 << 20))
    assert len(trigram_ids("", 1024)) == 0 and len(trigram_ids("--", 1024)) == 0
    assert ids.max() < 1 << 20


def test_idf_by_hand() -> None:
    sketch = LexicalSketch.fit(["ab", "ab cd"], dim=16, buckets=1 << 20)
    n = 2
    (ab,) = set(trigram_ids(" ab ", 1 << 20)[:1].tolist())  # " ab": in both texts
    (cd,) = set(trigram_ids("cd", 1 << 20)[:1].tolist())  # " cd": in one
    assert sketch.idf[ab] == pytest.approx(math.log((n + 1) / 3) + 1)
    assert sketch.idf[cd] == pytest.approx(math.log((n + 1) / 2) + 1)
    unseen = (ab + 1) % (1 << 20)
    assert sketch.idf[unseen] == pytest.approx(math.log(n + 1) + 1)  # the largest


def test_sketch_estimates_the_trigram_cosine() -> None:
    sketch = LexicalSketch.fit(TEXTS, dim=256)
    v = sketch.sketch([*TEXTS, "weber 330", ""])
    np.testing.assert_allclose(np.linalg.norm(v[:-1], axis=1), 1.0, atol=1e-6)
    assert not v[-1].any()  # no words, no sketch
    np.testing.assert_allclose(v[:4] @ v[:4].T, (v[:4] @ v[:4].T).T)
    sims = v[4] @ v[:4].T
    # the query's model number and brand pick the E-330 grill, then the other Weber
    assert list(np.argsort(-sims)[:2]) == [1, 2]
    assert sims[0] < 0.2 and sims[3] < 0.2
    # deterministic: the same text, the same sketch, in any batch
    np.testing.assert_array_equal(sketch.sketch(["weber 330"])[0], v[4])


def test_combine_is_unit_and_mixes_the_cosines() -> None:
    sketch = LexicalSketch.fit(TEXTS, dim=32, weight=0.25)
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((2, 8)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    out = sketch.combine(dense, TEXTS[:2])
    assert out.shape == (2, 40)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    lex = sketch.sketch(TEXTS[:2])
    expected = (dense[0] @ dense[1] + 0.25 * lex[0] @ lex[1]) / 1.25
    assert float(out[0] @ out[1]) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"dim": 4, "weight": 0.5, "hashes": 2, "buckets": 1 << 20}, "lexical.dim"),
        ({"dim": 64, "weight": 0, "hashes": 2, "buckets": 1 << 20}, "lexical.weight"),
        ({"dim": 64, "weight": 0.5, "hashes": 9, "buckets": 1 << 20}, "lexical.hashes"),
        ({"dim": 64, "weight": 0.5, "hashes": 2, "buckets": 10}, "lexical.buckets"),
        ({"dim": 64, "weight": 0.5, "hashes": 2}, "missing key"),
        ({"dim": 64, "weight": 0.5, "hashes": 2, "buckets": 1024, "x": 1}, "unknown key"),
    ],
)
def test_bad_settings_are_refused(settings, match) -> None:
    with pytest.raises(ValueError, match=match):
        ModelInfo(base_model="m", lexical=settings)


def test_model_dir_with_a_sketch(tiny_model_dir, tmp_path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_model_info(model, read_model_info(model))
    plain = load_encoder(model)
    before = model_fingerprint(model)
    sketch = LexicalSketch.fit(TEXTS, dim=16, weight=0.5, buckets=1 << 12)
    sketch.save(model)
    write_model_info(model, replace(read_model_info(model), lexical=sketch.settings()))
    with_sketch = model_fingerprint(model)
    assert with_sketch != before
    encoder = load_encoder(model)
    assert encoder.dim == plain.dim + 16 and encoder.info.dim == plain.dim
    xq = encoder.encode_queries(["weber 330", "sink"])
    xb = encoder.encode_items(TEXTS)
    assert xq.shape == (2, plain.dim + 16) and xb.shape == (4, plain.dim + 16)
    # the BERT columns are the plain model's vectors, scaled by 1 / sqrt(1 + w)
    np.testing.assert_allclose(
        xq[:, : plain.dim] * math.sqrt(1.5), plain.encode_queries(["weber 330", "sink"]), atol=1e-5
    )
    np.testing.assert_allclose(xq[:, plain.dim :] * math.sqrt(1.5 / 0.5), sketch.sketch(
        ["weber 330", "sink"]), atol=1e-5)  # fmt: skip
    assert encoder.encode_queries([]).shape == (0, plain.dim + 16)
    # the IDF table is part of the fingerprint
    other = LexicalSketch.fit(TEXTS[:2], dim=16, weight=0.5, buckets=1 << 12)
    other.save(model)
    assert model_fingerprint(model) != with_sketch
    # a missing or mismatched table is a clear error
    (model / LEXICAL_FILE).unlink()
    with pytest.raises(ValueError, match="no lexical_tower.safetensors"):
        load_encoder(model)
    LexicalSketch.fit(TEXTS, dim=16, buckets=1 << 13).save(model)
    with pytest.raises(ValueError, match="IDF table must be"):
        load_encoder(model)
    meta = json.loads((model / "aisle_model.json").read_text())
    meta["normalize"] = False
    (model / "aisle_model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="needs normalize=true"):
        read_model_info(model)
