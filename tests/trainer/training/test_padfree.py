"""Tests for the padding-free training forward: the same vectors and gradients as the Hugging
Face forward, dropout with the right rate that gradient caching can replay, and the trainer's
choice of when to use it."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import make_tiny_model, train_config
from trainer.data.synthetic import write_synthetic_dataset
from trainer.training.batches import Batch
from trainer.training.gradcache import GradCache, length_chunks
from trainer.training.model import build_two_tower
from trainer.training.padfree import (
    PaddingFreeBert,
    dense_gradients,
    dropout_add,
    fast_dropout,
)
from trainer.training.run import train
from trainer.training.setup import use_padding_free


def _batch(lengths: list[int], width: int, *, left: bool = False, seed: int = 0):
    """Ids (in the tiny vocabulary) and mask of texts of ``lengths`` padded to ``width``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (len(lengths), width), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        span = slice(width - n, width) if left else slice(0, n)
        mask[row, span] = 1
    return ids * mask, mask  # pad id 0


@pytest.mark.parametrize("left", [False, True])
def test_vectors_and_gradients_equal_the_hugging_face_forward(
    tiny_model_dir: Path, left: bool
) -> None:
    model = build_two_tower(tiny_model_dir, dropout=False, shared_towers=False)
    model.train()
    tower = model.item_tower
    ids, mask = _batch([9, 3, 1, 9, 6, 2], 9, left=left)
    expected = tower(ids, mask)
    expected.pow(3).sum().backward()
    grads = {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}
    tower.zero_grad(set_to_none=True)

    tower.padding_free = PaddingFreeBert(tower.encoder)
    got = tower(ids, mask)
    got.pow(3).sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert grads and any(g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        param = dict(tower.named_parameters())[name]
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6, msg=name)
    # the padded positions are zero, and evaluation keeps the Hugging Face forward
    hidden = tower.padding_free(ids, mask)
    assert torch.all(hidden[mask == 0] == 0)
    tower.eval()
    with torch.no_grad():
        torch.testing.assert_close(tower(ids, mask), expected.detach(), rtol=1e-5, atol=1e-6)


def test_sparse_embedding_gradients_accumulate_into_a_dense_one(tiny_model_dir: Path) -> None:
    model = build_two_tower(tiny_model_dir, dropout=False)
    model.train()
    tower = model.query_tower
    batches = [_batch([5, 2, 7], 7, seed=1), _batch([3, 8, 8, 1], 8, seed=2)]
    tower.padding_free = PaddingFreeBert(tower.encoder)
    for ids, mask in batches:  # two backward calls, as gradient caching makes
        tower(ids, mask).pow(3).sum().backward()
    expected = {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}
    tower.zero_grad(set_to_none=True)

    tower.padding_free = PaddingFreeBert(tower.encoder, sparse_embedding_grad=True)
    words = tower.encoder.embeddings.word_embeddings.weight
    arriving: list[bool] = []
    words.register_hook(lambda grad: arriving.append(grad.is_sparse))
    for ids, mask in batches:
        tower(ids, mask).pow(3).sum().backward()
    assert arriving == [True, True]  # each backward call hands over a sparse gradient
    assert not words.grad.is_sparse  # accumulated into the dense one the forward set up
    grad = words.grad.clone()
    dense_gradients(tower.parameters())  # a no-op then
    assert torch.equal(words.grad, grad)
    words.grad = grad.to_sparse()  # a sparse one, had nothing been set up
    dense_gradients(tower.parameters())
    assert not words.grad.is_sparse
    assert torch.equal(words.grad, grad)
    for name, param in tower.named_parameters():
        if name in expected:
            torch.testing.assert_close(param.grad, expected[name], rtol=1e-5, atol=1e-7)
    touched = (expected["encoder.embeddings.word_embeddings.weight"] != 0).any(dim=1)
    assert 0 < int(touched.sum()) < words.shape[0]  # only the batches' tokens have a gradient


def test_cls_pooling_runs_padding_free(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "m", hidden_size=16)
    model = build_two_tower(model_dir, dropout=False, pooling="cls")
    model.train()
    ids, mask = _batch([4, 7, 2], 7)
    expected = model.query_tower(ids, mask)
    model.query_tower.padding_free = PaddingFreeBert(model.query_tower.encoder)
    torch.testing.assert_close(model.query_tower(ids, mask), expected, rtol=1e-5, atol=1e-6)


def test_fast_dropout_keeps_the_right_share_and_scales_it() -> None:
    torch.manual_seed(0)
    x = torch.ones(400_000)
    out = fast_dropout(x, 0.1)
    kept = (out != 0).float().mean().item()
    # keep probability 1 - round(0.1 * 65536) / 65536; 5 binomial standard errors
    p_keep = 1 - round(0.1 * 65536) / 65536
    assert abs(kept - p_keep) < 5 * math.sqrt(p_keep * (1 - p_keep) / x.numel())
    assert torch.allclose(out[out != 0], torch.tensor(1 / p_keep))
    assert abs(out.mean().item() - 1.0) < 0.005  # inverted dropout keeps the expectation
    for p in (0.5, 0.9):
        share = (fast_dropout(x, p) != 0).float().mean().item()
        assert abs(share - (1 - p)) < 0.01, (p, share)
    # the same RNG state gives the same mask (gradient caching replays pass 1's masks)
    torch.manual_seed(7)
    a = fast_dropout(torch.ones(1000, 3), 0.3)
    torch.manual_seed(7)
    assert torch.equal(a, fast_dropout(torch.ones(1000, 3), 0.3))
    assert not torch.equal(a, fast_dropout(torch.ones(1000, 3), 0.3))  # the stream moved on


def test_fast_dropout_is_identity_off_training_and_refuses_bad_p() -> None:
    x = torch.randn(5, 4)
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x
    for p in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="dropout p"):
            fast_dropout(x, p)


def test_dropout_add_is_dropout_then_the_residual() -> None:
    x, residual = torch.randn(300, 8), torch.randn(300, 8)
    torch.manual_seed(2)
    expected = fast_dropout(x, 0.2) + residual
    torch.manual_seed(2)
    torch.testing.assert_close(dropout_add(x, residual, 0.2), expected)
    torch.testing.assert_close(dropout_add(x, residual, 0.2, training=False), x + residual)


def test_a_cached_step_with_dropout_is_repeatable_padding_free(tiny_model_dir: Path) -> None:
    # Gradient caching replays pass 1's dropout masks from the RNG state: two identical
    # steps give identical gradients only if the padding-free dropout draws from that state.
    model = build_two_tower(tiny_model_dir)  # dropout on
    model.train()
    model.query_tower.padding_free = PaddingFreeBert(model.query_tower.encoder)
    ids, mask = _batch([5, 2, 7, 3, 6, 4, 7, 1], 7)
    seqs = [row[m.bool()].numpy() for row, m in zip(ids, mask, strict=True)]
    n = len(seqs)
    batch = Batch(
        task="search",
        item_ids=ids.numpy(),
        item_mask=mask.numpy(),
        items=np.arange(n),
        log_q=np.zeros(n, dtype=np.float32),
        mask=np.eye(n, dtype=bool),
        weights=np.ones(n, dtype=np.float32),
        query_ids=ids.numpy(),
        query_mask=mask.numpy(),
        query_chunks=length_chunks(seqs, 3, 0),
        item_chunks=length_chunks(seqs[::-1], 3, 0),
    )

    def loss_fn(xq, xb, scale):
        return torch.nn.functional.cross_entropy(xq @ xb.T * scale, torch.arange(n))

    cache = GradCache(model, model, torch.device("cpu"), contextlib.nullcontext, ddp_enabled=False)
    grads = []
    for _ in range(2):
        torch.manual_seed(3)
        cache.step(batch, loss_fn)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    assert grads[0]
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_the_trainer_chooses_when_to_run_padding_free(tiny_model_dir: Path) -> None:
    cpu = torch.device("cpu")
    model = build_two_tower(tiny_model_dir)
    assert use_padding_free(model, "auto", cpu, None, compiled=False)
    assert model.query_tower.padding_free is not None
    for kwargs in (
        {"amp_dtype": torch.bfloat16, "compiled": False},
        {"amp_dtype": None, "compiled": True},
    ):
        other = build_two_tower(tiny_model_dir)
        assert not use_padding_free(other, "auto", cpu, **kwargs)
        assert other.query_tower.padding_free is None
    other = build_two_tower(tiny_model_dir)
    assert not use_padding_free(other, "off", cpu, None, compiled=False)
    # "on" where the encoder is not a BERT: a clear error
    other.query_tower.encoder = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="padding_free = on: Linear is not a BertModel"):
        use_padding_free(other, "on", cpu, None, compiled=False)
    assert not use_padding_free(other, "auto", cpu, None, compiled=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), n_items=120, n_queries=24, n_users=10, seed=1
    )


def test_config_refuses_unknown_modes_and_dp_with_padding_free_on(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    with pytest.raises(ValueError, match="padding_free must be one of"):
        train_config(tmp_path, tiny_model_dir, data, padding_free="yes")
    with pytest.raises(ValueError, match="padding_free = on: Opacus"):
        train_config(tmp_path, tiny_model_dir, data, padding_free="on", dp_epsilon=4.0)
    train_config(tmp_path, tiny_model_dir, data, dp_epsilon=4.0)  # auto: DP keeps its forward


def test_a_cached_run_trains_padding_free(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = train_config(
        tmp_path, tiny_model_dir, data, batch_size=16, mini_batch_size=4, max_steps=3
    )
    with caplog.at_level("INFO", logger="trainer.training.setup"):
        result = train(config)
    assert "training forwards run padding-free" in caplog.text
    assert result.steps == 3 and result.pairs == 48
    assert (result.out / "model_info.json").is_file() or any(result.out.iterdir())
