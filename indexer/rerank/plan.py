"""How many ANN candidates a request needs, or whether to score every matching row exactly.

The ANN index knows nothing of filters, so when only a fraction ``s`` of the catalog passes,
``offset + k`` matches need about ``(offset + k) / s`` candidates. ``plan_candidates`` decides,
from the exact selectivity (the filter mask over all n items, one O(n) kernel pass, memoised in
the compiled filter):

1. no filter (s = 1): ask the index for ``max(base, offset + k)`` candidates;
2. ``s`` < ``MIN_ANN_SELECTIVITY`` (1 %), or the matching items are few (at most
   ``max(depth, BRUTE_FORCE_ROWS)``), or the depth below exceeds ``MAX_ANN_DEPTH``: skip the ANN
   index and score *every* matching row exactly (``matching_rows``): exact, and cheaper than an
   ANN search this deep;
3. otherwise ask for ``depth = max(base, ceil((offset + k) / s * SAFETY))`` candidates
   (``candidate_depth``, SAFETY = 2: a query's neighbourhood may pass less often than the
   catalog as a whole).

``indexer.rerank.rerank.search_and_rerank`` follows the plan and widens it when too few results
pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "BRUTE_FORCE_ROWS",
    "DEFAULT_BASE_DEPTH",
    "MAX_ANN_DEPTH",
    "MIN_ANN_SELECTIVITY",
    "CandidatePlan",
    "candidate_depth",
    "plan_candidates",
]

DEFAULT_BASE_DEPTH = 100
MIN_ANN_SELECTIVITY = 0.01
# Exact scoring of this many rows (~0.3 ms at dim 384, one core) costs about what an ANN search
# plus the re-rank of a widened candidate list does, and it cannot miss a match.
BRUTE_FORCE_ROWS = 2048
MAX_ANN_DEPTH = 10_000
_SAFETY = 2.0


@dataclass(frozen=True)
class CandidatePlan:
    """Where a request's candidates come from.

    Attributes:
        depth: candidates to ask the ANN index for (0 when exhaustive).
        exhaustive: score every matching row exactly instead of asking the index.
    """

    depth: int
    exhaustive: bool


def candidate_depth(
    k: int, offset: int, selectivity: float, n_items: int, base: int = DEFAULT_BASE_DEPTH
) -> int:
    """ANN candidates to fetch so that ``offset + k`` pass a filter of this selectivity:
    ``max(base, ceil((offset + k) / selectivity * SAFETY))``, at most ``n_items``."""
    need = offset + k
    if selectivity <= 0:
        return 0
    depth = max(base, need)
    if selectivity < 1:
        depth = max(depth, math.ceil(need / selectivity * _SAFETY))
    return int(min(depth, n_items))


def plan_candidates(
    k: int, offset: int, selectivity: float, n_items: int, base: int = DEFAULT_BASE_DEPTH
) -> CandidatePlan:
    """ANN depth, or exhaustive scoring of the matching rows (see the module docstring)."""
    if k < 1 or offset < 0 or base < 1 or not 0.0 <= selectivity <= 1.0:
        raise ValueError(
            f"need k >= 1, offset >= 0, base >= 1, selectivity in [0, 1]; got k={k}, "
            f"offset={offset}, base={base}, selectivity={selectivity}"
        )
    if selectivity >= 1.0:
        return CandidatePlan(depth=min(max(base, offset + k), n_items), exhaustive=False)
    n_match = round(selectivity * n_items)
    depth = candidate_depth(k, offset, selectivity, n_items, base)
    raw_depth = math.ceil((offset + k) / selectivity * _SAFETY) if selectivity > 0 else 0
    if (
        selectivity < MIN_ANN_SELECTIVITY
        or n_match <= max(depth, BRUTE_FORCE_ROWS)
        or raw_depth > MAX_ANN_DEPTH
    ):
        return CandidatePlan(depth=0, exhaustive=True)
    return CandidatePlan(depth=depth, exhaustive=False)
