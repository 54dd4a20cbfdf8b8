"""The search pipeline: encode → (personalise) → retrieve (dense, lexical, hybrid) → page."""

from __future__ import annotations

import time

import numpy as np

from engine.search.batcher import MicroBatcher
from engine.search.errors import FailedPrecondition, InvalidArgument, NotFound
from engine.search.events import UserState
from engine.search.fusion import fuse as fuse_lists
from engine.search.snapshot import Snapshot, is_known, with_excluded
from engine.search.types import (
    DEFAULT_FUSION,
    MODE_DEFAULT,
    MODE_DENSE,
    MODE_HYBRID,
    MODE_LEXICAL,
    Hit,
    SearchQuery,
    SearchResult,
)
from indexer.rerank import kernels
from indexer.rerank.columns import ItemColumns
from indexer.rerank.rerank import search_and_rerank, select
from indexer.rerank.specs import BoostSpec, DiversitySpec, FilterSpec
from indexer.version import IndexVersion
from trainer.encoder.user import pool_history
from trainer.text import query_text

# Sorting by an attribute reorders this many of the most relevant hits (the "relevant set").
SORT_RELEVANT_SET = 200
# Facets count values over this many of the most relevant candidates that pass the filter.
FACET_CANDIDATES = 1000
FACET_VALUES = 100
DEFAULT_CANDIDATES = 100  # ANN candidates re-scored exactly when no filter is set
HYBRID_CANDIDATES = 100  # candidates per channel before fusion


class SearchPipeline:
    """SearchService's search methods: one snapshot per request, results paged from its ranking.

    engine.router.RouterService overrides `_retrieve` (and wraps `_search_one`) to fan out to
    shard servers; everything else here runs the same in one process and in a router.
    """

    # Set by SearchService.__init__, swapped by its reload.
    _snapshot: Snapshot
    _batcher: MicroBatcher
    users: UserState

    def _encode_queries(
        self, batcher: MicroBatcher, texts: list[str], timeout_s: float | None = None
    ) -> np.ndarray:
        # Copy: cached vectors are shared, and personalisation edits rows in place.
        return batcher.encode([query_text(t) for t in texts], timeout_s).copy()  # (n, dim)

    def _rows_of(
        self, index: IndexVersion, item_ids: tuple[str, ...], field_name: str
    ) -> np.ndarray:
        rows = []
        for item_id in item_ids:
            try:
                rows.append(index.row_of(item_id))
            except KeyError:
                raise NotFound(f"{field_name}: unknown item id {item_id!r}") from None
        return np.asarray(rows, dtype=np.int64)

    def _check_version(self, snap: Snapshot, expected: int | None) -> None:
        if expected is not None and expected != snap.summary.version:
            raise FailedPrecondition(
                f"page_token was issued for index version {expected}, now serving "
                f"{snap.summary.version}: start again from the first page"
            )

    def _retrieve(
        self,
        snap: Snapshot,
        xq: np.ndarray,
        need: int,
        *,
        spec: FilterSpec | None = None,
        boost: BoostSpec | None = None,
        diversity: DiversitySpec | None = None,
        params: dict[str, int] | None = None,
        base_depth: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Top `need` (D, I, sim) for one (dim,) query vector, and the ms spent in ANN search.

        ANN candidates are re-scored exactly against the stored vectors, filtered and boosted
        (indexer.rerank); a selective filter widens the candidate set or scores every matching
        item, so `need` results come back whenever that many items match.
        """
        if snap.dead_rows:  # exhaustive scoring of matching rows must not revive deleted items
            spec = with_excluded(spec, list(snap.dead_rows))
        compiled = snap.compiled(spec) if spec is not None else None
        search_s = 0.0

        def ann(depth: int) -> np.ndarray:
            nonlocal search_s
            t = time.perf_counter()
            _, I = snap.index.search(xq[None, :], depth, params=params or None)
            search_s += time.perf_counter() - t
            return I[0]

        D, I, sim = search_and_rerank(
            xq,
            need,
            ann,
            snap.vectors,
            snap.columns,
            compiled,
            boost,
            diversity,
            base_depth=max(base_depth or DEFAULT_CANDIDATES, need),
        )
        return D, I, sim, search_s * 1e3

    def search_batch(
        self, queries: list[SearchQuery], timeout_s: float | None = None
    ) -> list[SearchResult]:
        """Answer several searches with one encoder call, then search and re-rank each."""
        snap, batcher = self._snapshot, self._batcher  # one snapshot for the whole request
        for q in queries:
            self._check_version(snap, q.expected_version)
        t0 = time.perf_counter()
        xq = self._encode_queries(batcher, [q.text for q in queries], timeout_s)  # (nq, dim)
        personalized = [False] * len(queries)
        for i, q in enumerate(queries):
            # An unknown user (no recent items) simply gets unpersonalised results.
            known = (
                [i for i in self.users.recent(q.user_id) if is_known(snap, i)] if q.user_id else []
            )
            explicit = self._rows_of(snap.index, q.recent_item_ids, "recent_item_ids")
            rows = np.asarray([snap.index.row_of(i) for i in known] + list(explicit), np.int64)
            if len(rows):
                user = pool_history(snap.vectors.gather(rows), snap.encoder.history_decay)
                xq[i] = _blend(xq[i], user, q.personalization_weight)
                personalized[i] = True
        encode_ms = (time.perf_counter() - t0) * 1e3 / len(queries)
        return [
            self._search_one(snap, q, xq[i], personalized[i], encode_ms)
            for i, q in enumerate(queries)
        ]

    def _search_one(
        self,
        snap: Snapshot,
        q: SearchQuery,
        xq: np.ndarray,
        personalized: bool,
        encode_ms: float,
    ) -> SearchResult:
        t0 = time.perf_counter()
        if q.sort_attribute and q.sort_attribute not in snap.columns.attr_names:
            raise InvalidArgument.field(
                "sort.attribute",
                f"{q.sort_attribute!r} is not a numeric attribute of this index; "
                f"known: {', '.join(snap.columns.attr_names) or 'none'}",
            )
        spec = q.filter
        if q.exclude_item_ids:
            known = [snap.index.row_of(i) for i in q.exclude_item_ids if is_known(snap, i)]
            spec = with_excluded(spec, known)
        need = q.offset + q.k + 1  # one more than the page tells whether a next page exists
        if q.sort_attribute or q.facets:
            need = max(need, SORT_RELEVANT_SET if q.sort_attribute else 0)
            need = max(need, FACET_CANDIDATES if q.facets else 0)
        mode = self.resolve_mode(snap, q.mode)
        if mode == MODE_DENSE:
            D, I, sim, search_ms = self._retrieve(
                snap,
                xq,
                need,
                spec=spec,
                boost=q.boost,
                diversity=q.diversity,
                params=q.search_params,
                base_depth=q.fetch_depth,
            )
        else:
            D, I, sim, search_ms = self._hybrid(snap, q, xq, need, spec, mode)
        valid = I >= 0
        D, I, sim = D[valid], I[valid], sim[valid]
        facets = _facet_counts(snap.columns, I, q.facets) if q.facets else {}
        if q.sort_attribute:
            D, I, sim = _sort_by_attribute(
                snap.columns,
                D[:SORT_RELEVANT_SET],
                I[:SORT_RELEVANT_SET],
                sim[:SORT_RELEVANT_SET],
                q.sort_attribute,
                q.sort_descending,
            )
        result = self._page(snap, D, I, sim, q.offset, q.k, personalized)
        rerank_ms = (time.perf_counter() - t0) * 1e3 - search_ms
        timings = {"encode_ms": encode_ms, "search_ms": search_ms, "rerank_ms": rerank_ms}
        return SearchResult(
            result.hits,
            result.has_more,
            result.index,
            timings,
            personalized,
            facets,
            mode=mode,
        )

    def resolve_mode(self, snap: Snapshot, mode: str) -> str:
        """The request's channels; the default is hybrid where the index has a lexical index."""
        if mode == MODE_DEFAULT:
            return MODE_HYBRID if snap.lexical is not None else MODE_DENSE
        if mode != MODE_DENSE and snap.lexical is None:
            raise FailedPrecondition(
                f"mode {mode} needs the lexical channel, and this index version has none "
                "(it was built with --no-lexical, or this server is a router)"
            )
        return mode

    def _lexical_candidates(
        self, snap: Snapshot, text: str, depth: int, spec: FilterSpec | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top `depth` (scores, rows) that pass the filter (deleted items never do).

        BM25 knows nothing of filters, so it is asked for more (4x, then the filter applied); a
        very selective filter can leave fewer than `depth` lexical candidates, and the dense
        channel (which widens) fills the page.
        """
        assert snap.lexical is not None
        if snap.dead_rows:
            spec = with_excluded(spec, list(snap.dead_rows))
        compiled = snap.compiled(spec) if spec is not None else None
        filtered = compiled is not None and compiled.has_conditions
        D, I = snap.lexical.search(text, depth * 4 if filtered else depth)
        keep = I >= 0
        if filtered:
            keep &= compiled.mask(I)
        return D[keep][:depth], I[keep][:depth]

    def _hybrid(
        self,
        snap: Snapshot,
        q: SearchQuery,
        xq: np.ndarray,
        need: int,
        spec: FilterSpec | None,
        mode: str,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Lexical or hybrid retrieval: candidates from BM25 (and the dense channel), fused, then
        the same boosts, diversity and top-k as dense mode. Scores: BM25 in lexical mode, the
        fused score in hybrid mode (plus boosts); `sim` is always the exact cosine."""
        depth = max(need, HYBRID_CANDIDATES)
        t = time.perf_counter()
        lex_D, lex_I = self._lexical_candidates(snap, q.lexical_text or q.text, depth, spec)
        search_ms = (time.perf_counter() - t) * 1e3
        if mode == MODE_LEXICAL:
            scores, rows = lex_D.astype(np.float32), lex_I
        else:
            D, I, _, dense_ms = self._retrieve(
                snap, xq, depth, spec=spec, params=q.search_params, base_depth=q.fetch_depth
            )
            search_ms += dense_ms
            valid = I >= 0
            scores, rows = fuse_lists(
                (D[valid], I[valid]), (lex_D, lex_I), q.fusion or DEFAULT_FUSION
            )
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if q.boost is not None and q.boost.is_active:
            scores = kernels.boost_scores(scores, rows, snap.columns.signals, q.boost.weights)
        positions = select(scores, rows, need, snap.vectors, snap.columns, q.diversity)
        rows = rows[positions]
        sims = snap.vectors.scores(xq, rows) if len(rows) else np.zeros(0, np.float32)
        return scores[positions], rows, sims, search_ms

    def search(self, query: SearchQuery, timeout_s: float | None = None) -> SearchResult:
        return self.search_batch([query], timeout_s)[0]

    def _page(
        self,
        snap: Snapshot,
        scores: np.ndarray,
        rows: np.ndarray,
        sims: np.ndarray,
        offset: int,
        k: int,
        personalized: bool,
    ) -> SearchResult:
        hits = [
            Hit(int(r), str(snap.index.item_ids[r]), float(s), float(m))
            for r, s, m in zip(
                rows[offset : offset + k],
                scores[offset : offset + k],
                sims[offset : offset + k],
                strict=True,
            )
        ]
        has_more = len(rows) > offset + k
        return SearchResult(hits, has_more, snap.summary, {}, personalized)


def _blend(xq: np.ndarray, user: np.ndarray, weight: float) -> np.ndarray:
    """Unit vector of (1 - w) * query + w * user, both (dim,) float32."""
    norm = float(np.linalg.norm(user))
    user = user / norm if norm > 0 else user
    mixed = (1.0 - weight) * xq + weight * user
    norm = float(np.linalg.norm(mixed))
    return (mixed / norm if norm > 0 else mixed).astype(np.float32)


def _facet_counts(
    columns: ItemColumns, rows: np.ndarray, names: tuple[str, ...]
) -> dict[str, list[tuple[str, int]]]:
    """Value counts of category / brand over `rows`, most frequent first (ties by value)."""
    out = {}
    for name in names:
        codes = columns.category_codes if name == "category" else columns.brand_codes
        values = columns.category_values if name == "category" else columns.brand_values
        picked = codes[rows]
        picked = picked[picked >= 0]
        counts = np.bincount(picked, minlength=len(values)) if len(picked) else np.zeros(0, int)
        order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], values[c]))
        out[name] = [(values[c], int(counts[c])) for c in order[:FACET_VALUES]]
    return out


def _sort_by_attribute(
    columns: ItemColumns,
    D: np.ndarray,
    I: np.ndarray,
    sim: np.ndarray,
    attribute: str,
    descending: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The relevant set reordered by a numeric attribute; items missing it go last, and ties
    keep their relevance order."""
    values = columns.attrs[I, columns.attr_names.index(attribute)]  # (m,) float64, NaN missing
    key = -values if descending else values
    order = np.lexsort((np.arange(len(I)), np.where(np.isnan(key), 0.0, key), np.isnan(key)))
    return D[order], I[order], sim[order]
