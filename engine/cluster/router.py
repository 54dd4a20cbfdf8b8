"""The router (`aisle-serve --router`): a retriever over shard servers, plugged into the same
SearchService as a local index.

Each shard server (engine.cluster.shard) re-scores, filters, boosts and caps its own
candidates exactly, with boost signals scaled over the whole catalog, so scores compare across
shards. `RemoteRetriever` answers the pipeline's `search` by fanning out to every shard,
merging by score and applying what needs the whole list (the category cap again, MMR over the
vectors the shards then send along); its `gather` fetches item vectors (personalisation,
SimilarItems, Recommend) from the shard holding each item. The router holds the model and the
catalog, so users, events, facets, sort, paging and fields work as in one process, and callers
use the public aisle.v1.Retrieval API unchanged.

Deadlines: each shard call (a blocking call on a thread pool, all shards at once) gets
min(what is left of the request's deadline, the shard timeout). A replica that fails or runs
out of time is retried on the shard's next replica while time remains; a shard none of whose
replicas answered makes a Search answer partial (`partial`, `missing_shards` on the result),
or UNAVAILABLE with --no-partial. Responses that cannot flag a partial answer (Recommend,
SimilarItems) and missing item vectors are UNAVAILABLE. Every call carries a deadline: nothing
waits forever.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from aisle.v1 import index_admin_pb2, shard_pb2, types_pb2
from engine.api import convert
from engine.cluster.clients import ShardClients
from engine.search.errors import InvalidArgument, Unavailable
from engine.search.retriever import FilterCache, Retrieved
from engine.search.service import SearchService
from engine.search.snapshot import Snapshot, open_model
from engine.search.types import EncodingConfig, IndexSummary
from indexer.rerank import kernels
from indexer.rerank.columns import ItemColumns
from indexer.rerank.rerank import MMR_MIN_POOL, MMR_POOL_FACTOR
from indexer.rerank.specs import BoostSpec, DiversitySpec, FilterSpec
from indexer.storage.layout import resolve_version_dir
from indexer.storage.manifest import MANIFEST_NAME, load_manifest
from indexer.version import IndexVersion

log = logging.getLogger(__name__)

# MMR needs the pool's vectors from every shard: at most this many bytes of them per shard call
# (the shard server's send limit is 16 MiB).
MAX_MMR_VECTOR_BYTES = 12 * 1024 * 1024
RELOAD_TIMEOUT_S = 120.0
NO_LIVE_UPDATES = "a router takes no live updates yet; rebuild the index and Reload the router"


def _unavailable(missing: dict[int, str], why: str) -> Unavailable:
    names = ", ".join(f"shard {s} ({reason})" for s, reason in sorted(missing.items()))
    return Unavailable(f"no replica answered for {names}; {why}")


@dataclass(frozen=True)
class RemoteRetriever:
    """The Retriever of one index version whose shards are served by shard servers."""

    clients: ShardClients
    row_shard: np.ndarray  # (n,) int32: the shard holding each global row
    version: int
    dim: int
    category_codes: np.ndarray  # (n,) the catalog's category per row, for the category cap
    filters: FilterCache

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
        """Top `need` merged over the shards that answered; `search_ms` is the fan-out's.

        The same results as one process whenever each shard's candidates hold that process's
        (always for exact indexes): each shard returns its best `need` after its own category
        cap, and a globally capped top-`need` item is always within its shard's.
        """
        if spec is not None:
            self.filters.compiled(spec)  # INVALID_ARGUMENT here, before any shard sees the filter
        cap = diversity.max_per_category if diversity is not None else 0
        lam = float(diversity.mmr_lambda) if diversity is not None else 0.0
        pool = max(MMR_POOL_FACTOR * need, MMR_MIN_POOL) if lam > 0 else need
        if lam > 0 and pool * self.dim * 4 > MAX_MMR_VECTOR_BYTES:
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
            filter=convert.filter_proto(spec),
            exclude_rows=list(spec.exclude_rows) if spec is not None else [],
            max_per_category=cap,
            include_vectors=lam > 0,
            index_version=self.version,
        )
        if boost is not None:
            request.boost.CopyFrom(convert.boost_proto(boost))
        t0 = time.perf_counter()
        requests = {s: request for s in range(self.clients.n_shards)}
        fan = self.clients.call("SearchShard", requests, end, self.check)
        search_ms = (time.perf_counter() - t0) * 1e3
        if fan.missing:
            if len(fan.missing) == self.clients.n_shards:
                raise _unavailable(fan.missing, "no shard answered")
            if not partial_ok:
                raise _unavailable(fan.missing, "this method's response cannot flag a partial one")
            if not self.clients.config.partial_ok:
                raise _unavailable(fan.missing, "the router runs with --no-partial")
        D, I, sim = _merge(
            [fan.responses[s] for s in sorted(fan.responses)],
            need,
            pool,
            cap,
            lam,
            self.category_codes,
            self.dim,
        )
        return Retrieved(D, I, sim, search_ms, tuple(sorted(fan.missing)))

    def gather(self, rows: np.ndarray, end: float = math.inf) -> np.ndarray:
        """(m, dim) float32 vectors of global `rows`; UNAVAILABLE when a shard does not answer."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if not len(rows):
            return out
        shards = self.row_shard[rows]
        requests = {
            int(s): shard_pb2.GetShardVectorsRequest(
                rows=rows[shards == s].tolist(), index_version=self.version
            )
            for s in np.unique(shards)
        }
        fan = self.clients.call("GetShardVectors", requests, end, self.check)
        if fan.missing:
            raise _unavailable(fan.missing, "the item vectors this request needs live there")
        for s, response in fan.responses.items():
            out[shards == s] = convert.vectors_from_bytes(response.vectors, self.dim)
        return out

    def location(self, shard: int) -> str:
        """The shard's replicas, "host:port,host:port"."""
        return ",".join(r.address for r in self.clients.replicas[shard])

    def check(self, shard: int, response: Any) -> str | None:
        """Why a shard's response cannot be used (another shard or version), or None."""
        if response.shard != shard or response.index_version != self.version:
            return (
                f"answered for shard {response.shard} version {response.index_version}, "
                f"expected shard {shard} version {self.version}"
            )
        return None


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
        vectors = np.concatenate([convert.vectors_from_bytes(p.vectors, dim) for p in parts])
        pool_vectors = np.ascontiguousarray(vectors[order][positions])  # (pool, dim)
        local = np.arange(len(positions), dtype=np.int64)  # ties: the better-ranked one
        positions = positions[kernels.mmr_select(pool_vectors, local, scores[positions], lam, need)]
    positions = positions[:need]
    return scores[positions], rows[positions], sims[positions]


def load_router_snapshot(
    index_path: str | Path,
    model_dir: str | Path | None,
    clients: ShardClients,
    encoding: EncodingConfig | None = None,
) -> Snapshot:
    """The model and the index version's catalog (attributes, ids, each row's shard), searched
    through the shard servers: no shard's FAISS index or vectors are loaded here."""
    version_dir = resolve_version_dir(index_path)
    fingerprint, encoder = open_model(version_dir, model_dir, encoding)
    index = IndexVersion.open(version_dir, verify=True, expected_fingerprint=fingerprint, shards=())
    if clients.n_shards != index.manifest.n_shards:
        raise ValueError(
            f"--shard-addrs lists {clients.n_shards} shards, but {version_dir} has "
            f"{index.manifest.n_shards}; give one ';'-separated group of replicas per shard"
        )
    row_shard = np.empty(index.n_items, dtype=np.int32)
    for s in range(index.manifest.n_shards):
        row_shard[index.shard_rows(s)] = s
    columns = ItemColumns.from_table(index.items)
    filters = FilterCache(columns)
    retriever = RemoteRetriever(
        clients, row_shard, index.version, index.dim, columns.category_codes, filters
    )
    return Snapshot(
        encoder=encoder,
        index=index,
        summary=IndexSummary.of(index.manifest, index.n_items),
        columns=columns,
        retriever=retriever,
        filters=filters,
        version_dir=version_dir,  # users' recent items are read from here
    )


def reload_shards(clients: ShardClients, version: int) -> None:
    """Reload every shard replica to `version`. A replica that fails is logged and left out
    (its answers name another version) until it reloads; a shard none of whose replicas
    reloaded is UNAVAILABLE, and the router keeps serving its version."""
    request = index_admin_pb2.ReloadRequest(version=version)
    calls = [
        (
            shard,
            replica,
            replica.admin_stub.Reload.future(
                request, timeout=RELOAD_TIMEOUT_S, metadata=clients.metadata
            ),
        )
        for shard, group in enumerate(clients.replicas)
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
    lost = sorted(set(range(clients.n_shards)) - reloaded)
    if lost:
        reasons = "; ".join(r for s in lost for r in failures.get(s, []))
        raise Unavailable(
            f"no replica of shards {lost} reloaded to version {version} ({reasons}); the "
            "router keeps serving its version: fix those shard servers and Reload again"
        )


def reload_router_snapshot(
    version_dir: Path,
    model_dir: str | Path | None,
    clients: ShardClients,
    encoding: EncodingConfig | None = None,
) -> Snapshot:
    """A router's loader for SearchService.reload: every shard replica reloads to the version
    first (reload_shards), then the router loads it."""
    reload_shards(clients, load_manifest(version_dir / MANIFEST_NAME).version)
    return load_router_snapshot(version_dir, model_dir, clients, encoding)


def check_shards(clients: ShardClients, summary: IndexSummary) -> None:
    """Ask every replica which shard it holds: a wrong shard or model is a configuration
    error (ValueError); one that does not answer yet, or serves another version, a warning."""
    answers = clients.describe()
    for shard, group in enumerate(clients.replicas):
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


def create_router_service(
    index: Path,
    model: Path | None,
    clients: ShardClients,
    *,
    encoding: EncodingConfig | None = None,
    **kwargs: Any,
) -> SearchService:
    """A SearchService over the shard servers: load the model and catalog, check what the
    shards hold. `kwargs` go to SearchService (on_batch, events_dir); the caller owns (and
    closes) `clients`."""
    snapshot = load_router_snapshot(index, model, clients, encoding)
    check_shards(clients, snapshot.summary)
    load = functools.partial(
        reload_router_snapshot, model_dir=model, clients=clients, encoding=encoding
    )
    return SearchService(
        snapshot, index_path=index, model_dir=model, encoding=encoding, load=load, **kwargs
    )
