"""Losses as pure functions of embeddings: in-batch sampled softmax with logQ correction.

The model encodes; these functions only see vectors, so they are tested against hand-computed
numbers and reused by every task (search: query → item; recommendation: user → next item).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sampled_softmax_loss(
    xq: torch.Tensor,
    xb: torch.Tensor,
    *,
    temperature: float | torch.Tensor,
    log_q: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    symmetric: bool = False,
) -> torch.Tensor:
    """In-batch sampled softmax cross-entropy (the two-tower retrieval loss).

    Row i of ``xq`` is a query (or user) whose positive is column i of ``xb``; every other
    column is a negative: the other rows' positives (in-batch negatives, columns 0..B-1) and
    any extra columns B..C-1 (mined hard negatives, shared by all rows). The logit of
    (i, j) is cos(xq_i, xb_j) / temperature, corrected for popularity: in-batch items were
    sampled with probability q_j (as positives), so ``log q_j`` is subtracted from their
    column (Yi et al. 2019, "Sampling-bias-corrected neural modeling"), which makes the sampled
    softmax an unbiased stand-in for the softmax over the whole catalog. Extra columns were not
    drawn by popularity and are not corrected.

    Args:
        xq: (B, dim) float query vectors, L2-normalised (so the inner product is the cosine).
        xb: (C, dim) float item vectors, C >= B; row i is the positive of query i.
        temperature: softmax temperature (float or 0-d tensor, e.g. learnable), > 0.
        log_q: (B,) float log sampling probability of the in-batch items; None = no correction.
        mask: (B, C) bool, True where column j must not count as a negative for row i (an item
            labeled relevant for query i, or a duplicate of its positive); the diagonal is
            always kept.
        weights: (B,) float >= 0 per-row weight (e.g. lower for partial matches); None = 1.
        symmetric: also add the item → query direction over the in-batch block (B, B) and
            average the two (no logQ there: queries are not sampled by popularity).

    Returns:
        0-d float32 tensor: the weighted mean cross-entropy over rows.
    """
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise ValueError(
            f"need xq (B, dim) and xb (C, dim), got {tuple(xq.shape)}, {tuple(xb.shape)}"
        )
    n = xq.shape[0]
    if xb.shape[0] < n:
        raise ValueError(
            f"xb needs at least B={n} rows (one positive per query), got {xb.shape[0]}"
        )
    sims = xq.float() @ xb.float().T  # (B, C) cosine similarities
    logits = sims / temperature  # (B, C)
    if log_q is not None:
        if log_q.shape != (n,):
            raise ValueError(f"log_q must have shape ({n},), got {tuple(log_q.shape)}")
        correction = F.pad(log_q.float(), (0, xb.shape[0] - n))  # (C,) zero on extra columns
        logits = logits - correction
    diagonal = torch.eye(n, xb.shape[0], dtype=torch.bool, device=xq.device)  # (B, C)
    if mask is not None:
        if mask.shape != logits.shape:
            raise ValueError(f"mask must have shape {tuple(logits.shape)}, got {tuple(mask.shape)}")
        mask = mask & ~diagonal
        logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(n, device=xq.device)  # (B,)
    loss = F.cross_entropy(logits, target, reduction="none")  # (B,)
    if symmetric:
        reverse = sims[:, :n].T / temperature  # (B items, B queries)
        if mask is not None:
            reverse = reverse.masked_fill(mask[:, :n].T, float("-inf"))
        loss = 0.5 * (loss + F.cross_entropy(reverse, target, reduction="none"))
    if weights is None:
        return loss.mean()
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
    weights = weights.float()
    return (loss * weights).sum() / weights.sum().clamp(min=1e-12)


def in_batch_accuracy(
    xq: torch.Tensor, xb: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Share of rows whose positive (column i) scores highest among the unmasked columns.

    Args:
        xq: (B, dim); xb: (C, dim); mask: (B, C) bool as in ``sampled_softmax_loss``.

    Returns:
        0-d float32 tensor in [0, 1] (a training-progress signal, not an evaluation metric).
    """
    with torch.no_grad():
        n = xq.shape[0]
        sims = xq.float() @ xb.float().T  # (B, C)
        if mask is not None:
            diagonal = torch.eye(n, xb.shape[0], dtype=torch.bool, device=xq.device)
            sims = sims.masked_fill(mask & ~diagonal, float("-inf"))
        hits = sims.argmax(dim=1) == torch.arange(n, device=xq.device)  # (B,)
        return hits.float().mean()
