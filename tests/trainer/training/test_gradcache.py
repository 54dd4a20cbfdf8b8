"""Tests for large-batch training: gradient caching equals the full-batch gradient, bf16 and
fp32 steps learn, the prefetch thread yields the feed's batches, and runs with the cache on
resume exactly after SIGTERM (also during an evaluation) and after a hard kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import train_config
from trainer.data.catalog import read_catalog
from trainer.data.labels import read_labels
from trainer.data.synthetic import write_synthetic_dataset
from trainer.text import item_text
from trainer.training.batches import (
    epoch_batches,
    mine_hard_negatives,
    rng_for,
    search_batch,
    search_data,
    tokenize,
)
from trainer.training.checkpoints import CheckpointDir
from trainer.training.config import DatasetSpec
from trainer.training.distributed import DistContext
from trainer.training.feed import BatchFeed
from trainer.training.gradcache import GradCache, length_chunks
from trainer.training.losses import sampled_softmax_loss
from trainer.training.model import build_two_tower
from trainer.training.prefetch import Prefetcher
from trainer.training.prepare import prepare_datasets
from trainer.training.run import train
from trainer.training.selection import Selection


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), n_items=200, n_queries=30, n_users=40, seed=0
    )


def _batch(model, data: dict[str, Path], size: int, chunk: int | None, hard: int = 2):
    """A search batch of ``size`` pairs with ``hard`` mined negatives per pair (C > B)."""
    catalog = read_catalog(data["products"])
    sd = search_data("t", catalog, read_labels(data["labels_train"]), partial_weight=0.5)
    sd.item_tokens = tokenize(
        model.item_tower.tokenizer, [item_text(r) for r in catalog.records()], 32
    )
    sd.query_tokens = tokenize(model.query_tower.tokenizer, sd.query_texts, 16)
    xq = np.random.default_rng(0).standard_normal((len(sd.query_ids), 8)).astype(np.float32)
    xb = np.random.default_rng(1).standard_normal((len(catalog), 8)).astype(np.float32)
    sd.mined = mine_hard_negatives(xq, xb, sd.relevant, (0, 20))
    rows = epoch_batches(sd.batch_keys(), size, rng_for(0, 1))[0]
    batch = search_batch(
        sd, rows, hard_negatives=hard, labeled_negatives=True, rng=rng_for(0, 2), pad_id=0
    )
    if chunk is not None:
        queries = sd.pair_query[rows].tolist()
        batch.query_chunks = length_chunks([sd.query_tokens[q] for q in queries], chunk, 0)
        batch.item_chunks = length_chunks(
            [sd.item_tokens[r] for r in batch.items.tolist()], chunk, 0
        )
    return batch


def _loss_fn(batch, symmetric: bool):
    def loss(xq, xb, scale):
        return sampled_softmax_loss(
            xq,
            xb,
            temperature=1.0 / scale,
            log_q=torch.from_numpy(batch.log_q),
            mask=torch.from_numpy(batch.mask),
            weights=torch.from_numpy(batch.weights),
            symmetric=symmetric,
        )

    return loss


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("symmetric", [False, True])
def test_cached_gradient_equals_the_full_batch_gradient(
    tiny_model_dir: Path, data: dict[str, Path], shared: bool, symmetric: bool
) -> None:
    model = build_two_tower(
        tiny_model_dir,
        dropout=False,
        shared_towers=shared,
        learnable_temperature=True,
        projection_dim=16,
    )
    full = _batch(model, data, 16, None)
    assert len(full.items) > full.size  # the hard negatives are extra columns
    loss_fn = _loss_fn(full, symmetric)
    xq, xb, scale = model(*(torch.from_numpy(x) for x in (
        full.query_ids, full.query_mask, full.item_ids, full.item_mask)))  # fmt: skip
    expected_loss = loss_fn(xq, xb, scale)
    expected_loss.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)

    cached = _batch(model, data, 16, 3)  # mini-batches of 3: uneven chunks, C/3 item calls
    cache = GradCache(model, model, torch.device("cpu"), contextlib.nullcontext, ddp_enabled=False)
    forwards: list[bool] = []
    hook = model.register_forward_hook(lambda *_: forwards.append(torch.is_grad_enabled()))
    out = cache.step(cached, _loss_fn(cached, symmetric))
    hook.remove()
    got = _grads(model)
    calls = len(cached.item_chunks or [])
    # pass 1's last call keeps its graph: pass 3 encodes only the others again
    assert forwards == [False] * (calls - 1) + [True] * calls
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    assert got.keys() == expected.keys() and "logit_scale" in got
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in expected.values())


def test_cached_step_reuses_the_dropout_masks_and_keeps_the_rng_stream(
    tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    # With dropout on, pass 3 must see pass 1's masks: then two identical steps give identical
    # gradients, and the RNG ends where pass 1 left it.
    model = build_two_tower(tiny_model_dir)
    model.train()
    batch = _batch(model, data, 12, 4)
    cache = GradCache(model, model, torch.device("cpu"), contextlib.nullcontext, ddp_enabled=False)
    grads = []
    for _ in range(2):
        torch.manual_seed(5)
        out = cache.step(batch, _loss_fn(batch, False))
        grads.append(_grads(model))
        model.zero_grad(set_to_none=True)
        after = torch.rand(1)
    assert out.loss.isfinite()
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name
    torch.manual_seed(5)
    with torch.no_grad():
        for q, i in cache._calls(batch):  # noqa: SLF001 (pass 1's calls, same RNG draws)
            model(*cache._inputs(q, i))  # noqa: SLF001
    assert torch.equal(torch.rand(1), after)


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
@pytest.mark.parametrize("chunk", [None, 4])
def test_bf16_and_fp32_steps_reduce_the_loss(
    tiny_model_dir: Path, data: dict[str, Path], amp, chunk
) -> None:
    torch.manual_seed(0)
    model = build_two_tower(tiny_model_dir, dropout=False)
    batch = _batch(model, data, 16, chunk, hard=0)
    loss_fn = _loss_fn(batch, False)

    def autocast():
        return torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext()

    cache = GradCache(model, model, torch.device("cpu"), autocast, ddp_enabled=False)

    def step() -> float:
        if chunk is not None:
            return cache.step(batch, loss_fn).loss.item()
        with autocast():
            xq, xb, scale = model(*(torch.from_numpy(x) for x in (
                batch.query_ids, batch.query_mask, batch.item_ids, batch.item_mask)))  # fmt: skip
        loss = loss_fn(xq, xb, scale)
        loss.backward()
        return loss.item()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        losses.append(step())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert losses[-1] < losses[0] - 1e-3, losses


def _assert_same_batch(a, b) -> None:
    assert a[0] == b[0]
    for field in ("query_ids", "query_mask", "item_ids", "item_mask", "items", "mask", "log_q"):
        assert np.array_equal(getattr(a[1], field), getattr(b[1], field)), field
    for x, y in zip(a[1].item_chunks, b[1].item_chunks, strict=True):
        assert all(np.array_equal(u, v) for u, v in zip(x, y, strict=True))


def test_prefetch_yields_the_feeds_batches(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    config = train_config(
        tmp_path,
        tiny_model_dir,
        data,
        datasets=(
            DatasetSpec(catalog=data["products"], train=data["labels_train"]),
            DatasetSpec(catalog=data["products"], train=data["labels_train"], name="b"),
        ),
        hard_negatives=2,
        mini_batch_size=3,
    )
    model = build_two_tower(tiny_model_dir)

    def feed():
        datasets = prepare_datasets(config)
        for d in datasets:
            d.data.item_tokens = tokenize(
                model.item_tower.tokenizer, [item_text(r) for r in d.data.catalog.records()], 32
            )
            d.data.query_tokens = tokenize(model.query_tower.tokenizer, d.data.query_texts, 16)
            d.data.mined = [np.arange(5, dtype=np.int64) + q for q in range(len(d.data.mined))]
        return datasets, BatchFeed(config, datasets, DistContext(), pad_id=0)

    plain_data, plain = feed()
    threaded_data, inner = feed()
    threaded = Prefetcher(inner, depth=3)
    try:
        for n in range(12):
            _assert_same_batch(plain.next(), threaded.next())
            if n == 5:  # new mined negatives: batches built ahead must be rebuilt
                for d in (*plain_data, *threaded_data):
                    d.data.mined = [m + 7 for m in d.data.mined]
                threaded.invalidate()
            if n == 8:  # a checkpoint's state is the consumed position, not the thread's
                assert threaded.state() == plain.state()
    finally:
        threaded.close()
    restored = Prefetcher(feed()[1], depth=2)
    restored.restore(plain.state())
    try:
        for d in restored.feed.datasets:
            d.data.mined = [m + 7 for m in d.data.mined]
        _assert_same_batch(plain.next(), restored.next())
    finally:
        restored.close()


def _digest_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}


def _cached_run(tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], **kwargs):
    common = {
        "datasets": (
            DatasetSpec(
                catalog=data["products"], train=data["labels_train"], dev=data["labels_dev"]
            ),
        ),
        "max_steps": 6,
        "batch_size": 12,
        "mini_batch_size": 5,
        "grad_accum": 2,
        "hard_negatives": 1,
        "mine_every": 2,
        "learnable_temperature": True,
        "eval_every": 2,
        "patience": 10,
        "warmup_steps": 2,
        "checkpoint_every": 2,
    }
    return train_config(tmp_path, tiny_model_dir, data, **{**common, **kwargs})


def test_sigterm_saves_and_resume_matches_a_straight_run(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], monkeypatch
) -> None:
    from trainer.training.loop import TrainingInterrupted

    straight = train(_cached_run(tmp_path / "a", tiny_model_dir, data))
    assert [h["step"] for h in straight.history] == [2, 4, 6]
    assert "dev (" in straight.history[0]["evaluated_on"]
    assert "full catalog (200 items)" in straight.history[0]["evaluated_on"]

    # SIGTERM during step 3: the run finishes step 3, checkpoints it and stops.
    def term_at_2(step: int, logs: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    killed = _cached_run(tmp_path / "b", tiny_model_dir, data)
    with pytest.raises(TrainingInterrupted, match="after step 3"):
        train(killed, on_step=term_at_2)
    assert CheckpointDir(killed.checkpoint_root).steps() == [2, 3]
    assert not killed.out.exists()
    # SIGTERM during the evaluation of step 4: its checkpoint was written before it.
    evaluate = Selection.evaluate

    def term_in_eval(self, step: int):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self, step)

    monkeypatch.setattr(Selection, "evaluate", term_in_eval)
    resumed = _cached_run(tmp_path / "b", tiny_model_dir, data, resume=True)
    with pytest.raises(TrainingInterrupted, match="after step 4"):
        train(resumed)
    state = json.loads((CheckpointDir(killed.checkpoint_root).latest() / "state.json").read_text())
    assert state["step"] == 4 and state["pending_eval"] is True
    monkeypatch.setattr(Selection, "evaluate", evaluate)
    done = train(resumed)  # evaluates step 4 first, then trains on
    assert done.param_digests == straight.param_digests
    assert [h["metric"] for h in done.history] == [h["metric"] for h in straight.history]
    assert _digest_files(done.out) == _digest_files(straight.out)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


@pytest.mark.slow
def test_hard_kill_with_the_cache_on_resumes_to_the_same_parameters(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    settings = {
        "max_steps": 150,
        "eval_every": 0,
        "checkpoint_every": 10,
        "datasets": (DatasetSpec(catalog=data["products"], train=data["labels_train"]),),
    }
    straight = train(_cached_run(tmp_path / "a", tiny_model_dir, data, **settings))
    config = _cached_run(tmp_path / "b", tiny_model_dir, data, **settings)
    path = tmp_path / "config.json"
    values = config.to_dict()
    path.write_text(json.dumps(values), encoding="utf-8")
    command = [sys.executable, "-m", "trainer.cli", "--config", str(path), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = CheckpointDir(config.checkpoint_root)
    deadline = time.monotonic() + 120
    while not checkpoints.steps() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    steps = checkpoints.steps()
    assert steps and steps[-1] < 150, "the run ended before it could be killed"
    resumed = subprocess.run(
        [*command, "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((config.out / "training_metrics.json").read_text())
    assert metrics["steps"] == 150
    assert metrics["param_digests"] == straight.param_digests


def test_amp_auto_times_both_precisions_and_leaves_no_trace(tiny_model_dir: Path) -> None:
    from trainer.training.setup import faster_amp

    model = build_two_tower(tiny_model_dir)
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    dtype, timings = faster_amp(model, torch.device("cpu"), 4, 8, repeats=1)
    assert dtype in (None, torch.bfloat16)
    assert set(timings) == {"fp32", "bf16"} and all(t > 0 for t in timings.values())
    assert (dtype is None) == (timings["fp32"] <= timings["bf16"])
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.rand(1), expected)  # the run's random stream is untouched


def test_sigterm_during_mining_stops_at_once_and_resume_matches_a_straight_run(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], monkeypatch
) -> None:
    """Mining encodes the whole catalog (an hour on a CPU for a real one): a SIGTERM there
    stops the run at once, not after it, and loses nothing."""
    import trainer.training.loop as loop_module
    from trainer.training.loop import TrainingInterrupted

    straight = train(_cached_run(tmp_path / "a", tiny_model_dir, data))
    mine = loop_module.mine_hard_negatives
    calls: list[int] = []

    def term_while_mining(step: int):
        def mine_and_term(*args, **kwargs):
            calls.append(step)
            if len(calls) == step:
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, mid-refresh
                raise AssertionError("SIGTERM did not stop the refresh")
            return mine(*args, **kwargs)

        return mine_and_term

    # before the first step: nothing trained, nothing saved, nothing lost
    monkeypatch.setattr(loop_module, "mine_hard_negatives", term_while_mining(1))
    first = _cached_run(tmp_path / "b", tiny_model_dir, data)
    with pytest.raises(TrainingInterrupted, match="after step 0"):
        train(first)
    assert CheckpointDir(first.checkpoint_root).steps() == []
    # the re-mining after step 2 (mine_every 2): step 2 is saved with the refresh still due
    calls.clear()
    monkeypatch.setattr(loop_module, "mine_hard_negatives", term_while_mining(2))
    with pytest.raises(TrainingInterrupted, match="after step 2"):
        train(first)
    state = json.loads((CheckpointDir(first.checkpoint_root).latest() / "state.json").read_text())
    assert state["step"] == 2 and state["pending_refresh"] is True
    assert state["pending_eval"] is True
    monkeypatch.setattr(loop_module, "mine_hard_negatives", mine)
    done = train(_cached_run(tmp_path / "b", tiny_model_dir, data, resume=True))
    assert done.param_digests == straight.param_digests
    assert [h["metric"] for h in done.history] == [h["metric"] for h in straight.history]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
