"""Tests for trainer.text and trainer.encoder: a tiny random BERT, plus one slow real-model test."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_tiny_model
from trainer.encoder.load import Encoder, load_encoder
from trainer.encoder.model_dir import (
    MODEL_INFO_NAME,
    ModelInfo,
    default_model_dir,
    model_fingerprint,
    read_model_info,
    write_model_info,
)
from trainer.text import MAX_ITEM_TEXT_CHARS, item_text, query_text

TEXTS = [
    "a red velvet sofa",
    "stainless steel cordless drill with two batteries and a charger",
    "usb c cable",
    "",
    "kids",
    "Oak desk, 48 inch, with three drawers; easy assembly (tools included)",
    "zzqx 42!",
    "blue   cotton  shirt",
    "PORTER-CABLE 4 1/2-Inch x 10yd 80 Grit Adhesive-Backed Sanding Roll",
]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> Encoder:
    return load_encoder(tiny_model_dir)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# Encoding


def test_shapes_dtype_and_unit_norm(encoder: Encoder) -> None:
    assert encoder.dim == 32
    for xq in (encoder.encode_queries(TEXTS), encoder.encode_items(TEXTS)):
        assert xq.shape == (len(TEXTS), 32)
        assert xq.dtype == np.float32
        assert xq.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(xq, axis=1), 1.0, atol=1e-5)


def test_input_order_is_restored(encoder: Encoder) -> None:
    texts = list(TEXTS)
    random.Random(3).shuffle(texts)
    together = encoder.encode_items(texts, batch_size=4)
    one_by_one = np.vstack([encoder.encode_items([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_batch_size_does_not_change_vectors(encoder: Encoder, batch_size: int) -> None:
    reference = encoder.encode_queries(TEXTS, batch_size=64)
    np.testing.assert_allclose(
        encoder.encode_queries(TEXTS, batch_size=batch_size), reference, atol=1e-5
    )


def test_empty_input(encoder: Encoder) -> None:
    for xq in (encoder.encode_queries([]), encoder.encode_items((), show_progress=True)):
        assert xq.shape == (0, 32)
        assert xq.dtype == np.float32


def test_identical_texts_give_identical_vectors(encoder: Encoder) -> None:
    xq = encoder.encode_queries(["red sofa", "a much longer text about a drill", "red sofa"])
    np.testing.assert_allclose(xq[0], xq[2], atol=1e-6)
    assert float(xq[0] @ xq[1]) < 0.9999


def test_accepts_any_sequence_and_shows_progress(encoder: Encoder) -> None:
    xb = encoder.encode_items(np.array(TEXTS[:3], dtype=object), show_progress=True)
    np.testing.assert_allclose(xb, encoder.encode_items(TEXTS[:3]), atol=1e-6)


def test_concurrent_encoding_from_threads(encoder: Encoder) -> None:
    # The server encodes from many threads; fast tokenizers are not safe to share unguarded.
    from concurrent.futures import ThreadPoolExecutor

    reference = encoder.encode_queries(TEXTS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: encoder.encode_queries(TEXTS), range(16)))
    for xq in results:
        np.testing.assert_allclose(xq, reference, atol=1e-5)


def test_max_length_truncates(encoder: Encoder) -> None:
    # 4 tokens = [CLS] red sofa [SEP]; everything after "red sofa" is cut off.
    xb = encoder.encode_items(["red sofa with a drill", "red sofa in blue cotton"], max_length=4)
    np.testing.assert_allclose(xb[0], xb[1], atol=1e-6)
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        encoder.encode_items(["x"], max_length=513)


@pytest.mark.parametrize(
    ("texts", "kwargs", "match"),
    [
        ("red sofa", {}, "not one string"),
        (["ok", 3], {}, r"texts\[1\] must be a str"),
        (["ok"], {"batch_size": 0}, "batch_size must be a positive int"),
        (["ok"], {"max_length": 1}, "max_length must be an int >= 2"),
    ],
)
def test_bad_encode_arguments(encoder: Encoder, texts, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        encoder.encode_queries(texts, **kwargs)


def test_cls_pooling_and_unnormalised_output(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = _copy(tiny_model_dir, tmp_path / "m")
    base = read_model_info(model_dir)
    write_model_info(model_dir, replace(base, pooling="cls", normalize=False))
    cls_encoder = load_encoder(model_dir)
    raw = cls_encoder.encode_queries(TEXTS[:3])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    mean = load_encoder(tiny_model_dir).encode_queries(TEXTS[:3])
    normalised = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert not np.allclose(normalised, mean, atol=1e-3)


def test_separate_towers(tmp_path: Path) -> None:
    model_dir = tmp_path / "two"
    make_tiny_model(model_dir / "query_tower", seed=1)
    make_tiny_model(model_dir / "item_tower", seed=2)
    info = ModelInfo(
        base_model="tiny",
        dim=32,
        shared_towers=False,
        query_tower="query_tower",
        item_tower="item_tower",
    )
    write_model_info(model_dir, info)
    enc = load_encoder(model_dir)
    assert enc.info.shared_towers is False
    xq = enc.encode_queries(["red sofa"])
    xb = enc.encode_items(["red sofa"])
    assert float(xq[0] @ xb[0]) < 0.999  # different weights → different vectors

    # Both towers count in the fingerprint.
    before = model_fingerprint(model_dir)
    shutil.rmtree(model_dir / "item_tower")
    make_tiny_model(model_dir / "item_tower", seed=3)
    assert model_fingerprint(model_dir) != before


def test_dim_and_length_mismatch_with_the_towers(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = _copy(tiny_model_dir, tmp_path / "m")
    write_model_info(model_dir, ModelInfo(base_model="tiny", dim=64))
    with pytest.raises(ValueError, match="outputs 32 dims but aisle_model.json says dim=64"):
        load_encoder(model_dir)
    write_model_info(model_dir, ModelInfo(base_model="tiny", dim=32, max_item_length=1000))
    with pytest.raises(ValueError, match="max_item_length=1000 .* exceeds the tower's 512"):
        load_encoder(model_dir)


# ---------------------------------------------------------------------------------------------
# Loading errors


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_encoder(tmp_path / "nope")


def test_file_instead_of_dir(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="is not a directory"):
        load_encoder(path)


def test_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a model dir: it has neither aisle_model.json"):
        load_encoder(tmp_path)


def test_dir_without_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = _copy(tiny_model_dir, tmp_path / "m")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"is not a model dir: missing weights \(\*.safetensors\)"):
        load_encoder(model_dir)


def test_corrupt_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = _copy(tiny_model_dir, tmp_path / "m")
    (model_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot load a Hugging Face model from"):
        load_encoder(model_dir)


def test_missing_tower_subdir(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = tmp_path / "m"
    _copy(tiny_model_dir, model_dir / "query_tower")
    info = ModelInfo(
        base_model="tiny", dim=32, shared_towers=False, query_tower="query_tower", item_tower="item"
    )
    write_model_info(model_dir, info)
    with pytest.raises(ValueError, match="tower 'item' of .* is missing"):
        load_encoder(model_dir)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_threads": 0}, "num_threads must be a positive int"), ({"device": "nope"}, "device")],
)
def test_bad_load_arguments(tiny_model_dir: Path, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        load_encoder(tiny_model_dir, **kwargs)


# ---------------------------------------------------------------------------------------------
# Fingerprint


def test_fingerprint_is_stable_across_copies(tmp_path: Path, tiny_model_dir: Path, encoder) -> None:
    fingerprint = model_fingerprint(tiny_model_dir)
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert encoder.fingerprint == fingerprint == encoder.info.fingerprint
    assert model_fingerprint(_copy(tiny_model_dir, tmp_path / "copy")) == fingerprint
    # Same seed written elsewhere → same bytes → same fingerprint; another seed → another one.
    assert model_fingerprint(make_tiny_model(tmp_path / "again")) == fingerprint
    assert model_fingerprint(make_tiny_model(tmp_path / "other", seed=1)) != fingerprint


def test_fingerprint_changes_with_a_weight(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    model_dir = _copy(tiny_model_dir, tmp_path / "m")
    before = model_fingerprint(model_dir)
    weights_path = model_dir / "model.safetensors"
    tensors = load_file(weights_path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, weights_path, metadata={"format": "pt"})
    assert model_fingerprint(model_dir) != before


def test_fingerprint_ignores_readme_and_its_own_field(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = _copy(tiny_model_dir, tmp_path / "m")
    before = model_fingerprint(model_dir)
    (model_dir / "README.md").write_text("notes")
    assert model_fingerprint(model_dir) == before

    info = replace(read_model_info(model_dir), base_model="tiny")
    write_model_info(model_dir, info)
    with_info = model_fingerprint(model_dir)
    assert with_info != before  # aisle_model.json counts ...
    write_model_info(model_dir, replace(info, fingerprint=with_info))
    assert model_fingerprint(model_dir) == with_info  # ... but not its fingerprint field
    write_model_info(model_dir, replace(info, max_query_length=16))
    assert model_fingerprint(model_dir) != with_info


def test_stale_recorded_fingerprint_is_replaced(tmp_path: Path, tiny_model_dir: Path, caplog):
    model_dir = _copy(tiny_model_dir, tmp_path / "m")
    write_model_info(model_dir, ModelInfo(base_model="tiny", dim=32, fingerprint="0" * 64))
    with caplog.at_level("WARNING", logger="trainer.encoder"):
        enc = load_encoder(model_dir)
    assert enc.fingerprint == model_fingerprint(model_dir)
    assert "the model changed after it was written" in caplog.text


# ---------------------------------------------------------------------------------------------
# ModelInfo and aisle_model.json


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_model": " "}, "base_model must be a non-empty name"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"max_query_length": 0}, "max_query_length must be a positive int"),
        ({"max_item_length": 12.5}, "max_item_length must be a positive int"),
        ({"dim": True}, "dim must be a positive int"),
        ({"normalize": "yes"}, "normalize must be true or false"),
        ({"query_tower": "/abs"}, "must stay inside the model dir"),
        ({"item_tower": "../x"}, "must stay inside the model dir"),
        ({"query_tower": ""}, "must be a relative dir"),
        ({"item_tower": "item_tower"}, "shared_towers is true but query_tower"),
        ({"shared_towers": False}, "shared_towers is false but query_tower and item_tower"),
        ({"fingerprint": "abc"}, "fingerprint must be '' or a 64-char"),
        ({"format_version": 2}, "format_version 2 is not supported"),
    ],
)
def test_model_info_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ModelInfo(**{"base_model": "tiny", **kwargs})


def test_model_info_round_trip(tmp_path: Path) -> None:
    info = ModelInfo(
        base_model="all-MiniLM-L6-v2",
        pooling="cls",
        max_query_length=24,
        max_item_length=200,
        dim=384,
        shared_towers=False,
        query_tower="query_tower",
        item_tower="item_tower",
        normalize=False,
        fingerprint="ab" * 32,
    )
    write_model_info(tmp_path, info)
    assert read_model_info(tmp_path) == info
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL_INFO_NAME]  # no temp file left
    write_model_info(tmp_path, replace(info, dim=8))  # overwrite in place
    assert read_model_info(tmp_path).dim == 8


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "cannot read JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"dim": 8}', "missing required field 'base_model'"),
        ('{"base_model": "x", "colour": 1}', r"unknown field\(s\) \['colour'\]"),
        ('{"base_model": "x", "format_version": 7}', "written by a newer Aisle"),
        ('{"base_model": "x", "pooling": "max"}', "pooling must be one of"),
    ],
)
def test_bad_model_info_file(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / MODEL_INFO_NAME).write_text(content)
    with pytest.raises(ValueError, match=match) as excinfo:
        read_model_info(tmp_path)
    assert MODEL_INFO_NAME in str(excinfo.value)


def test_plain_hf_dir_info_is_synthesized(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = _copy(tiny_model_dir, tmp_path / "my-tiny-bert")
    assert read_model_info(model_dir) == ModelInfo(base_model="my-tiny-bert", dim=32)
    (model_dir / "1_Pooling").mkdir()
    (model_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    assert read_model_info(model_dir).pooling == "cls"


def test_written_file_is_plain_json(tmp_path: Path) -> None:
    info = ModelInfo(base_model="tiny", dim=32)
    write_model_info(tmp_path, info)
    assert json.loads((tmp_path / MODEL_INFO_NAME).read_text()) == asdict(info)


def test_import_is_light() -> None:
    code = (
        "import sys, trainer.encoder, trainer.text; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# Text templates


def test_item_text_full_record() -> None:
    record = {
        "item_id": "B1",
        "title": "  Velvet   Sofa ",
        "brand": "Acme",
        "category": "Home > Living Room > Sofas",
        "bullets": ["Seats three", "Easy  to clean."],
        "description": "<p>Deep&nbsp;red <b>velvet</b>.</p><ul><li>Oak legs</li></ul>",
        "color": "Red",
        "price": 499.0,
    }
    assert item_text(record) == (
        "Velvet Sofa. Brand: Acme. Color: Red. Category: Home > Living Room > Sofas. Seats three. "
        "Easy to clean. Deep red velvet. Oak legs"
    )


def test_item_text_skips_missing_and_empty_fields() -> None:
    assert item_text({"title": "Drill"}) == "Drill"
    assert item_text({"title": "Drill", "brand": "", "bullets": [], "description": None}) == "Drill"
    assert item_text({"title": "Drill", "bullets": ["", "  ", "18V"]}) == "Drill. 18V"
    assert item_text({}) == ""


def test_item_text_joins_without_double_periods() -> None:
    assert item_text({"title": "Acme Inc.", "brand": "Acme"}) == "Acme Inc. Brand: Acme"
    assert item_text({"title": "Wow!", "bullets": ["Big"]}) == "Wow! Big"


def test_item_text_list_category_and_string_bullets() -> None:
    record = {"title": "Cup", "category": ["Kitchen", " Mugs "], "bullets": "Holds 12 oz"}
    assert item_text(record) == "Cup. Category: Kitchen > Mugs. Holds 12 oz"


def test_item_text_is_capped_at_a_word_boundary() -> None:
    text = item_text({"title": "Cup", "description": "word " * 1000})
    assert len(text) <= MAX_ITEM_TEXT_CHARS
    assert text.endswith("word")
    long_word = item_text({"title": "x" * 5000})
    assert len(long_word) == MAX_ITEM_TEXT_CHARS


def test_query_text() -> None:
    assert query_text("  red \t velvet\nsofa ") == "red velvet sofa"
    assert query_text("") == ""
    with pytest.raises(TypeError):
        query_text(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The real packaged model


@pytest.mark.slow
def test_packaged_model_similarity() -> None:
    info = read_model_info(default_model_dir())
    assert info.base_model == "all-MiniLM-L6-v2"
    assert (info.dim, info.pooling) == (384, "mean")
    enc = load_encoder()
    assert enc.dim == 384
    sofa, couch, drill = enc.encode_queries(
        ["a red velvet sofa", "crimson velvet couch", "stainless steel cordless drill"]
    )
    assert float(sofa @ couch) > float(sofa @ drill) + 0.2
