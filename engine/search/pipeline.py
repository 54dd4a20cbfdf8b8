"""The search pipeline: encode → (personalise) → retrieve (dense, lexical, hybrid) → page.

Functions of one snapshot per request: whatever retriever the snapshot has (local FAISS
shards, or shard servers behind a router) answers the same calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator

import numpy as np

from engine.search.batcher import MicroBatcher
from engine.search.engagement import EngagementFeed
from engine.search.errors import FailedPrecondition, InvalidArgument, NotFound
from engine.search.events import UserState
from engine.search.fusion import fuse as fuse_lists
from engine.search.ranked import RankedCandidates
from engine.search.retriever import Retrieved, with_excluded
from engine.search.snapshot import Snapshot, is_known
from engine.search.types import (
    DEFAULT_FUSION,
    MODE_DEFAULT,
    MODE_DENSE,
    MODE_HYBRID,
    MODE_LEXICAL,
    MODE_RANKED,
    Hit,
    SearchQuery,
    SearchResult,
)
from indexer.rerank import kernels
from indexer.rerank.columns import ItemColumns
from indexer.rerank.rerank import select
from indexer.rerank.specs import FilterSpec
from indexer.version import IndexVersion
from trainer.encoder.user import pool_history
from trainer.text import query_text

# Sorting by an attribute reorders this many of the most relevant hits (the "relevant set").
SORT_RELEVANT_SET = 200
# Facets count values over this many of the most relevant candidates that pass the filter.
FACET_CANDIDATES = 1000
FACET_VALUES = 100
HYBRID_CANDIDATES = 100  # candidates per channel before fusion


def rows_of(index: IndexVersion, item_ids: tuple[str, ...], field_name: str) -> np.ndarray:
    """(m,) int64 rows of `item_ids`; NotFound on `field_name` for an unknown id."""
    rows = []
    for item_id in item_ids:
        try:
            rows.append(index.row_of(item_id))
        except KeyError:
            raise NotFound(f"{field_name}: unknown item id {item_id!r}") from None
    return np.asarray(rows, dtype=np.int64)


def history_rows(
    snap: Snapshot, users: UserState, user_id: str, item_ids: tuple[str, ...], field_name: str
) -> np.ndarray:
    """(m,) int64 rows of a history, most recent last: the user's recent items that the index
    knows (an unknown user has none), then `item_ids` (NotFound for an unknown one)."""
    known = [i for i in users.recent(user_id) if is_known(snap, i)] if user_id else []
    explicit = rows_of(snap.index, item_ids, field_name)
    return np.asarray([snap.index.row_of(i) for i in known] + list(explicit), np.int64)


def check_version(snap: Snapshot, expected: int | None) -> None:
    """FAILED_PRECONDITION when a page token's index version is not the snapshot's."""
    if expected is not None and expected != snap.summary.version:
        raise FailedPrecondition(
            f"page_token was issued for index version {expected}, now serving "
            f"{snap.summary.version}: start again from the first page"
        )


def search_batch(
    snap: Snapshot,
    batcher: MicroBatcher,
    users: UserState,
    queries: list[SearchQuery],
    timeout_s: float | None = None,
    engagement: EngagementFeed | None = None,
) -> list[SearchResult]:
    """Answer several searches with one encoder call, then search and re-rank each; every call
    of the request (encoder, shards) ends within `timeout_s`. `engagement`: the ranking
    stage's per-item engagement (None: that feature is missing)."""
    end = math.inf if timeout_s is None else time.monotonic() + timeout_s
    for q in queries:
        with _naming(q):
            check_version(snap, q.expected_version)
    t0 = time.perf_counter()
    # Copy: cached vectors are shared, and personalisation edits rows in place.
    xq = batcher.encode([query_text(q.text) for q in queries], timeout_s).copy()  # (nq, dim)
    personalized = [False] * len(queries)
    for i, q in enumerate(queries):
        with _naming(q):
            rows = history_rows(snap, users, q.user_id, q.recent_item_ids, "recent_item_ids")
        if len(rows):
            user = pool_history(snap.retriever.gather(rows, end), snap.encoder.history_decay)
            xq[i] = _blend(xq[i], user, q.personalization_weight)
            personalized[i] = True
    encode_ms = (time.perf_counter() - t0) * 1e3 / len(queries)
    results = []
    for i, q in enumerate(queries):
        with _naming(q):
            results.append(_search_one(snap, q, xq[i], personalized[i], encode_ms, end, engagement))
    return results


@contextlib.contextmanager
def _naming(q: SearchQuery) -> Iterator[None]:
    """A request error raised for ``q`` names where ``q`` is in a batch (``requests[i].``)."""
    try:
        yield
    except (InvalidArgument, NotFound, FailedPrecondition) as e:
        if not q.field_prefix:
            raise
        raise e.within(q.field_prefix) from None


def _search_one(
    snap: Snapshot,
    q: SearchQuery,
    xq: np.ndarray,
    personalized: bool,
    encode_ms: float,
    end: float,
    engagement: EngagementFeed | None = None,
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
    mode = resolve_mode(snap, q.mode)
    ranked = None
    if mode == MODE_DENSE:
        found = snap.retriever.search(
            xq,
            need,
            spec=spec,
            boost=q.boost,
            diversity=q.diversity,
            params=q.search_params,
            base_depth=q.fetch_depth,
            end=end,
            partial_ok=True,  # a SearchResponse flags what is missing
        )
    else:
        found, ranked = _hybrid(snap, q, xq, need, spec, mode, engagement)
    valid = found.I >= 0
    D, I, sim = found.D[valid], found.I[valid], found.sim[valid]
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
    hits, has_more = page(snap, D, I, sim, q.offset, q.k)
    if ranked is not None and q.explain:
        assert snap.ranking is not None
        explained = snap.ranking.explain(ranked, [h.row for h in hits])
        hits = [dataclasses.replace(h, explanation=e) for h, e in zip(hits, explained, strict=True)]
    rank_ms = ranked.rank_ms if ranked is not None else 0.0
    rerank_ms = (time.perf_counter() - t0) * 1e3 - found.search_ms - rank_ms
    timings = {"encode_ms": encode_ms, "search_ms": found.search_ms, "rerank_ms": rerank_ms}
    if ranked is not None:
        timings["rank_ms"] = rank_ms
    return SearchResult(
        hits,
        has_more,
        snap.summary,
        timings,
        personalized,
        facets,
        mode=mode,
        partial=bool(found.missing_shards),
        missing_shards=found.missing_shards,
    )


def resolve_mode(snap: Snapshot, mode: str) -> str:
    """The request's channels; the default is ranked where the version has a ranker, else
    hybrid where it has a lexical index, else dense."""
    if mode == MODE_DEFAULT:
        if snap.ranking is not None:
            return MODE_RANKED
        return MODE_HYBRID if snap.lexical is not None else MODE_DENSE
    if mode == MODE_RANKED and snap.ranking is None:
        raise FailedPrecondition(
            "mode RANKED needs a learned ranker, and this index version has none (publish one "
            "with aisle-rank train, then aisle-rank attach or aisle-index build --ranker), or "
            "this server is a router (ranking is single-process)"
        )
    if mode != MODE_DENSE and snap.lexical is None:
        raise FailedPrecondition(
            f"mode {mode} needs the lexical channel, and this index version has none "
            "(it was built with --no-lexical, or this server is a router)"
        )
    return mode


def _lexical_candidates(
    snap: Snapshot, text: str, depth: int, spec: FilterSpec | None
) -> tuple[np.ndarray, np.ndarray]:
    """BM25 top `depth` (scores, rows) that pass the filter (deleted items never do).

    BM25 knows nothing of filters, so it is asked for more (4x, then the filter applied); a
    very selective filter can leave fewer than `depth` lexical candidates, and the dense
    channel (which widens) fills the page.
    """
    assert snap.lexical is not None
    if snap.dead_rows:
        spec = with_excluded(spec, list(snap.dead_rows))
    compiled = snap.filters.compiled(spec) if spec is not None else None
    filtered = compiled is not None and compiled.has_conditions
    D, I = snap.lexical.search(text, depth * 4 if filtered else depth, state=snap.lexical_state)
    keep = I >= 0
    if filtered:
        keep &= compiled.mask(I)
    return D[keep][:depth], I[keep][:depth]


def _hybrid(
    snap: Snapshot,
    q: SearchQuery,
    xq: np.ndarray,
    need: int,
    spec: FilterSpec | None,
    mode: str,
    engagement: EngagementFeed | None = None,
) -> tuple[Retrieved, RankedCandidates | None]:
    """Lexical, hybrid or ranked retrieval: candidates from BM25 (and the dense channel), fused
    (or ordered by the ranker, engine.search.ranked), then the same boosts, diversity and top-k
    as dense mode. Scores: BM25 in lexical mode, the fused score in hybrid mode, the ranker's in
    ranked mode (plus boosts); `sim` is always the exact cosine. Only a snapshot with its
    vectors in this process has a lexical channel. The ranked candidates come back too (for
    explain); None in the other modes."""
    depth = max(need, HYBRID_CANDIDATES)
    t = time.perf_counter()
    lex_D, lex_I = _lexical_candidates(snap, q.lexical_text or q.text, depth, spec)
    search_ms = (time.perf_counter() - t) * 1e3
    ranked = None
    if mode == MODE_LEXICAL:
        scores, rows = lex_D.astype(np.float32), lex_I
    elif mode == MODE_RANKED:
        assert snap.ranking is not None and snap.vectors is not None
        dense = snap.retriever.search(
            xq, depth, spec=spec, params=q.search_params, base_depth=q.fetch_depth
        )
        search_ms += dense.search_ms
        ranked = snap.ranking.rank(
            columns=snap.columns,
            vectors=snap.vectors,
            lexical=snap.lexical,
            lexical_state=snap.lexical_state,
            text=q.lexical_text or q.text,
            xq=xq,
            dense_rows=dense.I[dense.I >= 0],
            lexical_rows=lex_I,
            item_ids=snap.index.item_ids,
            engagement=engagement.counts() if engagement is not None else None,
        )
        scores, rows = ranked.scores, ranked.rows
    else:
        dense = snap.retriever.search(
            xq, depth, spec=spec, params=q.search_params, base_depth=q.fetch_depth
        )
        search_ms += dense.search_ms
        valid = dense.I >= 0
        scores, rows = fuse_lists(
            (dense.D[valid], dense.I[valid]), (lex_D, lex_I), q.fusion or DEFAULT_FUSION
        )
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if q.boost is not None and q.boost.is_active:
        scores = kernels.boost_scores(scores, rows, snap.columns.signals, q.boost.weights)
    positions = select(scores, rows, need, snap.vectors, snap.columns, q.diversity)
    rows = rows[positions]
    sims = snap.vectors.scores(xq, rows) if len(rows) else np.zeros(0, np.float32)
    return Retrieved(scores[positions], rows, sims, search_ms), ranked


def page(
    snap: Snapshot,
    scores: np.ndarray,
    rows: np.ndarray,
    sims: np.ndarray,
    offset: int,
    k: int,
) -> tuple[list[Hit], bool]:
    """The hits at [offset, offset + k) of a ranking, and whether more follow."""
    end = offset + k
    shown = rows[offset:end]
    # Whole-array conversions: per-element numpy scalars cost ~1 µs each, 4 per hit.
    hits = [
        Hit(r, item_id, s, m)
        for r, item_id, s, m in zip(
            shown.tolist(),
            snap.index.item_ids[shown].tolist(),
            scores[offset:end].tolist(),
            sims[offset:end].tolist(),
            strict=True,
        )
    ]
    return hits, len(rows) > end


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
