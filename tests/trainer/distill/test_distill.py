"""Tests for trainer.distill: the distillation loop, the variants, distill-query's CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_catalog
from trainer.cli import main as train_main
from trainer.data.catalog import read_catalog
from trainer.distill.queries import synthesised_queries
from trainer.distill.run import DistillConfig, dense_part, distill_query
from trainer.distill.students import (
    FitSettings,
    StaticStudent,
    TransformerStudent,
    fit,
    sif_weights,
    student_layers,
    student_vectors,
    token_vectors,
)
from trainer.encoder.fast_tower import read_fast_tower_info
from trainer.encoder.load import l2_normalize, load_encoder
from trainer.encoder.model_dir import model_fingerprint
from trainer.encoder.torch_tower import TorchTower
from trainer.text import item_text

QUERIES = [
    "a red velvet sofa",
    "usb c cable",
    "kids",
    "oak desk with three drawers",
    "blue cotton shirt",
    "zzqx 42!",
]
# The int8 tower's vectors against the float tower's: every row's cosine at least this.
INT8_MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("distill_catalog") / "products.jsonl"
    write_catalog(path, n=200, seed=3)
    return path


@pytest.fixture(scope="module")
def pairs(catalog_path: Path, tiny_model_dir: Path):
    """(train texts, held-out texts, teacher query vectors, their items' teacher vectors)."""
    catalog = read_catalog(catalog_path)
    pairs = synthesised_queries(catalog, limit=400, seed=0)
    texts = [t for t, _ in pairs]
    rows = [r for _, r in pairs]
    encoder = load_encoder(tiny_model_dir, backend="torch", query_tower="full")
    dim = encoder.info.dim
    teacher_q = dense_part(encoder.encode_queries(texts), dim)
    items = dense_part(encoder.encode_items([item_text(catalog.record(r)) for r in rows]), dim)
    return texts, teacher_q, items


def test_synthesised_queries_are_short_shop_queries_with_their_item(catalog_path: Path) -> None:
    catalog = read_catalog(catalog_path)
    pairs = synthesised_queries(catalog, limit=100, seed=0)
    assert 50 <= len(pairs) <= 100
    assert pairs == synthesised_queries(catalog, limit=100, seed=0)  # deterministic
    for text, row in pairs:
        assert 1 <= len(text.split()) <= 8
        title = str(catalog.record(row)["title"]).lower()
        record_text = " ".join(str(v).lower() for v in catalog.record(row).values())
        assert any(word in title or word in record_text for word in text.split())


def test_student_layers_are_evenly_spaced_and_keep_the_last() -> None:
    assert student_layers(6, 1) == [5]
    assert student_layers(6, 2) == [0, 5]
    assert student_layers(6, 3) == [0, 2, 5] or student_layers(6, 3) == [0, 3, 5]
    with pytest.raises(ValueError, match="1..6 layers"):
        student_layers(6, 7)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, axis=1)))


def _centred_cosine(student: np.ndarray, teacher: np.ndarray) -> float:
    """Mean cosine after removing the teacher's mean vector from both: a random tiny BERT puts
    every text near one direction, which plain cosine would mostly measure."""
    mean = teacher.mean(axis=0, keepdims=True)
    return _cosine(l2_normalize(student - mean), l2_normalize(teacher - mean))


@pytest.mark.parametrize("kind", ["static", "transformer"])
def test_distillation_brings_the_student_closer_to_the_teacher_on_held_out_queries(
    kind: str, tiny_model_dir: Path, pairs
) -> None:
    texts, teacher_q, items = pairs
    n_train = int(len(texts) * 0.8)
    tower = TorchTower(tiny_model_dir, pooling="mean", device="cpu")
    if kind == "static":
        vectors = l2_normalize(token_vectors(tower)) * sif_weights(tower.tokenizer, texts)[:, None]
        student = StaticStudent(vectors, tower.tokenizer)
        settings = FitSettings(steps=150, lr=1e-2, batch_size=32)
    else:  # the tiny teacher's 2 layers cut to 1, its weights jolted so that it starts off
        import torch

        student = TransformerStudent(tower, student_layers(2, 1))
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for param in student.module.encoder.parameters():
                param.add_(torch.randn_like(param) * 0.3)
        settings = FitSettings(steps=150, lr=2e-3, batch_size=32)
    held_out, held_teacher = texts[n_train:], teacher_q[n_train:]
    before = _centred_cosine(student_vectors(student, held_out, 32), held_teacher)
    losses = fit(student, texts[:n_train], teacher_q[:n_train], items[:n_train], settings)
    after = _centred_cosine(student_vectors(student, held_out, 32), held_teacher)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    assert after > before + 0.05, (before, after)
    # The teacher itself is untouched by training the student.
    fresh = TorchTower(tiny_model_dir, pooling="mean", device="cpu")
    got = l2_normalize(tower.encode(held_out, 32))
    np.testing.assert_allclose(got, l2_normalize(fresh.encode(held_out, 32)), atol=1e-6)


def test_distill_static_writes_a_fast_tower_into_a_copy_with_the_teachers_fingerprint(
    tiny_model_dir: Path, catalog_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fast"
    result = distill_query(
        DistillConfig(
            teacher=tiny_model_dir,
            out=out,
            catalog=catalog_path,
            variant="static",
            synth_queries=400,
            fit=FitSettings(steps=150, lr=1e-2, batch_size=32),
        )
    )
    info = read_fast_tower_info(out)
    assert info == result.info
    assert info.kind == "static" and info.variant == "static"
    assert info.item_fingerprint == model_fingerprint(tiny_model_dir) == model_fingerprint(out)
    metrics = info.metrics
    assert metrics["heldout_cosine"] > metrics["heldout_cosine_before"]
    fast = load_encoder(out)  # auto: the fast tower
    full = load_encoder(out, query_tower="full")
    assert (fast.query_tower, fast.query_backend) == ("fast", "static")
    assert (full.query_tower, full.query_backend) == ("full", "onnx")
    assert fast.fingerprint == full.fingerprint
    xf, xq = fast.encode_queries(QUERIES), full.encode_queries(QUERIES)
    assert xf.shape == xq.shape
    np.testing.assert_allclose(np.linalg.norm(xf[:-1], axis=1), 1.0, atol=1e-5)
    assert _cosine(xf, xq) > 0.5
    # Items still come from the full item tower: identical vectors either way.
    np.testing.assert_array_equal(fast.encode_items(QUERIES), full.encode_items(QUERIES))


def test_int8_tower_matches_the_float_tower_within_tolerance(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "int8"
    assert train_main(["distill-query", "--teacher", str(tiny_model_dir), "--out", str(out),
                       "--variant", "int8"]) == 0  # fmt: skip
    info = read_fast_tower_info(out)
    assert (info.kind, info.variant) == ("onnx", "int8")
    fast = load_encoder(out, query_tower="fast")
    full = load_encoder(out, query_tower="full")
    assert (fast.query_tower, fast.query_backend) == ("fast", "onnx")
    xf, xq = fast.encode_queries(QUERIES), full.encode_queries(QUERIES)
    cosines = np.sum(xf * xq, axis=1)
    assert cosines.min() >= INT8_MIN_COSINE, cosines
    assert not np.array_equal(xf, xq)  # it is a different (quantised) graph
    # int8 weights (the tiny model's size is mostly its tokenizer and embedding table)
    int8_size = (out / "query_fast" / "query_tower.onnx").stat().st_size
    assert int8_size < (out / "query_tower.onnx").stat().st_size


def test_distill_query_cli_reports_bad_settings(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    code = train_main(
        ["distill-query", "--teacher", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "needs --catalog" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    code = train_main(
        ["distill-query", "--teacher", str(tiny_model_dir), "--out", str(tmp_path / "full"),
         "--variant", "int8"]
    )  # fmt: skip
    assert code == 2
    assert "already exists and is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_distill_student_exports_a_smaller_onnx_tower(
    tiny_model_dir: Path, catalog_path: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "student"
    code = train_main(
        ["distill-query", "--teacher", str(tiny_model_dir), "--out", str(out),
         "--catalog", str(catalog_path), "--variant", "student", "--layers", "1",
         "--steps", "100", "--lr", "3e-3", "--synth-queries", "300"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["variant"] == "student-1l"
    # A random tiny BERT's layers barely move its vectors, so the 1-layer cut starts next to the
    # teacher already (that distillation closes a gap is tested above): it must stay there.
    assert summary["metrics"]["heldout_cosine"] > 0.95
    student_size = (out / "query_fast" / "query_tower.onnx").stat().st_size
    assert student_size < (out / "query_tower.onnx").stat().st_size
    fast = load_encoder(out, query_tower="fast")
    assert fast.query_backend == "onnx"
    assert fast.encode_queries(QUERIES).shape == (len(QUERIES), fast.dim)
