"""A round's feedback: the time split, weighted labels with and without propensity weighting,
held-back clicks with propensities from all earlier logs, the queries set apart to fit the
sketch's weight on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from engine.learning.feedback import FeedbackWindow, build_feedback, fit_queries
from tests.engine.learning.test_round import write_logs
from trainer.data.labels import read_labels


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_weighted_labels_and_held_back_clicks(tmp_path, title_catalog):
    events = tmp_path / "events"
    write_logs(events, title_catalog[1], sessions=600)  # an hour ago up to 50 minutes ago
    until = datetime.now(UTC)
    out = {}
    for weighting in (True, False):
        out[weighting] = tmp_path / f"w{weighting}"
        out[weighting].mkdir()
        counts = build_feedback(
            events, title_catalog[0], FeedbackWindow(None, until), out[weighting],
            holdout_fraction=0.25, propensity_weighting=weighting, clip=10.0,
        )  # fmt: skip
        assert counts["impressions"] == 600 and counts["train_positives"] > 0
        assert counts["held_back_clicks"] > 0
    # the logs move each relevant item around, so examination is identified: theta falls
    theta = counts["propensity"]
    assert theta[0] == 1.0 and theta[-1] < 0.5
    ips = {(r["query_id"], r["item_id"]): r for r in _rows(out[True] / "train.jsonl")}
    plain = {(r["query_id"], r["item_id"]): r for r in _rows(out[False] / "train.jsonl")}
    assert ips.keys() == plain.keys()
    positives = [k for k, r in ips.items() if r["grade"] == 2]
    assert positives and all(ips[k]["weight"] >= plain[k]["weight"] - 1e-9 for k in positives)
    assert any(ips[k]["weight"] > plain[k]["weight"] * 1.5 for k in positives)
    assert all("weight" not in r for r in ips.values() if r["grade"] == 0)
    labels = read_labels(out[True] / "train.jsonl")  # a valid labels file for the trainer
    assert labels.weights
    held = _rows(out[True] / "held_back.jsonl")
    assert all(0 < h["propensity"] <= 1 and h["position"] >= 1 for h in held)

    # a later window: propensities still come from all logs before its split
    later = tmp_path / "later"
    later.mkdir()
    since = until - timedelta(minutes=55)
    counts = build_feedback(
        events, title_catalog[0], FeedbackWindow(since, until), later,
        holdout_fraction=0.25, propensity_weighting=True, clip=10.0,
    )  # fmt: skip
    assert counts["impressions"] < 600 < counts["propensity_impressions"] + 150


def test_fit_queries_are_a_stable_share_of_the_texts():
    texts = [f"query {i}" for i in range(2000)]
    chosen = fit_queries(texts, 0.1, salt=0)
    assert chosen.dtype == bool and 140 < chosen.sum() < 260  # ~200
    assert (fit_queries(list(reversed(texts)), 0.1, salt=0)[::-1] == chosen).all()  # per text
    assert (fit_queries(texts, 0.1, salt=1) != chosen).any()  # the salt picks another set
    assert not fit_queries(texts, 0.0, salt=0).any()
    grown = fit_queries(texts, 0.3, salt=0)
    assert (grown | chosen == grown).all()  # a larger share keeps the smaller one's texts


def test_fit_share_sets_queries_apart_with_their_engagement_in_every_log(tmp_path, title_catalog):
    events = tmp_path / "events"
    write_logs(events, title_catalog[1], sessions=600)  # an hour ago up to 50 minutes ago
    until = datetime.now(UTC)
    since = until - timedelta(minutes=55)  # a later window: the first 300 sessions before it
    out = {}
    for name, window, weighting in (
        ("all", FeedbackWindow(None, until), True),
        ("later", FeedbackWindow(since, until), True),
        ("plain", FeedbackWindow(since, until), False),
    ):
        out[name] = tmp_path / name
        out[name].mkdir()
        counts = build_feedback(
            events, title_catalog[0], window, out[name], holdout_fraction=0.25,
            propensity_weighting=weighting, clip=10.0, fit_share=0.3, fit_salt=7,
        )  # fmt: skip
        assert counts["fit_queries"] > 0 and counts["fit_positives"] > 0
        train = {r["query"] for r in _rows(out[name] / "train.jsonl")}
        fit = {r["query"] for r in _rows(out[name] / "fit.jsonl")}
        assert train and fit and not train & fit  # never trained on
        assert fit_queries(sorted(fit), 0.3, salt=7).all()
        assert not fit_queries(sorted(train), 0.3, salt=7).any()
        labels = read_labels(out[name] / "fit.jsonl")  # a labels file the trainer reads
        assert labels.weights
    # the later window's fit set still holds the logs before it (every log before its split,
    # which lies later than the whole log's split)
    fit_rows = {name: _rows(out[name] / "fit.jsonl") for name in out}
    assert len(fit_rows["later"]) >= len(fit_rows["all"])
    (tmp_path / "w").mkdir()
    n_window = build_feedback(
        events, title_catalog[0], FeedbackWindow(since, until), tmp_path / "w",
        holdout_fraction=0.25, propensity_weighting=True, clip=10.0,
    )["train_positives"]  # fmt: skip
    assert sum(r["grade"] == 2 for r in fit_rows["later"]) > 0.3 * n_window
    # with weighting, each engagement × its own position's clipped inverse propensity
    weights = {
        name: {(r["query"], r["item_id"]): r["weight"] for r in rows if r["grade"] == 2}
        for name, rows in fit_rows.items()
    }
    assert weights["later"].keys() == weights["plain"].keys()
    assert all(weights["later"][k] >= weights["plain"][k] - 1e-9 for k in weights["plain"])
    assert any(weights["later"][k] > 1.5 * weights["plain"][k] for k in weights["plain"])
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match=r"fit_share must be in \[0, 1\)"):
        build_feedback(
            events, title_catalog[0], FeedbackWindow(None, until), tmp_path / "bad",
            holdout_fraction=0.25, propensity_weighting=True, clip=10.0, fit_share=1.0,
        )  # fmt: skip


@pytest.mark.parametrize("opt_out", [False, True])
def test_fit_shown_lists_every_item_shown_for_a_fit_query(tmp_path, title_catalog, opt_out):
    """``fit_shown``: the set-apart queries' labels hold every item of the lists shown for them
    before the split (grade 0 where not engaged), so a fit can reorder the logged lists; a
    shopper who opted out of training contributes no list."""
    events = tmp_path / "events"
    write_logs(events, title_catalog[1], sessions=300)
    lines = (events / "impressions.jsonl").read_text().splitlines()
    rows = [{**json.loads(line), "user_id": f"u{n % 2}"} for n, line in enumerate(lines)]
    (events / "impressions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if opt_out:
        (events / "consent.json").write_text(json.dumps({"u1": {"use_for_training": False}}))
    shown: dict[str, set] = {}
    for row in rows[:200]:  # before the split (at 225), the opted-out shopper's excepted
        if not (opt_out and row["user_id"] == "u1"):
            shown.setdefault(row["query"], set()).update(row["items"])
    out = tmp_path / "out"
    out.mkdir()
    counts = build_feedback(
        events, title_catalog[0], FeedbackWindow(None, datetime.now(UTC)), out,
        holdout_fraction=0.25, propensity_weighting=True, clip=10.0, fit_share=0.3, fit_salt=0,
        fit_shown=True,
    )  # fmt: skip
    fit = _rows(out / "fit.jsonl")
    listed: dict[str, set] = {}
    for r in fit:
        listed.setdefault(r["query"], set()).add(r["item_id"])
        assert (r["grade"] == 2) == ("weight" in r)
    assert listed and counts["fit_shown_items"] == len(fit)
    for query, items in listed.items():
        assert shown[query] <= items
        if opt_out:  # nothing from the lists u1 was shown, unless u0 was shown it too
            allowed = set().union(*(r["items"] for r in rows[:225] if r["user_id"] == "u0"
                                    and r["query"] == query))  # fmt: skip
            assert items <= allowed
    assert sum(r["grade"] == 0 for r in fit) > 3 * sum(r["grade"] == 2 for r in fit)
