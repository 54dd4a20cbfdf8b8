"""The index version manifest: what a version holds, which model made it, and file checksums."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.io import write_atomic

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "IndexFormatError",
    "Manifest",
    "ModelMismatchError",
    "ShardInfo",
    "file_sha256",
    "load_manifest",
    "save_manifest",
    "verify_files",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_HASH_CHUNK = 1 << 20  # 1 MiB reads: large enough to be fast, small enough for any file size


class IndexFormatError(ValueError):
    """An index version is corrupt, incomplete or written by an unknown schema.

    The message says which file and what is wrong with it.
    """


class ModelMismatchError(IndexFormatError):
    """The index was built with a different model than the one the caller expects."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard's files (names relative to the version dir) and its item count."""

    shard: int
    count: int
    index_file: str
    vectors_file: str
    rows_file: str


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to trust and open one index version (``manifest.json``)."""

    schema_version: int
    version: int
    created_at: str  # ISO 8601, UTC
    model_fingerprint: str
    model_path: str
    dim: int
    metric: str  # "inner_product"
    factory: str
    n_items: int
    n_shards: int
    shards: tuple[ShardInfo, ...]
    files: dict[str, str] = field(default_factory=dict)  # relative name -> sha256 hex
    build: dict[str, Any] = field(default_factory=dict)
    search_defaults: dict[str, Any] = field(default_factory=dict)
    # Highest update-log seq folded into this version (indexer.storage.update_log); a live index
    # replays only newer records. Manifests written before live updates existed load as 0.
    applied_seq: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON-able data (shards as a list of objects)."""
        data = dataclasses.asdict(self)
        data["shards"] = [dataclasses.asdict(s) for s in self.shards]
        return data


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (files may be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_manifest(manifest: Manifest, path: str | Path) -> None:
    """Write ``manifest`` as JSON to ``path`` atomically (temp file + os.replace)."""
    text = json.dumps(manifest.to_json_dict(), indent=2, sort_keys=False) + "\n"
    write_atomic(path, text)


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise IndexFormatError(f"{where}: missing field '{key}'")
    value = data[key]
    # bool is an int subclass; a manifest with "dim": true is corrupt, not dim 1.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise IndexFormatError(f"{where}: field '{key}' must be {_kind_name(kind)}, got bool")
    if not isinstance(value, kind):
        raise IndexFormatError(
            f"{where}: field '{key}' must be {_kind_name(kind)}, got {type(value).__name__}"
        )
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _parse_shard(data: Any, i: int, where: str) -> ShardInfo:
    where_i = f"{where}: shards[{i}]"
    if not isinstance(data, dict):
        raise IndexFormatError(f"{where_i} must be an object, got {type(data).__name__}")
    info = ShardInfo(
        shard=_require(data, "shard", int, where_i),
        count=_require(data, "count", int, where_i),
        index_file=_require(data, "index_file", str, where_i),
        vectors_file=_require(data, "vectors_file", str, where_i),
        rows_file=_require(data, "rows_file", str, where_i),
    )
    if info.shard != i:
        raise IndexFormatError(f"{where_i}: shard number is {info.shard}, expected {i}")
    if info.count < 0:
        raise IndexFormatError(f"{where_i}: count must be >= 0, got {info.count}")
    return info


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a ``manifest.json``.

    Raises:
        IndexFormatError: the file is missing, not JSON, of an unknown schema version, or has
            missing / mistyped / inconsistent fields. The message names the file.
    """
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexFormatError(f"{where}: manifest not found (is this an index version?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{where}: cannot read manifest: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(data, dict):
        raise IndexFormatError(f"{where}: must hold a JSON object, got {type(data).__name__}")

    schema_version = _require(data, "schema_version", int, where)
    if schema_version != SCHEMA_VERSION:
        raise IndexFormatError(
            f"{where}: schema_version {schema_version} is not supported (this reader knows "
            f"{SCHEMA_VERSION}); rebuild the index with this version of aisle, or upgrade aisle"
        )
    shards_data = _require(data, "shards", list, where)
    shards = tuple(_parse_shard(s, i, where) for i, s in enumerate(shards_data))
    files = _require(data, "files", dict, where)
    for name, digest in files.items():
        if not isinstance(digest, str) or len(digest) != 64:
            raise IndexFormatError(f"{where}: files['{name}'] is not a sha256 hex digest")

    manifest = Manifest(
        schema_version=schema_version,
        version=_require(data, "version", int, where),
        created_at=_require(data, "created_at", str, where),
        model_fingerprint=_require(data, "model_fingerprint", str, where),
        model_path=_require(data, "model_path", str, where),
        dim=_require(data, "dim", int, where),
        metric=_require(data, "metric", str, where),
        factory=_require(data, "factory", str, where),
        n_items=_require(data, "n_items", int, where),
        n_shards=_require(data, "n_shards", int, where),
        shards=shards,
        files=dict(files),
        build=dict(_require(data, "build", dict, where)),
        search_defaults=dict(_require(data, "search_defaults", dict, where)),
        applied_seq=_require(data, "applied_seq", int, where) if "applied_seq" in data else 0,
    )
    _check_consistent(manifest, where)
    return manifest


def _check_consistent(m: Manifest, where: str) -> None:
    if m.dim < 1:
        raise IndexFormatError(f"{where}: dim must be >= 1, got {m.dim}")
    if m.applied_seq < 0:
        raise IndexFormatError(f"{where}: applied_seq must be >= 0, got {m.applied_seq}")
    if m.metric != "inner_product":
        raise IndexFormatError(f"{where}: unknown metric '{m.metric}' (expected 'inner_product')")
    if m.n_shards != len(m.shards) or m.n_shards < 1:
        raise IndexFormatError(
            f"{where}: n_shards is {m.n_shards} but {len(m.shards)} shards are listed"
        )
    total = sum(s.count for s in m.shards)
    if total != m.n_items:
        raise IndexFormatError(f"{where}: shard counts sum to {total}, but n_items is {m.n_items}")
    for s in m.shards:
        for name in (s.index_file, s.vectors_file, s.rows_file):
            if name not in m.files:
                raise IndexFormatError(f"{where}: shard {s.shard} file '{name}' has no checksum")


def verify_files(version_dir: str | Path, manifest: Manifest) -> None:
    """Check every file listed in ``manifest.files`` exists in ``version_dir`` with its sha256.

    Raises:
        IndexFormatError: naming the first missing or corrupt file.
    """
    version_dir = Path(version_dir)
    for name, expected in manifest.files.items():
        # Names come from a file on disk: refuse anything that would escape the version dir.
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise IndexFormatError(f"{version_dir}: manifest lists an unsafe file name '{name}'")
        path = version_dir / name
        if not path.is_file():
            raise IndexFormatError(f"{path}: missing (listed in the manifest)")
        actual = file_sha256(path)
        if actual != expected:
            raise IndexFormatError(
                f"{path}: checksum mismatch (sha256 {actual[:12]}..., manifest says "
                f"{expected[:12]}...): the file is corrupt or was changed after the build"
            )
    logger.debug("verified %d files in %s", len(manifest.files), version_dir)
