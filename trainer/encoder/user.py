"""The user tower: a user is the recency-weighted mean of their history's item vectors.

With ``decay`` d in (0, 1], the item seen ``a`` interactions before the newest one weighs d**a
(the newest weighs 1). d = 1 is the plain mean; smaller values lean on the latest items, which is
what next-item recommendation rewards (a user's next item is most like their last few). The
model dir records the decay (``aisle_model.json`` ``history_decay``); training can fit it on the
held-out users (``TrainConfig.fit_history_decay``), and the server, the trainer and the
evaluation all pool histories through this module, so they agree.

Numpy only: the serving path imports it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_HISTORY_DECAY = 1.0
# Decays tried when fitting on a hold-out: the plain mean down to a tower that mostly follows
# the last item (0.3**2 = 0.09: two items back counts a tenth).
DECAY_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def check_history_decay(value: object, name: str = "history_decay") -> float:
    """``value`` as a float in (0, 1].

    Raises:
        ValueError: not a number, or outside (0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    decay = float(value)
    if not (math.isfinite(decay) and 0 < decay <= 1):
        raise ValueError(f"{name} must be in (0, 1] (1 = plain mean of the history), got {value!r}")
    return decay


def history_weights(n: int, decay: float) -> np.ndarray:
    """(n,) float32 weights of a history of ``n`` items, oldest first: decay**(n - 1 - i)."""
    ages = np.arange(n - 1, -1, -1, dtype=np.float64)  # (n,) 0 for the newest item
    return (decay**ages).astype(np.float32)


def pool_history(vectors: np.ndarray, decay: float = DEFAULT_HISTORY_DECAY) -> np.ndarray:
    """One user vector from their history's item vectors.

    Args:
        vectors: (n, dim) item vectors, oldest first; n may be 0.
        decay: the recency decay in (0, 1].

    Returns:
        (dim,) float32, L2-normalised (all zeros for an empty or all-zero history).
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if len(vectors) == 0:
        return np.zeros(dim, dtype=np.float32)
    w = history_weights(len(vectors), decay)  # (n,)
    user = (w @ vectors) / w.sum()  # (dim,)
    norm = float(np.linalg.norm(user))
    return (user / norm if norm > 0 else user).astype(np.float32)


def history_vectors(
    xb: np.ndarray, histories: Sequence[np.ndarray], decay: float = DEFAULT_HISTORY_DECAY
) -> np.ndarray:
    """User vectors of many histories at once.

    Args:
        xb: (n_items, dim) float32 item vectors.
        histories: one int64 array of item rows per user, oldest first.
        decay: the recency decay in (0, 1].

    Returns:
        (n_users, dim) float32, rows L2-normalised (zeros for an empty history).
    """
    xu = np.zeros((len(histories), xb.shape[1]), dtype=np.float32)  # (n_users, dim)
    for u, rows in enumerate(histories):
        if len(rows):
            xu[u] = pool_history(xb[rows], decay)
    return xu
