"""What a router request carries on its handler thread: deadline, missing shards, partial flags."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from engine.search.errors import Unavailable


class _RequestState(threading.local):
    """What one request's handler thread carries through SearchService's call chain: the
    deadline, the shards missing so far (None where a partial answer cannot be flagged), and
    the partial flags of each Search result, in order, for the servicer to copy out."""

    end: float = math.inf
    missing: dict[int, str] | None = None
    flags: list[tuple[int, ...]] | None = None


_state = _RequestState()


@contextmanager
def _deadline(timeout_s: float | None) -> Iterator[None]:
    previous = _state.end
    _state.end = math.inf if timeout_s is None else time.monotonic() + timeout_s
    try:
        yield
    finally:
        _state.end = previous


@contextmanager
def _recording_flags() -> Iterator[list[tuple[int, ...]]]:
    previous, _state.flags = _state.flags, []
    try:
        yield _state.flags
    finally:
        _state.flags = previous


def _unavailable(missing: dict[int, str], why: str) -> Unavailable:
    names = ", ".join(f"shard {s} ({reason})" for s, reason in sorted(missing.items()))
    return Unavailable(f"no replica answered for {names}; {why}")
