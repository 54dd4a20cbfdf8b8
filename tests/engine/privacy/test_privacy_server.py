"""Shoppers' privacy end to end on a real server on 127.0.0.1: pseudonymous ids everywhere on
disk, scrubbed query text, consent, erasure (surviving compaction and restart), key rotation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from aisle.v1 import events_pb2, events_pb2_grpc, privacy_pb2, privacy_pb2_grpc, retrieval_pb2
from engine.api.privacy import PrivacyConfig
from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from trainer.feedback.dataset import build_dataset, read_dataset, write_dataset
from trainer.privacy.pseudonym import ENV_KEYS, parse_keys

TOKEN = "privacy-test-admin-token"
KEYS_1 = "k1:first-secret-of-the-shop-0001"
KEYS_2 = "k2:second-secret-of-the-shop-002"
ALICE = "alice-raw-id-4411"
BOB = "bob-raw-id-9922"
CAROL = "carol-raw-id-3355"  # only in the interactions the index was built from
PLANTED = "jane.doe.planted@example.org"
ADMIN = (("authorization", f"Bearer {TOKEN}"),)
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def keyed_root(tmp_path, title_catalog, tiny_model_dir, monkeypatch) -> Path:
    """An index root whose users.parquet was built from raw interactions under key k1."""
    interactions = tmp_path / "interactions.jsonl"
    rows = [
        {"user_id": CAROL, "item_id": f"SKU{i:04d}", "position": n}
        for n, i in enumerate((3, 7, 11))
    ] + [{"user_id": ALICE, "item_id": "SKU0001", "position": 0}]
    interactions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv(ENV_KEYS, KEYS_1)
    root = tmp_path / "index"
    build_index(
        BuildConfig(
            catalog=title_catalog[0],
            out=root,
            model=tiny_model_dir,
            shards=2,
            interactions=interactions,
        )
    )
    monkeypatch.delenv(ENV_KEYS)
    return root


def serve(root: Path, keys: str = KEYS_1, **privacy):
    config = PrivacyConfig(pseudonyms=parse_keys(keys, "test"), **privacy)
    return create_server(ServerConfig(index=root, port=0, admin_token=TOKEN, privacy=config))


def record(address: str, *events: events_pb2.Event) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = events_pb2_grpc.EventsStub(channel)
        return stub.Record(events_pb2.RecordRequest(events=list(events)), timeout=5).recorded


def click(user: str, item: str, query: str = "") -> events_pb2.Event:
    return events_pb2.Event(
        user_id=user, item_id=item, type=events_pb2.EVENT_TYPE_CLICK, query=query
    )


def purchase(user: str, item: str) -> events_pb2.Event:
    return events_pb2.Event(user_id=user, item_id=item, type=events_pb2.EVENT_TYPE_PURCHASE)


def dataset_users(root: Path, out: Path) -> set[str]:
    """The users in the next-item pairs of a dataset built from the root's logs now."""
    write_dataset(build_dataset(root / "events", None), out)
    return set(read_dataset(out)[1].column("user_id").to_pylist())


def privacy(address: str):
    channel = grpc.insecure_channel(address)
    return channel, privacy_pb2_grpc.PrivacyStub(channel)


def every_text(root: Path) -> str:
    """Every file under `root` as text: raw bytes, plus every string of a parquet file
    (compression could hide one from a byte scan)."""
    parts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts.append(path.read_bytes().decode("utf-8", "replace"))
        if path.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
    return "\n".join(parts)


def test_nothing_under_a_served_root_holds_a_raw_user_id_or_a_planted_email(keyed_root) -> None:
    server = serve(keyed_root)
    address = f"127.0.0.1:{server.port}"
    try:
        query = f"desk for {PLANTED} call +1 415 555 0199 card 4111 1111 1111 1111"
        assert record(address, click(ALICE, "SKU0004", query), click(BOB, "SKU0010")) == 2
        with AisleClient(address) as client:
            assert not client.recommend(k=5, user_id=CAROL).popularity_fallback  # keyed history
            assert not client.recommend(k=5, user_id=ALICE).popularity_fallback
            assert client.search("desk", 5, user_id=ALICE, personalization_weight=0.5).personalized
            client.search(f"desk {PLANTED}", 5, user_id=BOB)  # shown: an impression is logged
            batch = [retrieval_pb2.SearchRequest(query="lamp", k=3, user_id=ALICE)]
            assert len(client.batch_search(batch).responses) == 1
        channel, stub = privacy(address)
        with channel:
            stub.SetPreferences(
                privacy_pb2.SetPreferencesRequest(user_id=BOB, use_for_training=False),
                metadata=ADMIN,
                timeout=5,
            )
    finally:
        server.stop(0)
    dataset_users(keyed_root, keyed_root / "datasets" / "round-1")  # training data, too
    text = every_text(keyed_root)
    key_secrets = [k.partition(":")[2] for k in (KEYS_1, KEYS_2)]
    for secret in (ALICE, BOB, CAROL, PLANTED, "415 555 0199", "4111 1111 1111 1111", *key_secrets):
        assert secret not in text
    shown = [json.loads(line) for line in (keyed_root / "events/impressions.jsonl").open()]
    assert {r["user_id"][:3] for r in shown if r["user_id"]} == {"k1."}
    assert any("[email]" in r["query"] for r in shown)
    logged = [json.loads(line) for line in (keyed_root / "events/events.jsonl").open()]
    assert logged[0]["user_id"].startswith("k1.") and "[email]" in logged[0]["query"]
    assert "[phone]" in logged[0]["query"] and "[card]" in logged[0]["query"]


def test_opt_out_users_get_unpersonalised_results_and_leave_training(keyed_root) -> None:
    server = serve(keyed_root)
    address = f"127.0.0.1:{server.port}"
    channel, stub = privacy(address)
    keys = parse_keys(KEYS_1, "test")
    try:
        for user in (CAROL, BOB):
            record(address, purchase(user, "SKU0012"), purchase(user, "SKU0013"))
        before = dataset_users(keyed_root, keyed_root / "datasets" / "before")
        assert before == {keys.pseudonym(CAROL), keys.pseudonym(BOB)}
        with AisleClient(address) as client, channel:
            assert not client.recommend(k=5, user_id=CAROL).popularity_fallback
            request = privacy_pb2.SetPreferencesRequest(
                user_id=CAROL, personalization=False, use_for_training=False
            )
            with pytest.raises(grpc.RpcError) as refused:  # writes are admin-authenticated
                stub.SetPreferences(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            prefs = stub.SetPreferences(request, metadata=ADMIN, timeout=5)
            assert not prefs.personalization and not prefs.use_for_training and not prefs.defaults
            got = stub.GetPreferences(privacy_pb2.GetPreferencesRequest(user_id=CAROL), timeout=5)
            assert got == prefs
            fresh = stub.GetPreferences(privacy_pb2.GetPreferencesRequest(user_id=BOB), timeout=5)
            assert fresh.defaults and fresh.personalization
            assert client.recommend(k=5, user_id=CAROL).popularity_fallback
            personal = client.search(
                "desk", 5, user_id=CAROL, recent_item_ids=["SKU0003"], personalization_weight=0.9
            )
            plain = client.search("desk", 5)
            assert not personal.personalized
            assert [h.item_id for h in personal.hits] == [h.item_id for h in plain.hits]
    finally:
        server.stop(0)
    # Durable: a restarted server still honours the choice.
    server = serve(keyed_root)
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.recommend(k=5, user_id=CAROL).popularity_fallback
    finally:
        server.stop(0)
    after = dataset_users(keyed_root, keyed_root / "datasets" / "after")
    assert after == {keys.pseudonym(BOB)}  # the next training set leaves the opted-out user out


def test_erasure_removes_every_trace_and_survives_compaction_and_restart(keyed_root) -> None:
    server = serve(keyed_root)
    address = f"127.0.0.1:{server.port}"
    keys = parse_keys(KEYS_1, "test")
    try:
        record(address, click(CAROL, "SKU0020", "lamp"), click(BOB, "SKU0021"))
        record(address, purchase(CAROL, "SKU0022"), purchase(CAROL, "SKU0023"))
        dataset_users(keyed_root, keyed_root / "datasets" / "round-1")  # not yet trained on
        with AisleClient(address) as client:
            client.search("lamp", 5, user_id=CAROL)  # an impression of hers
        channel, stub = privacy(address)
        with channel:
            stub.SetPreferences(
                privacy_pb2.SetPreferencesRequest(user_id=CAROL, personalization=True),
                metadata=ADMIN,
                timeout=5,
            )
            reply = stub.ForgetUser(
                privacy_pb2.ForgetUserRequest(user_id=CAROL), metadata=ADMIN, timeout=5
            )
        assert reply.events_removed == 3 and reply.recent_items_removed
        assert reply.dataset_rows_removed == 1 and reply.impressions_removed >= 1
        with AisleClient(address) as client:
            assert client.recommend(k=5, user_id=CAROL).popularity_fallback
            assert not client.recommend(k=5, user_id=BOB).popularity_fallback
    finally:
        server.stop(0)
    carol = keys.pseudonym(CAROL)
    # A stale copy of an erased record comes back (a restored backup, a replayed segment).
    events = keyed_root / "events" / "events.jsonl"
    stale = {
        "user_id": carol,
        "item_id": "SKU0030",
        "type": "click",
        "query": "",
        "time": "2026-01-01T00:00:00+00:00",
        "recorded": "2026-01-01T00:00:00+00:00",
    }
    with events.open("a") as f:
        f.write(json.dumps(stale) + "\n")
    server = serve(keyed_root)  # restart: the manifest still verifies; the tombstone holds
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.recommend(k=5, user_id=CAROL).popularity_fallback
            assert not client.recommend(k=5, user_id=BOB).popularity_fallback
    finally:
        server.stop(0)
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli.events", "compact", "--index", str(keyed_root)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert json.loads(out.stdout)["removed"]["events.jsonl"] == 1
    text = every_text(keyed_root / "events").replace('"user_id": "' + carol, "")
    tombstones = (keyed_root / "events" / "tombstones.jsonl").read_text()
    assert carol in tombstones  # the pseudonym stays only as the tombstone
    assert (
        carol not in events.read_text()
        and carol not in (keyed_root / "events/consent.json").read_text()
    )
    # Impressions of hers left are of the requests made after the erasure (she came back).
    forgotten = json.loads(tombstones.splitlines()[0])["forgotten"]
    shown = [json.loads(x) for x in (keyed_root / "events" / "impressions.jsonl").open()]
    assert all(r["time"] > forgotten for r in shown if r["user_id"] == carol)
    assert all(carol not in every_text(v) for v in (keyed_root / "versions").iterdir())
    assert carol not in every_text(keyed_root / "datasets")
    assert dataset_users(keyed_root, keyed_root / "datasets" / "round-2") == set()
    assert keys.pseudonym(BOB) in text


def test_aisle_events_forget_uses_the_servers_keys(keyed_root, tmp_path) -> None:
    server = serve(keyed_root)
    try:
        record(f"127.0.0.1:{server.port}", click(ALICE, "SKU0004"), click(BOB, "SKU0005"))
    finally:
        server.stop(0)
    keys_file = tmp_path / "keys"
    keys_file.write_text(KEYS_1 + "\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli.events",
            "forget",
            "--index",
            str(keyed_root),
            "--user",
            ALICE,
            "--user-keys-file",
            str(keys_file),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert json.loads(out.stdout) == {
        "events_removed": 1,
        "impressions_removed": 0,
        "users_rows_removed": 1,
        "dataset_rows_removed": 0,
        "consent_removed": False,
    }
    alice = parse_keys(KEYS_1, "test").pseudonym(ALICE)
    assert alice not in (keyed_root / "events" / "events.jsonl").read_text()
    server = serve(keyed_root)
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.recommend(k=5, user_id=ALICE).popularity_fallback
    finally:
        server.stop(0)


def test_key_rotation_keeps_lookups_working(keyed_root) -> None:
    server = serve(keyed_root)  # k1
    address = f"127.0.0.1:{server.port}"
    try:
        record(address, click(BOB, "SKU0040"))
        channel, stub = privacy(address)
        with channel:
            stub.SetPreferences(
                privacy_pb2.SetPreferencesRequest(user_id=ALICE, personalization=False),
                metadata=ADMIN,
                timeout=5,
            )
        with AisleClient(address) as client:
            before = [h.item_id for h in client.recommend(k=5, user_id=CAROL).hits]
    finally:
        server.stop(0)
    server = serve(keyed_root, keys=f"{KEYS_2},{KEYS_1}")  # rotated: k2 current, k1 previous
    address = f"127.0.0.1:{server.port}"
    try:
        with AisleClient(address) as client:
            after = client.recommend(k=5, user_id=CAROL)  # users.parquet holds k1 pseudonyms
            assert not after.popularity_fallback and [h.item_id for h in after.hits] == before
            assert not client.recommend(k=5, user_id=BOB).popularity_fallback  # k1 event log
            assert client.recommend(k=5, user_id=ALICE).popularity_fallback  # k1 consent
        record(address, click(BOB, "SKU0041"))
        channel, stub = privacy(address)
        with channel:
            reply = stub.ForgetUser(
                privacy_pb2.ForgetUserRequest(user_id=BOB), metadata=ADMIN, timeout=5
            )
        assert reply.events_removed == 2  # one under each key
    finally:
        server.stop(0)
    lines = (keyed_root / "events" / "events.jsonl").read_text()
    assert "k2." not in lines and "k1." not in lines


def test_bad_privacy_requests_are_invalid_argument(keyed_root) -> None:
    server = serve(keyed_root)
    channel, stub = privacy(f"127.0.0.1:{server.port}")
    try:
        with channel:
            for request in (
                privacy_pb2.GetPreferencesRequest(user_id=""),
                privacy_pb2.GetPreferencesRequest(user_id="x" * 257),
            ):
                with pytest.raises(grpc.RpcError) as error:
                    stub.GetPreferences(request, timeout=5)
                assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "user_id" in error.value.details()
    finally:
        server.stop(0)


def test_a_root_without_keys_copies_unchanged(index_root, tmp_path) -> None:
    # Without keys the server serves as before (ids as given): the existing contract.
    root = Path(shutil.copytree(index_root, tmp_path / "plain"))
    server = create_server(ServerConfig(index=root, port=0))
    try:
        assert record(f"127.0.0.1:{server.port}", click("u1", "SKU0001")) == 1
    finally:
        server.stop(0)
    assert '"user_id":"u1"' in (root / "events" / "events.jsonl").read_text()


def test_privacy_without_keys_takes_ids_as_given(index_root, tmp_path) -> None:
    root = Path(shutil.copytree(index_root, tmp_path / "plain"))
    server = create_server(ServerConfig(index=root, port=0))
    channel, stub = privacy(f"127.0.0.1:{server.port}")
    try:
        with channel:
            user = "john smith"  # a space: no pseudonyms to split here
            request = privacy_pb2.SetPreferencesRequest(user_id=user, personalization=False)
            assert not stub.SetPreferences(request, timeout=5).personalization
            got = stub.GetPreferences(privacy_pb2.GetPreferencesRequest(user_id=user), timeout=5)
            assert not got.personalization and not got.defaults
            with pytest.raises(grpc.RpcError) as error:
                stub.GetPreferences(privacy_pb2.GetPreferencesRequest(user_id="x" * 257))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(0)
    assert json.loads((root / "events" / "consent.json").read_text()).keys() == {"john smith"}


def test_retention_runs_at_start_before_the_replay(keyed_root) -> None:
    server = serve(keyed_root)
    try:
        record(f"127.0.0.1:{server.port}", click(BOB, "SKU0050"))
    finally:
        server.stop(0)
    events = keyed_root / "events" / "events.jsonl"
    old = {
        "user_id": "k1.old",
        "item_id": "SKU0051",
        "type": "click",
        "query": "",
        "time": "2020-01-01T00:00:00+00:00",
        "recorded": "2020-01-01T00:00:00+00:00",
    }
    with events.open("a") as f:
        f.write(json.dumps(old) + "\n")
    server = serve(keyed_root, retention_days=30)
    server.stop(0)
    assert [json.loads(x)["item_id"] for x in events.open()] == ["SKU0050"]


def test_http_gateway_callers_are_pseudonymised_like_grpc_callers(keyed_root) -> None:
    """The gateway calls through the same interceptors, privacy edge first: an event and a
    search sent over HTTP/JSON reach disk under the keyed pseudonym, query scrubbed."""
    import httpx

    config = PrivacyConfig(pseudonyms=parse_keys(KEYS_1, "test"))
    server = create_server(
        ServerConfig(index=keyed_root, port=0, http_port=0, admin_token=TOKEN, privacy=config)
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as http:
            event = {
                "userId": ALICE,
                "itemId": "SKU0004",
                "type": "EVENT_TYPE_CLICK",
                "query": f"desk {PLANTED}",
            }
            answer = http.post("/v1/events", json={"events": [event]})
            assert answer.status_code == 200, answer.text
            answer = http.post("/v1/search", json={"query": "desk", "k": 3, "userId": BOB})
            assert answer.status_code == 200, answer.text
    finally:
        server.stop(0)
    text = every_text(keyed_root / "events")
    assert ALICE not in text and BOB not in text and PLANTED not in text
    logged = [json.loads(line) for line in (keyed_root / "events/events.jsonl").open()]
    assert logged[-1]["user_id"].startswith("k1.") and "[email]" in logged[-1]["query"]
    shown = [json.loads(line) for line in (keyed_root / "events/impressions.jsonl").open()]
    assert shown and all(r["user_id"].startswith("k1.") for r in shown if r["user_id"])


def test_periodic_retention_drops_old_records_while_concurrent_writes_lose_nothing(
    keyed_root,
) -> None:
    """--retention-every: the server compacts on a timer, beside Events.Record appends."""
    import threading
    import time

    from engine.privacy.logs import log_lock

    events_dir = keyed_root / "events"
    old = {"user_id": "k1.old", "item_id": "SKU0051", "type": "click", "query": ""}
    old |= {"time": "2020-01-01T00:00:00+00:00", "recorded": "2020-01-01T00:00:00+00:00"}
    server = serve(keyed_root, retention_days=30, retention_every_hours=0.3 / 3600)
    acked: list[int] = []
    try:
        address = f"127.0.0.1:{server.port}"
        record(address, click(BOB, "SKU0050"))  # fresh and acknowledged: it must survive
        with log_lock(events_dir):  # planted old records, as if written long ago
            with (events_dir / "events.jsonl").open("a") as f:
                f.write(json.dumps(old) + "\n")
            with (events_dir / "impressions.jsonl").open("a") as f:
                f.write(json.dumps({**old, "items": ["SKU0051"]}) + "\n")
        stop = threading.Event()

        def writer(n: int) -> None:  # acknowledged writes while passes run every 0.3 s
            while not stop.is_set():
                acked.append(record(address, click(f"writer-{n}", f"SKU{len(acked) % 40:04d}")))

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = (events_dir / "events.jsonl").read_text().splitlines()
            if all(json.loads(x)["user_id"] != "k1.old" for x in lines):
                break
            time.sleep(0.1)
        time.sleep(1.5)  # several more passes while the writers keep writing
        stop.set()
        for t in threads:
            t.join()
    finally:
        server.stop(0)
    kept = [json.loads(x) for x in (events_dir / "events.jsonl").read_text().splitlines()]
    assert all(r["user_id"] != "k1.old" for r in kept), "the old event outlived retention"
    impressions = (events_dir / "impressions.jsonl").read_text().splitlines()
    assert all(json.loads(x)["user_id"] != "k1.old" for x in impressions)
    assert len(acked) > 10 and sum(acked) == len(acked)
    assert len(kept) == 1 + len(acked)  # Bob's and every acknowledged write survived
    assert kept[0]["item_id"] == "SKU0050"


def test_retention_every_needs_retention_days() -> None:
    with pytest.raises(ValueError, match="--retention-every needs --retention-days"):
        PrivacyConfig(retention_every_hours=1.0)
    with pytest.raises(ValueError, match="--retention-every must be > 0"):
        PrivacyConfig(retention_days=7, retention_every_hours=0)
