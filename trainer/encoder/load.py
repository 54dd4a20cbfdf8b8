"""The encoder: query and item texts → L2-normalised float32 vectors, loaded offline.

A model dir is either a plain Hugging Face dir (config.json, safetensors, tokenizer files; one
tower shared by queries and items) or an Aisle model dir written by the trainer, whose
``aisle_model.json`` names the towers (``"."`` or a subdir each), the pooling, the max token
lengths and the output dim. A tower dir may also hold ``projection.safetensors`` (a linear map
applied after pooling, written by the trainer for a smaller output dim). torch and transformers
are imported only when a model is loaded, so importing this module stays cheap for readers of
model metadata. Model dir metadata and the fingerprint live in ``trainer.encoder.model_dir``;
``load_encoder`` picks a ``TowerBackend`` per tower: ``trainer.encoder.torch_tower`` or, for
queries, ``trainer.encoder.onnx_tower``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np

from trainer.encoder.fast_tower import (
    FAST_TOWER_DIR,
    QUERY_TOWERS,
    FastTowerInfo,
    StaticTower,
    fast_tower_dir,
    query_fingerprint,
    read_fast_tower_info,
)
from trainer.encoder.model_dir import (
    MODEL_INFO_NAME,
    ModelInfo,
    check_model_dir,
    config_max_positions,
    default_model_dir,
    model_fingerprint,
    norm_tower,
    tower_dirs,
)
from trainer.encoder.onnx_tower import QUERY_ONNX_FILE, OnnxTower, query_onnx_path
from trainer.encoder.torch_tower import load_torch_towers
from trainer.encoder.trigram import LexicalSketch

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")


class TowerBackend(Protocol):
    """A backend for one tower (``TorchTower``, ``OnnxTower``): vectors for one batch, not yet
    L2-normalised by the Encoder."""

    backend: str  # "torch", "onnx" or "static"
    dim: int
    max_positions: int

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        """texts (b,) → (b, dim) float32 pooled vectors, texts truncated to max_length tokens."""
        ...


class _LazyTower:
    """A tower loaded on first use: the torch item tower beside an ONNX query tower, so a
    process that only encodes queries never imports torch."""

    backend = "torch"

    def __init__(self, load: Callable[[], TowerBackend], *, dim: int, max_positions: int) -> None:
        self.dim = dim
        self.max_positions = max_positions
        self._load = load
        self._tower: TowerBackend | None = None
        self._lock = threading.Lock()

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        if self._tower is None:
            with self._lock:
                if self._tower is None:
                    self._tower = self._load()
        return self._tower.encode(texts, max_length)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-normalise (n, dim) float32 in place; all-zero rows stay zero (no NaN)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (n, 1)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _as_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes):
        raise ValueError("texts must be a sequence of strings, not one string; wrap it in a list")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return out


class Encoder:
    """Encodes query and item texts into vectors with the model dir's two towers.

    Attributes:
        model_dir: the model dir it was loaded from.
        info: its ModelInfo, with ``fingerprint`` filled in.
        dim: output vector size.
        fingerprint: ``model_fingerprint(model_dir)``; indexes record it to detect a model swap
            (the item side: the fast query tower is not part of it).
        query_tower: which query tower encodes queries: "full" or "fast"
            (``trainer.encoder.fast_tower``).
        query_fingerprint: ``query_fingerprint(model_dir)`` when the fast tower is in use, else
            "" (the full query tower is covered by ``fingerprint``).
        history_decay: the user tower's recency decay (``trainer.encoder.user``).
        lexical: the trigram sketch appended to both towers' vectors
            (``trainer.encoder.trigram``), or None; ``dim`` counts it.
    """

    def __init__(
        self,
        model_dir: Path,
        info: ModelInfo,
        query_tower: TowerBackend,
        item_tower: TowerBackend,
        *,
        query_tower_name: str = "full",
        query_fingerprint: str = "",
    ) -> None:
        self.model_dir = model_dir
        self.info = info
        self.lexical = (
            LexicalSketch.load(model_dir, info.lexical) if info.lexical is not None else None
        )
        self.dim = info.dim + (self.lexical.dim if self.lexical is not None else 0)
        self.fingerprint = info.fingerprint
        self.history_decay = info.history_decay
        self._query_tower = query_tower
        self._item_tower = item_tower
        self.query_tower = query_tower_name
        self.query_fingerprint = query_fingerprint

    @property
    def query_backend(self) -> str:
        """What encodes queries: "onnx" (ONNX Runtime), "torch" or "static" (numpy)."""
        return self._query_tower.backend

    @property
    def queries_inline(self) -> bool:
        """True when the query tower is thread-safe and takes microseconds (the static tower):
        a server encodes each query on its request thread, concurrently, instead of batching
        queries across requests through one encoder (``engine.search.batcher``)."""
        return self._query_tower.backend == "static"

    def encode_queries(
        self, texts: Sequence[str], *, batch_size: int = 64, max_length: int | None = None
    ) -> np.ndarray:
        """Encode query texts (pass them through ``trainer.text.query_text`` first).

        Args:
            texts: n query strings.
            batch_size: texts per forward pass.
            max_length: token limit; default ``info.max_query_length``.

        Returns:
            (n, dim) float32, L2-normalised rows (unless ``info.normalize`` is false), in input
            order; (0, dim) for no texts.
        """
        length = self.info.max_query_length if max_length is None else max_length
        return self._encode(self._query_tower, texts, batch_size, length, show_progress=False)

    def encode_items(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        show_progress: bool = False,
        max_length: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Encode item texts (built with ``trainer.text.item_text``).

        Args:
            texts: n item strings.
            batch_size: texts per forward pass.
            show_progress: draw a tqdm bar over the items.
            max_length: token limit; default ``info.max_item_length``.
            on_batch: called with the number of texts after each forward pass (a caller's
                progress bar over more than this call).

        Returns:
            (n, dim) float32, L2-normalised rows (unless ``info.normalize`` is false), in input
            order; (0, dim) for no texts.
        """
        length = self.info.max_item_length if max_length is None else max_length
        return self._encode(self._item_tower, texts, batch_size, length, show_progress, on_batch)

    def _encode(
        self,
        tower: TowerBackend,
        texts: Sequence[str],
        batch_size: int,
        max_length: int,
        show_progress: bool,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 ([CLS] + [SEP]), got {max_length!r}")
        if tower.max_positions and max_length > tower.max_positions:
            raise ValueError(
                f"max_length {max_length} exceeds the model's {tower.max_positions} positions"
            )
        texts = _as_texts(texts)
        out = np.zeros((len(texts), self.info.dim), dtype=np.float32)  # (n, towers' dim)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Longest first, so each batch pads to lengths close to its own and a too-big batch
        # fails (out of memory) on the first step rather than the last.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(texts), unit="item", desc="encode items")
        try:
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = tower.encode([texts[r] for r in rows], max_length)  # (b, dim)
                if progress is not None:
                    progress.update(len(rows))
                if on_batch is not None:
                    on_batch(len(rows))
        finally:
            if progress is not None:
                progress.close()
        if not self.info.normalize:
            return out
        out = l2_normalize(out)
        return self.lexical.combine(out, texts) if self.lexical is not None else out


def load_encoder(
    model_dir: str | Path | None = None,
    *,
    device: str = "cpu",
    num_threads: int | None = None,
    backend: str = "auto",
    query_tower: str = "auto",
) -> Encoder:
    """Load a model dir's towers for inference, offline (nothing is downloaded).

    Args:
        model_dir: a plain Hugging Face dir or an Aisle model dir; None → ``default_model_dir()``.
        device: torch device, e.g. "cpu" or "cuda:0".
        num_threads: if given, CPU threads for inference: ``torch.set_num_threads``
            (process-wide) and ONNX Runtime's intra-op threads.
        backend: "torch"; "onnx": queries on ONNX Runtime from the export
            (``trainer.encoder.onnx_export``), which must exist, be current and the device be "cpu";
            "auto": "onnx" when it can, else "torch". With ONNX queries, the item tower is
            loaded on torch at the first ``encode_items`` call, so a process that only encodes
            queries never imports torch. It applies to the full query tower.
        query_tower: "full"; "fast": the distilled query tower in ``query_fast/``
            (``trainer.encoder.fast_tower``, always on the CPU), which must exist and match the
            item side; "auto": "fast" when the dir has a usable one, the device is the CPU and
            backend is not "torch", else "full".

    Raises:
        ValueError: the dir is missing or not a model dir, the towers disagree with
            aisle_model.json, device / num_threads / backend is invalid, backend="onnx" and
            the export is missing, stale or unloadable, or query_tower="fast" and the fast
            tower is missing, unloadable or made for another item tower.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if query_tower not in QUERY_TOWERS:
        raise ValueError(f"query_tower must be one of {QUERY_TOWERS}, got {query_tower!r}")
    path = default_model_dir() if model_dir is None else Path(model_dir)
    info = check_model_dir(path)
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")

    fingerprint = model_fingerprint(path)
    if info.fingerprint and info.fingerprint != fingerprint:
        logger.warning(
            "%s records fingerprint %s but the files hash to %s; the model changed after it "
            "was written, using the files' fingerprint",
            path / MODEL_INFO_NAME,
            info.fingerprint[:12],
            fingerprint[:12],
        )
    info = replace(info, fingerprint=fingerprint)

    query_dir, item_tower = norm_tower(info.query_tower), norm_tower(info.item_tower)
    fast: TowerBackend | None = None
    if query_tower == "fast" or (
        query_tower == "auto" and backend != "torch" and str(device).split(":")[0] == "cpu"
    ):
        fast = _load_fast_tower(path, info, num_threads=num_threads, required=query_tower == "fast")
    # A query tower that needs no torch: the fast one, else the full tower's ONNX export.
    cpu_tower: TowerBackend | None = fast
    if cpu_tower is None and backend != "torch":
        cpu_tower = _load_onnx_query_tower(
            path, info, device=device, num_threads=num_threads, required=backend == "onnx"
        )
    if cpu_tower is None:
        towers = load_torch_towers(path, info, tower_dirs(info), device, num_threads)
        query_backend: TowerBackend = towers[query_dir]
        item_backend: TowerBackend = towers[item_tower]
    else:
        query_backend = cpu_tower
        item_backend = _LazyTower(
            lambda: load_torch_towers(path, info, [item_tower], device, num_threads)[item_tower],
            dim=info.dim,
            max_positions=config_max_positions(path / item_tower),
        )
    for name, length, tower_backend in (
        ("max_query_length", info.max_query_length, query_backend),
        ("max_item_length", info.max_item_length, item_backend),
    ):
        if tower_backend.max_positions and length > tower_backend.max_positions:
            raise ValueError(
                f"{name}={length} in the model info of {str(path)!r} exceeds the tower's "
                f"{tower_backend.max_positions} positions; lower it"
            )
    encoder = Encoder(
        path,
        info,
        query_tower=query_backend,
        item_tower=item_backend,
        query_tower_name="full" if fast is None else "fast",
        query_fingerprint="" if fast is None else query_fingerprint(path),
    )
    logger.info(
        "loaded encoder %s (%s, dim %d, %s towers) on %s, queries on the %s tower (%s), "
        "fingerprint %s",
        path,
        info.base_model,
        info.dim,
        "shared" if info.shared_towers else "separate",
        device,
        encoder.query_tower,
        encoder.query_backend,
        fingerprint[:12],
    )
    return encoder


def _load_fast_tower(
    path: Path, info: ModelInfo, *, num_threads: int | None, required: bool
) -> OnnxTower | StaticTower | None:
    """The fast query tower of ``path`` (``trainer.encoder.fast_tower``), or None (logged) when
    there is none or it cannot serve; ``required`` → raise instead."""
    hint = "redo it with aisle-train distill-query"

    def unusable(reason: str, level: int) -> None:
        if required:
            raise ValueError(f"query_tower='fast': {reason}")
        logger.log(level, "%s; encoding queries with the full tower", reason)

    try:
        fast_info: FastTowerInfo | None = read_fast_tower_info(path)
    except ValueError as exc:
        return unusable(str(exc), logging.WARNING)
    if fast_info is None:
        return unusable(
            f"{str(path)!r} has no fast query tower ({FAST_TOWER_DIR}/); make one with "
            "aisle-train distill-query",
            logging.DEBUG,
        )
    if fast_info.item_fingerprint != info.fingerprint:
        return unusable(
            f"the fast query tower of {str(path)!r} was distilled against item tower "
            f"{fast_info.item_fingerprint[:12]}, the model is now {info.fingerprint[:12]}; {hint}",
            logging.WARNING,
        )
    if fast_info.dim != info.dim:
        return unusable(
            f"the fast query tower of {str(path)!r} outputs {fast_info.dim} dims, "
            f"{MODEL_INFO_NAME} says dim={info.dim}; {hint}",
            logging.WARNING,
        )
    tower_dir = fast_tower_dir(path)
    tower: OnnxTower | StaticTower
    try:
        if fast_info.kind == "static":
            tower = StaticTower(tower_dir)
        else:
            tower = OnnxTower(tower_dir / QUERY_ONNX_FILE, num_threads=num_threads)
    except ImportError as exc:
        return unusable(f"the fast query tower cannot run here ({exc})", logging.INFO)
    except ValueError as exc:
        return unusable(str(exc), logging.WARNING)
    if isinstance(tower, OnnxTower) and tower.fingerprint != info.fingerprint:
        return unusable(
            f"the fast query tower {str(tower_dir)!r} was exported for model "
            f"{tower.fingerprint[:12]}, the model is {info.fingerprint[:12]}; {hint}",
            logging.WARNING,
        )
    if tower.dim != info.dim:
        return unusable(
            f"the fast query tower {str(tower_dir)!r} outputs {tower.dim} dims but "
            f"{MODEL_INFO_NAME} says dim={info.dim}; {hint}",
            logging.WARNING,
        )
    return tower


def _load_onnx_query_tower(
    path: Path, info: ModelInfo, *, device: str, num_threads: int | None, required: bool
) -> OnnxTower | None:
    """The ONNX query tower, or None (logged) when it cannot serve; ``required`` → raise."""
    onnx_path = query_onnx_path(path, info)
    export_hint = f"python -m trainer.encoder.onnx_export {path}"

    def unusable(reason: str, level: int) -> None:
        if required:
            raise ValueError(f"backend='onnx': {reason}")
        logger.log(level, "%s; encoding queries with torch", reason)

    if str(device).split(":")[0] != "cpu":
        return unusable(f"the ONNX query tower runs on the CPU, not {device!r}", logging.DEBUG)
    if not onnx_path.is_file():
        return unusable(
            f"{str(path)!r} has no ONNX query tower ({onnx_path.name}); export it with "
            f"{export_hint}",
            logging.DEBUG,
        )
    try:
        tower = OnnxTower(onnx_path, num_threads=num_threads)
    except ImportError as exc:
        return unusable(f"onnxruntime/tokenizers cannot be imported ({exc})", logging.INFO)
    except ValueError as exc:
        return unusable(str(exc), logging.WARNING)
    if tower.fingerprint != info.fingerprint:
        return unusable(
            f"the ONNX query tower {str(onnx_path)!r} is stale: exported from model "
            f"{tower.fingerprint[:12]}, the files are now {info.fingerprint[:12]}; re-export it "
            f"with {export_hint}",
            logging.WARNING,
        )
    if tower.dim != info.dim:
        return unusable(
            f"the ONNX query tower {str(onnx_path)!r} outputs {tower.dim} dims but "
            f"{MODEL_INFO_NAME} says dim={info.dim}; re-export it with {export_hint}",
            logging.WARNING,
        )
    return tower
