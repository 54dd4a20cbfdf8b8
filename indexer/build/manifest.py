"""The manifest of a built version, shared by the single-machine and the Spark build."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss

from indexer.build.config import BuildConfig
from indexer.storage.manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest, ShardInfo, file_sha256
from indexer.version import vector_files


def version_manifest(
    config: BuildConfig,
    encoder: Any,
    version_dir: Path,
    *,
    version: int,
    n_items: int,
    shards: tuple[ShardInfo, ...],
    shard_builds: list[dict[str, Any]],
    encode_seconds: float,
    tuning: dict[str, Any] | None,
    search_defaults: dict[str, Any],
    extra_build: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of a version whose files are all written in `version_dir` (every file is
    checksummed); shared by the single-machine and the Spark build."""
    files = {
        p.name: file_sha256(p)
        for p in sorted(version_dir.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    devices = {b["device"] for b in shard_builds}
    return Manifest(
        schema_version=SCHEMA_VERSION,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model_fingerprint=encoder.fingerprint,
        model_path=str(Path(encoder.model_dir).resolve()),
        dim=encoder.dim,
        metric="inner_product",
        factory=config.factory,
        n_items=n_items,
        n_shards=config.shards,
        shards=shards,
        files=files,
        build={
            "device": devices.pop() if len(devices) == 1 else "mixed",
            "shards": shard_builds,
            "catalog": {
                "path": str(config.catalog.resolve()),
                "sha256": file_sha256(config.catalog),
            },
            "encode_seconds": round(encode_seconds, 3),
            "items_per_second": round(n_items / max(encode_seconds, 1e-9), 1),
            "batch_size": config.batch_size,
            "max_item_length": config.max_item_length or encoder.info.max_item_length,
            "faiss_version": faiss.__version__,
            "vectors": config.vectors,
            "vectors_bytes": sum(
                (version_dir / name).stat().st_size
                for s in range(config.shards)
                for name in vector_files(s, config.vectors)
            ),
            **({"tuning": tuning} if tuning is not None else {}),
            **(extra_build or {}),
        },
        search_defaults=search_defaults,
    )
