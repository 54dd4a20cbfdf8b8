"""Limits, deadlines, TLS, protected reads, metrics, graceful stop, reload under load."""

from __future__ import annotations

import datetime
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.client import AisleClient
from engine.server import ServerConfig, TlsConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from tests.helpers import write_title_catalog

TOKEN = "robustness-token-0123456789"


def slow_down(server, monkeypatch, seconds: float) -> None:
    """Make every search take `seconds` longer (a stand-in for a heavy request)."""
    original = server.service.search_batch

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    monkeypatch.setattr(server.service, "search_batch", slow)


def test_in_flight_limit_refuses_at_once(index_root, monkeypatch) -> None:
    server = create_server(ServerConfig(index=index_root, port=0, max_in_flight=1))
    try:
        slow_down(server, monkeypatch, 1.0)
        with AisleClient(f"127.0.0.1:{server.port}") as client, ThreadPoolExecutor(1) as pool:
            busy = pool.submit(client.search, "red sofa", 3)
            time.sleep(0.3)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                client.search("blue lamp", 3)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - started < 0.5  # refused, not queued
            assert len(busy.result(5).hits) == 3
    finally:
        server.stop(0)


def test_rate_limit_per_client(index_root) -> None:
    server = create_server(ServerConfig(index=index_root, port=0, rate_limit=0.1, rate_burst=2))
    try:
        address = f"127.0.0.1:{server.port}"
        with (
            AisleClient(address, client_id="shop-a") as a,
            AisleClient(address, client_id="shop-b") as b,
        ):
            a.search("sofa", 1)
            a.search("sofa", 1)
            with pytest.raises(grpc.RpcError) as info:
                a.search("sofa", 1)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "shop-a" in info.value.details()
            assert len(b.search("sofa", 1).hits) == 1  # another client has its own bucket
    finally:
        server.stop(0)


def test_deadline_is_respected(index_root, monkeypatch) -> None:
    server = create_server(ServerConfig(index=index_root, port=0))
    try:
        slow_down(server, monkeypatch, 1.0)
        with AisleClient(f"127.0.0.1:{server.port}", timeout_s=0.2) as client:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                client.search("sofa", 3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 0.9
    finally:
        server.stop(0)


def test_protected_reads_need_the_token(index_root) -> None:
    server = create_server(
        ServerConfig(index=index_root, port=0, admin_token=TOKEN, protect_reads=True)
    )
    try:
        address = f"127.0.0.1:{server.port}"
        with AisleClient(address) as anonymous:
            with pytest.raises(grpc.RpcError) as info:
                anonymous.search("sofa", 3)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with AisleClient(address, admin_token=TOKEN) as client:
            assert len(client.search("sofa", 3).hits) == 3
    finally:
        server.stop(0)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it (PEM files)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("aisle test CA"))
        .issuer_name(name("aisle test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def test_tls(index_root, tmp_path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    server = create_server(ServerConfig(index=index_root, port=0, tls=TlsConfig(cert, key)))
    try:
        address = f"127.0.0.1:{server.port}"
        with AisleClient(address, tls_ca=ca.read_bytes(), tls_server_name="localhost") as client:
            assert len(client.search("sofa", 3).hits) == 3
        with AisleClient(address, timeout_s=2) as plaintext:
            with pytest.raises(grpc.RpcError) as info:
                plaintext.search("sofa", 3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_metrics_endpoint_exposes_the_series(index_root) -> None:
    server = create_server(ServerConfig(index=index_root, port=0, metrics_port=0))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            client.search("sofa", 3)
            client.search("sofa", 3)  # a cache hit
            with pytest.raises(grpc.RpcError):
                client.search("", 3)
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        for series in (
            'aisle_requests_total{code="OK",method="Search"} 2.0',
            'aisle_requests_total{code="INVALID_ARGUMENT",method="Search"} 1.0',
            'aisle_errors_total{code="INVALID_ARGUMENT"} 1.0',
            "aisle_request_latency_seconds_bucket",
            'aisle_stage_latency_seconds_count{stage="encode"} 2.0',
            'aisle_stage_latency_seconds_count{stage="search"} 2.0',
            'aisle_stage_latency_seconds_count{stage="rerank"} 2.0',
            "aisle_index_items 60.0",
            "aisle_index_version 1.0",
            "aisle_in_flight_requests 0.0",
            "aisle_encoder_queue_depth 0.0",
            "aisle_query_cache_hits 1.0",
        ):
            assert series in body, series
    finally:
        server.stop(0)


def test_graceful_stop_finishes_in_flight_requests(index_root, monkeypatch) -> None:
    server = create_server(ServerConfig(index=index_root, port=0, grace_s=5))
    slow_down(server, monkeypatch, 0.5)
    with AisleClient(f"127.0.0.1:{server.port}") as client, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.search, "sofa", 3)
        time.sleep(0.2)
        server.stop()
        assert len(in_flight.result(5).hits) == 3


@pytest.mark.slow
def test_reload_under_concurrent_load_drops_nothing(tmp_path, index_root, tiny_model_dir) -> None:
    root = tmp_path / "index"
    shutil.copytree(index_root, root)
    bigger = tmp_path / "bigger.jsonl"
    write_title_catalog(bigger, n=90)
    build_index(BuildConfig(catalog=bigger, out=root, model=tiny_model_dir, shards=3))
    server = create_server(ServerConfig(index=root, port=0, admin_token=TOKEN))
    errors: list[BaseException] = []
    done = threading.Event()
    counts = {"ok": 0}

    def load(i: int) -> None:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            while not done.is_set():
                try:
                    response = client.search(f"green chair {i}", 5)
                    assert len(response.hits) == 5
                    counts["ok"] += 1
                except BaseException as error:  # every failure counts
                    errors.append(error)

    try:
        threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        with AisleClient(f"127.0.0.1:{server.port}", admin_token=TOKEN) as admin:
            versions = list(admin.status().available_versions)
            assert len(versions) == 2
            for i in range(6):
                admin.reload(versions[i % 2])
                time.sleep(0.1)
        done.set()
        for t in threads:
            t.join(10)
    finally:
        done.set()
        server.stop(0)
    assert errors == []
    assert counts["ok"] > 20


def test_in_flight_limit_counts_calls_waiting_for_a_thread(index_root, monkeypatch) -> None:
    """With more calls than worker threads, the calls past --max-in-flight are refused at once
    instead of waiting in grpcio's queue behind the busy threads (issue #20, item 6)."""
    server = create_server(ServerConfig(index=index_root, port=0, workers=2, max_in_flight=4))
    try:
        slow_down(server, monkeypatch, 1.0)
        with AisleClient(f"127.0.0.1:{server.port}") as client, ThreadPoolExecutor(12) as pool:

            def call(i: int) -> tuple[str, float]:
                started = time.monotonic()
                try:
                    client.search(f"sofa {i}", 3)
                    return "ok", time.monotonic() - started
                except grpc.RpcError as error:
                    return error.code().name, time.monotonic() - started

            results = list(pool.map(call, range(12), timeout=20))  # none hangs
        refused = [t for code, t in results if code == "RESOURCE_EXHAUSTED"]
        assert {code for code, _ in results} <= {"ok", "RESOURCE_EXHAUSTED"}
        assert len(refused) >= 12 - 4
        assert max(refused) < 0.9  # refused at once, not after a worker freed up
        assert sum(code == "ok" for code, _ in results) >= 2
    finally:
        server.stop(0)


def test_second_server_on_the_same_port_fails_clearly(index_root) -> None:
    """grpc's default SO_REUSEPORT let two servers share a port and split the traffic
    (issue #20, item 16): the second bind must fail and say why."""
    first = create_server(ServerConfig(index=index_root, port=0))
    try:
        with pytest.raises(OSError, match=f"could not bind 127.0.0.1:{first.port}.*in use"):
            create_server(ServerConfig(index=index_root, port=first.port))
        with AisleClient(f"127.0.0.1:{first.port}") as client:  # the first one is unharmed
            assert len(client.search("sofa", 3).hits) == 3
    finally:
        first.stop(0)


def test_stop_turns_not_serving_first_and_drains(index_root, monkeypatch) -> None:
    """SIGTERM (server.stop()) flips health to NOT_SERVING while the listener still answers,
    for the drain window, and in-flight requests finish (issue #20, item 16)."""
    server = create_server(ServerConfig(index=index_root, port=0, drain_s=1.0, grace_s=5))
    slow_down(server, monkeypatch, 1.0)
    address = f"127.0.0.1:{server.port}"
    with (
        AisleClient(address) as client,
        grpc.insecure_channel(address) as channel,
        ThreadPoolExecutor(3) as pool,
    ):
        health_stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health_stub.Check(request, timeout=2).status == serving
        in_flight = pool.submit(client.search, "sofa", 3)
        time.sleep(0.2)
        stopping = pool.submit(server.stop)
        time.sleep(0.2)
        # The listener is still open: health answers, and says NOT_SERVING.
        status = health_stub.Check(request, timeout=2).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        during_drain = client.search("lamp", 3)  # a straggler routed here is still served
        assert len(during_drain.hits) == 3
        assert len(in_flight.result(5).hits) == 3
        stopping.result(10)


def test_item_embed_does_not_starve_query_encoding(index_root, monkeypatch) -> None:
    """A big item-tower Embed used to hold the one encoder lock for its whole batch (40-70 s
    for 256 long texts) and every new-query Search waited behind it (issue #20, item 5): item
    work now runs in chunks that let waiting queries go first."""
    server = create_server(ServerConfig(index=index_root, port=0))
    try:
        encoder = server.service.snapshot.encoder
        original = encoder.encode_items

        def heavy(texts, **kwargs):  # a stand-in for a big tower on long texts: 50 ms a text
            time.sleep(0.05 * len(texts))
            vectors = original(texts, **kwargs)
            finished["item encoding"] = time.monotonic()  # the last call's time stays
            return vectors

        finished: dict[str, float] = {}
        monkeypatch.setattr(encoder, "encode_items", heavy)
        with AisleClient(f"127.0.0.1:{server.port}") as client, ThreadPoolExecutor(2) as pool:

            def embed() -> int:
                response = client.embed(
                    [f"long item text {i} " * 50 for i in range(64)], items=True
                )
                finished["embed"] = time.monotonic()
                return len(response.embeddings)

            embedding = pool.submit(embed)
            time.sleep(0.3)  # the Embed is encoding now
            response = client.search("a query nobody asked before", 3)
            finished["search"] = time.monotonic()
            assert len(response.hits) == 3
            assert embedding.result(30) == 64
        # Answered while the item encoding (3.2 s of it) was still going, not after it.
        assert finished["search"] < finished["item encoding"]
    finally:
        server.stop(0)
