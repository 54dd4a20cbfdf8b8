"""The trainer's setup: device, precision, token ids, the step plan, the optimizer and its
schedule, ``torch.compile``, the padding-free forward, parameter digests and the ONNX export at
the end."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trainer.training.batches import SearchData, item_texts, tokenize
from trainer.training.config import TrainConfig
from trainer.training.distributed import DistContext
from trainer.training.model import TwoTowerModel
from trainer.training.padfree import PaddingFreeBert
from trainer.training.prepare import PreparedDataset

logger = logging.getLogger(__name__)


def resolve_device(device: str, ctx: DistContext) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use cpu")
        if dev.index is None:
            dev = torch.device("cuda", ctx.local_rank if ctx.enabled else 0)
    return dev


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``amp`` asks for on ``device`` (None = fp32). "auto" is bf16 on a
    GPU that supports it, if ``faster_amp`` then finds it faster there, else fp32."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    # CPU: off by default, by decision; on this repo's 2-core Zen 4 (avx512_bf16) bf16 autocast
    # cut CPU time per step by ~36 % (MiniLM, batch 32, q32/i64), so pass amp="bf16" there.
    return None


def faster_amp(
    model: TwoTowerModel, device: torch.device, batch: int, length: int, *, repeats: int = 3
) -> tuple[torch.dtype | None, dict[str, float]]:
    """Time a training step's encoder work (forward + backward of ``batch`` texts of
    ``length`` tokens through the item tower) in fp32 and under bf16 autocast; the faster wins.

    bf16 is not faster everywhere: small batches of a small model are bound by kernel launches
    (MiniLM at batch 32 on an H200 was slower in bf16). The model's gradients are cleared after.

    Returns:
        (None for fp32 or torch.bfloat16, seconds per step of each).
    """
    tower = model.item_tower
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    vocab = int(tower.encoder.config.vocab_size)
    ids = torch.randint(vocab // 2, vocab, (batch, length), device=device)
    mask = torch.ones_like(ids)
    timings: dict[str, float] = {}

    def run(dtype: torch.dtype | None) -> None:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            out = tower(ids, mask)
        out.sum().backward()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        run(dtype)  # warm-up (kernel selection, caches)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            run(dtype)
        sync()
        timings[name] = (time.perf_counter() - t0) / repeats
    torch.set_rng_state(rng)  # dropout draws here must not shift the run's stream
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    model.zero_grad(set_to_none=True)
    best = torch.bfloat16 if timings["bf16"] < timings["fp32"] else None
    logger.info(
        "amp auto: a %d x %d encoder step takes %.1f ms in fp32, %.1f ms in bf16: %s",
        batch, length, 1000 * timings["fp32"], 1000 * timings["bf16"],
        "bf16" if best else "fp32",
    )  # fmt: skip
    return best, timings


def tokenize_datasets(
    model: TwoTowerModel, datasets: list[PreparedDataset], config: TrainConfig
) -> int:
    """Token ids of every text, once: catalogs (shared between datasets), queries, eval queries
    (stored on the datasets). Returns the padding id."""
    item_tok = model.item_tower.tokenizer
    query_tok = model.query_tower.tokenizer
    by_catalog: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for prepared in datasets:
        data = prepared.data
        key = data.catalog.path
        if key not in by_catalog:
            by_catalog[key] = tokenize(item_tok, item_texts(data.catalog), config.max_item_length)
        data.item_tokens = by_catalog[key]
        if isinstance(data, SearchData):
            data.query_tokens = tokenize(query_tok, data.query_texts, config.max_query_length)
        if prepared.eval_query_texts:
            prepared.eval_query_tokens = tokenize(
                query_tok, prepared.eval_query_texts, config.max_query_length
            )
    logger.info("tokenised every text in %.1f s", time.perf_counter() - t0)
    return int(item_tok.pad_token_id or 0)


def plan_steps(
    config: TrainConfig, datasets: list[PreparedDataset], world_size: int
) -> tuple[int, int]:
    """(optimizer steps, warm-up steps) of the run."""
    global_batch = config.batch_size * world_size
    per_epoch = sum(max(1, d.data.n_examples // global_batch) for d in datasets)
    by_epochs = math.ceil((config.epochs or 1.0) * per_epoch / config.grad_accum)
    if config.max_steps is not None and config.epochs is None:
        total = config.max_steps
    elif config.max_steps is not None:
        total = min(config.max_steps, by_epochs)
    else:
        total = by_epochs
    total = max(1, total)
    warmup = config.warmup_steps if config.warmup_steps is not None else math.ceil(0.1 * total)
    return total, min(warmup, total)


def build_optimizer(
    model: TwoTowerModel, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    decay, no_decay, scale = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name == "logit_scale":
            scale.append(param)
        # The usual BERT recipe: no weight decay on biases and LayerNorm.
        elif param.ndim < 2 or "LayerNorm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if scale:
        # At a fine-tuning lr (2e-5) a learnable temperature would hardly move in a few
        # thousand steps; its log gets 100x the rate and the same schedule.
        groups.append({"params": scale, "weight_decay": 0.0, "lr": 100 * config.lr})
    # The fused kernel: one pass per parameter instead of a dozen foreach ops (on two CPU
    # cores 15 ms a step instead of 100 ms for MiniLM's 22.7M parameters).
    return torch.optim.AdamW(groups, lr=config.lr, fused=device.type in ("cuda", "cpu"))


def lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def param_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_onnx(model_dir: Path) -> None:
    """Add the ONNX query tower when the exporter and its packages are available; a model dir
    without it is still complete (the torch backend serves it), so problems only warn."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if importlib.util.find_spec("trainer.encoder.onnx_export") is None or missing:
        logger.warning(
            "no ONNX export of the query tower (missing: %s); install them (pip install "
            "'aisle[train]') and run: python -m trainer.encoder.onnx_export %s",
            ", ".join(missing) or "trainer.encoder.onnx_export",
            model_dir,
        )
        return
    from trainer.encoder.onnx_export import export_query_tower

    try:
        path = export_query_tower(model_dir)
    except (ImportError, ValueError) as exc:
        logger.warning(
            "ONNX export of %s failed (%s); the model dir is usable without it", model_dir, exc
        )
        return
    logger.info("exported the query tower to %s", path)


def compile_towers(model: TwoTowerModel, device: torch.device) -> bool:
    """Compile the towers' encoders in place with ``torch.compile`` (dynamic shapes: batches
    are padded to their own lengths); the parameters and state-dict keys stay the same.

    The compiled graph is built at the first call; a backend that cannot build (no C++
    compiler for the CPU backend, an unsupported op) fails there, so one forward pass is tried
    here and any failure turns compilation off again with a warning.

    Returns:
        True if the encoders are compiled.
    """
    towers = [model.query_tower] if model.shared_towers else [model.query_tower, model.item_tower]
    try:
        for tower in towers:
            tower.encoder.compile(dynamic=True)
        ids = torch.ones((2, 8), dtype=torch.long, device=device)
        with torch.no_grad():
            for tower in towers:
                tower(ids, torch.ones_like(ids))
    except Exception as exc:  # noqa: BLE001 (any backend failure means: run eagerly)
        logger.warning("torch.compile is off: compiling the encoders failed (%s)", exc)
        for tower in towers:
            tower.encoder._compiled_call_impl = None  # nn.Module.compile's own switch
        return False
    logger.info("encoders compiled with torch.compile (dynamic shapes)")
    return True


def use_padding_free(
    model: TwoTowerModel,
    mode: str,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    *,
    compiled: bool,
    sparse_embedding_grad: bool = False,
) -> bool:
    """Give the towers a padding-free training forward (``trainer.training.padfree``) per
    ``mode``: "auto" = on CPU, fp32 and not compiled, where the encoder supports it (else the
    Hugging Face forward, silently); "on" = wherever the encoder supports it (else ValueError);
    "off" = never. ``sparse_embedding_grad``: sparse word-embedding gradients (the caller turns
    them dense before the optimizer; not under DDP).

    Returns:
        True if the towers train padding-free.
    """
    if mode == "off" or (mode == "auto" and (device.type != "cpu" or amp_dtype or compiled)):
        return False
    towers = [model.query_tower] if model.shared_towers else [model.query_tower, model.item_tower]
    reasons = [PaddingFreeBert.unsupported(tower.encoder) for tower in towers]
    if any(reasons):
        if mode == "on":
            raise ValueError(f"padding_free = on: {'; '.join(r for r in reasons if r)}")
        return False
    for tower in towers:
        tower.padding_free = PaddingFreeBert(
            tower.encoder, sparse_embedding_grad=sparse_embedding_grad
        )
    logger.info("training forwards run padding-free (real tokens only, 16-bit dropout draws)")
    return True
