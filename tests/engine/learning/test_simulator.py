"""The shopper simulator: deterministic per seed, clicks by position follow theta_k, grades set
attraction, and a real server receives attributed events."""

from __future__ import annotations

import numpy as np
import pytest

from engine.learning.simulator import (
    EVENT_ADD_TO_CART,
    EVENT_CLICK,
    EVENT_PURCHASE,
    ShopperModel,
    TrafficConfig,
    shop,
    simulate,
)
from engine.search.events import EventLog


def _run(model, items, grades, top, seed, sessions):
    rngs = (np.random.default_rng((seed, s)) for s in range(sessions))
    return [shop(model, items, grades, top, rng) for rng in rngs]


def test_same_seed_same_actions_other_seed_other_actions():
    model = ShopperModel(eta=0.7)
    items = [f"I{i}" for i in range(10)]
    grades = {"I1": 2, "I4": 1, "I7": 2}
    a = _run(model, items, grades, 2, seed=5, sessions=200)
    b = _run(model, items, grades, 2, seed=5, sessions=200)
    c = _run(model, items, grades, 2, seed=6, sessions=200)
    assert a == b
    assert a != c


@pytest.mark.parametrize("eta", [0.5, 1.0, 1.5])
def test_click_through_by_position_follows_theta(eta):
    # Every hit equally attractive: the click rate at position k is theta_k * p_click.
    model = ShopperModel(eta=eta, depth=8, noise=0.0)
    items = [f"I{i}" for i in range(8)]
    grades = dict.fromkeys(items, 2)
    n = 20_000
    clicks = np.zeros(8)
    for actions in _run(model, items, grades, 2, seed=1, sessions=n):
        for a in actions:
            if a.type == EVENT_CLICK:
                clicks[a.position - 1] += 1
    ctr = clicks / n
    theta = model.examination()
    assert theta[0] == 1.0 and np.allclose(theta, 1 / np.arange(1, 9) ** eta)
    stderr = np.sqrt(theta * (1 - theta) / n)
    assert np.all(np.abs(ctr - theta) <= 4 * stderr + 1e-12), (ctr, theta)


def test_grade_sets_attraction_and_only_relevant_items_sell():
    model = ShopperModel(eta=0.0, depth=3, noise=0.1, cart=1.0, buy=1.0)  # all examined
    items = ["top", "mid", "none"]
    grades = {"top": 2, "mid": 1}  # "none" is unlabeled = irrelevant
    n = 5000
    counts = {(i, t): 0 for i in items for t in (EVENT_CLICK, EVENT_ADD_TO_CART, EVENT_PURCHASE)}
    for actions in _run(model, items, grades, 2, seed=2, sessions=n):
        for a in actions:
            counts[(a.item_id, a.type)] += 1
    rel = {"top": 1.0, "mid": 1 / 3, "none": 0.0}
    for item, r in rel.items():
        p = 0.1 + 0.9 * r
        assert abs(counts[(item, EVENT_CLICK)] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9
    assert counts[("none", EVENT_ADD_TO_CART)] == counts[("none", EVENT_PURCHASE)] == 0
    assert counts[("top", EVENT_PURCHASE)] == counts[("top", EVENT_CLICK)]  # cart = buy = 1


@pytest.mark.parametrize(
    "kwargs", [{"eta": -1}, {"depth": 0}, {"depth": 101}, {"noise": 1.0}, {"cart": 2}]
)
def test_bad_model_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ShopperModel(**kwargs)


def test_simulate_against_a_real_server(tmp_path, title_catalog, tiny_model_dir):
    import shutil

    from engine.server import ServerConfig, create_server
    from indexer.build.config import BuildConfig
    from indexer.build.local import build_index

    root = tmp_path / "index"
    build_index(BuildConfig(catalog=title_catalog[0], out=root, model=tiny_model_dir, shards=1))
    records = title_catalog[1]
    queries = {f"q{i}": records[i]["title"] for i in range(0, 60, 6)}
    judgments = {f"q{i}": {records[i]["item_id"]: 2} for i in range(0, 60, 6)}
    server = create_server(ServerConfig(index=root, port=0, workers=2))
    try:
        config = TrafficConfig(queries, judgments, sessions=40, seed=3, model=ShopperModel(depth=5))
        report = simulate(f"127.0.0.1:{server.port}", config)
        again = simulate(f"127.0.0.1:{server.port}", config)
    finally:
        server.stop(0)
    assert report.sessions == 40 and report.to_dict() == again.to_dict()
    assert report.events == report.clicks + report.carts + report.purchases > 0
    logged = list(EventLog(root / "events").read())
    assert len(logged) == 2 * report.events
    assert {e.type for e in logged} <= {"click", "add_to_cart", "purchase"}
    # every event is attributed: the response's request_id and the hit's 1-based position
    assert report.attributed == report.sessions
    assert all(e.request_id and 1 <= e.position <= 5 for e in logged)
    # a query equal to a title ranks that item first, and relevant items sell
    assert report.purchases > 0
    shutil.rmtree(root)
