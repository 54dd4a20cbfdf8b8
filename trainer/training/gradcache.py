"""Gradient caching (GradCache; Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup"): the in-batch softmax over a large batch, trained in mini-batches
with exactly the full-batch gradient and the memory of one mini-batch.

The loss couples every query with every item of the batch, so its gradient cannot be split by
rows; the encoders can. A step runs in three passes (sentence-transformers'
``CachedMultipleNegativesRankingLoss`` is the reference):

1. Embed every mini-batch without building a graph, saving the RNG state before each call.
2. Compute the loss over the whole batch from those embeddings (leaf tensors) and backpropagate
   to them: the cached gradients d loss / d embedding (and d loss / d scale).
3. Embed each mini-batch again, with a graph and the same RNG state (the same dropout masks),
   and backpropagate its cached gradient through the encoder.

The parameters' gradient is then the full batch's, up to float rounding. In one process, pass 1
makes its last call (the longest items) with a graph and keeps it: pass 3 starts by pushing that
call's cached gradient through it instead of encoding it a second time. Its graph lives from
the end of pass 1 to the start of pass 3, where the other graphs are built one at a time, so the
memory stays that of one mini-batch and one encoder call in eight (at eight mini-batches a
side) is saved. Under DDP every call but the last runs in ``no_sync``; the last call encodes a
query and an item mini-batch together and carries the temperature's gradient, so every
parameter takes part in the one reduction (and nothing is kept: a DDP forward outside the
reducer's order would break it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.training.batches import Batch, pad_ids

# (rows of the batch, token ids, attention mask) of one mini-batch, ids/mask (n, L) int64.
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]


def to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device``. On CUDA it goes through pinned memory so the copy is
    asynchronous: a copy from pageable memory waits for the stream, a device sync mid-step."""
    tensor = torch.from_numpy(x)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def length_chunks(seqs: Sequence[np.ndarray], size: int, pad_id: int) -> list[Chunk]:
    """Mini-batches of at most ``size`` sequences of similar length, each padded to its own
    longest one (shortest first; rows index ``seqs``).

    Sorting a batch by length before cutting it skips most of the padding a random mini-batch
    would carry, and needs no device sync: the widths are known on the host.
    """
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = []
    for start in range(0, len(order), size):
        rows = order[start : start + size].astype(np.int64)
        ids, mask = pad_ids([seqs[r] for r in rows.tolist()], pad_id)
        out.append((rows, ids, mask))
    return out


class RandState:
    """The torch RNG states (CPU, and the device's on CUDA) at construction; ``restored()``
    runs a block under them and puts the current states back afterwards."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def apply(self) -> None:
        """Make these the current RNG states."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)

    @contextlib.contextmanager
    def restored(self) -> Any:
        current = RandState(self.device)
        self.apply()
        try:
            yield
        finally:
            current.apply()


@dataclass
class CachedResult:
    """One cached step's outputs, all detached: loss (0-d), the embeddings (B, dim), (C, dim)."""

    loss: torch.Tensor
    xq: torch.Tensor
    xb: torch.Tensor


class GradCache:
    """Runs the three passes for one batch whose ``query_chunks`` / ``item_chunks`` are set.

    Args:
        model: the ``TwoTowerModel`` (pass 1 calls it directly, no graph).
        ddp: what pass 3 calls (the DDP wrapper, or the model itself).
        device: where tensors go.
        autocast: a context factory for the forward passes (AMP or a no-op).
        ddp_enabled: wrap every pass-3 call but the last in ``ddp.no_sync()``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        ddp: torch.nn.Module,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
        *,
        ddp_enabled: bool,
    ) -> None:
        self.model = model
        self.ddp = ddp
        self.device = device
        self.autocast = autocast
        self.ddp_enabled = ddp_enabled

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return to_device(x, self.device)

    def _calls(self, batch: Batch) -> list[tuple[Chunk | None, Chunk]]:
        """The encoder calls of a step: query chunk j (if any) with item chunk j. Under DDP in
        an order whose last call holds both a query and an item chunk (the synchronising one);
        otherwise shortest first, so the call pass 1 keeps is the longest."""
        queries = batch.query_chunks or []
        items = batch.item_chunks or []
        if not items:
            raise ValueError("a cached step needs the batch's item_chunks")
        calls = [(queries[j] if j < len(queries) else None, items[j]) for j in range(len(items))]
        return calls[::-1] if self.ddp_enabled else calls  # under DDP call 0 last

    def step(
        self,
        batch: Batch,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        grad_scale: float = 1.0,
        sync: bool = True,
    ) -> CachedResult:
        """Accumulate ``grad_scale`` × the gradient of ``loss_fn(xq, xb, scale)`` over the
        whole batch into the parameters' ``.grad``.

        Args:
            loss_fn: the batch's loss from (xq (B, dim), xb (C, dim), scale 0-d = 1/T).
            grad_scale: e.g. 1 / grad_accum.
            sync: under DDP, let the last call reduce the gradients (False while accumulating).
        """
        calls = self._calls(batch)
        search = batch.task == "search"
        n_items = len(batch.items)
        dim = self.model.dim
        # Pass 1: embeddings without a graph, the RNG state before each call; in one process
        # the last call with its graph, kept for pass 3.
        states: list[RandState] = []
        kept: tuple[Any, Any, Any] | None = None
        xq = None if not search else torch.empty(batch.size, dim, device=self.device)
        xb = torch.empty(n_items, dim, device=self.device)
        for c, (q, i) in enumerate(calls):
            keep = not self.ddp_enabled and c == len(calls) - 1
            states.append(RandState(self.device))
            with torch.set_grad_enabled(keep), self.autocast():
                out = self.model(*self._inputs(q, i))
            kept = out if keep else None
            oq, ob, _ = out
            with torch.no_grad():
                if q is not None and oq is not None:
                    xq[self._tensor(q[0])] = oq.float()
                xb[self._tensor(i[0])] = ob.float()
        after = RandState(self.device)
        # Pass 2: the loss over the whole batch, backpropagated to the embeddings and scale.
        if not search:
            xq = self._tensor(batch.user_vectors)
        else:
            xq.requires_grad_(True)
        xb.requires_grad_(True)
        scale = self.model.scale().detach().requires_grad_(True)
        loss = loss_fn(xq, xb, scale)
        (loss * grad_scale).backward()
        gq = xq.grad if search else None
        gb, gs = xb.grad, scale.grad
        # Pass 3: each call again with a graph (but the kept one, first), its cached gradient
        # pushed through the encoder; the temperature's gradient rides on one call.
        order = list(zip(calls, states, strict=True))
        if kept is not None:
            (q, i), _ = order.pop()
            self._push(kept, q, i, gq, gb, gs)
            gs = None
        for c, ((q, i), state) in enumerate(order):
            last = c == len(order) - 1
            no_sync = self.ddp_enabled and not (last and sync)
            ctx = self.ddp.no_sync() if no_sync else contextlib.nullcontext()
            with ctx, state.restored():
                with self.autocast():
                    out = self.ddp(*self._inputs(q, i))
                self._push(out, q, i, gq, gb, gs if last else None)
        after.apply()  # the RNG moves on as after pass 1, whatever pass 3 drew
        return CachedResult(loss=loss.detach(), xq=xq.detach(), xb=xb.detach())

    def _push(
        self,
        out: tuple[Any, Any, Any],
        q: Chunk | None,
        i: Chunk,
        gq: torch.Tensor | None,
        gb: torch.Tensor,
        gs: torch.Tensor | None,
    ) -> None:
        """Backpropagate the cached gradients of one call's outputs (and of the temperature,
        when ``gs`` is given) through the graph that made them."""
        oq, ob, s = out
        surrogate = (ob.float() * gb[self._tensor(i[0])]).sum()
        if q is not None and oq is not None and gq is not None:
            surrogate = surrogate + (oq.float() * gq[self._tensor(q[0])]).sum()
        if gs is not None and s.requires_grad:
            surrogate = surrogate + s * gs
        surrogate.backward()

    def _inputs(
        self, q: Chunk | None, i: Chunk
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        if q is None:
            return None, None, self._tensor(i[1]), self._tensor(i[2])
        return self._tensor(q[1]), self._tensor(q[2]), self._tensor(i[1]), self._tensor(i[2])
