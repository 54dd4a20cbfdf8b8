"""Tests for trainer.model: towers, projection, and model dirs that trainer.encoder loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import make_tiny_model
from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import (
    MODEL_INFO_NAME,
    PROJECTION_FILE,
    model_fingerprint,
    read_model_info,
)
from trainer.training.batches import pad_ids, tokenize
from trainer.training.model import (
    ITEM_TOWER_DIR,
    QUERY_TOWER_DIR,
    TRAINING_METRICS_NAME,
    Tower,
    bucketed_forward,
    build_two_tower,
    save_model_dir,
)

QUERIES = ["red velvet sofa", "cordless drill", "usb c cable for laptop charger", "kids"]
ITEMS = [
    "Velvet Sofa. Brand: Acme. Category: Home > Living Room. Seats three.",
    "Stainless steel cordless drill with two batteries and a charger",
    "USB C cable, 6 ft",
    "Oak desk, 48 inch, with three drawers; easy assembly (tools included)",
    "",
]


def _encode(tower: Tower, texts: list[str], max_length: int) -> np.ndarray:
    seqs = tokenize(tower.tokenizer, texts, max_length)
    ids, mask = pad_ids(seqs, int(tower.tokenizer.pad_token_id or 0))
    tower.eval()
    with torch.no_grad():
        return tower(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def test_tower_output_is_unit_float32(tiny_model_dir: Path) -> None:
    model = build_two_tower(tiny_model_dir)
    xq = _encode(model.query_tower, QUERIES, 16)
    assert xq.shape == (4, 32) and xq.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(xq, axis=1), 1.0, atol=1e-6)
    assert model.shared_towers and model.item_tower is model.query_tower
    assert model.temperature == pytest.approx(0.05)
    # The frozen BERT pooler is not trained (and DDP does not wait for its gradient).
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(".pooler." in n for n in frozen)


@pytest.mark.parametrize(
    ("shared", "projection_dim"), [(True, None), (False, None), (True, 16), (False, 8)]
)
def test_saved_dir_loads_with_the_same_vectors(
    tmp_path: Path, tiny_model_dir: Path, shared: bool, projection_dim: int | None
) -> None:
    model = build_two_tower(
        tiny_model_dir, shared_towers=shared, projection_dim=projection_dim, seed=3
    )
    if not shared:  # make the towers differ, as training would
        with torch.no_grad():
            for p in model.item_tower.parameters():
                p.add_(0.01 * torch.randn_like(p))
    out = save_model_dir(
        model, tmp_path / "m", max_query_length=16, max_item_length=24, metrics={"a": 1}
    )
    info = read_model_info(out)
    assert info.shared_towers is shared
    assert info.dim == (projection_dim or 32)
    assert (info.max_query_length, info.max_item_length) == (16, 24)
    assert info.query_tower == ("." if shared else QUERY_TOWER_DIR)
    assert info.item_tower == ("." if shared else ITEM_TOWER_DIR)
    assert info.fingerprint == model_fingerprint(out)
    assert (out / TRAINING_METRICS_NAME).is_file()
    tower_dirs = [out] if shared else [out / QUERY_TOWER_DIR, out / ITEM_TOWER_DIR]
    for tower_dir in tower_dirs:
        assert (tower_dir / "model.safetensors").is_file()
        assert (tower_dir / PROJECTION_FILE).is_file() == (projection_dim is not None)

    encoder = load_encoder(out)
    assert encoder.dim == info.dim
    np.testing.assert_allclose(
        encoder.encode_queries(QUERIES), _encode(model.query_tower, QUERIES, 16), atol=1e-5
    )
    np.testing.assert_allclose(
        encoder.encode_items(ITEMS), _encode(model.item_tower, ITEMS, 24), atol=1e-5
    )
    if not shared:
        assert not np.allclose(
            encoder.encode_queries(QUERIES[:1]), encoder.encode_items(QUERIES[:1]), atol=1e-3
        )


def test_length_buckets_give_the_same_vectors(tiny_model_dir: Path) -> None:
    model = build_two_tower(tiny_model_dir, dropout=False)
    texts = ITEMS + QUERIES + ["a much longer text about a stainless steel drill " * 3]
    seqs = tokenize(model.item_tower.tokenizer, texts, 32)
    ids, mask = (torch.from_numpy(a) for a in pad_ids(seqs, 0))
    plain = bucketed_forward(model.item_tower, ids, mask, 1)
    for buckets in (2, 3, 5):
        np.testing.assert_allclose(
            bucketed_forward(model.item_tower, ids, mask, buckets).detach().numpy(),
            plain.detach().numpy(),
            atol=1e-6,
        )
    model.length_buckets = 2
    _, xb, _ = model(item_ids=ids, item_mask=mask)
    xb.sum().backward()  # gradients flow through the re-ordering
    assert model.item_tower.encoder.embeddings.word_embeddings.weight.grad is not None


def test_projection_starts_orthonormal(tiny_model_dir: Path) -> None:
    model = build_two_tower(tiny_model_dir, projection_dim=8, seed=1)
    w = model.query_tower.projection.weight.detach()  # (8, 32)
    np.testing.assert_allclose((w @ w.T).numpy(), np.eye(8), atol=1e-5)
    again = build_two_tower(tiny_model_dir, projection_dim=8, seed=1)
    assert torch.equal(w, again.query_tower.projection.weight.detach())
    with pytest.raises(ValueError, match="projection_dim must be in 1..32"):
        build_two_tower(tiny_model_dir, projection_dim=64)


def test_continue_from_a_saved_dir(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = build_two_tower(tiny_model_dir, shared_towers=False, projection_dim=16, pooling="cls")
    out = save_model_dir(model, tmp_path / "m", max_query_length=16, max_item_length=16)
    again = build_two_tower(out, shared_towers=False)
    assert again.dim == 16 and again.query_tower.pooling == "cls"
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="has separate query and item towers"):
        build_two_tower(out, shared_towers=True)
    with pytest.raises(ValueError, match="already projects to 16 dims"):
        build_two_tower(out, shared_towers=False, projection_dim=8)


def test_save_replaces_an_existing_dir_atomically(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "m"
    shutil.copytree(tiny_model_dir, out)
    (out / "stale.txt").write_text("old")
    model = build_two_tower(tiny_model_dir, projection_dim=16)
    save_model_dir(model, out, max_query_length=8, max_item_length=8)
    assert not (out / "stale.txt").exists()
    assert read_model_info(out).dim == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or old dirs left
    # Readable by others (a server user), not owner-only like temp files.
    assert out.stat().st_mode & 0o055 == (0o055 & ~_umask())
    assert all(p.stat().st_mode & 0o044 == (0o044 & ~_umask()) for p in out.rglob("*"))


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_encoder_rejects_a_bad_projection(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import save_file

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    save_file({"weight": torch.zeros(8, 31)}, str(model_dir / PROJECTION_FILE))
    with pytest.raises(ValueError, match=r"must hold 'weight' of shape \(dim, 32\)"):
        load_encoder(model_dir)
    (model_dir / PROJECTION_FILE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read the projection"):
        load_encoder(model_dir)


def test_projection_counts_in_the_fingerprint(tmp_path: Path) -> None:
    base = make_tiny_model(tmp_path / "base")
    a = save_model_dir(
        build_two_tower(base, projection_dim=16, seed=1),
        tmp_path / "a",
        max_query_length=8,
        max_item_length=8,
    )
    b = save_model_dir(
        build_two_tower(base, projection_dim=16, seed=2),
        tmp_path / "b",
        max_query_length=8,
        max_item_length=8,
    )
    assert model_fingerprint(a) != model_fingerprint(b)
    assert (a / MODEL_INFO_NAME).is_file()


def test_bad_options(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        build_two_tower(tmp_path / "nope")
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_two_tower(tiny_model_dir, pooling="max")
    with pytest.raises(ValueError, match="temperature must be in"):
        build_two_tower(tiny_model_dir, temperature=0.0)
