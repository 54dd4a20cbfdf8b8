"""Atomic file writes: a temp file beside the target, fsynced, then ``os.replace``.

Readers see the old file or the new one, never a torn one, and a crash mid-write leaves the old
file in place (the temp file is removed, or at worst left as a hidden ``.<name>.*.tmp``).
Every artifact Aisle writes in place (manifests, CURRENT, checkpoints, caches, index files)
goes through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename or new entry in it survives a crash (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself is still atomic
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp path to write ``path``'s new content to; it replaces ``path`` on a clean exit.

    The caller writes the temp file by name (``np.save``, ``pq.write_table``, ...); on leaving
    the block it is fsynced, made world-readable (0644: index files are read by servers running
    as other users) and renamed over ``path``, then the directory is fsynced. On an exception
    the temp file is removed and ``path`` is untouched.

    Args:
        path: the file to replace (its directory must exist).
        suffix: the temp file's suffix, for writers that choose a format by it (``.npy``).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes the file 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically; see ``atomic_path``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
