"""Exact re-ranking of ANN candidates: filters, business boosts, diversity, top-k.

Per index version, prepare once: ``ItemColumns.from_table(version.items)`` (attributes as
columns, ``indexer.rerank.columns``) and a ``VectorStore`` (the stored vectors, float32 or a
compact float16 / int8 copy, ``indexer.rerank.vectors``). Per request: ``compile_filter(FilterSpec,
columns)`` (``indexer.rerank.specs``, ``indexer.rerank.filters``) then ``rerank`` runs
dedupe -> filter -> exact scores -> boost -> diversity -> top-k with the numba kernels of
``indexer.rerank.kernels``. ``search_and_rerank`` wraps the whole thing around an ANN search
callable.

Widening for selective filters. ``plan_candidates`` (``indexer.rerank.plan``, which explains
the plan) picks an ANN depth, or exhaustive scoring of the matching rows, from the filter's exact
selectivity. If an ANN plan still yields fewer than ``offset + k`` results while more items
match, ``search_and_rerank`` widens the depth 4x and, past ``MAX_ANN_DEPTH`` (or the catalog
size), falls back to exhaustive scoring. Exhaustive scoring of the matching rows cannot miss a
match, so whenever ``offset + k`` matching items exist, that many results come back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from indexer.rerank import kernels
from indexer.rerank.columns import ItemColumns
from indexer.rerank.filters import CompiledFilter, matching_rows, selectivity
from indexer.rerank.plan import (
    DEFAULT_BASE_DEPTH,
    MAX_ANN_DEPTH,
    CandidatePlan,
    plan_candidates,
)
from indexer.rerank.specs import BoostSpec, DiversitySpec
from indexer.rerank.vectors import VectorStore, as_query

__all__ = ["rerank", "search_and_rerank", "select"]

logger = logging.getLogger(__name__)

_WIDEN_FACTOR = 4
# MMR costs O(pool * k * dim): it picks from the best few of the (filtered, boosted) candidates.
MMR_POOL_FACTOR = 4
MMR_MIN_POOL = 100


def rerank(
    xq: np.ndarray,
    vectors: VectorStore | np.ndarray,
    rows: np.ndarray,
    k: int,
    columns: ItemColumns,
    compiled_filter: CompiledFilter | None = None,
    boost: BoostSpec | None = None,
    diversity: DiversitySpec | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-rank candidates exactly: dedupe -> filter -> exact scores -> boost -> diversity -> top-k.

    Args:
        xq: (dim,) float32 query (a (1, dim) array is accepted).
        vectors: the stored vectors by global row (a VectorStore, or an (n, dim) float32 array).
        rows: (m,) int global candidate rows, -1 = none; duplicates allowed (counted once).
        k: results wanted, >= 1.
        columns: item attributes of the same index version.
        compiled_filter, boost, diversity: None = none.

    Returns:
        D: (k,) float32 final scores (similarity + boost), best first; with MMR, in pick order.
        I: (k,) int64 global rows.
        sim: (k,) float32 exact similarities of the same items.
        Padding (fewer than k candidates pass) is D = sim = -inf, I = -1.
    """
    store = vectors if isinstance(vectors, VectorStore) else VectorStore("f32", vectors)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if store.n != columns.n_items:
        raise ValueError(f"vectors hold {store.n} items but columns {columns.n_items}")
    if compiled_filter is not None and compiled_filter.columns is not columns:
        raise ValueError("the filter was compiled against other ItemColumns; compile it again")
    k = int(k)
    xq = as_query(xq, store.dim)
    rows = store.check_rows(rows)
    D = np.full(k, -np.inf, dtype=np.float32)
    I = np.full(k, -1, dtype=np.int64)  # noqa: E741 - FAISS notation
    sim_out = np.full(k, -np.inf, dtype=np.float32)

    # Every copy of a row gets the same exact score, so keeping the first copy is enough.
    keep = kernels.dedupe_max(rows, np.zeros(len(rows), dtype=np.float32))
    if compiled_filter is not None and compiled_filter.has_conditions:
        keep &= compiled_filter.mask(rows)
    candidates = rows[keep]  # (m',) scoring only what passed
    sim = store.scores(xq, candidates)
    score = sim
    if boost is not None and boost.is_active:
        score = kernels.boost_scores(sim, candidates, columns.signals, boost.weights)
    positions = select(score, candidates, k, store, columns, diversity)
    n_out = len(positions)
    D[:n_out] = score[positions]
    I[:n_out] = candidates[positions]
    sim_out[:n_out] = sim[positions]
    return D, I, sim_out


def select(
    score: np.ndarray,
    candidates: np.ndarray,
    k: int,
    store: VectorStore,
    columns: ItemColumns,
    diversity: DiversitySpec | None,
) -> np.ndarray:
    """Positions of the top-k of (m,) float32 ``score`` over (m,) int64 ``candidates``, in result
    order, with the diversity rules applied: ``rerank``'s last step, and for callers that score
    candidates their own way (hybrid fusion) but want the same top-k, category cap and MMR."""
    if diversity is None or not diversity.is_active:
        return kernels.topk_indices(score, candidates, k)
    use_mmr = diversity.mmr_lambda > 0
    pool = max(MMR_POOL_FACTOR * k, MMR_MIN_POOL) if use_mmr else k
    if diversity.max_per_category > 0:
        order = kernels.topk_indices(score, candidates, len(candidates))  # full ranking
        capped = kernels.cap_per_group(
            candidates[order], columns.category_codes, diversity.max_per_category, pool
        )
        positions = order[capped]
    else:
        positions = kernels.topk_indices(score, candidates, pool)
    if use_mmr and len(positions):
        pool_vectors = store.gather(candidates[positions])  # (pool, dim) float32
        local = np.arange(len(positions), dtype=np.int64)  # ties: the better-ranked one
        picked = kernels.mmr_select(
            pool_vectors, local, score[positions], float(diversity.mmr_lambda), k
        )
        positions = positions[picked]
    return positions


def search_and_rerank(
    xq: np.ndarray,
    k: int,
    search: Callable[[int], np.ndarray],
    vectors: VectorStore | np.ndarray,
    columns: ItemColumns,
    compiled_filter: CompiledFilter | None = None,
    boost: BoostSpec | None = None,
    diversity: DiversitySpec | None = None,
    *,
    offset: int = 0,
    base_depth: int = DEFAULT_BASE_DEPTH,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fetch ANN candidates (widening for selective filters) and re-rank them.

    Args:
        xq: (dim,) float32 query.
        k: results wanted, >= 1.
        search: ``search(depth) -> (depth,) int64 global rows`` (-1 padding allowed), e.g.
            ``lambda d: version.search(xq[None], d)[1][0]``.
        vectors, columns, compiled_filter, boost, diversity: as for ``rerank``.
        offset: results to skip (paging); ranks ``offset .. offset + k - 1`` come back.
        base_depth: candidates fetched when no filter is set.

    Returns:
        D, I, sim: (k,) each, as for ``rerank``. Whenever ``offset + k`` items pass the filter,
        none is padding (diversity caps aside).
    """
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    need = offset + k
    n = columns.n_items
    filtered = compiled_filter is not None and compiled_filter.has_conditions
    sel = selectivity(compiled_filter) if filtered else 1.0
    n_match = len(matching_rows(compiled_filter, columns)) if filtered else n
    plan = plan_candidates(k, offset, sel, n, base_depth)
    while True:
        if plan.exhaustive:
            candidates = matching_rows(compiled_filter, columns) if filtered else np.arange(n)
        else:
            candidates = np.asarray(search(plan.depth), dtype=np.int64).reshape(-1)
        D, I, sim = rerank(
            xq, vectors, candidates, need, columns, compiled_filter, boost, diversity
        )
        found = int((I >= 0).sum())
        if plan.exhaustive or found >= min(need, n_match):
            break
        # The query's neighbourhood passes the filter less often than the catalog: widen.
        depth = plan.depth * _WIDEN_FACTOR
        logger.debug("widening: %d of %d results at depth %d", found, need, plan.depth)
        plan = (
            CandidatePlan(depth=0, exhaustive=True)
            if depth > MAX_ANN_DEPTH or depth >= n
            else CandidatePlan(depth=depth, exhaustive=False)
        )
    return D[offset:], I[offset:], sim[offset:]
