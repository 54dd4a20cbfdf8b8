"""The search service: encode → search shards → top-k, over a swappable model+index snapshot."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import FailedPrecondition, NotFound, Unavailable
from indexer.layout import resolve_version_dir
from indexer.manifest import IndexFormatError
from indexer.store import IndexVersion
from trainer.encoder import Encoder, load_encoder, model_fingerprint
from trainer.text import query_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchQuery:
    """A validated search. `offset` is where the page starts in the full ranking."""

    text: str
    k: int
    offset: int = 0
    recent_item_ids: tuple[str, ...] = ()
    personalization_weight: float = 0.3
    search_params: dict[str, int] = field(default_factory=dict)
    fetch_depth: int = 0  # candidates to fetch; 0 → offset + k + 1
    expected_version: int | None = None  # from a page token


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


@dataclass(frozen=True)
class Snapshot:
    """One model and the index built with it; swapped as a whole on reload."""

    encoder: Encoder
    index: IndexVersion
    summary: IndexSummary


def load_snapshot(index_path: str | Path, model_dir: str | Path | None = None) -> Snapshot:
    """Open an index (root or version dir) and the model that embedded it.

    Without `model_dir` the manifest's model path is used. Raises IndexFormatError when the index
    is corrupt, or when the model does not match the one the index was built with.
    """
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
    index = IndexVersion.open(version_dir, verify=True, expected_fingerprint=fingerprint)
    encoder = load_encoder(model_dir)
    summary = IndexSummary(
        version=index.version,
        model_fingerprint=index.manifest.model_fingerprint,
        item_count=index.n_items,
        shard_count=index.manifest.n_shards,
        factory=index.manifest.factory,
    )
    return Snapshot(encoder=encoder, index=index, summary=summary)


class SearchService:
    """Pure search logic over the current snapshot; no gRPC types here."""

    def __init__(
        self, snapshot: Snapshot, *, index_path: str | Path, model_dir: Path | None
    ) -> None:
        self._snapshot = snapshot
        self._index_path = Path(index_path)
        self._model_dir = model_dir
        self._swap_lock = threading.Lock()  # one reload at a time
        # Fast tokenizers refuse concurrent calls with different settings ("Already borrowed"),
        # and torch already uses every core per call, so encodes run one at a time.
        self._encode_lock = threading.Lock()
        self.started_at = time.time()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- encoding -------------------------------------------------------------------------------

    def _encode_queries(self, encoder: Encoder, texts: list[str]) -> np.ndarray:
        with self._encode_lock:
            return encoder.encode_queries([query_text(t) for t in texts])  # (n, dim)

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

    def search_batch(self, queries: list[SearchQuery]) -> list[SearchResult]:
        """Answer several searches with one encoder call and one batched index search."""
        snap = self._snapshot  # one snapshot for the whole request, even across a reload
        for q in queries:
            self._check_version(snap, q.expected_version)
        t0 = time.perf_counter()
        xq = self._encode_queries(snap.encoder, [q.text for q in queries])  # (nq, dim)
        personalized = [False] * len(queries)
        for i, q in enumerate(queries):
            if q.recent_item_ids:
                rows = self._rows_of(snap.index, q.recent_item_ids, "recent_item_ids")
                user = snap.index.vectors(rows).mean(axis=0)  # (dim,)
                xq[i] = _blend(xq[i], user, q.personalization_weight)
                personalized[i] = True
        t1 = time.perf_counter()
        results = []
        # Queries with different effort settings cannot share one FAISS call; group them.
        for params_key, members in _group_by_params(queries).items():
            depth = max(_depth(queries[i]) for i in members)
            D, I = snap.index.search(xq[members], depth, params=dict(params_key) or None)
            for j, i in enumerate(members):
                results.append((i, D[j], I[j]))
        t2 = time.perf_counter()
        out: list[SearchResult | None] = [None] * len(queries)
        for i, scores, rows in sorted(results, key=lambda r: r[0]):
            q = queries[i]
            out[i] = self._page(snap, scores, rows, q.offset, q.k, personalized[i])
        t3 = time.perf_counter()
        timings = {
            "encode_ms": (t1 - t0) * 1e3,
            "search_ms": (t2 - t1) * 1e3,
            "rerank_ms": (t3 - t2) * 1e3,
        }
        return [
            SearchResult(r.hits, r.has_more, r.index, dict(timings), r.personalized)
            for r in out
            if r is not None
        ]

    def search(self, query: SearchQuery) -> SearchResult:
        return self.search_batch([query])[0]

    def similar_items(
        self, item_id: str, k: int, offset: int = 0, expected_version: int | None = None
    ) -> SearchResult:
        """Neighbours of a catalog item by its stored vector; the item itself is left out."""
        snap = self._snapshot
        self._check_version(snap, expected_version)
        t0 = time.perf_counter()
        row = self._rows_of(snap.index, (item_id,), "item_id")
        xq = snap.index.vectors(row).astype(np.float32, copy=True)  # (1, dim)
        t1 = time.perf_counter()
        D, I = snap.index.search(xq, offset + k + 2)
        t2 = time.perf_counter()
        keep = I[0] != row[0]
        result = self._page(snap, D[0][keep], I[0][keep], offset, k, False)
        t3 = time.perf_counter()
        timings = {
            "encode_ms": (t1 - t0) * 1e3,
            "search_ms": (t2 - t1) * 1e3,
            "rerank_ms": (t3 - t2) * 1e3,
        }
        return SearchResult(result.hits, result.has_more, result.index, timings)

    def recommend_from_history(
        self,
        history: tuple[str, ...],
        k: int,
        *,
        include_seen: bool,
        offset: int = 0,
        expected_version: int | None = None,
    ) -> SearchResult:
        """Items closest to the mean vector of a history (most recent last)."""
        snap = self._snapshot
        self._check_version(snap, expected_version)
        t0 = time.perf_counter()
        rows = self._rows_of(snap.index, history, "history_item_ids")
        user = snap.index.vectors(rows).mean(axis=0)
        norm = float(np.linalg.norm(user))
        xq = (user / norm if norm > 0 else user).astype(np.float32)[None, :]  # (1, dim)
        t1 = time.perf_counter()
        depth = offset + k + 1 + (0 if include_seen else len(rows))
        D, I = snap.index.search(xq, depth)
        t2 = time.perf_counter()
        keep = np.ones(I.shape[1], dtype=bool) if include_seen else ~np.isin(I[0], rows)
        result = self._page(snap, D[0][keep], I[0][keep], offset, k, True)
        t3 = time.perf_counter()
        timings = {
            "encode_ms": (t1 - t0) * 1e3,
            "search_ms": (t2 - t1) * 1e3,
            "rerank_ms": (t3 - t2) * 1e3,
        }
        return SearchResult(result.hits, result.has_more, result.index, timings, True)

    def _page(
        self,
        snap: Snapshot,
        scores: np.ndarray,
        rows: np.ndarray,
        offset: int,
        k: int,
        personalized: bool,
    ) -> SearchResult:
        valid = rows >= 0
        scores, rows = scores[valid], rows[valid]
        page_rows = rows[offset : offset + k]
        page_scores = scores[offset : offset + k]
        hits = [
            Hit(int(r), str(snap.index.item_ids[r]), float(s), float(s))
            for r, s in zip(page_rows, page_scores, strict=True)
        ]
        has_more = len(rows) > offset + k
        return SearchResult(hits, has_more, snap.summary, {}, personalized)

    def record(self, row: int, field_names: tuple[str, ...] = ()) -> dict[str, Any]:
        fields = self._snapshot.index.record(row)
        if field_names:
            fields = {name: fields[name] for name in field_names if name in fields}
        return fields

    # -- versions -------------------------------------------------------------------------------

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
                snapshot = load_snapshot(target, self._model_dir)
            except IndexFormatError as error:
                raise FailedPrecondition(f"cannot load index version: {error}") from error
            except (OSError, ValueError) as error:
                raise Unavailable(f"cannot load index version: {error}") from error
            self._snapshot = snapshot
            log.info("now serving index version %d (was %d)", snapshot.summary.version, previous)
            return previous, snapshot.summary


def _blend(xq: np.ndarray, user: np.ndarray, weight: float) -> np.ndarray:
    """Unit vector of (1 - w) * query + w * user, both (dim,) float32."""
    norm = float(np.linalg.norm(user))
    user = user / norm if norm > 0 else user
    mixed = (1.0 - weight) * xq + weight * user
    norm = float(np.linalg.norm(mixed))
    return (mixed / norm if norm > 0 else mixed).astype(np.float32)


def _depth(q: SearchQuery) -> int:
    return max(q.fetch_depth, q.offset + q.k + 1)


def _group_by_params(queries: list[SearchQuery]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(tuple(sorted(q.search_params.items())), []).append(i)
    return groups
