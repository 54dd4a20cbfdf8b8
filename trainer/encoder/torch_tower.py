"""The torch tower backend: pooling, the optional projection, HF model loading (lazy torch)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trainer.encoder.model_dir import MODEL_INFO_NAME, POOLINGS, PROJECTION_FILE, ModelInfo


def pool_embeddings(hidden: Any, attention_mask: Any, pooling: str) -> Any:
    """Pool token vectors into one vector per text (torch tensors; training uses it too).

    Args:
        hidden: (batch, seq, dim) float token vectors (``last_hidden_state``).
        attention_mask: (batch, seq) int/bool, 1 for real tokens, 0 for padding.
        pooling: "mean" (mean over real tokens) or "cls" (the first token).

    Returns:
        (batch, dim) tensor, same dtype as ``hidden``.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    summed = (hidden * mask).sum(dim=1)  # (batch, dim)
    counts = mask.sum(dim=1).clamp(min=1.0)  # (batch, 1); a fully padded row stays zero
    return summed / counts


@contextlib.contextmanager
def no_transformers_progress_bar() -> Iterator[None]:
    """Turn transformers' progress bars off inside the block (restored afterwards)."""
    # transformers 5 draws a "Loading weights" bar on every from_pretrained; a server loading a
    # model should not write bars to stderr.
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_hf_model(tower_dir: Path) -> tuple[Any, Any]:
    """A tower dir's Hugging Face tokenizer and float32 ``AutoModel``, offline (ValueError naming
    the dir if transformers cannot load it)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tower_dir), local_files_only=True)
        with no_transformers_progress_bar():
            model = AutoModel.from_pretrained(
                str(tower_dir), local_files_only=True, dtype=torch.float32
            )
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError/... here
        raise ValueError(
            f"cannot load a Hugging Face model from {str(tower_dir)!r}: {exc}"
        ) from exc
    return tokenizer, model


def load_projection(tower_dir: str | Path, hidden_size: int) -> dict[str, Any] | None:
    """The tower's optional projection (``PROJECTION_FILE``) as float32 torch tensors, or None.

    Returns:
        {"weight": (dim, hidden_size) tensor, "bias": (dim,) tensor if present}, or None when the
        tower has no projection file.

    Raises:
        ValueError: the file is unreadable or its shapes do not fit ``hidden_size``.
    """
    path = Path(tower_dir) / PROJECTION_FILE
    if not path.is_file():
        return None
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types on a corrupt file
        raise ValueError(f"cannot read the projection {str(path)!r}: {exc}") from exc
    weight = tensors.get("weight")
    bias = tensors.get("bias")
    extra = sorted(set(tensors) - {"weight", "bias"})
    if weight is None or weight.ndim != 2 or weight.shape[1] != hidden_size or extra:
        shape = None if weight is None else tuple(weight.shape)
        raise ValueError(
            f"{str(path)!r} must hold 'weight' of shape (dim, {hidden_size}) and optionally "
            f"'bias' of shape (dim,), got weight {shape} and extra tensors {extra}; re-export "
            "the model with the Aisle trainer"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"{str(path)!r}: 'bias' has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)"
        )
    out = {"weight": weight.to(torch.float32)}
    if bias is not None:
        out["bias"] = bias.to(torch.float32)
    return out


class TorchTower:
    """One tower on torch (a ``trainer.encoder.load.TowerBackend``): HF tokenizer + AutoModel +
    pooling + the optional projection; raw pooled vectors, not normalised."""

    backend = "torch"

    def __init__(self, tower_dir: Path, *, pooling: str, device: str) -> None:
        import torch

        self._torch = torch
        self.pooling = pooling
        self.device = torch.device(device)
        self.tokenizer, model = load_hf_model(tower_dir)
        self.model = model.to(self.device).eval()
        hidden_size = int(model.config.hidden_size)
        self.projection = load_projection(tower_dir, hidden_size)
        if self.projection is not None:
            self.projection = {k: v.to(self.device) for k, v in self.projection.items()}
        self.dim = (
            hidden_size if self.projection is None else int(self.projection["weight"].shape[0])
        )
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        # Fast tokenizers mutate their truncation/padding state per call and raise "Already
        # borrowed" when two threads call them at once (the server encodes from many threads).
        self._tokenizer_lock = threading.Lock()

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        """texts (b,) → (b, dim) float32 pooled vectors, texts truncated to max_length tokens."""
        torch = self._torch
        with self._tokenizer_lock:
            batch = self.tokenizer(
                texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state  # (b, seq, dim)
            pooled = pool_embeddings(hidden, batch["attention_mask"], self.pooling)  # (b, hidden)
            if self.projection is not None:
                pooled = torch.nn.functional.linear(
                    pooled, self.projection["weight"], self.projection.get("bias")
                )  # (b, dim)
        return pooled.to(torch.float32).cpu().numpy()


def load_torch_towers(
    path: Path, info: ModelInfo, tower_dirs: list[str], device: str, num_threads: int | None
) -> dict[str, TorchTower]:
    """tower path → its TorchTower, for the named (normalised) towers of the model dir ``path``;
    ValueError when torch is missing, the device unusable or a tower's dim is not ``info.dim``."""
    # Offline first, before transformers reads its environment; local_files_only below is the
    # guarantee, these stop any hub lookups by code that ignores it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
    except ImportError as exc:
        raise ValueError(
            f"loading the torch tower(s) {tower_dirs} of {str(path)!r} needs torch, which "
            f"cannot be imported ({exc}); only the query tower has an ONNX export"
        ) from exc

    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from exc
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    if num_threads is not None:
        torch.set_num_threads(num_threads)

    towers: dict[str, TorchTower] = {}
    for tower in tower_dirs:
        towers[tower] = TorchTower(path / tower, pooling=info.pooling, device=device)
    for tower, backend in towers.items():
        if backend.dim != info.dim:
            raise ValueError(
                f"tower {tower!r} of {str(path)!r} outputs {backend.dim} dims but "
                f"{MODEL_INFO_NAME} says dim={info.dim}; fix the file or the tower"
            )
    return towers
