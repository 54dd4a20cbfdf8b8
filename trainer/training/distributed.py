"""DDP plumbing for training: the process group, one device per rank, collectives, spawning.

Two ways in: ``torchrun --nproc-per-node N -m trainer.cli ...`` (the process group comes from
the environment), or ``spawn_workers`` (``aisle-train --nproc N``), which starts N local
processes on 127.0.0.1 and a free port. gloo on CPU (how the tests run it), NCCL on GPUs.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and local rank (1 process: 0, 1, 0)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """``value`` of rank 0 on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, value: Any) -> list[Any]:
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def shard(self, n: int) -> np.ndarray:
        """This rank's contiguous share of rows 0..n-1 (int64)."""
        return np.array_split(np.arange(n, dtype=np.int64), self.world_size)[self.rank]

    def gather_rows(self, local: np.ndarray, n: int, device: torch.device) -> np.ndarray:
        """Concatenate every rank's ``local`` rows (their ``shard(n)`` results) in rank order.

        Args:
            local: (len(shard(n)), dim) float32 on this rank.
            device: where the collective runs (CUDA for NCCL, CPU for gloo).

        Returns:
            (n, dim) float32, identical on every rank.
        """
        if not self.enabled:
            return local
        sizes = [len(part) for part in np.array_split(np.arange(n), self.world_size)]
        padded = torch.zeros((max(sizes), local.shape[1]), dtype=torch.float32, device=device)
        padded[: len(local)] = torch.from_numpy(local).to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return np.concatenate(
            [p[:s].cpu().numpy() for p, s in zip(parts, sizes, strict=True)], axis=0
        )


def current_context() -> DistContext:
    """The context of an initialised process group, else the single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    rank = dist.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return DistContext(rank=rank, world_size=dist.get_world_size(), local_rank=local_rank)


def init_from_env() -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment), once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        logger.info("joined process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return current_context()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    num_threads: int | None,
    args: tuple[Any, ...],
) -> None:
    os.environ["LOCAL_RANK"] = str(rank)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
    )
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def spawn_workers(
    fn: Callable[..., Any],
    nprocs: int,
    args: tuple[Any, ...] = (),
    *,
    backend: str | None = None,
    num_threads: int | None = None,
) -> None:
    """Run ``fn(*args)`` in ``nprocs`` new processes joined in one process group.

    Args:
        fn: a module-level function (pickled into the workers).
        backend: "gloo" or "nccl"; None = NCCL when there are enough GPUs, else gloo.
        num_threads: torch threads per worker; None = the CPU count split between workers.

    Raises:
        ProcessRaisedException: a worker failed (its traceback is in the message).
    """
    import torch.multiprocessing as mp

    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    if backend is None:
        backend = "nccl" if torch.cuda.device_count() >= nprocs else "gloo"
    if num_threads is None and backend == "gloo":
        num_threads = max(1, (os.cpu_count() or 1) // nprocs)
    port = free_port()
    logger.info("spawning %d workers (%s) on 127.0.0.1:%d", nprocs, backend, port)
    mp.spawn(
        _entry,
        args=(fn, nprocs, port, backend, num_threads, args),
        nprocs=nprocs,
        join=True,
    )
