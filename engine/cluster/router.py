"""The router (`aisle-serve --router`): encode once, fan out to shard servers, merge, re-rank.

Each shard server (engine.shard) re-scores, filters, boosts and caps its own candidates
exactly, with boost signals scaled over the whole catalog, so scores compare across shards.
The router is a SearchService whose candidates come from the shards: it merges them by score
and applies what needs the whole list (the category cap again, MMR over the vectors the shards
then send along, facets, sort, the page). Item vectors for personalisation, SimilarItems and
Recommend come from the shard holding the item. Users, events, paging and fields work as in
one process, and callers use the public aisle.v1.Retrieval API unchanged.

Deadlines: each shard call (a blocking call on a thread pool, all shards at once) gets
min(what is left of the request's deadline, the shard timeout). A replica that fails or runs
out of time is retried on the shard's next replica while time remains; a shard none of whose
replicas answered makes a Search answer partial (`partial`, `missing_shards`), or UNAVAILABLE
with --no-partial. Responses that cannot flag a partial answer (Recommend, SimilarItems) and
missing item vectors are UNAVAILABLE. Every call carries a deadline: nothing waits forever.

Pieces: the config (engine.router_config), the shard clients and their failover
(engine.shard_clients), per-request state (engine.router_request), the snapshot whose item
vectors come from the shards (engine.router_snapshot) and the servicers
(engine.router_servicers); this module is the service that merges, and re-exports the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from aisle.v1 import index_admin_pb2, shard_pb2, types_pb2
from engine.cluster.clients import (
    ShardClients,
)
from engine.cluster.config import RouterConfig
from engine.cluster.request import _deadline, _state, _unavailable
from engine.cluster.shard import vectors_from_bytes
from engine.cluster.snapshot import load_router_snapshot
from engine.search.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from engine.search.service import SearchService
from engine.search.snapshot import Snapshot
from engine.search.types import IndexSummary, SearchResult
from indexer.rerank import kernels
from indexer.rerank.rerank import MMR_MIN_POOL, MMR_POOL_FACTOR
from indexer.rerank.specs import BoostSpec, DiversitySpec, FilterSpec
from indexer.storage.layout import IndexRoot, resolve_version_dir
from indexer.storage.manifest import MANIFEST_NAME, IndexFormatError, load_manifest

__all__ = [
    "MAX_MMR_VECTOR_BYTES",
    "RELOAD_TIMEOUT_S",
    "RoutedResult",
    "RouterService",
    "create_router_service",
]

log = logging.getLogger(__name__)

# MMR needs the pool's vectors from every shard: at most this many bytes of them per shard call
# (the shard server's send limit is 16 MiB).
MAX_MMR_VECTOR_BYTES = 12 * 1024 * 1024
RELOAD_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RoutedResult(SearchResult):
    """A SearchResult that may lack the candidates of some shards."""

    partial: bool = False
    missing_shards: tuple[int, ...] = ()


def _filter_proto(spec: FilterSpec | None) -> types_pb2.Filter:
    """The proto form of a validated FilterSpec; exclude_rows travel separately."""
    if spec is None:
        return types_pb2.Filter()
    message = types_pb2.Filter(category_prefix=spec.category_prefix, brands=list(spec.brands))
    if spec.price_min is not None:
        message.price.min = spec.price_min
    if spec.price_max is not None:
        message.price.max = spec.price_max
    for name, lo, hi in spec.attribute_ranges:
        entry = message.attributes.add(name=name)
        if lo is not None:
            entry.range.min = lo
        if hi is not None:
            entry.range.max = hi
    if spec.in_stock is not None:
        message.in_stock = spec.in_stock
    return message


class RouterService(SearchService):
    """SearchService over shard servers: `_retrieve` fans out instead of searching locally.

    Everything else (validation, users and events, personalisation, facets, sort, paging,
    Recommend's popularity fallback, Embed) is SearchService's own, so the two cannot drift.
    """

    def __init__(self, snapshot: Snapshot, clients: ShardClients, **kwargs: Any) -> None:
        self.clients = clients
        self.config = clients.config
        self._reload_lock = threading.Lock()  # shards and router switch together, one at a time
        super().__init__(snapshot, **kwargs)

    def close(self) -> None:
        super().close()
        self.clients.close()

    def check_shards(self) -> None:
        """Ask every replica which shard it holds: a wrong shard or model is a configuration
        error (ValueError); one that does not answer yet, or serves another version, a warning."""
        summary = self.snapshot.summary
        answers = self.clients.describe()
        for shard, group in enumerate(self.clients.replicas):
            for replica in group:
                answer = answers[replica.address]
                if isinstance(answer, grpc.RpcError):
                    log.warning("shard %d replica %s: %s", shard, replica.address, answer.code())
                    continue
                if (answer.shard, answer.shard_count) != (shard, summary.shard_count):
                    raise ValueError(
                        f"{replica.address} serves shard {answer.shard}/{answer.shard_count}, "
                        f"but --shard-addrs lists it for shard {shard}/{summary.shard_count}"
                    )
                if answer.index.model_fingerprint != summary.model_fingerprint:
                    raise ValueError(
                        f"{replica.address} serves an index built with another model "
                        f"({answer.index.model_fingerprint[:12]}; the router's is "
                        f"{summary.model_fingerprint[:12]})"
                    )
                if answer.index.version != summary.version:
                    log.warning(
                        "shard %d replica %s serves index version %d, the router %d",
                        shard,
                        replica.address,
                        answer.index.version,
                        summary.version,
                    )

    def shard_locations(self) -> list[tuple[int, int, str]]:
        """(shard, item count, "host:port,host:port") per shard."""
        return [
            (info.shard, info.count, ",".join(r.address for r in self.clients.replicas[info.shard]))
            for info in self.snapshot.index.manifest.shards
        ]

    # -- SearchService hooks --------------------------------------------------------------------

    def search_batch(self, queries, timeout_s: float | None = None):
        with _deadline(timeout_s):
            return super().search_batch(queries, timeout_s)

    def _search_one(self, *args: Any, **kwargs: Any) -> RoutedResult:
        previous, _state.missing = _state.missing, {}
        try:
            result = super()._search_one(*args, **kwargs)
            missing = tuple(sorted(_state.missing))
        finally:
            _state.missing = previous
        values = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        routed = RoutedResult(**values, partial=bool(missing), missing_shards=missing)
        if _state.flags is not None:
            _state.flags.append(missing)
        return routed

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
        """Top `need` (D, I, sim) merged over the shards that answered, and the fan-out ms.

        The same results as one process whenever each shard's candidates hold that process's
        (always for exact indexes): each shard returns its best `need` after its own category
        cap, and a globally capped top-`need` item is always within its shard's.
        """
        if spec is not None:
            snap.compiled(spec)  # INVALID_ARGUMENT here, before any shard sees the filter
        cap = diversity.max_per_category if diversity is not None else 0
        lam = float(diversity.mmr_lambda) if diversity is not None else 0.0
        pool = max(MMR_POOL_FACTOR * need, MMR_MIN_POOL) if lam > 0 else need
        if lam > 0 and pool * snap.index.dim * 4 > MAX_MMR_VECTOR_BYTES:
            raise InvalidArgument.field(
                "diversity.mmr_lambda",
                f"MMR over results this deep ({need}) is not served by a router; "
                "ask for fewer results or pages, or drop mmr_lambda",
            )
        params = params or {}
        request = shard_pb2.SearchShardRequest(
            query_vector=xq.tolist(),
            k=pool,
            effort=types_pb2.SearchEffort(
                nprobe=params.get("nprobe", 0),
                ef_search=params.get("efSearch", 0),
                candidates=base_depth,
            ),
            filter=_filter_proto(spec),
            exclude_rows=list(spec.exclude_rows) if spec is not None else [],
            max_per_category=cap,
            include_vectors=lam > 0,
            index_version=snap.summary.version,
        )
        if boost is not None:
            request.boost.popularity = boost.popularity
            request.boost.rating = boost.rating
            request.boost.margin = boost.margin
        t0 = time.perf_counter()
        requests = {s: request for s in range(snap.summary.shard_count)}
        fan = self.clients.call("SearchShard", requests, _state.end, snap.vectors.check)
        search_ms = (time.perf_counter() - t0) * 1e3
        if fan.missing:
            if len(fan.missing) == snap.summary.shard_count:
                raise _unavailable(fan.missing, "no shard answered")
            if _state.missing is None:
                raise _unavailable(fan.missing, "this method's response cannot flag a partial one")
            if not self.config.partial_ok:
                raise _unavailable(fan.missing, "the router runs with --no-partial")
            _state.missing.update(fan.missing)
        D, I, sim = _merge(
            [fan.responses[s] for s in sorted(fan.responses)],
            need,
            pool,
            cap,
            lam,
            snap.columns.category_codes,
            snap.index.dim,
        )
        return D, I, sim, search_ms

    def _load_snapshot(self, target: Path) -> Snapshot:
        return load_router_snapshot(target, self._model_dir, self.clients, self._encoding)

    def reload(self, version: int = 0) -> tuple[int, IndexSummary]:
        """Reload every shard replica to `version` (0: what CURRENT names now), then the router.

        A replica that fails is logged and left out (its answers name another version) until
        it reloads; a shard none of whose replicas reloaded fails the call (UNAVAILABLE) and the
        router keeps serving its version.
        """
        with self._reload_lock:
            return self._reload(version)

    def _reload(self, version: int) -> tuple[int, IndexSummary]:
        target = version
        if version == 0:
            try:
                current = resolve_version_dir(self._index_path)
                target = load_manifest(current / MANIFEST_NAME).version
            except IndexFormatError as error:
                raise FailedPrecondition(f"cannot load index version: {error}") from error
        elif version not in IndexRoot(self._index_path).versions():
            raise NotFound(
                f"index version {version} is not published in {self._index_path}; "
                f"available: {IndexRoot(self._index_path).versions()}"
            )
        self._reload_shards(target)
        return super().reload(version)

    def _reload_shards(self, version: int) -> None:
        request = index_admin_pb2.ReloadRequest(version=version)
        calls = [
            (
                shard,
                replica,
                replica.admin_stub.Reload.future(
                    request, timeout=RELOAD_TIMEOUT_S, metadata=self.clients.metadata
                ),
            )
            for shard, group in enumerate(self.clients.replicas)
            for replica in group
        ]
        reloaded, failures = set(), {}
        for shard, replica, future in calls:
            try:
                future.result()
                reloaded.add(shard)
            except grpc.RpcError as error:
                reason = f"{replica.address}: {error.code().name} {error.details() or ''}".strip()
                failures.setdefault(shard, []).append(reason)
                log.warning("shard %d replica did not reload: %s", shard, reason)
        lost = sorted(set(range(self.clients.n_shards)) - reloaded)
        if lost:
            reasons = "; ".join(r for s in lost for r in failures.get(s, []))
            raise Unavailable(
                f"no replica of shards {lost} reloaded to version {version} ({reasons}); the "
                "router keeps serving its version: fix those shard servers and Reload again"
            )


def _merge(
    parts: list[Any],
    need: int,
    pool: int,
    cap: int,
    lam: float,
    category_codes: np.ndarray,
    dim: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge shard answers (SearchShardResponse) into the top `need`: (need',) float32 scores,
    int64 global rows, float32 similarities, best first (in MMR pick order with `lam` > 0)."""
    rows = np.concatenate([np.asarray(p.rows, dtype=np.int64) for p in parts])
    scores = np.concatenate([np.asarray(p.scores, dtype=np.float32) for p in parts])
    sims = np.concatenate([np.asarray(p.similarities, dtype=np.float32) for p in parts])
    # Best first, ties by lower row: the order of kernels.topk_indices in one process.
    order = np.lexsort((rows, -scores.astype(np.float64)))
    rows, scores, sims = rows[order], scores[order], sims[order]
    if cap:
        positions = kernels.cap_per_group(rows, category_codes, cap, pool)
    else:
        positions = np.arange(min(pool, len(rows)), dtype=np.int64)
    if lam > 0 and len(positions):
        vectors = np.concatenate([vectors_from_bytes(p.vectors, dim) for p in parts])
        pool_vectors = np.ascontiguousarray(vectors[order][positions])  # (pool, dim)
        local = np.arange(len(positions), dtype=np.int64)  # ties: the better-ranked one
        positions = positions[kernels.mmr_select(pool_vectors, local, scores[positions], lam, need)]
    positions = positions[:need]
    return scores[positions], rows[positions], sims[positions]


def create_router_service(
    index: Path,
    model: Path | None,
    config: RouterConfig,
    *,
    token: str | None = None,
    **kwargs: Any,
) -> RouterService:
    """Load the model and catalog, connect to the shard servers and check what they hold.

    `token` is sent to the shard servers (they need it with --protect-reads, and for Reload);
    `kwargs` go to SearchService (encoding, on_batch, events_dir).
    """
    clients = ShardClients(config, token)
    try:
        snapshot = load_router_snapshot(index, model, clients, kwargs.get("encoding"))
        service = RouterService(snapshot, clients, index_path=index, model_dir=model, **kwargs)
        service.check_shards()
    except BaseException:
        clients.close()
        raise
    return service
