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
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from aisle.v1 import index_admin_pb2, index_admin_pb2_grpc, shard_pb2, shard_pb2_grpc, types_pb2
from engine.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, Unimplemented
from engine.service import (
    EncodingConfig,
    IndexSummary,
    SearchResult,
    SearchService,
    Snapshot,
)
from engine.servicer import IndexAdminServicer, RetrievalServicer
from engine.shard import vectors_from_bytes
from indexer import kernels
from indexer.layout import IndexRoot, resolve_version_dir
from indexer.manifest import MANIFEST_NAME, IndexFormatError, load_manifest
from indexer.rerank import (
    _MMR_MIN_POOL,  # the pool MMR picks from must be the one a single process uses
    _MMR_POOL_FACTOR,
    BoostSpec,
    DiversitySpec,
    FilterSpec,
    ItemColumns,
)
from indexer.store import IndexVersion
from trainer.encoder import load_encoder, model_fingerprint

log = logging.getLogger(__name__)

MAX_SHARD_MESSAGE_BYTES = 64 * 1024 * 1024
# MMR needs the pool's vectors from every shard: at most this many bytes of them per shard call
# (the shard server's send limit is 16 MiB).
MAX_MMR_VECTOR_BYTES = 12 * 1024 * 1024
DESCRIBE_TIMEOUT_S = 2.0
MAX_CONCURRENT_REQUESTS = 256  # router requests in flight at once (the server admits fewer)
RELOAD_TIMEOUT_S = 120.0
# Of what is left of the request's deadline, min(this, 10 %) is kept for merging and answering.
_RESERVE_S = 0.100
_MIN_CALL_S = 0.001
# Errors that say the request itself is wrong (the router's validation should have caught them):
# passed on to the caller, not retried on another replica.
_REQUEST_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
}
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+):\d{1,5}$")


@dataclass(frozen=True)
class RouterConfig:
    """Where the shards are: `shards[i]` lists the replicas ("host:port") of shard i."""

    shards: tuple[tuple[str, ...], ...]
    shard_timeout_ms: float = 500.0  # one shard call, capped by the request's own deadline
    partial_ok: bool = True  # False: a missing shard fails the request with UNAVAILABLE
    failed_replica_backoff_s: float = 2.0  # a replica that just failed is tried last this long

    def __post_init__(self) -> None:
        if not self.shards or any(not replicas for replicas in self.shards):
            raise ValueError(
                "router needs at least one address per shard: --shard-addrs 'h:p,h:p;h:p' "
                "(';' between shards, ',' between replicas of one shard)"
            )
        for replicas in self.shards:
            for address in replicas:
                if not _ADDRESS.match(address):
                    raise ValueError(f"shard address {address!r} is not host:port")
        if not 0 < self.shard_timeout_ms <= 600_000:
            raise ValueError(
                f"shard_timeout_ms must be in (0, 600000], got {self.shard_timeout_ms}"
            )
        if self.failed_replica_backoff_s < 0:
            raise ValueError("failed_replica_backoff_s must be >= 0")

    @classmethod
    def parse(cls, addresses: str, **kwargs: Any) -> RouterConfig:
        """From `"h:p,h:p;h:p"`: ';' separates shards (in shard order), ',' replicas."""
        shards = tuple(
            tuple(a.strip() for a in part.split(",") if a.strip())
            for part in addresses.strip().strip(";").split(";")
        )
        return cls(shards=shards, **kwargs)


# ----------------------------------------------------------------------------- fan-out


@dataclass
class _Replica:
    address: str
    channel: grpc.Channel
    shard_stub: shard_pb2_grpc.ShardSearchStub
    admin_stub: index_admin_pb2_grpc.IndexAdminStub
    down_until: float = 0.0  # monotonic time before which it is tried last


@dataclass
class FanOut:
    """Per shard: the response of the replica that answered, or why none did."""

    responses: dict[int, Any] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)


class ShardClients:
    """Channels to every replica of every shard, and parallel calls with failover."""

    def __init__(self, config: RouterConfig, token: str | None = None) -> None:
        self.config = config
        self.timeout_s = config.shard_timeout_ms / 1e3
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", MAX_SHARD_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_SHARD_MESSAGE_BYTES),
            # A restarted replica is picked up within a second or two, not after minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self.replicas: list[list[_Replica]] = []
        for addresses in config.shards:
            group = []
            for address in addresses:
                channel = grpc.insecure_channel(address, options=options)
                group.append(
                    _Replica(
                        address,
                        channel,
                        shard_pb2_grpc.ShardSearchStub(channel),
                        index_admin_pb2_grpc.IndexAdminStub(channel),
                    )
                )
            self.replicas.append(group)
        self._turns = [itertools.count() for _ in self.replicas]
        # Blocking calls on a pool rather than grpc's .future(): a future starts a channel
        # polling thread whenever none is running (every request, at low load), which cost
        # more CPU than the shard's work; a blocking call waits on its own completion queue.
        # Threads start only as concurrency needs them; the bound covers every handler thread
        # of the router waiting on every shard at once, so no call queues behind another.
        self._pool = futures.ThreadPoolExecutor(
            max_workers=MAX_CONCURRENT_REQUESTS * len(self.replicas),
            thread_name_prefix="aisle-shard-call",
        )

    @property
    def n_shards(self) -> int:
        return len(self.replicas)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for group in self.replicas:
            for replica in group:
                replica.channel.close()

    def order(self, shard: int) -> list[_Replica]:
        """Replicas to try, in turn: round robin among healthy ones, recently failed last."""
        group = self.replicas[shard]
        start = next(self._turns[shard]) % len(group)
        rotated = group[start:] + group[:start]
        now = time.monotonic()
        return sorted(rotated, key=lambda r: r.down_until > now)  # stable

    def _call_timeout(self, end: float) -> float:
        remaining = end - time.monotonic()
        if math.isfinite(remaining):
            remaining -= min(_RESERVE_S, 0.1 * remaining)
        return min(remaining, self.timeout_s)

    def call(
        self,
        method: str,
        requests: dict[int, Any],
        end: float = math.inf,
        check: Callable[[int, Any], str | None] | None = None,
    ) -> FanOut:
        """Call `method` of ShardSearch on one replica of each shard in `requests` at once.

        Args:
            method: a ShardSearch method name ("SearchShard").
            requests: shard → request message.
            end: time.monotonic() by which the caller must have its answer (inf: none).
            check: `check(shard, response)` returns why a response is unusable (a replica of
                another version or shard) or None; unusable counts as a failed replica.

        Returns:
            FanOut; a shard is missing when every replica failed or time ran out.

        Raises:
            InvalidArgument, NotFound: a shard rejected the request itself.
        """
        out = FanOut()
        done: queue.SimpleQueue = queue.SimpleQueue()
        orders = {shard: self.order(shard) for shard in requests}
        expiry: dict[int, float] = {}  # shard → when its attempt in flight must have finished
        in_flight: dict[int, Any] = {}

        def launch(shard: int, attempt: int) -> bool:
            timeout = self._call_timeout(end)
            if timeout < _MIN_CALL_S:
                return False
            replica = orders[shard][attempt]
            stub_method = getattr(replica.shard_stub, method)
            expiry[shard] = time.monotonic() + timeout
            future = self._pool.submit(
                _call_by, stub_method, requests[shard], expiry[shard], self.metadata
            )
            in_flight[shard] = future
            future.add_done_callback(lambda f: done.put((shard, attempt, f)))
            return True

        failures: dict[int, list[str]] = {shard: [] for shard in requests}
        for shard in requests:
            if not launch(shard, 0):
                out.missing[shard] = "no time left before the request's deadline"
        pending = set(requests) - set(out.missing)
        while pending:
            # Every call carries its own deadline, so this wait is only a safety net.
            wait = max(expiry[s] for s in pending) - time.monotonic() + 0.25
            try:
                shard, attempt, future = done.get(timeout=max(wait, 0.0))
            except queue.Empty:
                for s in pending:
                    in_flight[s].cancel()
                    out.missing[s] = "no answer (the call outlived its deadline)"
                break
            replica = orders[shard][attempt]
            reason = self._outcome(future, shard, replica, check, in_flight, pending)
            if reason is None:
                out.responses[shard] = future.result()
                replica.down_until = 0.0
                pending.discard(shard)
                continue
            failures[shard].append(f"{replica.address}: {reason}")
            replica.down_until = time.monotonic() + self.config.failed_replica_backoff_s
            if attempt + 1 < len(orders[shard]) and launch(shard, attempt + 1):
                continue
            out.missing[shard] = "; ".join(failures[shard])
            pending.discard(shard)
        for shard, reasons in failures.items():
            if reasons and shard in out.responses:
                log.info("shard %d failed over after: %s", shard, "; ".join(reasons))
        for shard, reason in out.missing.items():
            log.warning("shard %d missing from the answer: %s", shard, reason)
        return out

    @staticmethod
    def _outcome(future, shard, replica, check, in_flight, pending) -> str | None:
        """None when the response is usable, else why not; raises for request errors."""
        error = future.exception()
        if error is None:
            return check(shard, future.result()) if check is not None else None
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        if code in _REQUEST_ERRORS:
            for s in pending:
                in_flight[s].cancel()
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise _REQUEST_ERRORS[code](f"shard {shard} ({replica.address}): {details}")
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        return f"{code.name} {details or ''}".strip()

    def describe(self, timeout_s: float = DESCRIBE_TIMEOUT_S) -> dict[str, Any]:
        """address → DescribeShardResponse, or the grpc.RpcError it raised."""
        calls = {
            r.address: r.shard_stub.DescribeShard.future(
                shard_pb2.DescribeShardRequest(), timeout=timeout_s, metadata=self.metadata
            )
            for group in self.replicas
            for r in group
        }
        out: dict[str, Any] = {}
        for address, future in calls.items():
            try:
                out[address] = future.result()
            except grpc.RpcError as error:
                out[address] = error
        return out


def _call_by(method: Any, request: Any, expiry: float, metadata: Any) -> Any:
    """A blocking call that must end by `expiry` (time.monotonic()), however long it queued."""
    return method(request, timeout=max(expiry - time.monotonic(), 1e-4), metadata=metadata)


# ----------------------------------------------------------------------------- request state


class _RequestState(threading.local):
    """What one request's handler thread carries through SearchService's call chain: the
    deadline, the shards missing so far (None where a partial answer cannot be flagged), and
    the partial flags of each Search result, in order, for the servicer to copy out."""

    end: float = math.inf
    missing: dict[int, str] | None = None
    flags: list[tuple[int, ...]] | None = None


_state = _RequestState()


@contextmanager
def _deadline(timeout_s: float | None) -> Iterator[None]:
    previous = _state.end
    _state.end = math.inf if timeout_s is None else time.monotonic() + timeout_s
    try:
        yield
    finally:
        _state.end = previous


@contextmanager
def _recording_flags() -> Iterator[list[tuple[int, ...]]]:
    previous, _state.flags = _state.flags, []
    try:
        yield _state.flags
    finally:
        _state.flags = previous


def _unavailable(missing: dict[int, str], why: str) -> Unavailable:
    names = ", ".join(f"shard {s} ({reason})" for s, reason in sorted(missing.items()))
    return Unavailable(f"no replica answered for {names}; {why}")


# ----------------------------------------------------------------------------- router state


class RemoteVectors:
    """Stands in for a Snapshot's VectorStore: `gather` fetches stored vectors from the shards
    holding the rows (the router holds none)."""

    kind = "remote"

    def __init__(
        self, clients: ShardClients, row_shard: np.ndarray, version: int, dim: int
    ) -> None:
        self._clients = clients
        self._row_shard = row_shard  # (n,) int32: the shard holding each global row
        self._version = version
        self.n = len(row_shard)
        self.dim = dim

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """(m, dim) float32 vectors of global `rows`; UNAVAILABLE when a shard does not answer."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if not len(rows):
            return out
        shards = self._row_shard[rows]
        requests = {
            int(s): shard_pb2.GetShardVectorsRequest(
                rows=rows[shards == s].tolist(), index_version=self._version
            )
            for s in np.unique(shards)
        }
        fan = self._clients.call("GetShardVectors", requests, _state.end, self.check)
        if fan.missing:
            raise _unavailable(fan.missing, "the item vectors this request needs live there")
        for s, response in fan.responses.items():
            out[shards == s] = vectors_from_bytes(response.vectors, self.dim)
        return out

    def check(self, shard: int, response: Any) -> str | None:
        """Why a shard's response cannot be used (another shard or version), or None."""
        if response.shard != shard or response.index_version != self._version:
            return (
                f"answered for shard {response.shard} version {response.index_version}, "
                f"expected shard {shard} version {self._version}"
            )
        return None


def load_router_snapshot(
    index_path: str | Path,
    model_dir: str | Path | None,
    clients: ShardClients,
    encoding: EncodingConfig | None = None,
) -> Snapshot:
    """The model and the index version's catalog (attributes, ids, each row's shard), with
    `vectors` fetched from the shards: no shard's FAISS index or vectors are loaded here."""
    version_dir = resolve_version_dir(index_path)
    manifest = load_manifest(version_dir / MANIFEST_NAME)
    if model_dir is None:
        model_dir = Path(manifest.model_path)
        if not model_dir.exists():
            raise IndexFormatError(
                f"{version_dir}: the model it was built with ({model_dir}) is not on this machine; "
                "pass --model DIR with a copy of that model"
            )
    fingerprint = model_fingerprint(model_dir)
    encoding = encoding or EncodingConfig()
    encoder = load_encoder(
        model_dir, backend=encoding.backend, num_threads=encoding.encoder_threads
    )
    index = IndexVersion.open(version_dir, verify=True, expected_fingerprint=fingerprint, shards=())
    if clients.n_shards != index.manifest.n_shards:
        raise ValueError(
            f"--shard-addrs lists {clients.n_shards} shards, but {version_dir} has "
            f"{index.manifest.n_shards}; give one ';'-separated group of replicas per shard"
        )
    row_shard = np.empty(index.n_items, dtype=np.int32)
    for s in range(index.manifest.n_shards):
        row_shard[index.shard_rows(s)] = s
    summary = IndexSummary(
        version=index.version,
        model_fingerprint=index.manifest.model_fingerprint,
        item_count=index.n_items,
        shard_count=index.manifest.n_shards,
        factory=index.manifest.factory,
    )
    return Snapshot(
        encoder=encoder,
        index=index,
        summary=summary,
        columns=ItemColumns.from_table(index.items),
        vectors=RemoteVectors(clients, row_shard, index.version, index.dim),
        version_dir=version_dir,  # users' recent items are read from here
    )


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


# ----------------------------------------------------------------------------- the service


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
        pool = max(_MMR_POOL_FACTOR * need, _MMR_MIN_POOL) if lam > 0 else need
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


# ----------------------------------------------------------------------------- servicers


class RouterRetrievalServicer(RetrievalServicer):
    """Retrieval over a RouterService; Search and BatchSearch responses also say which shards
    are missing from a partial answer."""

    def Search(self, request, context):  # noqa: N802 (gRPC method names)
        with _recording_flags() as flags:
            response = super().Search(request, context)
        _flag(response, flags[0])
        return response

    def BatchSearch(self, request, context):  # noqa: N802
        with _recording_flags() as flags:
            response = super().BatchSearch(request, context)
        for sub, missing in zip(response.responses, flags, strict=True):
            _flag(sub, missing)
        return response


def _flag(response: Any, missing: tuple[int, ...]) -> None:
    response.partial = bool(missing)
    response.missing_shards.extend(missing)


class RouterIndexAdminServicer(IndexAdminServicer):
    """IndexAdmin of a router: Status lists the shard servers; Reload reloads them, then it."""

    def Upsert(self, request, context):  # noqa: N802
        raise Unimplemented(
            "Upsert: a router takes no live updates yet; rebuild the index and Reload the router"
        )

    def Delete(self, request, context):  # noqa: N802
        raise Unimplemented(
            "Delete: a router takes no live updates yet; rebuild the index and Reload the router"
        )

    def Status(self, request, context):  # noqa: N802
        response = super().Status(request, context)
        del response.shards[:]
        for shard, count, location in self._service.shard_locations():
            response.shards.add(shard=shard, item_count=count, location=location)
        return response


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
