"""The popularity fallback from shoppers' engagement under a DP budget."""

from __future__ import annotations

import shutil

import grpc

from aisle.v1 import events_pb2, events_pb2_grpc
from engine.api.privacy import PrivacyConfig
from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from trainer.privacy.noise import DPConfig


def test_fallback_ranks_by_noisy_engagement_when_a_budget_is_given(index_root, tmp_path) -> None:
    root = shutil.copytree(index_root, tmp_path / "index")
    plain = create_server(ServerConfig(index=root, port=0))
    try:
        with AisleClient(f"127.0.0.1:{plain.port}") as client:
            catalog_top = [h.item_id for h in client.recommend(k=3, user_id="new").hits]
        favourite = "SKU0042"
        assert favourite not in catalog_top
        events = [
            events_pb2.Event(user_id=f"u{n}", item_id=favourite, type=events_pb2.EVENT_TYPE_CLICK)
            for n in range(40)
        ]
        with grpc.insecure_channel(f"127.0.0.1:{plain.port}") as channel:
            events_pb2_grpc.EventsStub(channel).Record(events_pb2.RecordRequest(events=events))
    finally:
        plain.stop(0)
    # ε = 2 with one item per shopper: Laplace scale 0.5 against a count of 40 (and 0 for the
    # others): the favourite leads whatever the draw.
    dp = PrivacyConfig(popularity_dp=DPConfig(epsilon=2.0, max_items_per_user=1))
    server = create_server(ServerConfig(index=root, port=0, privacy=dp))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            reply = client.recommend(k=3, user_id="new")
            assert reply.popularity_fallback and reply.hits[0].item_id == favourite
    finally:
        server.stop(0)
