"""The search service: the serving snapshot's lifecycle, composing search, recommendations,
live updates and events over it."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.privacy.consent import NO_PERSONALIZATION
from engine.privacy.logs import Rewrite, forget
from engine.search import live_updates, pipeline, recommend
from engine.search.batcher import EncoderGate, MicroBatcher
from engine.search.engagement import EngagementFeed
from engine.search.errors import FailedPrecondition, NotFound, Unavailable
from engine.search.events import Event, EventLog, UserState
from engine.search.explore import Explorer
from engine.search.impressions import Impression, ImpressionWriter, new_request_id
from engine.search.retriever import with_excluded
from engine.search.siblings import SiblingBoard
from engine.search.snapshot import Snapshot, is_known, load_snapshot, load_version
from engine.search.types import (
    MODE_DENSE,
    EncodingConfig,
    IndexSummary,
    SearchQuery,
    SearchResult,
)
from indexer.rerank.specs import BoostSpec, DiversitySpec, FilterSpec
from indexer.storage.users import forget_users, read_users
from trainer.privacy.exclusions import TOMBSTONES_FILE, erased, read_tombstones
from trainer.privacy.noise import DPConfig, private_counts
from trainer.text import query_text

__all__ = ["SearchService"]

log = logging.getLogger(__name__)

ENGAGEMENTS = ("click", "add_to_cart", "purchase")  # what counts towards shopper popularity


class SearchService:
    """Pure search logic over the current snapshot; no gRPC types here.

    The snapshot (model, catalog, retriever), its query batcher and the users' recent items
    are swapped together by `reload` and by live updates; each request reads them once and
    hands them to the pipeline (engine.search.pipeline, .recommend, .live_updates). `load`
    opens a version dir for `reload`: `load_snapshot` by default, a router's loader over its
    shard servers (engine.cluster.router).
    """

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        index_path: str | Path,
        model_dir: Path | None,
        encoding: EncodingConfig | None = None,
        on_batch: Any = None,
        events_dir: Path | None = None,
        load: Callable[[Path], Snapshot] | None = None,
        impressions: ImpressionWriter | None = None,
        popularity_dp: DPConfig | None = None,
        explorer: Explorer | None = None,
        engagement: EngagementFeed | None = None,
        siblings: SiblingBoard | None = None,
    ) -> None:
        self._index_path = Path(index_path)
        # The other worker processes of this server (aisle-serve --processes; engine.search.
        # siblings): Reloads are announced to them, and `follow` takes in their changes.
        self._siblings = siblings
        self._confirmed = 0  # the last Reload generation this worker confirmed to them
        # How far the users' recent items have read the event log (set with them, advanced by
        # `follow`).
        self._events_at = EventsCursor()
        # The ranking stage's engagement feature (engine.search.engagement); None: missing.
        self._engagement = engagement
        if engagement is not None and snapshot.ranking is not None:
            engagement.start()  # reads the log now; else the first ranked search starts it
        # Swaps adjacent hits of a share of Search responses (engine.search.explore); None: off.
        self._explorer = explorer
        # What each response showed, for attribution (engine.search.impressions); None: off.
        self._impressions = impressions
        self._event_log = EventLog(events_dir) if events_dir is not None else None
        self._events_lock = threading.Lock()
        self._encoding = encoding or EncodingConfig()
        self._load = load or functools.partial(
            load_snapshot, model_dir=model_dir, encoding=self._encoding
        )
        self._on_batch = on_batch
        # The one write path (docs/serving.md, "Writes and Reload"): each live update, and the
        # Reload swap with its handoff, runs under _write_lock on the snapshot then serving.
        self._write_lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one Reload at a time (it loads outside the above)
        # Fast tokenizers refuse concurrent calls with different settings ("Already borrowed"),
        # and torch already uses every core per call, so encodes run one at a time; queries
        # first, item-tower work (Embed of items, Upserts) in chunks between them.
        self._encoder_gate = EncoderGate()
        self.started_at = time.time()
        self._snapshot = snapshot
        self._batcher = self._new_batcher(snapshot)
        self.users, self._events_at = self._load_users(snapshot)
        # With a DP budget, the popularity fallback ranks by shoppers' engagement counts with
        # calibrated noise (docs/privacy.md), recomputed at each load (each is one release).
        self._popularity_dp = popularity_dp
        self._popularity = self._private_popularity(snapshot)

    def _load_users(self, snapshot: Snapshot) -> tuple[UserState, EventsCursor]:
        """The version's users' recent items, plus the events logged since those were made.

        The cut is when the events were recorded (not the time the caller gave them, which may
        be earlier), against when the version's users data was made: its build, or for a
        compacted version the build its users were carried forward from (``users.as_of``).
        """
        tombstones = read_tombstones(self._event_log.directory) if self._event_log else {}
        stored = read_users(snapshot.version_dir) if snapshot.version_dir else {}
        users = UserState({u: items for u, items in stored.items() if u not in tombstones})
        if self._event_log is not None:
            manifest = snapshot.index.manifest
            made = manifest.build.get("users", {}).get("as_of") or manifest.created_at
            built = datetime.fromisoformat(made)
            if built.tzinfo is None:
                built = built.replace(tzinfo=UTC)
            replayed = 0
            tombstones_stamp = _file_stamp(self._event_log.directory / TOMBSTONES_FILE)
            inode, offset = self._event_log.identity()[0], 0
            for event, offset in self._event_log.entries():  # noqa: B007 (offset: how far)
                when = event.recorded or event.time
                if when >= built and not erased(tombstones, event.user_id, when):
                    users.record(event.user_id, event.item_id)
                    replayed += 1
            log.info("user state: %d users, %d events replayed from the log", len(users), replayed)
            return users, EventsCursor(inode, offset, tombstones_stamp)
        return users, EventsCursor()

    def _private_popularity(self, snapshot: Snapshot) -> np.ndarray | None:
        """(n_items,) popularity in [0, 1] from DP-noised engagement counts; None: off."""
        if self._popularity_dp is None or self._event_log is None:
            return None
        tombstones = read_tombstones(self._event_log.directory)
        pairs = (
            (e.user_id, e.item_id)
            for e in self._event_log.read()
            if e.type in ENGAGEMENTS and not erased(tombstones, e.user_id, e.recorded or e.time)
        )
        items = list(snapshot.index.item_ids)
        counts = private_counts(pairs, items, self._popularity_dp, np.random.default_rng())
        log.info("popularity from events under %s", self._popularity_dp)
        scaled = np.log1p(counts)
        return (scaled / max(float(scaled.max()), 1e-12)).astype(np.float32)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def batcher(self) -> MicroBatcher:
        return self._batcher

    def close(self) -> None:
        self._batcher.close()
        if self._engagement is not None:
            self._engagement.stop()
        if self._impressions is not None:
            self._impressions.close()  # writes what is queued

    @property
    def impressions(self) -> ImpressionWriter | None:
        return self._impressions

    @property
    def engagement(self) -> EngagementFeed | None:
        return self._engagement

    def _shown(
        self,
        result: SearchResult,
        surface: str,
        *,
        user_id: str = "",
        query: str = "",
        offset: int = 0,
        k: int = 0,
        seed_item_id: str = "",
        request_id: str = "",
        explore: tuple[int, ...] = (),
    ) -> SearchResult:
        """``result`` with a request_id (a new one unless given), its impression queued for the
        log. The user id is the domain request's (after any pseudonymisation at the API edge)."""
        request_id = request_id or new_request_id()
        if self._impressions is not None:
            self._impressions.submit(
                Impression(
                    request_id=request_id,
                    time=time.time(),
                    surface=surface,
                    user_id="" if user_id == NO_PERSONALIZATION else user_id,
                    query=query,
                    mode="popular" if result.popularity_fallback else result.mode,
                    model_fingerprint=result.index.model_fingerprint,
                    index_version=result.index.version,
                    offset=offset,
                    k=k,
                    items=tuple(hit.item_id for hit in result.hits),
                    seed_item_id=seed_item_id,
                    explore=explore,
                )
            )
        return dataclasses.replace(result, request_id=request_id)

    # -- encoding -------------------------------------------------------------------------------

    def _new_batcher(self, snapshot: Snapshot) -> MicroBatcher:
        encoder = snapshot.encoder

        def encode(texts: list[str]) -> np.ndarray:
            with self._encoder_gate.query():
                return encoder.encode_queries(texts)  # (n, dim)

        e = self._encoding
        # The static tower shares nothing with the item tower and costs ~50 µs: no gate, no
        # hand-off to a batching thread (under load that hand-off cost more than the encode).
        inline = encoder.queries_inline
        return MicroBatcher(
            encoder.encode_queries if inline else encode,
            max_batch=e.max_batch,
            window_ms=e.window_ms,
            max_queue=e.max_queue,
            cache_size=e.cache_size,
            on_batch=self._on_batch,
            inline=inline,
        )

    def embed(self, texts: list[str], *, items: bool) -> tuple[np.ndarray, Snapshot]:
        """(n, dim) float32 unit vectors from the serving model, and the snapshot used."""
        snap = self._snapshot
        if items:
            return self._encode_items(snap, texts), snap
        with self._encoder_gate.query():
            return snap.encoder.encode_queries([query_text(t) for t in texts]), snap

    def _encode_items(self, snap: Snapshot, texts: list[str]) -> np.ndarray:
        return self._encoder_gate.encode_items(snap.encoder.encode_items, texts)

    # -- search and recommendations -------------------------------------------------------------

    def search_batch(
        self, queries: list[SearchQuery], timeout_s: float | None = None
    ) -> list[SearchResult]:
        """Answer several searches with one encoder call, on one snapshot."""
        snap, batcher = self._snapshot, self._batcher
        results = pipeline.search_batch(
            snap, batcher, self.users, queries, timeout_s, self._engagement
        )
        shown = []
        for q, r in zip(queries, results, strict=True):
            request_id, swapped = new_request_id(), ()
            if self._explorer is not None:
                r, swapped = self._explorer.explore(request_id, q, r)
            shown.append(
                self._shown(
                    r,
                    "search",
                    user_id=q.user_id,
                    query=q.text,
                    offset=q.offset,
                    k=q.k,
                    request_id=request_id,
                    explore=swapped,
                )
            )
        return shown

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
        """Neighbours of a catalog item by its stored vector (engine.search.recommend)."""
        result = recommend.similar_items(self._snapshot, item_id, k, offset, expected_version, spec)
        return self._shown(result, "similar", offset=offset, k=k, seed_item_id=item_id)

    def recommend(self, k: int, **kwargs: Any) -> SearchResult:
        """Items for a user or a history (engine.search.recommend.recommend's keywords)."""
        result = recommend.recommend(
            self._snapshot, self.users, k, popularity=self._popularity, **kwargs
        )
        user_id = kwargs.get("user_id", "")
        return self._shown(
            result, "recommend", user_id=user_id, offset=kwargs.get("offset", 0), k=k
        )

    # -- events and items -----------------------------------------------------------------------

    def record_events(self, events: list[Event]) -> int:
        """Append events to the durable log (fsynced), then update the users' recent items."""
        if self._event_log is None:
            raise FailedPrecondition(
                "this server keeps no event log: start it with --events-dir DIR "
                "(or serve an index root, whose events/ dir is the default)"
            )
        snap = self._snapshot
        for i, event in enumerate(events):
            if not is_known(snap, event.item_id):
                raise NotFound(f"events[{i}].item_id: unknown item id {event.item_id!r}")
        with self._events_lock:  # a reload rebuilding user state waits for this append
            recorded = self._event_log.append(events)
            if self._siblings is not None:
                self._read_new_events()  # these and the siblings' since, in log order
            else:
                for event in events:
                    self.users.record(event.user_id, event.item_id)
        return recorded

    def forget_users(self, user_ids: tuple[str, ...]) -> tuple[Rewrite, bool, int]:
        """Erasure of one shopper (`user_ids`: their pseudonyms under each key): their records
        leave the event and impression logs (tombstoned), their recent items leave memory and
        every published version's users file. (what the logs lost, whether recent items were
        held, users-file rows removed)."""
        if self._impressions is not None:
            self._impressions.flush()  # what was shown to them so far is on disk, then erased
        with self._events_lock:  # no append or reload replay slips between log and memory
            removed = forget(self._event_log.directory, user_ids) if self._event_log else Rewrite()
            held = self.users.forget(user_ids)
            rows = 0
            for version_dir in self._version_dirs():
                rows += forget_users(version_dir, set(user_ids))
        if self._engagement is not None and self._engagement.current is not None:
            self._engagement.refresh()  # their events stop counting now, not at the next refresh
        return removed, held or rows > 0, rows

    def _version_dirs(self) -> list[Path]:
        versions = self._index_path / "versions"
        if versions.is_dir():
            return sorted(p for p in versions.iterdir() if p.is_dir())
        return [self._index_path]  # a bare version dir

    def exclude(self, spec: FilterSpec | None, item_ids: tuple[str, ...]) -> FilterSpec | None:
        """`spec` that also excludes these item ids (unknown ids are ignored)."""
        snap = self._snapshot
        return with_excluded(spec, [snap.index.row_of(i) for i in item_ids if is_known(snap, i)])

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
        for query in queries:  # through the pipeline: warm-up results are no impressions
            pipeline.search_batch(self._snapshot, self._batcher, self.users, [query])
        self._batcher.cache.clear()  # the warm-up text is not a shopper's query
        log.info("warmed up in %.0f ms", (time.perf_counter() - t) * 1e3)

    # -- live updates ---------------------------------------------------------------------------

    def upsert(self, records: list[dict[str, Any]]) -> int:
        """Add or replace items (embedded with the serving model); the update-log sequence.

        Encoding runs outside the write lock; the log append, the apply and the swap to a
        snapshot that shows the items run under it, on the snapshot serving at that moment (a
        Reload cannot slip in between and leave the write in a retired live index)."""
        snap = self._snapshot
        vectors = live_updates.encode_items(snap, records, lambda t: self._encode_items(snap, t))
        with self._write_lock:
            current = self._snapshot
            if current.encoder.fingerprint != snap.encoder.fingerprint:
                # A Reload switched models since: the vectors must come from the one now served.
                vectors = live_updates.encode_items(
                    current, records, lambda t: self._encode_items(current, t)
                )
            seq = live_updates.upsert(current, records, vectors)
            self._snapshot = live_updates.refreshed(current)
        return seq

    def update_attributes(self, updates: dict[str, dict[str, Any]]) -> int:
        """Change attribute columns (price, stock, ...) of existing items; no re-embedding."""
        with self._write_lock:
            current = self._snapshot
            seq = live_updates.update_attributes(current, updates)
            self._snapshot = live_updates.refreshed(current)
        return seq

    def delete(self, item_ids: list[str]) -> tuple[int, int, list[str]]:
        """Delete items; returns (log sequence, deleted count, ids that were not there)."""
        with self._write_lock:
            current = self._snapshot
            out = live_updates.delete(current, item_ids)
            self._snapshot = live_updates.refreshed(current)
        return out

    def pending_updates(self) -> int:
        return live_updates.pending_updates(self._snapshot)

    # -- versions -------------------------------------------------------------------------------

    def reload(self, version: int = 0) -> tuple[int, IndexSummary]:
        """Switch to `version` of the index root (0: what CURRENT names); with sibling
        workers, have every one of them switch too and return when they have (UNAVAILABLE,
        naming them, when some did not within RELOAD_WAIT_S; engine.search.siblings)."""
        previous, summary = self._reload_here(version)
        board = self._siblings
        if board is None:
            return previous, summary
        generation = board.announce(summary.version)
        board.confirm(generation, summary.version)
        self._confirmed = max(self._confirmed, generation)
        problems = board.wait(generation)
        if problems:
            raise Unavailable(
                f"this worker now serves index version {summary.version}, but not every "
                f"worker does: {'; '.join(problems)}"
            )
        return previous, summary

    def _reload_here(self, version: int = 0) -> tuple[int, IndexSummary]:
        """Switch this process to `version` (0: CURRENT). In-flight requests finish on the
        snapshot they started with; the next ones see the new one.

        The new version loads while writes still go to the serving live index; then, with
        writes stopped (the write lock), the new live index replays the log up to the old one's
        last seq and is swapped in, and the old one's log is closed. Every write acknowledged
        before the swap is in the new snapshot; every later one goes to it."""
        with self._reload_lock:
            snapshot = load_version(self._index_path, version, self._load)
            old = self._snapshot  # only a Reload replaces it, and this one holds _reload_lock
            try:
                with self._write_lock:
                    snapshot = live_updates.caught_up(snapshot)
                    old_batcher = self._batcher
                    with self._events_lock:  # no event can slip between the replay and the swap
                        users, events_at = self._load_users(snapshot)
                        popularity = self._private_popularity(snapshot)
                        self._batcher = self._new_batcher(snapshot)
                        self._snapshot, self.users = snapshot, users
                        self._events_at = events_at
                        self._popularity = popularity
            except BaseException:
                live_updates.retire(snapshot, old)  # never served: close its log
                raise
            live_updates.retire(old, snapshot)
            # Requests still holding the old snapshot finish on it; its batcher drains its queue
            # and then encodes directly for them.
            old_batcher.close()
            previous = old.summary.version
            log.info("now serving index version %d (was %d)", snapshot.summary.version, previous)
            return previous, snapshot.summary

    # -- sibling workers ------------------------------------------------------------------------

    def follow(self) -> None:
        """One step of keeping this worker process in step with its siblings (their Reloads,
        live updates and events; engine.search.siblings). Without siblings, nothing."""
        board = self._siblings
        if board is None:
            return
        generation, version = board.latest()
        if generation > self._confirmed:
            error = ""
            if version != self._snapshot.summary.version:
                try:
                    self._reload_here(version)
                except Exception as failure:  # reported to the worker that took the Reload
                    log.exception("could not load version %d announced by a sibling", version)
                    error = f"{type(failure).__name__}: {failure}"
            board.confirm(generation, version, error)
            self._confirmed = generation
        self._follow_updates()
        if self._event_log is not None:
            with self._events_lock:
                self._read_new_events()

    def _follow_updates(self) -> None:
        """Replay what sibling workers appended to the update log (the live index reads
        nothing when its files are unchanged)."""
        if self._snapshot.live is None:
            return
        with self._write_lock:
            followed = live_updates.followed(self._snapshot)
            if followed is not None:
                self._snapshot = followed

    def _read_new_events(self) -> None:
        """Add the events appended to the log since the last read to the users' recent items;
        a replaced log or a new tombstone (an erasure, a compaction) rebuilds them from the
        log. Call under _events_lock."""
        assert self._event_log is not None
        inode, size = self._event_log.identity()
        at = self._events_at
        tombstones = _file_stamp(self._event_log.directory / TOMBSTONES_FILE)
        if inode != at.inode or size < at.offset or tombstones != at.tombstones:
            self.users, self._events_at = self._load_users(self._snapshot)
            return
        if size == at.offset:
            return
        offset = at.offset
        for event, offset in self._event_log.entries(at.offset):  # noqa: B007 (how far)
            self.users.record(event.user_id, event.item_id)
        self._events_at = dataclasses.replace(at, offset=offset)


@dataclasses.dataclass(frozen=True)
class EventsCursor:
    """How far users' recent items have read the event log: the file (``inode``), the byte
    ``offset`` past the last event read, and the tombstones file's stamp then (an erasure
    changes it); all 0 before any read."""

    inode: int = 0
    offset: int = 0
    tombstones: tuple[int, int, int] = (0, 0, 0)


def _file_stamp(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime ns) of `path`; zeros while it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0, 0, 0
    return st.st_ino, st.st_size, st.st_mtime_ns
