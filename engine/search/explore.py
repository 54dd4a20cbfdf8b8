"""Exploration traffic: a share of Search responses with adjacent result pairs swapped.

Position bias is not identifiable from one ranker's traffic: a (query, item) pair always shown
at the same position cannot tell how much of its click rate is examination and how much is
relevance. Randomising a small share of responses by swapping adjacent results is the classic
intervention (the swap interventions of Joachims et al., "Unbiased Learning-to-Rank with Biased
Feedback", WSDM 2017, and RandPair of Agarwal et al., "Estimating Position Bias without
Intrusive Interventions", WSDM 2019): the same item is then seen at positions k and k + 1 for
the same query, and the ratio of its click rates there estimates ``theta[k + 1] / theta[k]``
(trainer.feedback.propensity's harvesting picks these pairs up as they are).

The scheme (``swap``), deterministic given the request id:

* a hash of the request id gives a uniform u and one bit b; the response is explored when
  u < ``share`` (0 <= share <= MAX_SHARE);
* an explored page of hits at 1-based positions offset + 1 .. offset + n swaps the pairs
  (offset + 1 + b + 2i, offset + 2 + b + 2i) for every i with both inside the page: all
  adjacent pairs starting at the first (b = 0) or the second (b = 1) hit of the page.

A swap never crosses a page boundary, so the pages of one query still partition the same
ranking (no item twice, none skipped), whatever each page's own draw. Each hit keeps its score
(an explored page's scores are not in order). Not explored: a request with ``explain`` (its
explanations describe the ranker's order) or an explicit ``sort`` (the caller asked for that
exact order); other surfaces (Recommend, SimilarItems) never are.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from engine.search.types import SearchQuery, SearchResult

SCHEME = "swap"
MAX_SHARE = 0.5


@dataclass(frozen=True)
class Explorer:
    """Swaps adjacent hits of a ``share`` of Search responses (see the module docstring).

    Args:
        share: the share of responses explored, in [0, MAX_SHARE]; 0 = never.
        on_explore: called once per explored response (e.g. a Prometheus counter's ``inc``).
    """

    share: float
    on_explore: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        share = self.share
        if isinstance(share, bool) or not isinstance(share, int | float):
            raise ValueError(f"explore share must be a number, got {share!r}")
        if not 0.0 <= share <= MAX_SHARE:  # also refuses NaN
            raise ValueError(f"explore share must be between 0 and {MAX_SHARE}, got {share}")

    def explore(
        self, request_id: str, query: SearchQuery, result: SearchResult
    ) -> tuple[SearchResult, tuple[int, ...]]:
        """``result`` with its swaps applied, and the 1-based position p of each swapped pair
        (p, p + 1); ``()`` and ``result`` itself when the response is not explored."""
        if query.explain or query.sort_attribute:
            return result, ()
        pairs = swap_pairs(request_id, self.share, query.offset, len(result.hits))
        if not pairs:
            return result, ()
        hits = list(result.hits)
        for p in pairs:
            i = p - 1 - query.offset
            hits[i], hits[i + 1] = hits[i + 1], hits[i]
        if self.on_explore is not None:
            self.on_explore()
        return dataclasses.replace(result, hits=hits), pairs


def swap_pairs(request_id: str, share: float, offset: int, n: int) -> tuple[int, ...]:
    """The 1-based first positions of the pairs swapped on a page of ``n`` hits starting after
    ``offset``; ``()`` when ``request_id``'s draw does not explore (or n < 2)."""
    digest = hashlib.blake2b(request_id.encode("utf-8"), digest_size=16).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    if u >= share or n < 2:
        return ()
    start = digest[8] & 1
    return tuple(offset + 1 + i for i in range(start, n - 1, 2))
