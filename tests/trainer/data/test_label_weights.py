"""Per-judgment loss weights in labels files: read, checked, and carried into training pairs."""

from __future__ import annotations

import json

import pytest

from tests.helpers import SEARCH_RECORDS, catalog_of
from trainer.data.labels import read_labels
from trainer.data.rows import DataError
from trainer.training.batches import search_data, split_labels


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_weights_are_read_and_default_to_one(tmp_path):
    path = _write(
        tmp_path / "labels.jsonl",
        [
            {"query_id": "a", "query": "sofa", "item_id": "S1", "grade": 3, "weight": 2.5},
            {"query_id": "a", "query": "sofa", "item_id": "S2", "grade": 3},
            {"query_id": "b", "query": "desk", "item_id": "S4", "grade": 3},
        ],
    )
    labels = read_labels(path)
    assert labels.weight("a", "S1") == 2.5
    assert labels.weight("a", "S2") == 1.0
    assert labels.weight("b", "S4") == 1.0
    data = search_data("x", catalog_of(SEARCH_RECORDS), labels, partial_weight=0.1)
    by_pair = {
        (data.query_ids[q], SEARCH_RECORDS[i]["item_id"]): w
        for q, i, w in zip(data.pair_query, data.pair_item, data.pair_weight, strict=True)
    }
    assert by_pair == {("a", "S1"): 2.5, ("a", "S2"): 1.0, ("b", "S4"): 1.0}
    train, held = split_labels(labels, 0.5, seed=0)
    for part in (train, held):
        for q, judged in part.judgments.items():
            for item_id in judged:
                assert part.weight(q, item_id) == labels.weight(q, item_id)


def test_unweighted_file_has_no_weights(tmp_path):
    row = {"query_id": "a", "query": "q", "item_id": "S1", "grade": 1}
    path = _write(tmp_path / "l.jsonl", [row])
    assert read_labels(path).weights is None


@pytest.mark.parametrize("bad", [0, -1.0, "x", True])
def test_bad_weight_names_the_field(tmp_path, bad):
    path = _write(
        tmp_path / "l.jsonl",
        [{"query_id": "a", "query": "q", "item_id": "S1", "grade": 1, "weight": bad}],
    )
    with pytest.raises(DataError, match="weight"):
        read_labels(path)
