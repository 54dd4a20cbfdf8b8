"""End to end: simulated shoppers against a real server on 127.0.0.1 write impressions and
events; a learning round learns from them, publishes, and the server serves the new pair."""

from __future__ import annotations

import json

from engine.client import AisleClient
from engine.learning import ledger
from engine.learning.gate import GateThresholds
from engine.learning.round import RoundConfig, TrainSettings, run_round
from engine.learning.simulator import ShopperModel, TrafficConfig, simulate
from engine.search.events import EventLog
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from tests.engine.learning.test_round import short_query
from trainer.encoder.model_dir import model_fingerprint


def test_simulated_traffic_then_a_round_through_a_real_server(
    tmp_path, title_catalog, tiny_model_dir
):
    root = tmp_path / "index"
    build_index(BuildConfig(catalog=title_catalog[0], out=root, model=tiny_model_dir, shards=2))
    records = title_catalog[1]
    traffic = {f"t{i}": r for i, r in enumerate(records) if i % 4 != 1}
    judged = tmp_path / "judged.jsonl"
    judged.write_text(
        "".join(
            json.dumps({"query_id": f"j{i}", "query": short_query(r), "item_id": r["item_id"],
                        "grade": 2}) + "\n"
            for i, r in enumerate(records) if i % 4 == 1
        )
    )  # fmt: skip
    server = create_server(ServerConfig(index=root, port=0, workers=2))
    address = f"127.0.0.1:{server.port}"
    try:
        report = simulate(
            address,
            TrafficConfig(
                queries={q: short_query(r) for q, r in traffic.items()},
                judgments={q: {r["item_id"]: 2} for q, r in traffic.items()},
                sessions=300,
                seed=0,
                model=ShopperModel(eta=1.0, depth=10),
            ),
        )
        assert server.service.impressions.flush()
        assert report.attributed == 300 and report.clicks > 0
        events = list(EventLog(root / "events").read())
        assert len(events) == report.events and all(e.request_id for e in events)

        result = run_round(
            RoundConfig(
                index=root,
                model=tiny_model_dir,
                out=tmp_path / "models",
                judged=judged,
                server=address,
                settle_s=0.0,  # the impressions were flushed above
                thresholds=GateThresholds(
                    min_ndcg_gain=-1, min_ips_gain=-1, tie_tolerance=0, gate="both"
                ),
                train=TrainSettings(
                    max_steps=6, batch_size=8, lr=1e-3, num_threads=1, export_onnx=False
                ),
            )
        )
        counts = result.record["counts"]
        assert counts["impressions"] == 300, (counts, result.record["window"])
        assert counts["events_attributed"] == report.events
        assert counts["train_positives"] > 0 and counts["held_back_clicks"] > 0
        assert result.promoted and result.version == 2
        with AisleClient(address) as client:
            status = client.status()
            assert status.index.version == 2
            assert status.index.model_fingerprint == result.record["challenger"]["fingerprint"]
            assert status.index.model_fingerprint != model_fingerprint(tiny_model_dir)
            assert client.search("red sofa", k=3).hits  # serves with the new pair
    finally:
        server.stop(0)
    assert [r["round"] for r in ledger.rounds(root)] == [1]
