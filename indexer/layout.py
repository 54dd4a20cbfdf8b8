"""The on-disk layout of an index root: numbered versions, staging dirs and the CURRENT pointer.

::

    ROOT/
      CURRENT            the live version number, e.g. "3\\n" (replaced atomically)
      versions/<n>/      complete, published versions (never modified after publish)
      staging/<n>/       a version being built; invisible to readers until published
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from indexer.manifest import MANIFEST_NAME, IndexFormatError, fsync_dir, write_atomic

__all__ = [
    "CURRENT_NAME",
    "ITEMS_FILE",
    "IndexRoot",
    "index_file_name",
    "resolve_version_dir",
    "rows_file_name",
    "vectors_file_name",
]

logger = logging.getLogger(__name__)

CURRENT_NAME = "CURRENT"
_LOCK_NAME = ".build.lock"

# Files of a version dir, besides manifest.json.
ITEMS_FILE = "items.parquet"  # catalog columns; row order = global row


def index_file_name(shard: int) -> str:
    """The shard's FAISS index (ids = global rows)."""
    return f"shard_{shard:03d}.faiss"


def vectors_file_name(shard: int) -> str:
    """The shard's stored vectors, (n_s, dim) float32 .npy, for exact re-scoring."""
    return f"shard_{shard:03d}.vectors.npy"


def rows_file_name(shard: int) -> str:
    """The shard's global rows, (n_s,) int64 .npy, ascending; row i of the vectors file."""
    return f"shard_{shard:03d}.rows.npy"


class IndexRoot:
    """An index root directory (it need not exist yet; builders create it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"IndexRoot({str(self.root)!r})"

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def staging_root(self) -> Path:
        return self.root / "staging"

    def version_dir(self, n: int) -> Path:
        """Where published version ``n`` lives (whether or not it exists)."""
        return self.versions_dir / str(int(n))

    def staging_dir(self, n: int) -> Path:
        """Where version ``n`` is built before it is published."""
        return self.staging_root / str(int(n))

    def versions(self) -> list[int]:
        """Published version numbers, ascending."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            int(p.name) for p in self.versions_dir.iterdir() if p.is_dir() and p.name.isdigit()
        )

    def next_version(self) -> int:
        """One more than the highest published version (1 for an empty root).

        Leftover staging dirs from a crashed build do not count: their numbers are reused and
        the stale dir is replaced by ``prepare_staging``.
        """
        versions = self.versions()
        return versions[-1] + 1 if versions else 1

    def current(self) -> int | None:
        """The live version number from ``CURRENT``, or None when nothing is published yet.

        Raises:
            IndexFormatError: CURRENT exists but does not hold a version number.
        """
        path = self.root / CURRENT_NAME
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise IndexFormatError(f"{path}: expected a version number, got {text[:40]!r}")
        return int(text)

    def prepare_staging(self, n: int) -> Path:
        """Create an empty staging dir for version ``n``, removing a stale one left by a crash."""
        staging = self.staging_dir(n)
        if staging.exists():
            logger.warning("removing stale staging dir %s (left by an interrupted build)", staging)
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def discard_staging(self, n: int) -> None:
        """Remove version ``n``'s staging dir, if any (after a failed build)."""
        shutil.rmtree(self.staging_dir(n), ignore_errors=True)
        with contextlib.suppress(OSError):
            self.staging_root.rmdir()  # only succeeds when empty

    def publish(self, n: int) -> Path:
        """Make staged version ``n`` live: rename staging → versions, then replace CURRENT.

        Each step is atomic, so a reader sees either the old version or the new one. A crash
        between the two leaves a complete version that is simply not current yet.

        Returns:
            The published version dir.
        """
        staging = self.staging_dir(n)
        target = self.version_dir(n)
        if not (staging / MANIFEST_NAME).is_file():
            raise IndexFormatError(
                f"{staging}: cannot publish, no {MANIFEST_NAME} (the build is incomplete)"
            )
        if target.exists():
            # os.rename would silently replace an *empty* dir; a version is never overwritten.
            raise FileExistsError(errno.EEXIST, "index version already exists", str(target))
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
        fsync_dir(self.versions_dir)
        fsync_dir(self.staging_root)
        with contextlib.suppress(OSError):
            self.staging_root.rmdir()  # only succeeds when empty: leave no clutter behind
        write_atomic(self.root / CURRENT_NAME, f"{n}\n".encode())
        logger.info("published version %d at %s", n, target)
        return target

    @contextlib.contextmanager
    def build_lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the root for one build; fails fast if another holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / _LOCK_NAME, "a+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(
                    f"another build is running on index root {self.root}; wait for it to finish"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def resolve_version_dir(path: str | Path) -> Path:
    """The version dir for ``path``: a version dir itself, or an index root (follows CURRENT).

    Raises:
        IndexFormatError: ``path`` is neither, or CURRENT names a version that does not exist.
    """
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return path
    root = IndexRoot(path)
    if not path.is_dir():
        raise IndexFormatError(f"{path}: no such index root or version dir")
    current = root.current()
    if current is None:
        raise IndexFormatError(
            f"{path}: not an index version (no {MANIFEST_NAME}) nor an index root with a "
            f"published version (no {CURRENT_NAME}); build one with `aisle-index build`"
        )
    version_dir = root.version_dir(current)
    if not version_dir.is_dir():
        raise IndexFormatError(
            f"{path / CURRENT_NAME}: names version {current}, but {version_dir} does not exist"
        )
    return version_dir
