"""Fault injection for crash tests: die like ``kill -9`` at a named stage of a build or publish.

Set ``AISLE_FAULT_AT=<stage>`` in a process's environment and it exits with status 137 (no
cleanup, no flush, no ``finally``) the moment it reaches ``fault_point(<stage>)``. With the
variable unset, a fault point costs one dict lookup. Stages (see ``STAGES``):

- build: ``after-embed`` (vector files written), ``after-shards-written`` (FAISS files and
  items written), ``after-manifest`` (manifest saved in staging);
- compact: the same three (``after-embed`` = the re-used vectors written);
- publish: ``before-rename``, ``after-rename-before-current``, ``after-current``;
- update log append: ``log-before-fsync``, ``log-after-fsync``.
"""

from __future__ import annotations

import os

__all__ = ["FAULT_ENV", "FAULT_EXIT_CODE", "STAGES", "fault_point"]

FAULT_ENV = "AISLE_FAULT_AT"
FAULT_EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL (128 + 9)
STAGES = (
    "after-embed",
    "after-shards-written",
    "after-manifest",
    "before-rename",
    "after-rename-before-current",
    "after-current",
    "log-before-fsync",
    "log-after-fsync",
)


def fault_point(name: str) -> None:
    """Exit the process at once with status 137 when ``AISLE_FAULT_AT`` equals ``name``."""
    if os.environ.get(FAULT_ENV) == name:
        # os._exit skips atexit handlers, finally blocks and buffer flushes: a crash, not an exit.
        os._exit(FAULT_EXIT_CODE)
