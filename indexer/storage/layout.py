"""The on-disk layout of an index root: numbered versions, staging dirs and the CURRENT pointer.

::

    ROOT/
      CURRENT            the live version number, e.g. "3\\n" (replaced atomically)
      versions/<n>/      complete, published versions (never modified after publish)
      staging/<n>/       a version being built; invisible to readers until published
      updates/           the durable log of live updates (indexer.storage.update_log)

Publishing keeps the newest ``DEFAULT_KEEP_VERSIONS`` versions (and always CURRENT); ``rollback``
points CURRENT back at an older kept version.
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

from indexer.storage.faults import fault_point
from indexer.storage.manifest import MANIFEST_NAME, IndexFormatError, load_manifest, verify_files
from indexer.storage.update_log import truncate_applied
from trainer.io import fsync_dir, write_atomic

__all__ = [
    "CURRENT_NAME",
    "DEFAULT_KEEP_VERSIONS",
    "ITEMS_FILE",
    "IndexRoot",
    "index_file_name",
    "resolve_version_dir",
    "rows_file_name",
    "vectors_file_name",
]

logger = logging.getLogger(__name__)

CURRENT_NAME = "CURRENT"
DEFAULT_KEEP_VERSIONS = 3  # enough to roll back twice; each version is a full copy on disk
_LOCK_NAME = ".build.lock"
_PRUNING_PREFIX = ".pruning-"  # a version being deleted: renamed first, so it is never half-listed

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

    def publish(self, n: int, *, keep: int | None = DEFAULT_KEEP_VERSIONS) -> Path:
        """Make staged version ``n`` live: rename staging → versions, then replace CURRENT.

        Each step is atomic, so a reader sees either the old version or the new one. A crash
        between the two leaves a complete version that is simply not current yet.

        Args:
            n: the staged version.
            keep: versions to keep afterwards (``prune``); None keeps them all.

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
        fault_point("before-rename")
        os.rename(staging, target)
        fsync_dir(self.versions_dir)
        fsync_dir(self.staging_root)
        with contextlib.suppress(OSError):
            self.staging_root.rmdir()  # only succeeds when empty: leave no clutter behind
        fault_point("after-rename-before-current")
        write_atomic(self.root / CURRENT_NAME, f"{n}\n".encode())
        fault_point("after-current")
        logger.info("published version %d at %s", n, target)
        if keep is not None:
            self.prune(keep)
        return target

    def prune(self, keep: int = DEFAULT_KEEP_VERSIONS) -> list[int]:
        """Delete all but the newest ``keep`` versions, never the CURRENT one, then the update
        log segments no kept version needs (``truncate_applied``).

        Callers outside a build should hold ``build_lock``. A crash halfway leaves a renamed
        ``versions/.pruning-<n>`` dir that the next prune removes; it is never listed.

        Returns:
            The version numbers deleted, ascending.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1 (versions to keep), got {keep!r}")
        versions = self.versions()
        current = self.current()
        kept = set(versions[-keep:]) | ({current} if current is not None else set())
        removed = [v for v in versions if v not in kept]
        for v in removed:
            doomed = self.versions_dir / f"{_PRUNING_PREFIX}{v}"
            os.rename(self.version_dir(v), doomed)  # atomic: gone from versions() at once
        if removed:
            fsync_dir(self.versions_dir)
            logger.info("pruned version(s) %s (keeping %s)", removed, sorted(kept))
        if self.versions_dir.is_dir():
            for leftover in self.versions_dir.glob(f"{_PRUNING_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
        truncate_applied(self.root)
        return removed

    def rollback(self, to: int | None = None, *, verify: bool = True) -> int:
        """Point CURRENT at an older kept version (the one before CURRENT by default).

        Callers should hold ``build_lock`` so that no build publishes at the same time.

        Args:
            to: the version to switch to (any kept version, newer ones too); None = the newest
                version older than CURRENT.
            verify: check the target's files against its manifest checksums first.

        Returns:
            The version CURRENT now names.

        Raises:
            ValueError: nothing published, no older version, or ``to`` is not a kept version.
            IndexFormatError: the target version is incomplete or corrupt.
        """
        current = self.current()
        versions = self.versions()
        if current is None:
            raise ValueError(f"{self.root}: nothing is published yet, so nothing to roll back")
        if to is None:
            older = [v for v in versions if v < current]
            if not older:
                raise ValueError(
                    f"{self.root}: no version older than the current {current} is kept "
                    f"(kept: {versions}); pass --to with one of them"
                )
            to = older[-1]
        elif to not in versions:
            raise ValueError(f"{self.root}: version {to} is not kept; kept versions: {versions}")
        target = self.version_dir(to)
        manifest = load_manifest(target / MANIFEST_NAME)
        if verify:
            verify_files(target, manifest)
        if to == current:
            logger.info("version %d is already current", to)
            return to
        write_atomic(self.root / CURRENT_NAME, f"{to}\n".encode())
        logger.info("rolled back: CURRENT %d -> %d (%s)", current, to, target)
        return to

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
