"""The search service: encode → search shards → top-k, over a swappable model+index snapshot."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.batcher import MicroBatcher
from engine.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from engine.events import Event, EventLog, UserState
from engine.fusion import FusionParams
from engine.fusion import fuse as fuse_lists
from engine.query_understanding import ParsedQuery
from indexer import kernels
from indexer.layout import resolve_version_dir
from indexer.lexical import LEXICAL_META_FILE, LexicalIndex
from indexer.live import LiveIndex, LiveView, UnknownItemError
from indexer.manifest import IndexFormatError, ModelMismatchError
from indexer.rerank import (
    BoostSpec,
    CompiledFilter,
    DiversitySpec,
    FilterSpec,
    ItemColumns,
    VectorStore,
    compile_filter,
    matching_rows,
    search_and_rerank,
    select,
)
from indexer.shards import shard_of
from indexer.store import IndexVersion
from indexer.users import read_users
from trainer.encoder import Encoder, load_encoder, model_fingerprint
from trainer.text import item_text, query_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchQuery:
    """A validated search. `offset` is where the page starts in the full ranking."""

    text: str
    k: int
    offset: int = 0
    recent_item_ids: tuple[str, ...] = ()
    user_id: str = ""
    personalization_weight: float = 0.3
    search_params: dict[str, int] = field(default_factory=dict)
    fetch_depth: int = 0  # ANN candidates when no filter is set; 0 → the default
    expected_version: int | None = None  # from a page token
    filter: FilterSpec | None = None
    exclude_item_ids: tuple[str, ...] = ()
    boost: BoostSpec | None = None
    diversity: DiversitySpec | None = None
    sort_attribute: str = ""
    sort_descending: bool = False
    facets: tuple[str, ...] = ()
    mode: str = "default"  # dense | lexical | hybrid | default (hybrid where possible)
    fusion: FusionParams | None = None  # None: DEFAULT_FUSION
    lexical_text: str = ""  # the text BM25 sees (the query minus parsed price expressions)
    parsed: ParsedQuery | None = None  # set when query understanding changed the query


@dataclass(frozen=True)
class Hit:
    row: int
    item_id: str
    score: float
    similarity: float


@dataclass(frozen=True)
class IndexSummary:
    version: int
    model_fingerprint: str
    item_count: int
    shard_count: int
    factory: str


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    has_more: bool
    index: IndexSummary
    timings_ms: dict[str, float]
    personalized: bool = False
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    popularity_fallback: bool = False
    mode: str = "dense"


# Sorting by an attribute reorders this many of the most relevant hits (the "relevant set").
SORT_RELEVANT_SET = 200
# Facets count values over this many of the most relevant candidates that pass the filter.
FACET_CANDIDATES = 1000
FACET_VALUES = 100
DEFAULT_CANDIDATES = 100  # ANN candidates re-scored exactly when no filter is set
HYBRID_CANDIDATES = 100  # candidates per channel before fusion
MODE_DEFAULT, MODE_DENSE, MODE_LEXICAL, MODE_HYBRID = "default", "dense", "lexical", "hybrid"
# Chosen on the Home Depot train hold-out (826 queries the training run never saw): a min-max
# blend with dense weight 0.3 beat RRF and the other weights there, for the zero-shot and the
# fine-tuned model alike; benchmarks/bench_quality.py reports the tuning and the dev figures.
DEFAULT_FUSION = FusionParams(method="blend", alpha=0.3, norm="minmax")
MAX_COMPILED_FILTERS = 256


@dataclass
class Snapshot:
    """One model and the index built with it, with what re-ranking needs; swapped as a whole.

    `index` is an IndexVersion, or a LiveView (one consistent state of a live index: a version
    plus the upserts and deletes since) when `live` is set; every request works on one snapshot.
    """

    encoder: Encoder
    index: IndexVersion | LiveView
    summary: IndexSummary
    columns: ItemColumns
    vectors: VectorStore
    live: LiveIndex | None = None
    version_dir: Path | None = None
    lexical: LexicalIndex | None = None  # the BM25 channel, when the version has one
    dead_rows: tuple[int, ...] = ()  # rows deleted or replaced since the version was built
    _filters: dict[FilterSpec, CompiledFilter] = field(default_factory=dict)
    _filters_lock: threading.Lock = field(default_factory=threading.Lock)

    def compiled(self, spec: FilterSpec) -> CompiledFilter:
        """The compiled filter for `spec`, cached: its full-catalog selectivity pass runs once."""
        return cached_filter(self._filters, self._filters_lock, spec, self.columns)


def cached_filter(
    cache: dict[FilterSpec, CompiledFilter],
    lock: threading.Lock,
    spec: FilterSpec,
    columns: ItemColumns,
) -> CompiledFilter:
    """`spec` compiled against `columns`, through a bounded cache (oldest entry out first);
    an unknown attribute or a bad value is INVALID_ARGUMENT on `filter`."""
    with lock:
        hit = cache.get(spec)
    if hit is not None:
        return hit
    try:
        compiled = compile_filter(spec, columns)
    except ValueError as error:
        raise InvalidArgument.field("filter", str(error)) from error
    with lock:
        if len(cache) >= MAX_COMPILED_FILTERS:
            cache.pop(next(iter(cache)))
        cache[spec] = compiled
    return compiled


def load_snapshot(
    index_path: str | Path,
    model_dir: str | Path | None = None,
    *,
    encoding: EncodingConfig | None = None,
) -> Snapshot:
    """Open an index (root or version dir) and the model that embedded it.

    Without `model_dir` the manifest's model path is used. Raises IndexFormatError when the index
    is corrupt, or when the model does not match the one the index was built with. The query
    encoder backend and threads come from `encoding` (ONNX Runtime when the model dir has the
    export: no torch in the serving process until an item text must be encoded).
    """
    encoding = encoding or EncodingConfig()
    version_dir = resolve_version_dir(index_path)
    from indexer.manifest import load_manifest

    manifest = load_manifest(version_dir / "manifest.json")
    if model_dir is None:
        model_dir = Path(manifest.model_path)
        if not model_dir.exists():
            raise IndexFormatError(
                f"{version_dir}: the model it was built with ({model_dir}) is not on this machine; "
                "pass --model DIR with a copy of that model"
            )
    fingerprint = model_fingerprint(model_dir)
    encoder = load_encoder(
        model_dir, backend=encoding.backend, num_threads=encoding.encoder_threads
    )
    log.info("query encoder: %s backend", encoder.query_backend)
    if version_dir.parent.name == "versions":
        # Inside an index root: live updates (Upsert/Delete) go through its update log, and
        # the updates logged since this version was built are replayed now.
        live = LiveIndex.open(
            version_dir, verify=True, expected_fingerprint=fingerprint, encoder=encoder
        )
        lexical = _open_lexical(version_dir)
        if lexical is not None:  # bring BM25 up to the replayed updates
            sync_lexical(lexical, live.snapshot(), live.n_base, set())
        return live_snapshot(encoder, live, version_dir, lexical)
    index = IndexVersion.open(version_dir, verify=True, expected_fingerprint=fingerprint)
    summary = IndexSummary(
        version=index.version,
        model_fingerprint=index.manifest.model_fingerprint,
        item_count=index.n_items,
        shard_count=index.manifest.n_shards,
        factory=index.manifest.factory,
    )
    columns = ItemColumns.from_table(index.items)
    vectors = index.vector_store()  # the compact copy (f16/i8) when the build kept one
    return Snapshot(
        encoder=encoder,
        index=index,
        summary=summary,
        columns=columns,
        vectors=vectors,
        version_dir=version_dir,
        lexical=_open_lexical(version_dir),
    )


def _open_lexical(version_dir: Path) -> LexicalIndex | None:
    """The version's BM25 index (its files were checksummed with the rest), or None."""
    if not (version_dir / LEXICAL_META_FILE).exists():
        return None
    return LexicalIndex.load(version_dir)


def sync_lexical(
    lexical: LexicalIndex, view: LiveView, rows_before: int, dead_before: set[int]
) -> None:
    """Apply to BM25 what the live index changed since a view with `rows_before` rows and
    `dead_before` dead rows: index the new live rows' texts, drop rows deleted or replaced."""
    dead = {int(r) for r in view.dead_rows()}
    new_rows = [r for r in range(rows_before, view.n_rows) if r not in dead]
    if new_rows:
        ids = [view.item_id(r) for r in new_rows]
        lexical.upsert(
            np.asarray(new_rows, dtype=np.int64),
            [item_text(view.record(r)) for r in new_rows],
            shard_of(ids, lexical.n_shards),
        )
    # Rows at or past rows_before that are dead were never indexed.
    gone = sorted(r for r in dead - dead_before if r < rows_before)
    if gone:
        lexical.delete(np.asarray(gone, dtype=np.int64))


def live_snapshot(
    encoder: Encoder, live: LiveIndex, version_dir: Path, lexical: LexicalIndex | None = None
) -> Snapshot:
    """A Snapshot of the live index's current state (taken again after each update)."""
    view = live.snapshot()
    manifest = view.manifest
    summary = IndexSummary(
        version=manifest.version,
        model_fingerprint=manifest.model_fingerprint,
        item_count=view.n_items,
        shard_count=manifest.n_shards,
        factory=manifest.factory,
    )
    return Snapshot(
        encoder=encoder,
        index=view,
        summary=summary,
        columns=view.columns(),
        vectors=view.vector_store(),
        live=live,
        version_dir=version_dir,
        dead_rows=tuple(int(r) for r in view.dead_rows()),
        lexical=lexical,
    )


@dataclass(frozen=True)
class EncodingConfig:
    """Query encoding under concurrency: micro-batching and the embedding cache."""

    max_batch: int = 32  # texts per encoder call
    window_ms: float = 0.0  # extra wait for more texts once one is queued (0: none)
    max_queue: int = 1024  # queued texts before requests are refused (RESOURCE_EXHAUSTED)
    cache_size: int = 10_000  # query embeddings kept (LRU); 0 disables the cache
    backend: str = "auto"  # query encoder: "onnx" when the model dir has the export, else torch
    # One intra-op thread measured faster than two on a 2-core machine under load (ORT and
    # torch alike); concurrency comes from batching and the request threads instead.
    encoder_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be auto, torch or onnx, got {self.backend!r}")
        if self.encoder_threads is not None and self.encoder_threads < 1:
            raise ValueError(f"encoder_threads must be >= 1, got {self.encoder_threads}")
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        if self.window_ms < 0 or self.window_ms > 100:
            raise ValueError(f"window_ms must be in [0, 100], got {self.window_ms}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")


class SearchService:
    """Pure search logic over the current snapshot; no gRPC types here."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        index_path: str | Path,
        model_dir: Path | None,
        encoding: EncodingConfig | None = None,
        on_batch: Any = None,
        events_dir: Path | None = None,
    ) -> None:
        self._index_path = Path(index_path)
        self._event_log = EventLog(events_dir) if events_dir is not None else None
        self._events_lock = threading.Lock()
        self._model_dir = model_dir
        self._encoding = encoding or EncodingConfig()
        self._on_batch = on_batch
        self._swap_lock = threading.Lock()  # one reload at a time
        # Fast tokenizers refuse concurrent calls with different settings ("Already borrowed"),
        # and torch already uses every core per call, so encodes run one at a time.
        self._encode_lock = threading.Lock()
        self.started_at = time.time()
        self._snapshot = snapshot
        self._batcher = self._new_batcher(snapshot)
        self.users = self._load_users(snapshot)

    def _load_users(self, snapshot: Snapshot) -> UserState:
        """The version's users' recent items, plus events logged since the version was built."""
        users = UserState(read_users(snapshot.version_dir) if snapshot.version_dir else {})
        if self._event_log is not None:
            built = datetime.fromisoformat(snapshot.index.manifest.created_at)
            if built.tzinfo is None:
                built = built.replace(tzinfo=UTC)
            replayed = 0
            for event in self._event_log.read():
                if event.time >= built:
                    users.record(event.user_id, event.item_id)
                    replayed += 1
            log.info("user state: %d users, %d events replayed from the log", len(users), replayed)
        return users

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def batcher(self) -> MicroBatcher:
        return self._batcher

    def close(self) -> None:
        self._batcher.close()

    # -- encoding -------------------------------------------------------------------------------

    def _new_batcher(self, snapshot: Snapshot) -> MicroBatcher:
        encoder = snapshot.encoder

        def encode(texts: list[str]) -> np.ndarray:
            with self._encode_lock:
                return encoder.encode_queries(texts)  # (n, dim)

        e = self._encoding
        return MicroBatcher(
            encode,
            max_batch=e.max_batch,
            window_ms=e.window_ms,
            max_queue=e.max_queue,
            cache_size=e.cache_size,
            on_batch=self._on_batch,
        )

    def _encode_queries(
        self, batcher: MicroBatcher, texts: list[str], timeout_s: float | None = None
    ) -> np.ndarray:
        # Copy: cached vectors are shared, and personalisation edits rows in place.
        return batcher.encode([query_text(t) for t in texts], timeout_s).copy()  # (n, dim)

    def embed(self, texts: list[str], *, items: bool) -> tuple[np.ndarray, Snapshot]:
        """(n, dim) float32 unit vectors from the serving model, and the snapshot used."""
        snap = self._snapshot
        with self._encode_lock:
            if items:
                return snap.encoder.encode_items(texts), snap
            return snap.encoder.encode_queries([query_text(t) for t in texts]), snap

    # -- search ---------------------------------------------------------------------------------

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
            spec = _with_excluded(spec, list(snap.dead_rows))
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
                [i for i in self.users.recent(q.user_id) if _known(snap, i)] if q.user_id else []
            )
            explicit = self._rows_of(snap.index, q.recent_item_ids, "recent_item_ids")
            rows = np.asarray([snap.index.row_of(i) for i in known] + list(explicit), np.int64)
            if len(rows):
                user = snap.vectors.gather(rows).mean(axis=0)  # (dim,)
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
            known = [snap.index.row_of(i) for i in q.exclude_item_ids if _known(snap, i)]
            spec = _with_excluded(spec, known)
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
            spec = _with_excluded(spec, list(snap.dead_rows))
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

    def similar_items(
        self,
        item_id: str,
        k: int,
        offset: int = 0,
        expected_version: int | None = None,
        spec: FilterSpec | None = None,
    ) -> SearchResult:
        """Neighbours of a catalog item by its stored vector; the item itself is left out."""
        snap = self._snapshot
        self._check_version(snap, expected_version)
        t0 = time.perf_counter()
        row = self._rows_of(snap.index, (item_id,), "item_id")
        xq = snap.vectors.gather(row)[0].astype(np.float32, copy=True)  # (dim,)
        t1 = time.perf_counter()
        D, I, sim, search_ms = self._retrieve(
            snap, xq, offset + k + 1, spec=_with_excluded(spec, [int(row[0])])
        )
        keep = I >= 0
        result = self._page(snap, D[keep], I[keep], sim[keep], offset, k, False)
        rerank_ms = (time.perf_counter() - t1) * 1e3 - search_ms
        timings = {"encode_ms": (t1 - t0) * 1e3, "search_ms": search_ms, "rerank_ms": rerank_ms}
        return SearchResult(result.hits, result.has_more, result.index, timings)

    def recommend(
        self,
        k: int,
        *,
        user_id: str = "",
        history: tuple[str, ...] = (),
        include_seen: bool = False,
        offset: int = 0,
        expected_version: int | None = None,
        spec: FilterSpec | None = None,
    ) -> SearchResult:
        """Items for a user: closest to the mean vector of their history (the user's recent
        items, then `history`, most recent last). With no history at all (an unknown user) the
        most popular items come back instead, flagged as the popularity fallback."""
        snap = self._snapshot
        self._check_version(snap, expected_version)
        t0 = time.perf_counter()
        known = tuple(i for i in self.users.recent(user_id) if _known(snap, i)) if user_id else ()
        explicit = tuple(self._rows_of(snap.index, history, "history_item_ids"))
        rows = np.asarray(
            [snap.index.row_of(i) for i in known] + [int(r) for r in explicit], dtype=np.int64
        )
        if not include_seen and len(rows):
            spec = _with_excluded(spec, [int(r) for r in rows])
        if not len(rows):
            return self._popular(snap, k, offset, spec, t0)
        user = snap.vectors.gather(rows).mean(axis=0)  # (dim,)
        norm = float(np.linalg.norm(user))
        xq = (user / norm if norm > 0 else user).astype(np.float32)  # (dim,)
        t1 = time.perf_counter()
        D, I, sim, search_ms = self._retrieve(snap, xq, offset + k + 1, spec=spec)
        keep = I >= 0
        result = self._page(snap, D[keep], I[keep], sim[keep], offset, k, True)
        rerank_ms = (time.perf_counter() - t1) * 1e3 - search_ms
        timings = {"encode_ms": (t1 - t0) * 1e3, "search_ms": search_ms, "rerank_ms": rerank_ms}
        return SearchResult(result.hits, result.has_more, result.index, timings, True)

    def _popular(
        self, snap: Snapshot, k: int, offset: int, spec: FilterSpec | None, t0: float
    ) -> SearchResult:
        """The popularity fallback: items by their popularity signal (log rating count,
        scaled to [0, 1]; it is also the hits' score), filter applied, ties by row."""
        if snap.dead_rows:
            spec = _with_excluded(spec, list(snap.dead_rows))
        compiled = snap.compiled(spec) if spec is not None else None
        rows = (
            matching_rows(compiled, snap.columns)
            if compiled is not None and compiled.has_conditions
            else np.arange(snap.columns.n_items, dtype=np.int64)
        )
        popularity = snap.columns.signals[rows, 0]  # (m,) float32 in [0, 1]
        order = np.lexsort((rows, -popularity))[: offset + k + 1]
        D = popularity[order].astype(np.float32)
        I = rows[order]
        result = self._page(snap, D, I, np.full_like(D, np.nan), offset, k, False)
        timings = {
            "encode_ms": 0.0,
            "search_ms": 0.0,
            "rerank_ms": (time.perf_counter() - t0) * 1e3,
        }
        return SearchResult(
            result.hits, result.has_more, result.index, timings, False, popularity_fallback=True
        )

    def record_events(self, events: list[Event]) -> int:
        """Append events to the durable log (fsynced), then update the users' recent items."""
        if self._event_log is None:
            raise FailedPrecondition(
                "this server keeps no event log: start it with --events-dir DIR "
                "(or serve an index root, whose events/ dir is the default)"
            )
        snap = self._snapshot
        for i, event in enumerate(events):
            if not _known(snap, event.item_id):
                raise NotFound(f"events[{i}].item_id: unknown item id {event.item_id!r}")
        with self._events_lock:  # a reload rebuilding user state waits for this append
            recorded = self._event_log.append(events)
            for event in events:
                self.users.record(event.user_id, event.item_id)
        return recorded

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

    def exclude(self, spec: FilterSpec | None, item_ids: tuple[str, ...]) -> FilterSpec | None:
        """`spec` that also excludes these item ids (unknown ids are ignored)."""
        snap = self._snapshot
        return _with_excluded(spec, [snap.index.row_of(i) for i in item_ids if _known(snap, i)])

    def record(self, row: int, field_names: tuple[str, ...] = ()) -> dict[str, Any]:
        fields = self._snapshot.index.record(row)
        if field_names:
            fields = {name: fields[name] for name in field_names if name in fields}
        return fields

    def warm_up(self) -> None:
        """Run each request path once before the server says SERVING: the first call of a
        numba kernel, of ONNX Runtime and of FAISS in a fresh process costs hundreds of ms,
        which would otherwise land on the first shoppers' requests."""
        t = time.perf_counter()
        queries = [
            SearchQuery(text="warm up", k=10),
            SearchQuery(text="warm up", k=10, mode=MODE_DENSE, boost=BoostSpec(popularity=1.0)),
            SearchQuery(text="warm up", k=10, mode=MODE_DENSE, filter=FilterSpec(in_stock=True)),
            SearchQuery(
                text="warm up", k=10, diversity=DiversitySpec(max_per_category=2, mmr_lambda=0.5)
            ),
        ]
        for query in queries:
            self.search(query)
        self._batcher.cache.clear()  # the warm-up text is not a shopper's query
        log.info("warmed up in %.0f ms", (time.perf_counter() - t) * 1e3)

    # -- live updates ---------------------------------------------------------------------------

    def _live(self) -> LiveIndex:
        live = self._snapshot.live
        if live is None:
            raise FailedPrecondition(
                "this server serves a stand-alone version dir: live updates need an index root "
                "(aisle-serve --index ROOT)"
            )
        return live

    def _refresh(self) -> Snapshot:
        """Swap in a snapshot of the live index's latest state (after an update), with the
        lexical channel brought up to it."""
        with self._swap_lock:
            snap = self._snapshot
            if snap.live is not None:
                view = snap.live.snapshot()
                if snap.lexical is not None:
                    sync_lexical(snap.lexical, view, snap.index.n_rows, set(snap.dead_rows))
                self._snapshot = live_snapshot(
                    snap.encoder, snap.live, snap.version_dir, snap.lexical
                )
            return self._snapshot

    def upsert(self, records: list[dict[str, Any]]) -> int:
        """Add or replace items: embed their text with the serving model, log durably, apply.
        Searchable when this returns. Returns the update-log sequence number."""
        live, encoder = self._live(), self._snapshot.encoder
        texts = [item_text(r) for r in records]
        with self._encode_lock:
            vectors = encoder.encode_items(texts)  # (n, dim) float32
        try:
            seq = live.upsert(records, vectors, fingerprint=encoder.fingerprint)
        except ModelMismatchError as error:
            raise FailedPrecondition(str(error)) from error
        except ValueError as error:
            raise InvalidArgument.field("items", str(error)) from error
        self._refresh()
        return seq

    def update_attributes(self, updates: dict[str, dict[str, Any]]) -> int:
        """Change attribute columns (price, stock, ...) of existing items; no re-embedding."""
        try:
            seq = self._live().update_attributes(updates)
        except UnknownItemError as error:
            raise NotFound(str(error)) from error
        except ValueError as error:
            raise InvalidArgument.field("items", str(error)) from error
        self._refresh()
        return seq

    def delete(self, item_ids: list[str]) -> tuple[int, int, list[str]]:
        """Delete items; returns (log sequence, deleted count, ids that were not there)."""
        try:
            seq, not_found = self._live().delete(item_ids)
        except ValueError as error:
            raise InvalidArgument.field("item_ids", str(error)) from error
        self._refresh()
        return seq, len(dict.fromkeys(item_ids)) - len(not_found), not_found

    def pending_updates(self) -> int:
        live = self._snapshot.live
        return 0 if live is None else int(live.pending_updates)

    # -- versions -------------------------------------------------------------------------------

    def _load_snapshot(self, target: Path) -> Snapshot:
        """Load `target` (an index root or version dir); engine.router overrides it."""
        return load_snapshot(target, self._model_dir, encoding=self._encoding)

    def reload(self, version: int = 0) -> tuple[int, IndexSummary]:
        """Switch to `version` of the index root (0: what CURRENT names). In-flight requests
        finish on the snapshot they started with; the next ones see the new one."""
        from indexer.layout import IndexRoot

        with self._swap_lock:
            previous = self._snapshot.summary.version
            if version == 0:
                target: Path = self._index_path
            else:
                root = IndexRoot(self._index_path)
                if version not in root.versions():
                    raise NotFound(
                        f"index version {version} is not published in {self._index_path}; "
                        f"available: {root.versions()}"
                    )
                target = root.version_dir(version)
            try:
                snapshot = self._load_snapshot(target)
            except IndexFormatError as error:
                raise FailedPrecondition(f"cannot load index version: {error}") from error
            except (OSError, ValueError) as error:
                raise Unavailable(f"cannot load index version: {error}") from error
            old_batcher = self._batcher
            with self._events_lock:  # no event can slip between the replay and the swap
                users = self._load_users(snapshot)
                self._batcher = self._new_batcher(snapshot)
                self._snapshot, self.users = snapshot, users
            # Requests still holding the old snapshot finish on it; its batcher drains its queue
            # and then encodes directly for them.
            old_batcher.close()
            log.info("now serving index version %d (was %d)", snapshot.summary.version, previous)
            return previous, snapshot.summary


def _blend(xq: np.ndarray, user: np.ndarray, weight: float) -> np.ndarray:
    """Unit vector of (1 - w) * query + w * user, both (dim,) float32."""
    norm = float(np.linalg.norm(user))
    user = user / norm if norm > 0 else user
    mixed = (1.0 - weight) * xq + weight * user
    norm = float(np.linalg.norm(mixed))
    return (mixed / norm if norm > 0 else mixed).astype(np.float32)


def _known(snap: Snapshot, item_id: str) -> bool:
    try:
        snap.index.row_of(item_id)
    except KeyError:
        return False
    return True


def _with_excluded(spec: FilterSpec | None, rows: list[int]) -> FilterSpec | None:
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
