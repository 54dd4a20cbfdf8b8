"""Benchmark training throughput: Aisle's trainer vs sentence-transformers' MNRL fit, pairs/s.

Both sides fine-tune the same model (the packaged all-MiniLM-L6-v2 unless ``--model``) on the
same (query, item text) pairs (Home Depot train labels, grade 2; texts from
``trainer.text.query_text`` / ``item_text``), with the same batch size, optimizer steps,
learning rate, LR warm-up, weight decay, clipping, threads and precision, one after the other,
each in a fresh process (spawn):

* Aisle: ``trainer.training.run.train`` with shared towers, query/item lengths 32/64, in-batch
  negatives only (no hard or labeled negatives), logQ correction on, no evaluation, no
  checkpoints, no ONNX export.
* sentence-transformers, the way its documentation recommends for this loss:
  ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss(model)`` (scale 20 =
  temperature 0.05, as Aisle's), ``BatchSamplers.NO_DUPLICATES``, ``max_seq_length`` 64 (one
  length for both columns), a ``datasets.Dataset`` with ``anchor``/``positive`` columns, the
  default optimizer and data loader; no evaluation, no saving, no reporting.

Throughput is measured in the steady state: the wall time between the ends of consecutive
optimizer steps, the first ``warmup_steps`` steps left out, so each side pays for its own
batch assembly (Aisle pads pre-tokenised ids; sentence-transformers tokenises each batch in
its collator). Reported per side: pairs/s = pairs per step / mean step seconds, the step's
own rate (sentence-transformers: on_step_begin to on_step_end, after its batch is fetched and
tokenised; Aisle: the trainer's step time, which includes padding its pre-tokenised batch),
the set-up time before the first step (model load, data, Aisle's up-front tokenisation), and
the tokens per pair each side fed the encoder (a forward hook on the word-embedding lookup):
one pass with a graph, padded or real, and all passes (gradient caching encodes twice), which
makes the padding each side pays for visible. The ratio is Aisle / sentence-
transformers (>1 = Aisle faster). The fp32 row is the headline; a bf16 autocast row follows
where the CPU has native bf16 (or the GPU supports it). Other work on the machine skews both
sides: the load average is recorded before each run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

# Nothing may be downloaded: the model is a local dir and the data is local files. Set before
# transformers / huggingface_hub are imported (here and in the spawned workers).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from benchmarks.common import append_jsonl, require_shared_data  # noqa: E402
from benchmarks.common import machine as common_machine  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """One run: optimizer steps per side and what both sides share.

    ``warmup_steps`` are timed-out steps (left out of the throughput), not the LR warm-up;
    the LR warm-up is ``lr_warmup_fraction`` of the steps on both sides (Aisle's default).
    """

    preset: str
    steps: int
    warmup_steps: int
    batch_size: int = 32
    max_query_length: int = 32
    max_item_length: int = 64
    lr: float = 2e-5
    lr_warmup_fraction: float = 0.1
    weight_decay: float = 0.01  # Aisle's default; sentence-transformers' would be 0
    max_grad_norm: float = 1.0
    temperature: float = 0.05  # = 1 / MultipleNegativesRankingLoss scale 20
    seed: int = 0
    # Gradient caching on both sides: Aisle's mini_batch_size, sentence-transformers'
    # CachedMultipleNegativesRankingLoss(mini_batch_size=...); None = plain in-batch softmax.
    mini_batch_size: int | None = None
    # Aisle only: its padding-free forward (trainer.training.padfree; auto = on for fp32 on CPU).
    padding_free: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2 (one warm-up + one timed), got {self.steps}")
        if not 1 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"warmup_steps must be in [1, steps) = [1, {self.steps}): the first step's "
                f"interval has no start to measure from, got {self.warmup_steps}"
            )
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}")
        if self.mini_batch_size is not None and not 1 <= self.mini_batch_size <= self.batch_size:
            raise ValueError(
                f"mini_batch_size must be in [1, batch_size={self.batch_size}], got "
                f"{self.mini_batch_size}"
            )

    @property
    def lr_warmup_steps(self) -> int:
        """LR warm-up steps, as Aisle computes them (ceil of the fraction)."""
        return min(self.steps, math.ceil(self.lr_warmup_fraction * self.steps))

    @property
    def st_max_seq_length(self) -> int:
        """sentence-transformers has one length for both columns: the longer one."""
        return max(self.max_query_length, self.max_item_length)


PRESETS = {
    "S": BenchConfig("S", steps=40, warmup_steps=5),
    "M": BenchConfig("M", steps=200, warmup_steps=10),
    "L": BenchConfig("L", steps=600, warmup_steps=20),
    # Large batches with gradient caching on both sides: a CPU size and a GPU size.
    "C": BenchConfig("C", steps=5, warmup_steps=1, batch_size=256, mini_batch_size=32),
    "G": BenchConfig("G", steps=40, warmup_steps=5, batch_size=4096, mini_batch_size=512),
}


@dataclass(frozen=True)
class RunSpec:
    """What one worker process needs (picklable)."""

    config: BenchConfig
    precision: str  # "fp32" or "bf16"
    device: str  # "cpu" or "cuda"
    threads: int
    model: str  # model dir
    catalog: str
    train: str


# ---------------------------------------------------------------------------------------------
# Measuring inside a worker


class _EncoderShapes:
    """Records (batch, padded length, graph) of every encoder forward in this process.

    A global forward hook on the word-embedding lookup (the ``nn.Embedding`` with
    ``vocab_size`` rows, which sees the padded input ids once per encoder call; Aisle's
    padding-free forward looks up the real tokens only, as a 1-D tensor, recorded as
    (tokens, 0): their count is known, not how many texts they came from), and whether autograd
    records (gradient caching's first pass does not): global, because Aisle builds its model
    inside ``train()``, and on the lookup rather than the Hugging Face model because
    sentence-transformers calls ``model.forward`` directly, which skips module hooks (cost: a
    few microseconds a call, against steps of ~a second).
    """

    def __init__(self, vocab_size: int) -> None:
        import torch
        from torch import nn
        from torch.nn.modules.module import register_module_forward_hook

        self.calls: list[tuple[int, int, bool]] = []

        def hook(module: Any, args: Any, output: Any) -> None:
            if (
                isinstance(module, nn.Embedding)
                and module.num_embeddings == vocab_size
                and args
                and args[0].dim() in (1, 2)
            ):
                ids = args[0]  # 1-D: Aisle's padding-free forward, the real tokens only
                width = int(ids.shape[1]) if ids.dim() == 2 else 0
                self.calls.append((int(ids.shape[0]), width, torch.is_grad_enabled()))

        self._handle = register_module_forward_hook(hook)

    def take(self) -> list[tuple[int, int, bool]]:
        """The calls since the last ``take`` (one step's, in order)."""
        calls, self.calls = self.calls, []
        return calls

    def close(self) -> None:
        self._handle.remove()


@dataclass
class StepTiming:
    end: float  # perf_counter seconds at the end of the optimizer step
    # Aisle: its step's own seconds (batch from pre-tokenised ids, forward, backward, optimizer);
    # sentence-transformers: on_step_begin -> on_step_end (after the collator tokenised it).
    compute_s: float
    pairs: int  # training pairs in the step
    calls: list[tuple[int, int, bool]]  # encoder (batch, padded length, graph) calls of the step


def training_pairs(spec: RunSpec) -> tuple[list[str], list[str]]:
    """The (query text, item text) of every positive pair, exactly as Aisle's trainer reads
    them (``prepare_datasets`` over the same files and settings)."""
    from trainer.text import item_text
    from trainer.training.prepare import prepare_datasets

    with tempfile.TemporaryDirectory(prefix="bench_train_pairs_") as tmp:
        (prepared,) = prepare_datasets(_aisle_config(spec, Path(tmp)))
    data = prepared.data
    catalog = data.catalog
    texts: dict[int, str] = {}
    items = []
    for row in data.pair_item.tolist():
        if row not in texts:
            texts[row] = item_text(catalog.record(row))
        items.append(texts[row])
    queries = [data.query_texts[qi] for qi in data.pair_query.tolist()]
    return queries, items


def _vocab_size(model_dir: str) -> int:
    """The encoder's vocabulary size (config.json of the dir or of its query tower); 0 if
    unknown, which turns the padded-length report off."""
    for path in (Path(model_dir) / "config.json", Path(model_dir) / "query_tower" / "config.json"):
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0


def _aisle_config(spec: RunSpec, tmp: Path) -> Any:
    from trainer.training.config import DatasetSpec, TrainConfig

    c = spec.config
    return TrainConfig(
        # partial_weight 0: only grade-2 pairs are positives (grade 1 stays out of the
        # negatives, Aisle's masking); no labeled or mined negatives: in-batch only, like MNRL.
        datasets=(DatasetSpec(catalog=Path(spec.catalog), train=Path(spec.train)),),
        out=tmp / "model",
        base_model=Path(spec.model),
        shared_towers=True,
        max_query_length=c.max_query_length,
        max_item_length=c.max_item_length,
        temperature=c.temperature,
        logq=True,
        partial_weight=0.0,
        hard_negatives=0,
        labeled_negatives=False,
        batch_size=c.batch_size,
        mini_batch_size=c.mini_batch_size,
        padding_free=c.padding_free,
        lr=c.lr,
        weight_decay=c.weight_decay,
        warmup_steps=c.lr_warmup_steps,
        max_steps=c.steps,
        max_grad_norm=c.max_grad_norm,
        amp="bf16" if spec.precision == "bf16" else "off",
        eval_every=0,
        holdout_fraction=0.0,
        checkpoint_every=0,
        checkpoint_dir=tmp / "checkpoints",
        tensorboard_dir=tmp / "tensorboard",
        seed=c.seed,
        device=spec.device,
        num_threads=spec.threads,
        progress=False,
        export_onnx=False,
    )


def run_aisle(spec: RunSpec) -> dict[str, Any]:
    """Train with Aisle's trainer in this process; returns the timings (see ``summarize``)."""
    started = time.perf_counter()
    import torch

    from trainer.training.prepare import prepare_datasets
    from trainer.training.run import train

    torch.set_num_threads(spec.threads)
    steps: list[StepTiming] = []
    with tempfile.TemporaryDirectory(prefix="bench_train_aisle_") as tmp:
        config = _aisle_config(spec, Path(tmp))
        datasets = prepare_datasets(config)
        shapes = _EncoderShapes(_vocab_size(spec.model))

        def on_step(step: int, logs: dict[str, Any]) -> None:
            now = time.perf_counter()
            steps.append(StepTiming(now, float(logs["seconds"]), int(logs["pairs"]), shapes.take()))

        try:
            result = train(config, on_step=on_step, datasets=datasets)
        finally:
            shapes.close()
    first_start = steps[0].end - steps[0].compute_s if steps else time.perf_counter()
    out = summarize(steps, spec.config.warmup_steps, first_start - started)
    out["trainer_pairs_per_s_all_steps"] = round(result.pairs_per_second, 2)
    return out


def run_st(spec: RunSpec) -> dict[str, Any]:
    """Train with sentence-transformers' documented v3+ recipe in this process."""
    started = time.perf_counter()
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(spec.threads)
    hf_logging.set_verbosity_warning()
    c = spec.config
    queries, items = training_pairs(spec)
    if len(queries) // c.batch_size < c.steps:
        raise ValueError(
            f"{c.steps} steps of {c.batch_size} pairs run past one epoch of {len(queries)} "
            "pairs; the per-step pair count assumes full batches: use fewer --steps"
        )
    dataset = Dataset.from_dict({"anchor": queries, "positive": items})
    torch.manual_seed(c.seed)
    model = SentenceTransformer(spec.model, device=spec.device)
    model.max_seq_length = c.st_max_seq_length
    if c.mini_batch_size is None:
        loss = MultipleNegativesRankingLoss(model, scale=1.0 / c.temperature)
    else:
        loss = CachedMultipleNegativesRankingLoss(
            model, scale=1.0 / c.temperature, mini_batch_size=c.mini_batch_size
        )
    steps: list[StepTiming] = []
    shapes = _EncoderShapes(_vocab_size(spec.model))

    class Timer(TrainerCallback):
        begin = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.begin = time.perf_counter()
            shapes.take()  # nothing runs the encoder between steps; keep the step's own calls

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            # Full batches: the run stays inside one epoch (checked above).
            steps.append(StepTiming(now, now - self.begin, c.batch_size, shapes.take()))

    with tempfile.TemporaryDirectory(prefix="bench_train_st_") as tmp:
        args = SentenceTransformerTrainingArguments(**_st_arguments(spec, tmp))
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[Timer()]
        )
        try:
            trainer.train()
        finally:
            shapes.close()
    first_start = steps[0].end - steps[0].compute_s if steps else time.perf_counter()
    out = summarize(steps, c.warmup_steps, first_start - started)
    out["optim"] = str(getattr(args.optim, "value", args.optim))
    return out


def _st_arguments(spec: RunSpec, output_dir: str) -> dict[str, Any]:
    """The SentenceTransformerTrainingArguments used (also reported as ``st_settings``)."""
    c = spec.config
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": c.batch_size,
        "batch_sampler": BatchSamplers.NO_DUPLICATES,
        "max_steps": c.steps,
        "learning_rate": c.lr,
        "warmup_steps": c.lr_warmup_steps,
        "lr_scheduler_type": "linear",
        "weight_decay": c.weight_decay,
        "max_grad_norm": c.max_grad_norm,
        "bf16": spec.precision == "bf16",
        "use_cpu": spec.device == "cpu",
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": c.seed,
    }


def summarize(steps: list[StepTiming], warmup: int, setup_s: float) -> dict[str, Any]:
    """Steady-state rates from the steps after ``warmup``.

    ``pairs_per_s`` = mean pairs per step / mean wall seconds between step ends;
    ``compute_pairs_per_s`` the same over compute-only seconds. ``tokens_per_pair``: the tokens
    the encoder calls with a graph saw (one forward and backward of every pair: padded, or the
    real ones on a padding-free side, whose calls give token counts only);
    ``tokens_fed_per_pair``: every call's, gradient caching's first pass included. Query and
    item padded lengths only where a step is one query call and one item call (no caching, not
    padding-free).
    """
    if len(steps) <= warmup:
        raise RuntimeError(f"only {len(steps)} steps ran, need more than {warmup} to time one")
    timed = steps[warmup:]
    intervals = [s.end - p.end for p, s in zip(steps[warmup - 1 :], timed, strict=False)]
    pairs = [s.pairs for s in timed]
    packed = any(n == 0 for s in timed for _, n, _ in s.calls)  # (tokens, 0): padding-free
    pair_calls = not packed and all(len(s.calls) == 2 for s in timed)
    q_len, i_len = (  # token-weighted mean padded lengths of the query and the item calls
        sum(s.calls[k][0] * s.calls[k][1] for s in timed) / sum(s.calls[k][0] for s in timed)
        if pair_calls
        else None
        for k in (0, 1)
    )
    fed = sum(b * max(n, 1) for s in timed for b, n, _ in s.calls)
    graph = sum(b * max(n, 1) for s in timed for b, n, grad in s.calls if grad)
    mean_pairs = statistics.fmean(pairs)
    mean_step = statistics.fmean(intervals)
    mean_compute = statistics.fmean(s.compute_s for s in timed)
    return {
        "steps": len(steps),
        "timed_steps": len(timed),
        "pairs_per_step": round(mean_pairs, 2),
        "pairs_per_s": round(mean_pairs / mean_step, 2),
        "step_s_mean": round(mean_step, 4),
        "step_s_median": round(statistics.median(intervals), 4),
        "step_s_stdev": round(statistics.stdev(intervals), 4) if len(intervals) > 1 else 0.0,
        "compute_pairs_per_s": round(mean_pairs / mean_compute, 2),
        "compute_s_mean": round(mean_compute, 4),
        "setup_s": round(setup_s, 2),
        "encoder_calls_per_step": round(statistics.fmean(len(s.calls) for s in timed), 2),
        "padded_query_len_mean": None if q_len is None else round(q_len, 2),
        "padded_item_len_mean": None if i_len is None else round(i_len, 2),
        "tokens_per_pair": round(graph / sum(pairs), 2) if sum(pairs) else None,
        "tokens_fed_per_pair": round(fed / sum(pairs), 2) if sum(pairs) else None,
    }


# ---------------------------------------------------------------------------------------------
# The driver


SIDES: dict[str, Callable[[RunSpec], dict[str, Any]]] = {"aisle": run_aisle, "st": run_st}


def run_side(side: str, spec: RunSpec) -> dict[str, Any]:
    """Run one side in a fresh spawned process (its own torch, threads and allocator)."""
    load = round(os.getloadavg()[0], 2)
    t = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        out = pool.submit(SIDES[side], spec).result()
    out["process_wall_s"] = round(time.perf_counter() - t, 1)
    out["load_avg_1m_before"] = load
    return out


def bf16_supported(device: str) -> bool:
    """Native bf16: a CUDA device that supports it, or a CPU with avx512_bf16 / amx_bf16."""
    if device == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(
    config: BenchConfig,
    precisions: list[str],
    device: str,
    threads: int,
    model: Path,
    data: Path,
) -> dict[str, Any]:
    base = RunSpec(
        config=config,
        precision="fp32",
        device=device,
        threads=threads,
        model=str(model),
        catalog=str(data / "products.jsonl.gz"),
        train=str(data / "labels_train.jsonl.gz"),
    )
    rows = []
    for precision in precisions:
        spec = replace(base, precision=precision)
        aisle = run_side("aisle", spec)
        st = run_side("st", spec)
        rows.append(
            {
                "precision": precision,
                "aisle": aisle,
                "st": st,
                "ratio": round(aisle["pairs_per_s"] / st["pairs_per_s"], 3),
                "compute_ratio": round(aisle["compute_pairs_per_s"] / st["compute_pairs_per_s"], 3),
            }
        )
        print_row(rows[-1])
    main_row = next((r for r in rows if r["precision"] == "fp32"), rows[0])
    st_settings = {
        k: str(v) if k == "batch_sampler" else v
        for k, v in _st_arguments(base, "<tmp>").items()
        if k != "output_dir"
    }
    st_settings.update(
        {
            "loss": "MultipleNegativesRankingLoss(model, scale=20.0, similarity_fct=cos_sim)"
            if config.mini_batch_size is None
            else "CachedMultipleNegativesRankingLoss(model, scale=20.0, "
            f"mini_batch_size={config.mini_batch_size})",
            "max_seq_length": config.st_max_seq_length,
            "dataset": "datasets.Dataset.from_dict({'anchor': queries, 'positive': item_texts})",
            "bf16": "True in the bf16 row",
            "optim": main_row["st"].get("optim"),
            "dataloader": "defaults (num_workers 0, tokenised per batch by the collator)",
        }
    )
    aisle_settings = {
        "shared_towers": True,
        "max_query_length": config.max_query_length,
        "max_item_length": config.max_item_length,
        "logq": True,
        "hard_negatives": 0,
        "labeled_negatives": False,
        "partial_weight": 0.0,
        "amp": "off (fp32 row) / bf16 (bf16 row)",
        "length_buckets": "default (2 on CPU, 1 on GPU)",
        "mini_batch_size": config.mini_batch_size,
        "prefetch": "default (2 batches, a thread)",
        "eval": "none",
        "checkpoints": "none",
        "export_onnx": False,
    }
    return {
        "precision": main_row["precision"],
        "aisle_pairs_per_s": main_row["aisle"]["pairs_per_s"],
        "st_pairs_per_s": main_row["st"]["pairs_per_s"],
        "ratio": main_row["ratio"],
        "rows": rows,
        "st_settings": st_settings,
        "aisle_settings": aisle_settings,
        "device": device,
        "threads": threads,
        "model": str(model),
        "useful_tflops": {
            side: useful_tflops(model, main_row[side], config) for side in ("aisle", "st")
        },
    }


def useful_tflops(model: Path, side: dict[str, Any], config: BenchConfig) -> float | None:
    """The model FLOP/s a side's pairs/s stands for, in TFLOP/s: 6 x (encoder parameters outside
    the embeddings) x (tokens per pair of the pass with a graph) x pairs/s (forward + backward of
    every token; attention scores, the loss and gradient caching's first pass left out: they are
    overhead). Divide by the device's peak for the fraction it reaches."""
    for path in (model / "config.json", model / "query_tower" / "config.json"):
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
            h, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
            inner = int(cfg.get("intermediate_size", 4 * h))
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    else:
        return None
    params = layers * (4 * h * h + 2 * h * inner)
    tokens = side.get("tokens_per_pair") or (config.max_query_length + config.max_item_length)
    return round(6 * params * tokens * side["pairs_per_s"] / 1e12, 4)


def print_row(row: dict[str, Any]) -> None:
    header = (
        f"{'side':<8}{'prec':<6}{'pairs/s':>9}{'compute':>9}{'step s':>8}{'median':>8}"
        f"{'setup s':>9}{'q len':>7}{'i len':>7}{'tok/pair':>9}{'fed/pair':>9}"
    )
    print(header)
    for side in ("aisle", "st"):
        r = row[side]
        print(
            f"{side:<8}{row['precision']:<6}{r['pairs_per_s']:>9.1f}{r['compute_pairs_per_s']:>9.1f}"
            f"{r['step_s_mean']:>8.3f}{r['step_s_median']:>8.3f}{r['setup_s']:>9.1f}"
            f"{r['padded_query_len_mean'] or 0:>7.1f}{r['padded_item_len_mean'] or 0:>7.1f}"
            f"{r['tokens_per_pair'] or 0:>9.1f}{r['tokens_fed_per_pair'] or 0:>9.1f}"
        )
    print(
        f"ratio aisle/st ({row['precision']}): {row['ratio']} "
        f"(compute only: {row['compute_ratio']})"
    )


def machine(device: str) -> dict[str, Any]:
    import torch

    packages = ("transformers", "sentence-transformers", "datasets", "accelerate", "tokenizers")
    return {
        **common_machine(*packages),
        "cuda": torch.cuda.is_available(),
        "device": device,
        "bf16_native": bf16_supported(device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="S")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="DIR/train.jsonl")
    parser.add_argument(
        "--amp",
        choices=("fp32", "bf16", "both"),
        default="both",
        help="precision rows; 'both' (default) skips bf16 where it is not native",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads per side"
    )
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: packaged)")
    parser.add_argument("--data", type=Path, default=None, help="Home Depot data dir")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak TFLOP/s at the row's precision: adds the fraction reached",
    )
    over = parser.add_argument_group("overrides of the preset")
    over.add_argument("--padding-free", choices=("auto", "on", "off"), help="Aisle's (auto)")
    over.add_argument("--steps", type=int, help="optimizer steps per side")
    over.add_argument("--warmup-steps", type=int, help="first steps left out of the timing")
    args = parser.parse_args(argv)

    config = PRESETS[args.preset]
    overrides = {k: getattr(args, k) for k in ("steps", "warmup_steps", "padding_free")}
    try:
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    missing = [m for m in ("sentence_transformers", "datasets", "accelerate")
               if importlib.util.find_spec(m) is None]  # fmt: skip
    if missing:
        parser.error(f"missing {', '.join(missing)}: pip install -c constraints.txt '.[bench]'")
    data = args.data or require_shared_data("homedepot")
    for name in ("products.jsonl.gz", "labels_train.jsonl.gz"):
        if not (data / name).is_file():
            parser.error(f"{data / name} is not there (--data must be the Home Depot data dir)")
    from trainer.encoder.model_dir import default_model_dir

    model = args.model or default_model_dir()
    device = resolve_device(args.device)
    precisions = ["fp32", "bf16"] if args.amp == "both" else [args.amp]
    if args.amp == "both" and not bf16_supported(device):
        print(f"no native bf16 on this {device}: the bf16 row is skipped")
        precisions = ["fp32"]

    info = machine(device)
    print(f"config: {asdict(config)}")
    print(f"machine: {info}")
    started = time.perf_counter()
    results = run(config, precisions, device, args.threads, model, data)
    flops = results["useful_tflops"]
    print(f"useful model TFLOP/s: aisle {flops['aisle']}, sentence-transformers {flops['st']}")
    if args.peak_tflops:
        for side in ("aisle", "st"):
            if flops[side] is not None:
                flops[f"{side}_fraction_of_peak"] = round(flops[side] / args.peak_tflops, 5)
        print(f"fraction of the {args.peak_tflops} TFLOP/s peak: {flops}")
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "benchmarks.bench_train", *given])
    record = {
        "bench": "train",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": info,
        "results": results,
        "command": command,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = args.out / "train.jsonl"
    append_jsonl(out, record)
    print(
        f"aisle {results['aisle_pairs_per_s']} pairs/s, sentence-transformers "
        f"{results['st_pairs_per_s']} pairs/s, ratio {results['ratio']} ({results['precision']})"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
