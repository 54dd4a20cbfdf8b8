"""The Spark engine of the dataset step gives what the local one gives (local[2])."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyspark")

from indexer.build.spark import spark_session  # noqa: E402
from tests.trainer.feedback.test_dataset import CATALOG, event, impression  # noqa: E402
from trainer.feedback.dataset import FeedbackConfig, build_dataset  # noqa: E402
from trainer.feedback.spark import build_dataset_spark  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark():
    session = spark_session("local[2]", "aisle-test-feedback")
    yield session
    session.stop()


def logs(directory: Path) -> Path:
    """Rotating lists with clicks, carts and purchases, a page 2, orphans, an unknown id, a
    bad line and a torn tail."""
    rng = np.random.default_rng(0)
    impressions, events = [], []
    items = CATALOG[:6]
    for n in range(300):
        shift = n % 6
        shown = items[shift:] + items[:shift]
        offset = 3 if n % 10 == 0 else 0
        query = f"q{n % 4}"
        impressions.append(impression(f"r{n}", shown[:4], query=query, offset=offset, minute=n))
        if n % 9 == 0:  # an explored list (engine.search.explore); the others read as before
            impressions[-1]["explore"] = {"scheme": "swap", "pairs": [[offset + 1, offset + 2]]}
        for i, item in enumerate(shown[:4]):
            if rng.random() < 0.5 / (i + 1):
                kind = ["click", "add_to_cart", "purchase"][rng.integers(3)]
                user = f"u{n % 7}"
                events.append(
                    event(item, kind, rid=f"r{n}", position=offset + i + 1, minute=n, user=user)
                )
    events.append(event("i1", "click", rid="missing", position=1))
    events.append(event("zz", "click", rid="r1", position=1))
    events.append(event("i1", "purchase", user="u1", minute=999))
    directory.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in impressions) + "garbage\n"
    (directory / "impressions.jsonl").write_text(text)
    text = "".join(json.dumps(r) + "\n" for r in events) + '{"user_id": "u'
    (directory / "events.jsonl").write_text(text)
    return directory


def next_pairs(dataset) -> list[tuple[str, str, str]]:
    rows = dataset.next_items.to_pylist()
    return sorted((r["user_id"], r["item_id"], r["next_item_id"]) for r in rows)


def test_spark_matches_local(spark, tmp_path: Path) -> None:
    directory = logs(tmp_path / "events")
    config = FeedbackConfig(clip=5.0)
    local = build_dataset(directory, CATALOG, config)
    remote = build_dataset_spark(directory, CATALOG, config, spark=spark)
    np.testing.assert_allclose(
        remote.propensities.by_position, local.propensities.by_position, rtol=1e-9
    )
    key = ["query", "item_id"]
    a = local.pairs.sort_by([(k, "ascending") for k in key]).to_pylist()
    b = remote.pairs.sort_by([(k, "ascending") for k in key]).to_pylist()
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for name in x:
            if isinstance(x[name], float):
                assert x[name] == pytest.approx(y[name], rel=1e-9), (name, x, y)
            else:
                assert x[name] == y[name], (name, x, y)
    assert next_pairs(remote) == next_pairs(local)
    for name in ("impressions", "events", "events_attributed", "shown_cells", "skipped",
                 "positives", "negatives", "impressions_without_events",
                 "explored_impressions", "propensity_identifiable"):  # fmt: skip
        assert remote.summary[name] == local.summary[name], name
    assert [s["skipped"] for s in remote.summary["logs"]] == [
        s["skipped"] for s in local.summary["logs"]
    ]
    assert local.summary["explored_impressions"] == 34  # n % 9 == 0 for n < 300
    assert local.summary["propensity_identifiable"] is True  # the lists rotate
