"""Scale-out: shard servers and a router answer as one process does, and survive lost shards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
    retrieval_pb2,
    shard_pb2,
    shard_pb2_grpc,
    types_pb2,
)
from engine.api.servicers import ServiceSlot
from engine.cli import serve as cli_serve
from engine.client import AisleClient
from engine.cluster.config import RouterConfig
from engine.cluster.shard import ShardSearchServicer, ShardSpec, load_shard_service, shard_columns
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.rerank.columns import ItemColumns
from indexer.version import IndexVersion

REPO = Path(__file__).resolve().parents[3]
TOKEN = "scale-out-admin-token-0123"
CATEGORIES = ["Home > Furniture > Sofas", "Home > Lighting > Lamps", "Kitchen > Cookware"]
BRANDS = ["Acme", "Globex", "Initech", "Umbrella"]
NOUNS = ["sofa", "lamp", "pan", "chair", "kettle"]
COLORS = ["red", "blue", "green", "black"]


def make_catalog(path: Path, n: int = 90) -> None:
    records = []
    for i in range(n):
        record = {
            "item_id": f"S{i:03d}",
            "title": f"{COLORS[i % 4]} {NOUNS[i % 5]} model {i}",
            "category": CATEGORIES[i % 3],
            "brand": BRANDS[(i // 3) % 4],
            "rating_count": (i * 37) % 1000,
            "rating": 1.0 + (i % 5),
            "in_stock": i % 2 == 0,
        }
        if i % 10:
            record["price"] = float(10 + (i * 7) % 200)
        records.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("scaleout")
    make_catalog(tmp / "products.jsonl")
    build_index(
        # Dense only: the router serves the dense channel, and the single process must answer
        # the same requests the same way to be its reference.
        BuildConfig(
            catalog=tmp / "products.jsonl",
            out=tmp / "index",
            model=tiny_model_dir,
            shards=2,
            lexical=False,
        )
    )
    return tmp / "index"


def serve(root: Path, **kwargs):
    return create_server(ServerConfig(index=root, port=0, workers=8, **kwargs))


def router_config(*groups, shard_timeout_ms: float = 5000, **kwargs) -> RouterConfig:
    """Shard ports per shard; a generous timeout where a test does not time shards out (this
    machine may be busy)."""
    addresses = tuple(tuple(f"127.0.0.1:{p}" for p in g) for g in groups)
    return RouterConfig(addresses, shard_timeout_ms=shard_timeout_ms, **kwargs)


@pytest.fixture(scope="module")
def cluster(root):
    """One single-process server, two shard servers and a router over them."""
    single = serve(root)
    shards = [serve(root, shard=ShardSpec(i, 2)) for i in range(2)]
    router = serve(root, router=router_config(*[[s.port] for s in shards]))
    yield single, shards, router
    for server in (router, *shards, single):
        server.stop(0)


@pytest.fixture(scope="module")
def clients(cluster):
    single, _, router = cluster
    with (
        AisleClient(f"127.0.0.1:{single.port}") as one,
        AisleClient(f"127.0.0.1:{router.port}") as routed,
    ):
        yield one, routed


def hits(response) -> list[tuple[str, float]]:
    return [(h.item_id, h.score) for h in response.hits]


def assert_same_hits(a, b) -> None:
    assert [i for i, _ in hits(a)] == [i for i, _ in hits(b)]
    np.testing.assert_allclose([s for _, s in hits(a)], [s for _, s in hits(b)], atol=1e-5)


# ----------------------------------------------------------------------------- the store


def test_index_version_opens_only_the_shards_asked_for(root) -> None:
    full = IndexVersion.open(root)
    one = IndexVersion.open(root, shards=(1,))
    assert one.loaded_shards == (1,) and one.n_items == full.n_items
    assert one.item_ids.tolist() == full.item_ids.tolist()
    xq = full.vectors(np.arange(3))
    _, I = one.search(xq, 200)
    held = set(one.shard_rows(1).tolist())
    assert set(I[I >= 0].tolist()) == held  # every row of shard 1, none of shard 0
    with pytest.raises(IndexError, match="not loaded"):
        one.vectors(full.shard_rows(0)[:1])
    np.testing.assert_array_equal(one.vectors(full.shard_rows(1)), full.vectors(full.shard_rows(1)))
    catalog_only = IndexVersion.open(root, shards=())
    assert catalog_only.loaded_shards == () and catalog_only.record(0)["item_id"] == "S000"
    with pytest.raises(ValueError, match="holds no shard"):
        catalog_only.search(xq, 5)
    with pytest.raises(ValueError, match="do not exist"):
        IndexVersion.open(root, shards=(2,))


def test_shard_columns_keep_global_scaling(root) -> None:
    index = IndexVersion.open(root, shards=())
    columns = ItemColumns.from_table(index.items)
    rows = index.shard_rows(1)
    local = shard_columns(columns, rows)
    assert local.n_items == len(rows) and local.category_values == columns.category_values
    np.testing.assert_array_equal(local.signals, columns.signals[rows])


# ----------------------------------------------------------------------------- equal answers


def _filter() -> types_pb2.Filter:
    return types_pb2.Filter(category_prefix="Home", price=types_pb2.Range(max=150), in_stock=True)


SEARCHES = {
    "plain": {},
    "deep": {"k": 60},
    "filter": {"filter": _filter()},
    "brands_excluded": {"filter": types_pb2.Filter(brands=["Acme"], exclude_item_ids=["S000"])},
    "boost": {"boost": types_pb2.Boost(popularity=0.4, rating=-0.2)},
    "category_cap": {"diversity": types_pb2.Diversity(max_per_category=2)},
    "mmr": {"diversity": types_pb2.Diversity(mmr_lambda=0.5, max_per_category=3)},
    "facets": {"facets": ["category", "brand"]},
    "sort": {"sort": types_pb2.SortBy(attribute="price", descending=True)},
    "personalized": {"recent_item_ids": ["S004", "S011"]},
    "effort": {"effort": types_pb2.SearchEffort(candidates=40)},
}


@pytest.mark.parametrize("name", list(SEARCHES))
def test_router_answers_like_one_process(clients, name) -> None:
    one, routed = clients
    fields = {"k": 10, **SEARCHES[name]}
    a = one.search("blue lamp", **fields)
    b = routed.search("blue lamp", **fields)
    assert not b.partial and not b.missing_shards
    assert_same_hits(a, b)
    assert a.facets == b.facets and a.personalized == b.personalized
    assert bool(a.next_page_token) == bool(b.next_page_token)
    assert b.index.shard_count == 2 and b.timings.search_ms > 0
    if a.next_page_token:  # the router's page tokens page through the router
        a2 = one.search("blue lamp", page_token=a.next_page_token, **fields)
        b2 = routed.search("blue lamp", page_token=b.next_page_token, **fields)
        assert_same_hits(a2, b2)


def test_batch_recommend_similar_embed_fields_like_one_process(clients) -> None:
    one, routed = clients
    requests = [
        retrieval_pb2.SearchRequest(query="red sofa", k=5),
        retrieval_pb2.SearchRequest(query="kettle", k=7, filter=_filter()),
    ]
    for a, b in zip(
        one.batch_search(requests).responses, routed.batch_search(requests).responses, strict=True
    ):
        assert_same_hits(a, b)
        assert not b.partial
    assert_same_hits(one.similar_items("S007", 8), routed.similar_items("S007", 8))
    assert_same_hits(one.recommend(["S001", "S030"], 8), routed.recommend(["S001", "S030"], 8))
    a, b = one.recommend(user_id="nobody", k=6), routed.recommend(user_id="nobody", k=6)
    assert a.popularity_fallback and b.popularity_fallback
    assert_same_hits(a, b)
    a, b = one.embed(["green pan"]), routed.embed(["green pan"])
    np.testing.assert_allclose(a.embeddings[0].values, b.embeddings[0].values, atol=1e-6)
    a = one.search("lamp", 3, include_fields=True)
    b = routed.search("lamp", 3, include_fields=True)
    assert [dict(h.fields) for h in a.hits] == [dict(h.fields) for h in b.hits]


def test_router_keeps_user_state_from_events(cluster, clients) -> None:
    _, _, router = cluster
    with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        click = events_pb2.Event(user_id="u-42", item_id="S012", type=events_pb2.EVENT_TYPE_CLICK)
        stub = events_pb2_grpc.EventsStub(channel)
        assert stub.Record(events_pb2.RecordRequest(events=[click]), timeout=5).recorded == 1
    response = clients[1].recommend(user_id="u-42", k=5)
    assert not response.popularity_fallback
    assert "S012" not in [h.item_id for h in response.hits]  # seen items are left out
    assert clients[1].search("lamp", 5, user_id="u-42").personalized


def test_router_validates_like_one_process(clients) -> None:
    _, routed = clients
    bad = types_pb2.Filter(attributes=[types_pb2.AttributeRange(name="nope", range={"max": 1})])
    for fields, code in (
        ({"filter": bad}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"recent_item_ids": ["missing"]}, grpc.StatusCode.NOT_FOUND),
        ({"sort": types_pb2.SortBy(attribute="nope")}, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as info:
            routed.search("lamp", 5, **fields)
        assert info.value.code() == code


def test_status_names_the_shard_servers(cluster, clients) -> None:
    _, shards, _ = cluster
    status = clients[1].status()
    assert [(s.shard, s.location) for s in status.shards] == [
        (i, f"127.0.0.1:{s.port}") for i, s in enumerate(shards)
    ]
    assert sum(s.item_count for s in status.shards) == status.index.item_count == 90


def test_shard_api_checks_its_input(cluster) -> None:
    _, shards, _ = cluster
    with grpc.insecure_channel(f"127.0.0.1:{shards[0].port}") as channel:
        stub = shard_pb2_grpc.ShardSearchStub(channel)
        info = stub.DescribeShard(shard_pb2.DescribeShardRequest(), timeout=5)
        assert (info.shard, info.shard_count, info.vector_kind) == (0, 2, "f32")
        dim = 32
        ok = stub.SearchShard(
            shard_pb2.SearchShardRequest(query_vector=[0.1] * dim, k=5), timeout=5
        )
        assert ok.shard == 0 and len(ok.rows) == len(ok.item_ids) == 5
        assert list(ok.scores) == sorted(ok.scores, reverse=True)
        cases = [
            (stub.SearchShard, {"query_vector": [0.1] * 3, "k": 5}, "INVALID_ARGUMENT"),
            (stub.SearchShard, {"query_vector": [float("nan")] * dim, "k": 5}, "INVALID_ARGUMENT"),
            (stub.SearchShard, {"query_vector": [0.1] * dim, "k": 0}, "INVALID_ARGUMENT"),
            (stub.SearchShard, {"query_vector": [0.1] * dim, "k": 5, "index_version": 99}, None),
        ]
        for method, fields, code in cases:
            with pytest.raises(grpc.RpcError) as error:
                method(shard_pb2.SearchShardRequest(**fields), timeout=5)
            assert error.value.code().name == (code or "FAILED_PRECONDITION")
        other = int(IndexVersion.open(shards[0].config.index, shards=()).shard_rows(1)[0])
        with pytest.raises(grpc.RpcError) as error:
            stub.GetShardVectors(shard_pb2.GetShardVectorsRequest(rows=[other]), timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_misconfigured_router_is_refused(root, cluster) -> None:
    _, shards, _ = cluster
    swapped = router_config([shards[1].port], [shards[0].port])
    with pytest.raises(ValueError, match="lists it for shard 0"):
        serve(root, router=swapped)
    with pytest.raises(ValueError, match="lists 1 shards"):
        serve(root, router=router_config([shards[0].port]))
    assert cli_serve.main(["--index", str(root), "--router"]) == 2
    assert cli_serve.main(["--index", str(root), "--shard", "2/2", "--port", "0"]) == 2


def test_router_reload_switches_every_shard(root, tmp_path, tiny_model_dir) -> None:
    own = tmp_path / "index"
    shutil.copytree(root, own)
    # Shards that want the token for every call: the router sends its own.
    token = {"admin_token": TOKEN, "protect_reads": True}
    shards = [serve(own, shard=ShardSpec(i, 2), **token) for i in range(2)]
    router = serve(own, router=router_config(*[[s.port] for s in shards]), admin_token=TOKEN)
    try:
        with AisleClient(f"127.0.0.1:{router.port}", admin_token=TOKEN) as client:
            assert len(client.search("red pan", 5).hits) == 5
            make_catalog(tmp_path / "more.jsonl", n=100)
            build_index(
                BuildConfig(
                    catalog=tmp_path / "more.jsonl", out=own, model=tiny_model_dir, shards=2
                )
            )
            reply = client.reload()
            assert (reply.previous_version, reply.index.version) == (1, 2)
            assert reply.index.item_count == 100
            assert all(s.service.snapshot.summary.version == 2 for s in shards)
            response = client.search("green chair", 100)
            assert len(response.hits) == 100 and not response.partial  # S090..S099 are new
            assert sum(s.item_count for s in client.status().shards) == 100
            assert client.reload(1).index.version == 1
            response = client.search("green chair", 100)
            assert len(response.hits) == 90 and not response.partial
            error = pytest.raises(grpc.RpcError, client.reload, 99).value
            assert error.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for server in (router, *shards):
            server.stop(0)


# ----------------------------------------------------------------------------- lost shards


class StalledShard(ShardSearchServicer):
    """A shard server that takes `delay_s` longer than it should: a stand-in for a hung host."""

    delay_s = 3.0

    def SearchShard(self, request, context):  # noqa: N802
        time.sleep(self.delay_s)
        return super().SearchShard(request, context)


def _delayed_shard(root: Path, delay_s: float) -> tuple[grpc.Server, int]:
    """Shard 1 of 2, answering `delay_s` late."""
    slot = ServiceSlot()
    slot.service = load_shard_service(root, ShardSpec(1, 2))
    server = grpc.server(futures.ThreadPoolExecutor(4))
    servicer = StalledShard(slot)
    servicer.delay_s = delay_s
    shard_pb2_grpc.add_ShardSearchServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture()
def stalled(root):
    server, port = _delayed_shard(root, StalledShard.delay_s)
    yield port
    server.stop(0)


def test_stopped_shard_gives_flagged_partial_answers_fast(root) -> None:
    shards = [serve(root, shard=ShardSpec(i, 2)) for i in range(2)]
    groups = [[s.port] for s in shards]
    partial = serve(root, router=router_config(*groups, shard_timeout_ms=1000))
    strict = serve(root, router=router_config(*groups, shard_timeout_ms=1000, partial_ok=False))
    shard1_rows = set(IndexVersion.open(root, shards=()).shard_rows(1).tolist())
    try:
        shards[1].stop(0)
        with (
            AisleClient(f"127.0.0.1:{partial.port}") as client,
            AisleClient(f"127.0.0.1:{strict.port}") as strict_client,
        ):
            for _ in range(3):
                started = time.monotonic()
                response = client.search("red sofa", 10)
                assert time.monotonic() - started < 1.0  # refused connections fail at once
                assert response.partial and list(response.missing_shards) == [1]
                rows = {partial.service.snapshot.index.row_of(h.item_id) for h in response.hits}
                assert len(response.hits) == 10 and not rows & shard1_rows
            batch = client.batch_search([retrieval_pb2.SearchRequest(query="pan", k=3)])
            assert batch.responses[0].partial
            for call in (
                lambda: strict_client.search("red sofa", 10),
                lambda: client.similar_items("S003", 5),  # its response cannot say "partial"
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "shard 1" in info.value.details()
    finally:
        for server in (strict, partial, *shards):
            server.stop(0)


def test_stalled_shard_is_cut_off_at_its_deadline(root, stalled) -> None:
    shard0 = serve(root, shard=ShardSpec(0, 2))
    router = serve(root, router=router_config([shard0.port], [stalled], shard_timeout_ms=300))
    patient = serve(root, router=router_config([shard0.port], [stalled], shard_timeout_ms=60_000))
    try:
        with AisleClient(f"127.0.0.1:{router.port}") as client:
            started = time.monotonic()
            response = client.search("blue lamp", 5)
            assert time.monotonic() - started < 1.5  # the shard timeout, not the 3 s stall
            assert response.partial and list(response.missing_shards) == [1]
        # The caller's own deadline bounds the shard calls too, and still gets an answer.
        with AisleClient(f"127.0.0.1:{patient.port}", timeout_s=2.0) as client:
            started = time.monotonic()
            response = client.search("blue lamp", 5)
            assert time.monotonic() - started < 2.0
            assert response.partial and list(response.missing_shards) == [1]
    finally:
        for server in (patient, router, shard0):
            server.stop(0)


def test_stalled_replica_is_hedged_on_a_healthy_one(root, stalled) -> None:
    """A replica that stalls (a short host hiccup) must not cost the answer while another
    replica of its shard is healthy, even when the caller's deadline is shorter than the shard
    timeout (issue #20, item 17): the router asks the next replica too, within the deadline.
    Failing over only after the stalled call timed out left the healthy replica ~10 % of the
    deadline, less than its 80 ms (a real shard's search time)."""
    shard0 = serve(root, shard=ShardSpec(0, 2))
    healthy, healthy_port = _delayed_shard(root, 0.08)
    # Backoff 0: the stalled replica is not demoted after a failure, so round robin keeps
    # sending every other request to it first (the default 500 ms shard timeout applies).
    groups = (
        ("127.0.0.1:" + str(shard0.port),),
        (f"127.0.0.1:{stalled}", f"127.0.0.1:{healthy_port}"),
    )
    router = serve(root, router=RouterConfig(groups, failed_replica_backoff_s=0))
    try:
        with AisleClient(f"127.0.0.1:{router.port}", timeout_s=0.45) as client:
            for i in range(6):
                response = client.search(f"blue lamp {i}", 5)
                assert not response.partial and not response.missing_shards, i
                assert len(response.hits) == 5
    finally:
        router.stop(0)
        healthy.stop(0)
        shard0.stop(0)


def test_hedges_stay_within_their_budget_when_every_replica_is_slow(root) -> None:
    """When every replica is slower than the hedge delay (overload, not one stalled host),
    hedging every call would double the shards' load: hedges are budgeted to ~10 % of calls
    (plus a burst of 10), and the answers are still whole."""
    servers = [_delayed_shard(root, 0.15) for _ in range(2)]
    shard0 = serve(root, shard=ShardSpec(0, 2))
    groups = ((f"127.0.0.1:{shard0.port}",), tuple(f"127.0.0.1:{p}" for _, p in servers))
    router = serve(root, router=RouterConfig(groups, shard_timeout_ms=5000))
    try:
        with AisleClient(f"127.0.0.1:{router.port}") as client:
            for i in range(40):
                response = client.search(f"green chair {i}", 5)
                assert not response.partial, i
        clients = router.service.snapshot.retriever.clients
        assert 10 <= clients.hedges <= 10 + 0.1 * 2 * 40 + 1  # 2 shard calls a search
    finally:
        router.stop(0)
        shard0.stop(0)
        for server, _ in servers:
            server.stop(0)


# ----------------------------------------------------------------------------- replica processes


def _start_shard(root: Path, shard: str, tmp: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """`aisle-serve --shard` as its own process; it writes its port once SERVING."""
    port_file = tmp / f"{name}.port"
    with (tmp / f"{name}.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli.serve", "--index", str(root), "--shard", shard]
            + ["--port", "0", "--port-file", str(port_file), "--workers", "8"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, port_file


def _wait_port(process: subprocess.Popen, port_file: Path, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():
        assert process.poll() is None, f"shard server exited with {process.returncode}"
        assert time.monotonic() < deadline, "shard server did not start"
        time.sleep(0.1)
    return int(port_file.read_text())


class Load:
    """Searches from a few threads until stopped; records (partial, missing, error, seconds)."""

    def __init__(self, address: str, threads: int = 3) -> None:
        self.client = AisleClient(address, timeout_s=10.0)
        self.results: list[tuple[bool, tuple[int, ...], str, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                r = self.client.search(f"{COLORS[n % 4]} {NOUNS[(n + i) % 5]}", 10)
                outcome = (r.partial, tuple(r.missing_shards), "")
            except grpc.RpcError as error:
                outcome = (False, (), error.code().name)
            self.results.append((*outcome, time.monotonic() - started))
            n += 1

    def take(self) -> list[tuple[bool, tuple[int, ...], str, float]]:
        taken, self.results = self.results, []
        return taken

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        self.client.close()


@pytest.mark.slow
def test_replica_failover_and_shard_killed_mid_load(root, tmp_path) -> None:
    processes = {
        name: _start_shard(root, shard, tmp_path, name)
        for name, shard in (("a", "0/2"), ("b", "0/2"), ("c", "1/2"))
    }
    router = load = None
    try:
        ports = {name: _wait_port(p, f) for name, (p, f) in processes.items()}
        config = router_config([ports["a"], ports["b"]], [ports["c"]], shard_timeout_ms=1000)
        router = serve(root, router=config)
        load = Load(f"127.0.0.1:{router.port}")
        time.sleep(1.0)
        os.kill(processes["a"][0].pid, signal.SIGKILL)  # one replica of shard 0, mid-load
        processes["a"][0].wait(10)
        time.sleep(1.5)
        before = load.take()
        assert len(before) > 10
        assert all(not partial and not error for partial, _, error, _ in before), before
        os.kill(processes["c"][0].pid, signal.SIGTERM)  # shard 1's only server
        processes["c"][0].wait(10)
        load.take()  # in flight while it drained
        time.sleep(1.5)
        after = load.take()
        assert len(after) > 10
        assert all(p and m == (1,) and not e for p, m, e, _ in after), after
        assert max(s for *_, s in after) < 2.0  # flagged at once, never a hang
    finally:
        if load is not None:
            load.stop()
        if router is not None:
            router.stop(0)
        for process, _ in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(15)
