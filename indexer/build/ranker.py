"""Put a ranker into an index version: at build time (``--ranker``), or onto the current
version without re-embedding (``attach_ranker``: a new version whose files are hard links to the
current one's, plus the ranker).

The ranker file is checked against the version first (``Ranker.check``: the towers and the
catalog fields it was trained on), copied in as ``RANKER_FILE`` (checksummed in the manifest
like every file) and summarised in the manifest's ``build["ranker"]``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from indexer.lexical.files import LEXICAL_META_FILE
from indexer.ranking.fields import present_fields
from indexer.ranking.model import RANKER_FILE, Ranker
from indexer.storage.layout import DEFAULT_KEEP_VERSIONS, ITEMS_FILE, IndexRoot
from indexer.storage.manifest import MANIFEST_NAME, file_sha256, load_manifest, save_manifest

__all__ = ["attach_ranker", "install_ranker"]

logger = logging.getLogger(__name__)


def install_ranker(
    version_dir: Path, ranker_path: str | Path, model_fingerprint: str, column_names: list[str]
) -> dict[str, Any]:
    """Check ``ranker_path`` against a version being built and copy it in (before the
    manifest is written). Returns the manifest's ``build["ranker"]``.

    Raises:
        RankerMismatchError: the ranker was trained on other towers or other fields.
        ValueError: the version has no lexical index (the ranker's features need it).
    """
    ranker = Ranker.load(ranker_path)
    ranker.check(model_fingerprint, present_fields(column_names), str(ranker_path))
    if not (version_dir / LEXICAL_META_FILE).exists():
        raise ValueError(
            "a ranker needs the lexical channel (its features include BM25), and this version "
            "is built without one (--no-lexical); drop --no-lexical or --ranker"
        )
    shutil.copyfile(ranker_path, version_dir / RANKER_FILE)
    return {
        "file": RANKER_FILE,
        "source": str(Path(ranker_path).resolve()),
        "feature_spec_version": ranker.feature_spec_version,
        "training": ranker.training,
    }


def attach_ranker(
    root: str | Path, ranker_path: str | Path, *, keep: int | None = DEFAULT_KEEP_VERSIONS
) -> Path:
    """Publish a new version of ``root``: the CURRENT version's files (hard links, no
    re-embedding) with ``ranker_path`` as its ranker (replacing any it had).

    Returns:
        The published version dir.

    Raises:
        RankerMismatchError, ValueError: as ``install_ranker``; ValueError when no version is
        current.
    """
    index_root = IndexRoot(Path(root).resolve())
    with index_root.build_lock():
        current = index_root.current()
        if current is None:
            raise ValueError(f"{root}: no current version to attach a ranker to; build one first")
        base = index_root.version_dir(current)
        manifest = load_manifest(base / MANIFEST_NAME)
        n = index_root.next_version()
        staging = index_root.prepare_staging(n)
        try:
            for path in sorted(base.iterdir()):
                if path.is_file() and path.name not in (MANIFEST_NAME, RANKER_FILE):
                    _link_or_copy(path, staging / path.name)
            columns = pq.read_schema(staging / ITEMS_FILE).names
            info = install_ranker(staging, ranker_path, manifest.model_fingerprint, columns)
            files = {
                p.name: file_sha256(p)
                for p in sorted(staging.iterdir())
                if p.is_file() and p.name != MANIFEST_NAME
            }
            build = {**manifest.build, "ranker": info, "attached_to": current}
            save_manifest(
                dataclasses.replace(
                    manifest,
                    version=n,
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    files=files,
                    build=build,
                ),
                staging / MANIFEST_NAME,
            )
        except BaseException:
            index_root.discard_staging(n)
            raise
        logger.info("version %d: version %d with ranker %s", n, current, ranker_path)
        return index_root.publish(n, keep=keep)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
