"""bench_loop's pieces that run without the Home Depot data: the sketch reference and the
options' validation."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.bench_loop import LoopOptions, with_sketch
from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import read_model_info, write_model_info
from trainer.encoder.trigram import LexicalSketch

TEXTS = ["red velvet sofa", "oak dining table", "steel bolt 3/8 inch", "white ceramic mug"]


def test_with_sketch_moves_the_sketch_onto_other_towers(tmp_path, tiny_model_dir):
    """The zero-shot + sketch reference: the towers of one dir, the sketch (settings and IDF)
    of another; its vectors are the towers' vectors and the sketch, weighed as the sketched
    model weighs them."""
    sketched = tmp_path / "sketched"
    shutil.copytree(tiny_model_dir, sketched)
    sketch = LexicalSketch.fit(TEXTS, dim=16, weight=0.4)
    sketch.save(sketched)
    info = read_model_info(sketched)
    write_model_info(sketched, replace(info, lexical=sketch.settings(), fingerprint=""))

    out = with_sketch(tiny_model_dir, sketched, tmp_path / "out")
    assert out is not None and read_model_info(out).lexical == sketch.settings()
    assert read_model_info(tiny_model_dir).lexical is None  # the source towers are untouched
    towers = load_encoder(tiny_model_dir).encode_items(TEXTS)
    got = load_encoder(out).encode_items(TEXTS)
    assert got.shape == (len(TEXTS), towers.shape[1] + 16)
    np.testing.assert_allclose(got, sketch.combine(towers, TEXTS), atol=1e-5)
    np.testing.assert_allclose(got, load_encoder(sketched).encode_items(TEXTS), atol=1e-5)
    # a model without a sketch gives no reference
    assert with_sketch(tiny_model_dir, tiny_model_dir, tmp_path / "none") is None


@pytest.mark.parametrize("bad", [4, -1, 5000])
def test_loop_options_refuse_a_bad_sketch_size(bad):
    with pytest.raises(ValueError, match=r"lexical\.dim"):
        LoopOptions(lexical_dim=bad)


@pytest.mark.parametrize("bad", [0.0, 0.7])
def test_loop_options_refuse_a_bad_sketch_holdout(bad):
    with pytest.raises(ValueError, match="lexical_holdout must be in"):
        LoopOptions(lexical_holdout=bad)
    with pytest.raises(ValueError, match="lexical_fit must be one of"):
        LoopOptions(lexical_fit="pooled")
