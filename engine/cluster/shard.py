"""One shard of an index served to a router (`aisle-serve --shard i/N`): its search and servicers.

A shard server loads only its own shard's FAISS index and stored vectors, but the whole
catalog's attributes: boost signals are scaled over every item, so scores from different
shards compare. It takes query *vectors* (the router encodes once) and re-scores, filters and
boosts its candidates exactly, in shard-local positions (row i of the shard's vectors file);
global rows go back to the router.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aisle.v1 import index_admin_pb2, index_admin_pb2_grpc, shard_pb2, shard_pb2_grpc, types_pb2
from engine.api import convert
from engine.api.servicers import available_versions
from engine.search.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unimplemented
from engine.search.retriever import FilterCache, LocalRetriever, local_positions
from engine.search.snapshot import load_version
from engine.search.types import IndexSummary
from indexer.rerank.columns import ItemColumns
from indexer.rerank.specs import BoostSpec, DiversitySpec, FilterSpec
from indexer.rerank.vectors import VectorStore
from indexer.storage.layout import resolve_version_dir
from indexer.storage.manifest import MANIFEST_NAME, IndexFormatError, load_manifest
from indexer.version import IndexVersion

log = logging.getLogger(__name__)

MAX_SHARD_K = 65_536  # candidates per shard call: a router asks for up to 4 * (offset + k + 1)
MAX_EXCLUDE_ROWS = 20_000
MAX_VECTOR_ROWS = 10_000
SHARD_SERVICE_NAMES = (
    shard_pb2.DESCRIPTOR.services_by_name["ShardSearch"].full_name,
    index_admin_pb2.DESCRIPTOR.services_by_name["IndexAdmin"].full_name,
)


@dataclass(frozen=True)
class ShardSpec:
    """Which shard a server holds: `index` of `count` (the index version's n_shards)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard must be I/N with 0 <= I < N, got {self.index}/{self.count} "
                "(e.g. --shard 0/2 for the first of two shards)"
            )

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """`"1/4"` → ShardSpec(1, 4)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ValueError(f"shard must look like I/N (e.g. 0/2), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_columns(columns: ItemColumns, rows: np.ndarray) -> ItemColumns:
    """The global columns restricted to `rows` (a shard's global rows, (n_s,) int64), so that
    local position i is item `rows[i]`; string tables and boost scaling stay global."""
    n = columns.n_items
    values = {}
    for f in dataclasses.fields(columns):
        value = getattr(columns, f.name)
        if isinstance(value, np.ndarray) and value.shape[:1] == (n,):
            value = np.ascontiguousarray(value[rows])
        values[f.name] = value
    values["n_items"] = len(rows)
    return ItemColumns(**values)


@dataclass(frozen=True)
class ShardSnapshot:
    """One index version's shard with what re-ranking needs; swapped as a whole on reload."""

    index: IndexVersion  # opened with shards=(shard,)
    shard: int
    summary: IndexSummary
    rows: np.ndarray  # (n_s,) int64 global rows, ascending: local position → global row
    local_of: np.ndarray  # (n,) int64 global row → local position, -1 for other shards' rows
    vectors: VectorStore  # the shard's stored vectors by local position
    retriever: LocalRetriever  # over the shard's rows of the global columns, local positions

    def local(self, rows: np.ndarray) -> np.ndarray:
        """(m,) local positions of global `rows`; -1 for -1 and for rows of other shards."""
        return local_positions(self.local_of, rows)


def load_shard_snapshot(index_path: str | Path, spec: ShardSpec) -> ShardSnapshot:
    """Open shard `spec.index` of an index (root or version dir); no model is loaded.

    Raises IndexFormatError when the files are corrupt or the index has another shard count.
    """
    version_dir = resolve_version_dir(index_path)
    n_shards = load_manifest(version_dir / MANIFEST_NAME).n_shards
    if n_shards != spec.count:
        raise IndexFormatError(
            f"{version_dir} has {n_shards} shards, but this server was started as shard "
            f"{spec}; use --shard I/{n_shards}"
        )
    index = IndexVersion.open(version_dir, verify=True, shards=(spec.index,))
    rows = np.asarray(index.shard_rows(spec.index), dtype=np.int64)
    local_of = np.full(index.n_items, -1, dtype=np.int64)
    local_of[rows] = np.arange(len(rows))
    columns = shard_columns(ItemColumns.from_table(index.items), rows)
    vectors = index.vector_store(spec.index)
    return ShardSnapshot(
        index=index,
        shard=spec.index,
        summary=IndexSummary.of(index.manifest, index.n_items),
        rows=rows,
        local_of=local_of,
        vectors=vectors,
        retriever=LocalRetriever(index, vectors, columns, FilterCache(columns), local_of=local_of),
    )


@dataclass(frozen=True)
class ShardCandidates:
    """A shard's best candidates, best first: (m,) global rows, float32 scores/similarities,
    and their (m, dim) float32 vectors when asked."""

    rows: np.ndarray
    scores: np.ndarray
    similarities: np.ndarray
    vectors: np.ndarray | None
    search_ms: float
    rerank_ms: float


class ShardService:
    """Search over one shard; no gRPC types here."""

    def __init__(self, snapshot: ShardSnapshot, *, index_path: str | Path, spec: ShardSpec):
        self._snapshot = snapshot
        self._index_path = Path(index_path)
        self.spec = spec
        self.started_at = time.time()
        self._swap_lock = threading.Lock()

    @property
    def snapshot(self) -> ShardSnapshot:
        return self._snapshot

    def close(self) -> None:
        pass  # nothing runs in the background

    def _check_version(self, snap: ShardSnapshot, expected: int) -> None:
        if expected and expected != snap.summary.version:
            raise FailedPrecondition(
                f"shard {snap.shard} serves index version {snap.summary.version}, the router "
                f"asked for {expected}: reload one of them"
            )

    def search(
        self,
        xq: np.ndarray,
        k: int,
        *,
        spec: FilterSpec | None = None,
        boost: BoostSpec | None = None,
        max_per_category: int = 0,
        params: dict[str, int] | None = None,
        depth: int = 0,
        include_vectors: bool = False,
        expected_version: int = 0,
    ) -> ShardCandidates:
        """The shard's best `k` for the (dim,) float32 query: ANN candidates (widened for
        selective filters) re-scored exactly, filtered, boosted and capped per category.
        `spec.exclude_rows` are global rows; `depth` 0 fetches max(100, k) ANN candidates."""
        snap = self._snapshot
        self._check_version(snap, expected_version)
        if spec is not None:
            excluded = snap.local(np.asarray(spec.exclude_rows, dtype=np.int64))
            spec = dataclasses.replace(
                spec, exclude_rows=tuple(int(r) for r in np.unique(excluded[excluded >= 0]))
            )
        diversity = DiversitySpec(max_per_category=max_per_category) if max_per_category else None
        t0 = time.perf_counter()
        found = snap.retriever.search(
            xq, k, spec=spec, boost=boost, diversity=diversity, params=params, base_depth=depth
        )
        keep = found.I >= 0
        local = found.I[keep]
        vectors = snap.vectors.gather(local) if include_vectors else None  # (m, dim)
        total_ms = (time.perf_counter() - t0) * 1e3
        return ShardCandidates(
            rows=snap.rows[local],
            scores=found.D[keep],
            similarities=found.sim[keep],
            vectors=vectors,
            search_ms=found.search_ms,
            rerank_ms=total_ms - found.search_ms,
        )

    def warm_up(self) -> None:
        """Search once with a filter, a boost and a category cap: the numba kernels load (from
        their on-disk cache) now, not inside a router's first deadlines."""
        snap = self._snapshot
        if not len(snap.rows):
            return
        t = time.perf_counter()
        xq = snap.vectors.gather(np.zeros(1, dtype=np.int64))[0]  # (dim,)
        self.search(xq, 5)
        self.search(
            xq,
            5,
            spec=FilterSpec(in_stock=True, exclude_rows=(int(snap.rows[0]),)),
            boost=BoostSpec(popularity=0.1),
            max_per_category=1,
            include_vectors=True,
        )
        log.info("shard %d warmed up in %.0f ms", snap.shard, (time.perf_counter() - t) * 1e3)

    def vectors_of(self, rows: np.ndarray, expected_version: int = 0) -> np.ndarray:
        """(m, dim) float32 stored vectors of global `rows`, each held by this shard."""
        snap = self._snapshot
        self._check_version(snap, expected_version)
        local = snap.local(rows)
        if (local < 0).any():
            bad = np.asarray(rows)[local < 0][:5].tolist()
            raise InvalidArgument.field("rows", f"rows {bad} are not held by shard {snap.shard}")
        return snap.vectors.gather(local)

    def reload(self, version: int = 0) -> tuple[int, IndexSummary]:
        """Switch to `version` of the index root (0: CURRENT); requests in flight finish on the
        snapshot they started with."""
        with self._swap_lock:
            previous = self._snapshot.summary.version
            snapshot = load_version(
                self._index_path, version, lambda target: load_shard_snapshot(target, self.spec)
            )
            self._snapshot = snapshot
            log.info(
                "shard %s now serves index version %d (was %d)",
                self.spec,
                snapshot.summary.version,
                previous,
            )
            return previous, snapshot.summary


def load_shard_service(index_path: str | Path, spec: ShardSpec) -> ShardService:
    """Load a shard and run a few searches through it before it reports SERVING."""
    service = ShardService(load_shard_snapshot(index_path, spec), index_path=index_path, spec=spec)
    service.warm_up()
    return service


# ----------------------------------------------------------------------------- gRPC


def _shard_filter(
    spec: FilterSpec | None, excluded_ids: tuple[str, ...], snap: ShardSnapshot, exclude_rows
) -> FilterSpec | None:
    """`spec` that also excludes `exclude_rows` and `excluded_ids` (global rows and ids)."""
    n = snap.index.n_items
    rows = [int(r) for r in exclude_rows if 0 <= r < n]  # out-of-range rows exclude nothing
    for item_id in excluded_ids:  # ids of other shards, or unknown ones, exclude nothing here
        try:
            rows.append(snap.index.row_of(item_id))
        except KeyError:
            pass
    if rows:
        spec = dataclasses.replace(spec or FilterSpec(), exclude_rows=tuple(rows))
    return spec


class ShardSearchServicer(shard_pb2_grpc.ShardSearchServicer):
    """The internal shard API over a `ShardService` (found through the server's slot)."""

    def __init__(self, slot) -> None:
        self._slot = slot

    @property
    def _service(self) -> ShardService:
        return self._slot.get()

    def SearchShard(self, request, context):  # noqa: N802 (gRPC method names)
        service = self._service
        snap = service.snapshot
        xq = convert.query_vector(request.query_vector, snap.index.dim)
        if not 1 <= request.k <= MAX_SHARD_K:
            raise InvalidArgument.field("k", f"must be between 1 and {MAX_SHARD_K}")
        if len(request.exclude_rows) > MAX_EXCLUDE_ROWS:
            raise InvalidArgument.field("exclude_rows", f"at most {MAX_EXCLUDE_ROWS} rows")
        if not 0 <= request.max_per_category <= MAX_SHARD_K:
            raise InvalidArgument.field("max_per_category", f"must be 0..{MAX_SHARD_K}")
        violations: list[FieldViolation] = []
        params = convert.search_params(request.effort, "", violations)
        depth = request.effort.candidates
        if not 0 <= depth <= convert.MAX_CANDIDATES:
            violations.append(
                FieldViolation(
                    "effort.candidates", f"must be between 0 and {convert.MAX_CANDIDATES}"
                )
            )
        spec, excluded_ids = convert.filter_spec(request.filter, "", violations)
        boost = convert.boost_spec(request.boost, "", violations)
        if violations:
            raise InvalidArgument.of(violations)
        result = service.search(
            xq,
            request.k,
            spec=_shard_filter(spec, excluded_ids, snap, request.exclude_rows),
            boost=boost,
            max_per_category=request.max_per_category,
            params=params,
            depth=depth,
            include_vectors=request.include_vectors,
            expected_version=request.index_version,
        )
        response = shard_pb2.SearchShardResponse(
            shard=snap.shard,
            index_version=snap.summary.version,
            rows=result.rows.tolist(),
            item_ids=snap.index.item_ids[result.rows].tolist(),
            scores=result.scores.tolist(),
            similarities=result.similarities.tolist(),
            dim=snap.index.dim,
            timings=types_pb2.Timings(search_ms=result.search_ms, rerank_ms=result.rerank_ms),
        )
        if result.vectors is not None:
            response.vectors = convert.vectors_bytes(result.vectors)
        return response

    def GetShardVectors(self, request, context):  # noqa: N802
        service = self._service
        if not 1 <= len(request.rows) <= MAX_VECTOR_ROWS:
            raise InvalidArgument.field("rows", f"give 1 to {MAX_VECTOR_ROWS} rows")
        snap = service.snapshot
        vectors = service.vectors_of(np.asarray(request.rows, np.int64), request.index_version)
        return shard_pb2.GetShardVectorsResponse(
            shard=snap.shard,
            index_version=snap.summary.version,
            dim=snap.index.dim,
            vectors=convert.vectors_bytes(vectors),
        )

    def DescribeShard(self, request, context):  # noqa: N802
        snap = self._service.snapshot
        return shard_pb2.DescribeShardResponse(
            shard=snap.shard,
            shard_count=snap.summary.shard_count,
            item_count=len(snap.rows),
            index=convert.index_info(snap.summary),
            vector_kind=snap.vectors.kind,
        )


class ShardAdminServicer(index_admin_pb2_grpc.IndexAdminServicer):
    """IndexAdmin of a shard server: Reload (a router forwards its own) and Status."""

    def __init__(self, slot, index_path: str) -> None:
        self._slot = slot
        self._index_path = index_path

    def Upsert(self, request, context):  # noqa: N802
        raise Unimplemented("Upsert: a shard server takes no live updates; rebuild and Reload")

    def Delete(self, request, context):  # noqa: N802
        raise Unimplemented("Delete: a shard server takes no live updates; rebuild and Reload")

    def Reload(self, request, context):  # noqa: N802
        if request.version < 0:
            raise InvalidArgument.field("version", "must be 0 (CURRENT) or a published version")
        previous, summary = self._slot.get().reload(request.version)
        return index_admin_pb2.ReloadResponse(
            previous_version=previous, index=convert.index_info(summary)
        )

    def Status(self, request, context):  # noqa: N802
        service: ShardService = self._slot.get()
        snap = service.snapshot
        response = index_admin_pb2.StatusResponse(
            index=convert.index_info(snap.summary), uptime_s=time.time() - service.started_at
        )
        for info in snap.index.manifest.shards:
            location = "local" if info.shard == snap.shard else "elsewhere"
            response.shards.add(shard=info.shard, item_count=info.count, location=location)
        response.available_versions.extend(available_versions(self._index_path))
        return response


def add_shard_services(server, slot, index_path: str) -> None:
    """Register the shard servicers (ShardSearch, IndexAdmin) on a grpc.Server."""
    shard_pb2_grpc.add_ShardSearchServicer_to_server(ShardSearchServicer(slot), server)
    index_admin_pb2_grpc.add_IndexAdminServicer_to_server(
        ShardAdminServicer(slot, index_path), server
    )
