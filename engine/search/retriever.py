"""Retrievers: what the search pipeline needs from an index, and the one over a local index.

A retriever answers `search` (the top candidates for a query vector, re-scored exactly,
filtered, boosted and diversified) and `gather` (stored vectors by row) for one index version.
`LocalRetriever` searches FAISS shards in this process; `engine.cluster.router.RemoteRetriever`
fans the same calls out to shard servers, as faiss's sharded indexes answer the same `search`
as one index. The pipeline runs the same over either.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engine.search.errors import InvalidArgument
from indexer.rerank.columns import ItemColumns
from indexer.rerank.filters import CompiledFilter, compile_filter
from indexer.rerank.rerank import search_and_rerank
from indexer.rerank.specs import BoostSpec, DiversitySpec, FilterSpec
from indexer.rerank.vectors import VectorStore

MAX_COMPILED_FILTERS = 256
DEFAULT_CANDIDATES = 100  # ANN candidates re-scored exactly when no filter is set


@dataclass(frozen=True)
class Retrieved:
    """The top candidates for one query, best first: D (m,) float32 scores, I (m,) int64 global
    rows (-1: none), sim (m,) float32 exact similarities; the ms spent searching (ANN or the
    shard fan-out), and the shards that did not answer (a partial answer)."""

    D: np.ndarray
    I: np.ndarray
    sim: np.ndarray
    search_ms: float
    missing_shards: tuple[int, ...] = ()


class Retriever(Protocol):
    """What the pipeline needs from an index version's vectors, local or on shard servers."""

    def search(
        self,
        xq: np.ndarray,
        need: int,
        *,
        spec: FilterSpec | None = None,
        boost: BoostSpec | None = None,
        diversity: DiversitySpec | None = None,
        params: dict[str, int] | None = None,
        base_depth: int = 0,
        end: float = math.inf,
        partial_ok: bool = False,
    ) -> Retrieved:
        """Top `need` for one (dim,) float32 query vector. `end` is the time.monotonic() by
        which the answer is due; `partial_ok`: the caller can flag an answer that lacks some
        shards (else a missing shard is UNAVAILABLE)."""
        ...

    def gather(self, rows: np.ndarray, end: float = math.inf) -> np.ndarray:
        """(m, dim) float32 stored vectors of global `rows`."""
        ...

    def location(self, shard: int) -> str:
        """Where shard `shard` is served ("local", or its servers' addresses)."""
        ...


class FilterCache:
    """Filters compiled against one ItemColumns, cached: each spec's full-catalog selectivity
    pass runs once. Bounded (oldest entry out first); thread-safe."""

    def __init__(self, columns: ItemColumns) -> None:
        self.columns = columns
        self._compiled: dict[FilterSpec, CompiledFilter] = {}
        self._lock = threading.Lock()

    def compiled(self, spec: FilterSpec) -> CompiledFilter:
        """`spec` compiled; an unknown attribute or a bad value is INVALID_ARGUMENT on `filter`."""
        with self._lock:
            hit = self._compiled.get(spec)
        if hit is not None:
            return hit
        try:
            compiled = compile_filter(spec, self.columns)
        except ValueError as error:
            raise InvalidArgument.field("filter", str(error)) from error
        with self._lock:
            if len(self._compiled) >= MAX_COMPILED_FILTERS:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[spec] = compiled
        return compiled


def with_excluded(spec: FilterSpec | None, rows: list[int]) -> FilterSpec | None:
    """`spec` that also excludes `rows` (global rows)."""
    if not rows:
        return spec
    spec = spec or FilterSpec()
    merged = tuple(sorted(set(spec.exclude_rows) | set(rows)))
    return FilterSpec(
        category_prefix=spec.category_prefix,
        brands=spec.brands,
        price_min=spec.price_min,
        price_max=spec.price_max,
        attribute_ranges=spec.attribute_ranges,
        in_stock=spec.in_stock,
        exclude_rows=merged,
    )


def local_positions(local_of: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(m,) int64 positions in a shard's arrays of global `rows`, given `local_of` ((n,) int64,
    global row → position, -1 for other shards' rows); -1 for -1 and for other shards' rows."""
    rows = np.asarray(rows, dtype=np.int64)
    inside = (rows >= 0) & (rows < len(local_of))
    return np.where(inside, local_of[np.where(inside, rows, 0)], -1)


@dataclass(frozen=True)
class LocalRetriever:
    """ANN search over FAISS shards in this process, re-scored exactly against the stored
    vectors (indexer.rerank).

    `index` is an IndexVersion or a LiveView; `vectors`, `columns` and `filters` hold its rows.
    With `local_of` (a shard server) they hold one shard's rows only: row i of them is the
    item `local_of` maps to i, and search answers in those positions.
    """

    index: Any
    vectors: VectorStore
    columns: ItemColumns
    filters: FilterCache
    dead_rows: tuple[int, ...] = ()  # rows deleted or replaced since the version was built
    local_of: np.ndarray | None = None

    def search(
        self,
        xq: np.ndarray,
        need: int,
        *,
        spec: FilterSpec | None = None,
        boost: BoostSpec | None = None,
        diversity: DiversitySpec | None = None,
        params: dict[str, int] | None = None,
        base_depth: int = 0,
        end: float = math.inf,
        partial_ok: bool = False,
    ) -> Retrieved:
        """Top `need` for one (dim,) query vector; a selective filter widens the candidate set
        or scores every matching item, so `need` results come back whenever that many match."""
        if self.dead_rows:  # exhaustive scoring of matching rows must not revive deleted items
            spec = with_excluded(spec, list(self.dead_rows))
        compiled = self.filters.compiled(spec) if spec is not None else None
        search_s = 0.0

        def ann(depth: int) -> np.ndarray:
            nonlocal search_s
            t = time.perf_counter()
            _, I = self.index.search(xq[None, :], depth, params=params or None)
            search_s += time.perf_counter() - t
            return I[0] if self.local_of is None else local_positions(self.local_of, I[0])

        D, I, sim = search_and_rerank(
            xq,
            need,
            ann,
            self.vectors,
            self.columns,
            compiled,
            boost,
            diversity,
            base_depth=max(base_depth or DEFAULT_CANDIDATES, need),
        )
        return Retrieved(D, I, sim, search_s * 1e3)

    def gather(self, rows: np.ndarray, end: float = math.inf) -> np.ndarray:
        return self.vectors.gather(rows)

    def location(self, shard: int) -> str:
        return "local"
