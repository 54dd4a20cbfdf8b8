"""aisle-learn dataset end to end: a real server shows results and records attributed events;
the command turns its logs into a dataset dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aisle.v1 import events_pb2
from engine.cli import learn
from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from trainer.feedback.dataset import read_dataset


@pytest.fixture()
def served_logs(tmp_path, index_root) -> tuple[Path, dict]:
    """An index root whose events dir holds the impressions and events of a few searches."""
    root = Path(shutil.copytree(index_root, tmp_path / "index"))
    shutil.rmtree(root / "events", ignore_errors=True)
    server = create_server(ServerConfig(index=root, port=0, workers=2))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            response = client.search("desk", 4, user_id="u1")
            third = response.hits[2].item_id
            event = events_pb2.Event(
                user_id="u1",
                item_id=third,
                type=events_pb2.EVENT_TYPE_PURCHASE,
                query="desk",
                request_id=response.request_id,
                position=3,
            )
            client.record_events([event])
    finally:
        server.stop(0)
    return root, {"hits": [h.item_id for h in response.hits], "bought": third}


def test_dataset_from_a_real_servers_logs(served_logs, tmp_path, capsys) -> None:
    root, shown = served_logs
    out = tmp_path / "dataset"
    assert learn.main(["dataset", "--index", str(root), "--out", str(out)]) == 0
    headline = json.loads(capsys.readouterr().out)
    assert headline["impressions"] == 1 and headline["events_attributed"] == 1
    pairs, _, _, summary = read_dataset(out)
    rows = {r["item_id"]: r for r in pairs.to_pylist()}
    assert rows[shown["bought"]]["label"] == 4.0 and rows[shown["bought"]]["position"] == 3
    assert {i for i, r in rows.items() if r["label"] == 0} == set(shown["hits"][:2])
    assert summary["skipped"] == {"unattributed_events": 0}


def test_dataset_with_a_catalog_and_options(served_logs, tmp_path, title_catalog) -> None:
    root, shown = served_logs
    out = tmp_path / "dataset"
    argv = ["dataset", "--events", str(root / "events"), "--catalog", str(title_catalog[0])]
    argv += ["--out", str(out), "--weights", "purchase=8", "--clip", "2"]
    argv += ["--since", "2000-01-01T00:00:00Z"]
    assert learn.main(argv) == 0
    pairs, _, _, summary = read_dataset(out)
    assert summary["weights"]["purchase"] == 8.0 and summary["clip"] == 2.0
    assert {r["item_id"]: r["label"] for r in pairs.to_pylist()}[shown["bought"]] == 8.0


def test_dataset_errors_are_clear(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere"
    code = learn.main(["dataset", "--events", str(missing), "--catalog", "x", "--out", "o"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        learn.main(["dataset", "--events", str(tmp_path), "--out", "o"])  # no --index/--catalog
    with pytest.raises(SystemExit):
        learn.main(["dataset", "--catalog", "c", "--out", "o", "--since", "yesterday"])
