"""AisleClient: every RPC against a real server, the token on every call, and errors a person
can act on."""

from __future__ import annotations

import shutil
import socket
from concurrent import futures

import grpc
import pytest

from aisle.v1 import privacy_pb2, privacy_pb2_grpc
from engine.client import AisleClient, AisleRpcError
from engine.server import ServerConfig, TlsConfig, create_server
from tests.engine.api.test_robustness import make_certificates
from tests.helpers import established_inodes, socket_inodes

TOKEN = "k" * 20


@pytest.fixture(scope="module")
def protected(tmp_path_factory, index_root):
    """A writable copy of the index served with --protect-reads: every call needs the token."""
    root = tmp_path_factory.mktemp("client") / "index"
    shutil.copytree(index_root, root)
    server = create_server(
        ServerConfig(index=root, port=0, workers=4, admin_token=TOKEN, protect_reads=True)
    )
    yield server
    server.stop(0)


def test_every_rpc_sends_the_token(protected, title_catalog):
    _, records = title_catalog
    with AisleClient(f"127.0.0.1:{protected.port}", admin_token=TOKEN) as client:
        hits = client.search(records[3]["title"], 5, mode="dense", field_names=["title"]).hits
        assert hits[0].item_id == records[3]["item_id"]
        assert hits[0].fields["title"] == records[3]["title"]  # field_names implies fields
        filtered = client.search("sofa", 5, filter={"exclude_item_ids": [hits[0].item_id]})
        assert hits[0].item_id not in [h.item_id for h in filtered.hits]
        batch = client.batch_search([{"query": "lamp", "k": 2}, {"query": "sofa", "k": 3}])
        assert [len(r.hits) for r in batch.responses] == [2, 3]
        similar = client.similar_items(records[0]["item_id"], 4)  # sent no token before
        assert len(similar.hits) == 4 and records[0]["item_id"] not in [
            h.item_id for h in similar.hits
        ]
        assert len(client.recommend([records[1]["item_id"]], 3).hits) == 3
        assert client.embed(["red sofa"]).dim == 32
        recorded = client.record(
            [
                {
                    "user_id": "u1",
                    "item_id": records[2]["item_id"],
                    "type": "click",
                    "query": "sofa",
                    "request_id": "r-1",
                    "position": 3,
                }
            ]
        )
        assert recorded.recorded == 1
        assert client.recommend(user_id="u1", k=2).hits  # the event is the user's history
        upserted = client.upsert([{"item_id": "NEW1", "title": "purple velvet sofa"}])
        assert upserted.upserted == 1
        assert client.search("purple velvet sofa", 1, mode="dense").hits[0].item_id == "NEW1"
        assert client.delete(["NEW1"]).deleted == 1
        status = client.status()
        assert status.index.item_count == len(records) and status.pending_updates >= 2
        assert client.reload().index.version == status.index.version


def test_modes_are_checked_on_the_client(protected):
    with AisleClient(f"127.0.0.1:{protected.port}", admin_token=TOKEN) as client:
        with pytest.raises(ValueError, match="dense, lexical, hybrid, ranked"):
            client.search("sofa", mode="fastest")


class _Privacy(privacy_pb2_grpc.PrivacyServicer):
    """Records what arrives; the Privacy service itself is another issue's."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def _note(self, name, context):
        self.seen.append((name, dict(context.invocation_metadata()).get("authorization", "")))

    def SetPreferences(self, request, context):  # noqa: N802
        self._note("SetPreferences", context)
        return privacy_pb2.Preferences(personalization=request.personalization)

    def GetPreferences(self, request, context):  # noqa: N802
        self._note("GetPreferences", context)
        return privacy_pb2.Preferences(defaults=True)

    def ForgetUser(self, request, context):  # noqa: N802
        self._note("ForgetUser", context)
        return privacy_pb2.ForgetUserResponse(events_removed=len(request.user_id))


def test_privacy_methods_go_through_the_same_metadata():
    servicer = _Privacy()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    privacy_pb2_grpc.add_PrivacyServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with AisleClient(f"127.0.0.1:{port}", admin_token=TOKEN) as client:
            assert client.set_preferences("u1", personalization=False).personalization is False
            assert client.get_preferences("u1").defaults
            assert client.forget_user("u123").events_removed == 4
    finally:
        server.stop(0)
    assert servicer.seen == [
        (name, f"Bearer {TOKEN}") for name in ("SetPreferences", "GetPreferences", "ForgetUser")
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_says_start_aisle_serve():
    port = _free_port()
    with AisleClient(f"127.0.0.1:{port}", timeout_s=3) as client:
        with pytest.raises(AisleRpcError) as info:
            client.status()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "is aisle-serve running there?" in str(info.value)
    assert "Connection refused" not in str(info.value)
    assert f"--port {port}" in str(info.value)


def test_tls_mismatches_say_what_to_pass(index_root, tmp_path):
    ca, cert, key = make_certificates(tmp_path)
    tls_server = create_server(ServerConfig(index=index_root, port=0, tls=TlsConfig(cert, key)))
    plain_server = create_server(ServerConfig(index=index_root, port=0))
    try:
        with AisleClient(f"127.0.0.1:{tls_server.port}", timeout_s=3) as client:
            with pytest.raises(AisleRpcError) as plain_to_tls:
                client.search("sofa")
        with AisleClient(
            f"127.0.0.1:{plain_server.port}",
            timeout_s=3,
            tls_ca=ca.read_bytes(),
            tls_server_name="localhost",
        ) as client:
            with pytest.raises(AisleRpcError) as tls_to_plain:
                client.search("sofa")
    finally:
        tls_server.stop(0)
        plain_server.stop(0)
    assert "Socket closed" not in str(plain_to_tls.value)
    assert "probably serves TLS" in str(plain_to_tls.value) and "--tls-ca" in str(
        plain_to_tls.value
    )
    assert "TLS handshake" in str(tls_to_plain.value) and "drop --tls-ca" in str(tls_to_plain.value)


def test_token_errors_say_how_to_send_one(protected):
    address = f"127.0.0.1:{protected.port}"
    with AisleClient(address) as anonymous, AisleClient(address, admin_token="w" * 20) as wrong:
        with pytest.raises(AisleRpcError) as missing:
            anonymous.similar_items("SKU0001")
        with pytest.raises(AisleRpcError) as bad:
            wrong.search("sofa")
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "SimilarItems needs the server's token" in str(missing.value)
    assert "--token" in str(missing.value) and "<path>" not in str(missing.value)
    assert "not the server's" in str(bad.value)


def _connections_to(port: int) -> int:
    """ESTABLISHED TCP connections of this process whose remote end is ``port``."""
    return len(socket_inodes() & established_inodes(port, remote=True))


def test_connections_spread_searches_over_that_many_connections(server) -> None:
    before = _connections_to(server.port)
    with AisleClient(f"127.0.0.1:{server.port}", connections=3) as client:
        for _ in range(6):
            assert len(client.search("sofa", 2).hits) == 2
        assert client.status().index.item_count == 60  # admin calls: the first connection
        assert _connections_to(server.port) == before + 3
    address = f"127.0.0.1:{server.port}"
    with AisleClient(address) as first, AisleClient(address) as second:
        first.search("sofa", 2)
        second.search("lamp", 2)
        assert _connections_to(server.port) == before + 2  # one each, not one shared
    with pytest.raises(ValueError, match="connections"):
        AisleClient("127.0.0.1:1", connections=0)
