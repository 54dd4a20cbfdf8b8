"""One learning round on a tiny model and a synthetic catalog: the steps, the Reload seen by a
real server, resume after a crash at every step, the ledger, and rollback.

The logs here are hand-made in the documented format (docs/learning.md): result lists that put
each query's relevant item at varied positions (so the position-bias fit has something to fit),
and the simulator's shoppers (``engine.learning.simulator.shop``) acting on them. The end-to-end
test with a real server writing the logs is ``test_loop.py``.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from engine.client import AisleClient
from engine.learning import ledger
from engine.learning.gate import GateThresholds
from engine.learning.rollback import rollback
from engine.learning.round import (
    LEXICAL_HOLDOUT,
    STEPS,
    RoundConfig,
    RoundFault,
    TrainSettings,
    run_round,
)
from engine.learning.simulator import ShopperModel, shop
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.storage.layout import IndexRoot
from trainer.encoder.model_dir import model_fingerprint, read_model_info

FAULT_POINTS = [p for step in STEPS for p in (step, f"{step}:written")]


def short_query(record: dict) -> str:
    """ "red sofa" for "red sofa model 6": unique in the title catalog, yet not the item's text,
    so a random tiny model ranks it imperfectly and training can move the metrics."""
    return record["title"].split(" model ")[0]


def write_logs(events: Path, records: list[dict], sessions: int, seed: int = 0) -> None:
    """Impressions + events of ``sessions`` searches, an hour ago up to a minute ago."""
    events.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [r["item_id"] for r in records]
    start = datetime.now(UTC) - timedelta(hours=1)
    model = ShopperModel(eta=1.0, depth=10, noise=0.05)
    with (
        open(events / "impressions.jsonl", "w", encoding="utf-8") as imp,
        open(events / "events.jsonl", "w", encoding="utf-8") as ev,
    ):
        for s in range(sessions):
            target = int(rng.integers(len(records)))
            others = rng.choice([i for i in range(len(ids)) if i != target], 9, replace=False)
            shown = [ids[i] for i in others]
            shown.insert(int(rng.integers(10)), ids[target])
            query = short_query(records[target])
            when = (start + timedelta(seconds=s)).isoformat()
            request_id = f"r{s:06d}"
            imp.write(
                json.dumps(
                    {"request_id": request_id, "time": when, "surface": "search", "user_id": "",
                     "query": query, "mode": "vector", "offset": 0, "k": 10, "items": shown}
                ) + "\n"
            )  # fmt: skip
            for a in shop(model, shown, {ids[target]: 2}, 2, rng):
                ev.write(
                    json.dumps(
                        {"user_id": f"u{s % 7}", "item_id": a.item_id, "type": a.type,
                         "query": query, "time": when, "recorded": when,
                         "request_id": request_id, "position": a.position}
                    ) + "\n"
                )  # fmt: skip


@pytest.fixture()
def setup(tmp_path, title_catalog, tiny_model_dir):
    root = tmp_path / "index"
    build_index(BuildConfig(catalog=title_catalog[0], out=root, model=tiny_model_dir, shards=2))
    records = title_catalog[1]
    write_logs(root / "events", records, sessions=400)
    judged = tmp_path / "judged.jsonl"
    judged.write_text(
        "".join(
            json.dumps(
                {"query_id": f"j{i}", "query": r["title"], "item_id": r["item_id"], "grade": 2}
            )
            + "\n"
            for i, r in enumerate(records[1::4])
        )
    )
    server = create_server(ServerConfig(index=root, port=0, workers=2))
    yield root, judged, server, tmp_path
    server.stop(0)


def config_for(root, judged, srv, tmp_path, **kwargs) -> RoundConfig:
    settings = {
        "index": root,
        "model": kwargs.pop("model", None) or _served_model(root),
        "out": tmp_path / "models",
        "judged": judged,
        "server": f"127.0.0.1:{srv.port}",
        "settle_s": 0.0,
        # anything but a tie promotes: the test is about the steps, not about the tiny model
        "thresholds": GateThresholds(
            min_ndcg_gain=-1, min_ips_gain=-1, tie_tolerance=0, gate="both"
        ),
        "train": TrainSettings(
            max_steps=6, batch_size=8, lr=1e-3, num_threads=1, export_onnx=False
        ),
    }
    return RoundConfig(**{**settings, **kwargs})


def _served_model(root: Path) -> Path:
    from engine.search.snapshot import find_model_dir
    from indexer.storage.layout import resolve_version_dir

    return find_model_dir(resolve_version_dir(root))


def served(server) -> tuple[int, str]:
    with AisleClient(f"127.0.0.1:{server.port}") as client:
        info = client.status().index
    return info.version, info.model_fingerprint


def test_round_promotes_publishes_reloads_and_rolls_back(setup):
    root, judged, server, tmp_path = setup
    champion = _served_model(root)
    assert served(server) == (1, model_fingerprint(champion))
    result = run_round(config_for(root, judged, server, tmp_path))
    assert result.round == 1 and result.outcome == "win" and result.promoted
    record = result.record
    challenger = record["challenger"]
    assert served(server) == (2, challenger["fingerprint"]) and result.version == 2
    assert (root / "models" / challenger["fingerprint"]).is_dir()
    assert record["counts"]["train_positives"] > 0 and record["counts"]["held_back_clicks"] > 0
    for side in ("champion", "challenger"):
        assert set(record[side]["metrics"]) >= {"ndcg@10", "ips_dcg@10"}
    assert ledger.rounds(root) == [json.loads(json.dumps(record, sort_keys=True))]

    # round 2: no new logs since round 1's window → nothing to learn, the champion stays
    second = run_round(config_for(root, judged, server, tmp_path))
    assert second.round == 2 and second.outcome == "tie" and not second.promoted
    assert second.record["window"]["since"] == record["window"]["until"]
    assert served(server)[0] == 2

    back = rollback(root, server=f"127.0.0.1:{server.port}")
    assert (back["from_version"], back["to_version"]) == (2, 1)
    assert served(server) == (1, model_fingerprint(champion))
    assert [r["kind"] for r in ledger.read(root)] == ["round", "round", "rollback"]
    with pytest.raises(ValueError, match="no version older"):
        rollback(root)


@pytest.mark.slow
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_resume_after_a_crash_at_each_step(setup, point):
    root, judged, server, tmp_path = setup
    before = served(server)

    def crash(at: str) -> None:
        if at == point:
            raise RoundFault(at)

    with pytest.raises(RoundFault):
        run_round(config_for(root, judged, server, tmp_path, fault=crash))
    published = STEPS.index(point.split(":")[0]) > STEPS.index("build") or point == "build:written"
    assert IndexRoot(root).current() == (2 if published else 1)
    reloaded = STEPS.index(point.split(":")[0]) > STEPS.index("reload") or point == "reload:written"
    assert (served(server) != before) == reloaded  # never served before the Reload step
    assert ledger.rounds(root) == ([] if point != "ledger:written" else ledger.rounds(root))

    result = run_round(config_for(root, judged, server, tmp_path))
    if point == "ledger:written":  # round 1 was over (it is in the ledger): this is round 2
        assert result.round == 2 and result.outcome == "tie"
        first = ledger.rounds(root)[0]
    else:
        assert result.round == 1 and result.promoted and result.version == 2
        first = result.record
    assert served(server) == (2, first["challenger"]["fingerprint"])
    assert IndexRoot(root).versions() == [1, 2]  # the rerun did not build a second version
    assert [r["round"] for r in ledger.rounds(root)] == list(range(1, result.round + 1))


def test_a_crash_in_training_leaves_serving_untouched_and_resume_matches(setup, tmp_path_factory):
    root, judged, server, tmp_path = setup
    clean_root = tmp_path_factory.mktemp("clean") / "index"
    shutil.copytree(root, clean_root)
    clean = run_round(
        config_for(clean_root, judged, server, tmp_path, server=None, out=tmp_path / "clean-models")
    )

    def crash(at: str) -> None:
        if at == "train:written":
            raise RoundFault(at)

    with pytest.raises(RoundFault):
        run_round(config_for(root, judged, server, tmp_path, fault=crash))
    assert served(server)[0] == 1 and IndexRoot(root).current() == 1
    resumed = run_round(config_for(root, judged, server, tmp_path))
    assert resumed.record["challenger"]["fingerprint"] == clean.record["challenger"]["fingerprint"]
    assert resumed.record["challenger"]["metrics"] == pytest.approx(
        clean.record["challenger"]["metrics"]
    )
    assert resumed.outcome == clean.outcome


def test_bad_input_is_refused_with_the_field(tmp_path, setup):
    root, judged, server, _ = setup
    with pytest.raises(ValueError, match="CURRENT"):
        config_for(tmp_path / "nothing", judged, server, tmp_path, model=tmp_path)
    with pytest.raises(ValueError, match="judged"):
        config_for(root, tmp_path / "missing.jsonl", server, tmp_path)
    with pytest.raises(ValueError, match="holdout_fraction"):
        config_for(root, judged, server, tmp_path, holdout_fraction=1.5)
    with pytest.raises(ValueError, match="gate 'both' needs a judged set"):
        config_for(root, None, server, tmp_path)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="skip_negatives must be an integer >= 0"):
            TrainSettings(skip_negatives=bad)
    with pytest.raises(ValueError, match="no skip negatives"):
        TrainSettings(skip_negatives=1, dp_epsilon=4.0)
    for bad in (4, -1, True, 5000):
        with pytest.raises(ValueError, match=r"lexical\.dim"):
            TrainSettings(lexical_dim=bad)
    for bad in (0.0, -1.0, float("nan"), 101.0):
        with pytest.raises(ValueError, match=r"lexical\.weight"):
            TrainSettings(lexical_dim=16, lexical_weight=bad)
    with pytest.raises(ValueError, match="lexical_dim is 0"):
        TrainSettings(lexical_dim=0, lexical_weight=0.5)
    with pytest.raises(ValueError, match="not private"):
        TrainSettings(lexical_dim=16, dp_epsilon=4.0)
    TrainSettings(lexical_dim=16, lexical_weight=0.5, dp_epsilon=4.0)
    for bad in (0, -0.1, 0.6, True, float("nan"), "0.2"):
        with pytest.raises(ValueError, match=r"lexical_holdout must be in \(0, 0\.5\]"):
            TrainSettings(lexical_holdout=bad)
    with pytest.raises(ValueError, match="lexical_fit must be one of window, all, shown"):
        TrainSettings(lexical_fit="everything")
    config_for(root, None, server, tmp_path, thresholds=GateThresholds(gate="ips"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage", ["round:train:written", "after-embed", "round:build:written", "round:reload"]
)
def test_kill_of_the_command_at_a_step_then_rerun(setup, stage):
    """A real kill (os._exit(137) at ``stage``; "after-embed" is inside the index build) of
    ``aisle-learn round``: the server keeps serving the old pair until a rerun finishes."""
    import os
    import subprocess
    import sys

    from indexer.storage.faults import FAULT_ENV, FAULT_EXIT_CODE

    root, judged, server, tmp_path = setup
    before = served(server)
    argv = [
        sys.executable, "-m", "engine.cli.learn", "round", "--index", str(root),
        "--model", str(_served_model(root)), "--out", str(tmp_path / "models"),
        "--judged", str(judged), "--server", f"127.0.0.1:{server.port}", "--settle-s", "0",
        "--min-ndcg-gain", "-1", "--min-ips-gain", "-1", "--tie-tolerance", "0", "--gate", "both",
        "--max-steps", "6", "--batch-size", "8", "--lr", "1e-3", "--threads", "1", "--no-onnx",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    killed = subprocess.run(
        argv, env={**env, FAULT_ENV: stage}, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr[-2000:]
    published = stage in ("round:build:written", "round:reload")
    assert IndexRoot(root).current() == (2 if published else 1)
    assert served(server) == before  # no Reload yet: the old pair is served
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["round"] == 1 and printed["promoted"] and printed["version"] == 2
    assert served(server)[0] == 2 and IndexRoot(root).versions() == [1, 2]
    assert len(ledger.rounds(root)) == 1


@pytest.mark.parametrize(
    "flags",
    [
        ["--dp-epsilon", "4", "--dp-trainable-layers", "1"],
        ["--dp-logq-epsilon", "1"],
        ["--skip-negatives", "1"],
        ["--lexical-dim", "16"],
        ["--lexical-dim", "16", "--lexical-holdout", "0.3"],
        ["--lexical-dim", "16", "--lexical-fit", "all"],
        ["--lexical-dim", "16", "--lexical-fit", "shown"],
    ],
)
def test_aisle_learn_round_passes_the_training_flags(setup, flags, capsys):
    """`aisle-learn round --dp-*`: the challenger is trained under the budget (DP-SGD, or the
    feedback dataset's noisy logQ) and its training_metrics.json says so; `--skip-negatives`:
    the skip-above items are its negatives, nothing is mined; `--lexical-dim`: the challenger
    carries a trigram sketch whose weight was fitted on the window's held-out queries (10 %, or
    `--lexical-holdout`), or with `--lexical-fit all|shown` on the set-apart queries' fit.jsonl
    (shown: their whole result lists, each reordered)."""
    from engine.cli.learn import main as learn_main

    root, judged, server, tmp_path = setup
    argv = [
        "round", "--index", str(root), "--model", str(_served_model(root)),
        "--out", str(tmp_path / "models"), "--judged", str(judged), "--settle-s", "0",
        "--min-ndcg-gain", "-1", "--min-ips-gain", "-1", "--tie-tolerance", "0",
        "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3", "--threads", "1", "--no-onnx",
        *flags,
    ]  # fmt: skip
    assert learn_main(argv) == 0
    (model,) = (tmp_path / "models").glob("round-*")
    metrics = json.loads((model / "training_metrics.json").read_text())
    privacy = metrics["privacy"]
    if flags[0] == "--lexical-dim":
        info = read_model_info(model)
        assert info.lexical["dim"] == 16 and (model / "lexical_tower.safetensors").is_file()
        held_out = float(flags[3]) if "--lexical-holdout" in flags else LEXICAL_HOLDOUT
        assert metrics["config"]["holdout_fraction"] == held_out > 0
        (feedback,) = metrics["config"]["datasets"]
        if "--lexical-fit" in flags:  # fitted on fit.jsonl: set-apart queries, every log so far
            dataset = root / "learning" / "rounds" / "1" / "dataset"
            assert feedback["dev"] == str(dataset / "fit.jsonl")
            fit_set, train = (
                {json.loads(line)["query"] for line in path.read_text().splitlines()}
                for path in (dataset / "fit.jsonl", dataset / "train.jsonl")
            )
            assert fit_set and train and not fit_set & train
            # "shown": each fit query lists every item shown for it (10 a list), reranked
            per_query: dict[str, set] = {}
            for line in (dataset / "fit.jsonl").read_text().splitlines():
                row = json.loads(line)
                per_query.setdefault(row["query"], set()).add(row["item_id"])
            shown = flags[-1] == "shown"
            assert metrics["config"]["lexical_rerank"] is shown
            assert all(len(items) >= 10 for items in per_query.values()) is shown
        else:
            assert feedback["dev"] is None  # a random share of train.jsonl's queries
            assert metrics["config"]["lexical_rerank"] is False
        # per weight, the held-out clicks' weighted DCG@10 (feedback labels carry weights)
        fit = metrics["lexical"]["weight_fit_ndcg@10"]
        assert set(fit) >= {"0", "1"} and info.lexical["weight"] in {float(w) for w in fit}
        assert privacy is None
    elif flags[0] == "--skip-negatives":
        assert metrics["config"]["hard_negatives"] == 1 and metrics["config"]["mine"] is False
        assert privacy is None
    elif flags[0] == "--dp-epsilon":
        assert privacy["model_weights_private"] and 0 < privacy["total_epsilon"] <= 4.04
        assert privacy["dp_sgd"]["noise_multiplier"] > 0
        assert privacy["dp_sgd"]["trainable_layers"] == 1
    else:
        assert privacy["logq"]["datasets"] == ["feedback"] and privacy["total_epsilon"] == 1
