"""IndexAdmin.Upsert / Delete through the gRPC API: searchable at once, durable across restarts."""

from __future__ import annotations

import json
import shutil

import grpc
import pytest

from aisle.v1 import index_admin_pb2, types_pb2
from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from tests.helpers import Admin, item, write_title_catalog


@pytest.fixture(scope="module")
def priced_root(tmp_path_factory, tiny_model_dir):
    """60 title-only items plus a price column (every third item has a price)."""
    tmp = tmp_path_factory.mktemp("priced")
    records = write_title_catalog(tmp / "plain.jsonl")
    for i, record in enumerate(records):
        if i % 3 == 0:
            record["price"] = 100.0 + i
    catalog = tmp / "products.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in records))
    build_index(BuildConfig(catalog=catalog, out=tmp / "index", model=tiny_model_dir, shards=2))
    return tmp / "index"


@pytest.fixture()
def own_root(tmp_path, priced_root):
    root = tmp_path / "index"
    shutil.copytree(priced_root, root)
    return root


def ids(response) -> list[str]:
    return [h.item_id for h in response.hits]


def test_upsert_delete_and_attribute_updates_are_searchable_at_once(own_root) -> None:
    server = create_server(ServerConfig(index=own_root, port=0))
    admin = Admin(server.port)
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            title = "violet hammock deluxe"
            reply = admin.upsert(item("NEW1", title=title, price=25.0))
            assert reply.upserted == 1 and reply.log_sequence >= 1
            top = client.search(title, 3, include_fields=True)
            assert top.hits[0].item_id == "NEW1" and top.index.item_count == 61
            assert top.hits[0].fields["price"] == 25.0

            admin.upsert(item("NEW1", price=19.5), mode=index_admin_pb2.UPSERT_MODE_ATTRIBUTES_ONLY)
            top = client.search(title, 1, include_fields=True)
            assert top.hits[0].fields["price"] == 19.5
            cheap = client.search(title, 5, filter=types_pb2.Filter(price=types_pb2.Range(max=20)))
            assert ids(cheap) == ["NEW1"]  # the other prices are all >= 100

            gone = admin.delete("NEW1", "SKU0003", "NOPE")
            assert gone.deleted == 2 and list(gone.not_found) == ["NOPE"]
            after = client.search(title, 60)
            assert "NEW1" not in ids(after) and "SKU0003" not in ids(after)
            assert after.index.item_count == 59
            # The exhaustive path of a selective filter must not bring deleted items back.
            none = client.search(title, 5, filter=types_pb2.Filter(price=types_pb2.Range(max=20)))
            assert ids(none) == []
            assert client.status().pending_updates == 3
    finally:
        server.stop(0)
        admin.channel.close()
    # Durable: a new server on the same root replays the update log.
    server = create_server(ServerConfig(index=own_root, port=0))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.status().index.item_count == 59
            assert "SKU0003" not in ids(client.search("anything", 60))
    finally:
        server.stop(0)


def test_bad_updates_are_refused(own_root) -> None:
    server = create_server(ServerConfig(index=own_root, port=0))
    admin = Admin(server.port)
    try:
        for bad, code in (
            ((item("X1"),), grpc.StatusCode.INVALID_ARGUMENT),  # no title
            ((item("X1", title="a", price="cheap"),), grpc.StatusCode.INVALID_ARGUMENT),
            ((item("X1", title="a"), item("X1", title="b")), grpc.StatusCode.INVALID_ARGUMENT),
            ((), grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.RpcError) as info:
                admin.upsert(*bad)
            assert info.value.code() == code, info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            admin.upsert(item("NOPE", price=1.0), mode=index_admin_pb2.UPSERT_MODE_ATTRIBUTES_ONLY)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.status().pending_updates == 0  # nothing half-applied
    finally:
        server.stop(0)
        admin.channel.close()


def test_a_stand_alone_version_dir_cannot_take_updates(own_root, tmp_path) -> None:
    version_dir = own_root / "versions" / (own_root / "CURRENT").read_text().strip()
    standalone = tmp_path / "standalone"
    shutil.copytree(version_dir, standalone)  # outside any index root: no update log
    server = create_server(ServerConfig(index=standalone, port=0))
    admin = Admin(server.port)
    try:
        with pytest.raises(grpc.RpcError) as info:
            admin.upsert(item("X1", title="thing"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "index root" in info.value.details()
    finally:
        server.stop(0)
        admin.channel.close()
