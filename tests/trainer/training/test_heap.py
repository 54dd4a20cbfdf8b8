"""The heap trimmer the CPU training loop calls after each step."""

from __future__ import annotations

import sys

import pytest

from trainer.training.heap import heap_trimmer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trimmer_returns_freed_heap_pages_to_the_os() -> None:
    trim = heap_trimmer()
    assert trim is not None  # these machines run glibc

    def resident() -> int:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1])

    # many small blocks (below any mmap threshold: heap memory), every other one freed, so the
    # free space is scattered inside the heap rather than at its top, where free() trims it
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # ~256 MiB
    del blocks[::2]
    before = resident()
    trim()
    after = resident()
    assert before - after > 8 * 1024  # pages: more than 32 MiB handed back
    del blocks
