"""Exploration traffic end to end: simulated shoppers with a known examination curve browse a
real server; with ``--explore-share 0.2`` one round of one ranker's traffic identifies the
curve, with 0 the dataset says it cannot (the case that gave a flat curve before)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.learning.simulator import ShopperModel, TrafficConfig, simulate
from trainer.feedback.dataset import FeedbackConfig, build_dataset

DEPTH = 6
ETA = 1.0  # theta_k = 1 / k


@pytest.fixture(scope="module")
def traffic(index_root, title_catalog):
    """(queries, hidden grades): 12 title queries, every item graded at random per query
    (seeded), so relevance varies along each fixed result list."""
    records = title_catalog[1]
    rng = np.random.default_rng(7)
    queries = {f"q{i}": records[i]["title"] for i in range(0, 60, 5)}
    judgments = {
        q: {r["item_id"]: int(rng.choice(3, p=[0.2, 0.3, 0.5])) for r in records} for q in queries
    }
    return queries, judgments


def _round(index_root, tmp_path, traffic, share: float, sessions: int):
    from engine.server import ServerConfig, create_server

    events = tmp_path / f"events-{share}"
    server = create_server(
        ServerConfig(index=index_root, port=0, workers=2, events_dir=events, explore_share=share)
    )
    try:
        queries, judgments = traffic
        config = TrafficConfig(
            queries, judgments, sessions=sessions, seed=11, model=ShopperModel(eta=ETA, depth=DEPTH)
        )
        simulate(f"127.0.0.1:{server.port}", config)
        explored = server.metrics.registry.get_sample_value("aisle_explored_responses_total")
    finally:
        server.stop(0)
    return build_dataset(events, None, FeedbackConfig(max_position=DEPTH)), explored


@pytest.mark.slow
def test_exploration_identifies_the_examination_curve_from_one_ranker(
    index_root, tmp_path, traffic
):
    sessions = 3000
    dataset, explored = _round(index_root, tmp_path, traffic, 0.2, sessions)
    summary = dataset.summary
    # about a fifth of the responses were explored, all of them marked in the log
    assert summary["explored_impressions"] == explored
    assert abs(explored / sessions - 0.2) < 4 * np.sqrt(0.2 * 0.8 / sessions)
    assert summary["propensity_identifiable"] is True
    fitted = dataset.propensities.by_position
    truth = 1.0 / np.arange(1, DEPTH + 1) ** ETA
    assert dataset.propensities.identified.all()
    # Request ids, hence the swaps and the fit, vary by run. Nine runs: positions 2-3 within
    # 12 % of the truth; positions 4-6, which fewer shoppers examine, from 0.53x to 1.48x of
    # it (0.088 for 0.167 at 6; 0.371 for 0.25 at 4), the mean |log(fit / truth)| at most 0.2.
    # The curve must fall, be close where the data are, and keep the truth's shape below: a
    # flat curve (all 1) or 1/k**2 is off by a factor of 6 at position 6.
    assert np.all(np.diff(fitted) <= 1e-12)
    np.testing.assert_allclose(fitted[:3], truth[:3], rtol=0.25)
    log_error = np.abs(np.log(fitted / truth))
    assert log_error.max() < np.log(2.2) and log_error.mean() < 0.3, fitted


@pytest.mark.slow
def test_without_exploration_the_curve_is_flagged_unidentifiable(index_root, tmp_path, traffic):
    dataset, explored = _round(index_root, tmp_path, traffic, 0.0, 600)
    assert explored == 0 and dataset.summary["explored_impressions"] == 0
    assert dataset.summary["propensity_identifiable"] is False
    assert dataset.propensities.to_json()["identifiable"] is False
