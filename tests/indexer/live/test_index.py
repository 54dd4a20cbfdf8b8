"""Tests for the live index: upserts, deletes, attribute updates, replay, snapshots, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from indexer.live.index import LiveIndex
from indexer.live.view import UnknownItemError
from indexer.storage.manifest import ModelMismatchError
from indexer.storage.update_log import UpdateLog
from indexer.version import IndexVersion
from trainer.encoder.load import load_encoder
from trainer.text import item_text


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_search(live: LiveIndex, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over the live rows: score descending, ties by lower row; -1 padding."""
    rows = np.setdiff1d(np.arange(live.n_rows), live.dead_rows())
    scores = xq @ live.vectors(rows).T  # (nq, n_live)
    order = np.lexsort((np.broadcast_to(rows, scores.shape), -scores), axis=-1)[:, :k]
    D = np.take_along_axis(scores, order, axis=1)
    I = rows[order]  # noqa: E741
    pad = k - I.shape[1]
    if pad > 0:
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)  # noqa: E741
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.finfo(np.float32).max)
    return D, I


def state(live: LiveIndex) -> dict[str, dict]:
    """item id -> record of every live item."""
    view = live.snapshot()
    rows = np.setdiff1d(np.arange(view.n_rows), view.dead_rows())
    return {view.item_id(r): view.record(r) for r in rows}


@pytest.fixture()
def live(flat_root_copy):
    index = LiveIndex.open(flat_root_copy)
    yield index
    index.close()


def test_without_updates_it_searches_like_the_version(live, flat_root):
    version = IndexVersion.open(flat_root)
    xq = unit(5, live.dim, 1)
    for k in (1, 10, 250):
        D, I = live.search(xq, k)
        D_ref, I_ref = version.search(xq, k)
        np.testing.assert_array_equal(I, I_ref)
        np.testing.assert_allclose(D, D_ref, rtol=1e-6)
    assert live.n_items == live.n_rows == 200 and live.pending_updates == 0
    assert live.seq == 0 and list(live.item_ids) == list(version.item_ids)


def test_upsert_new_item_is_searchable_at_once(live):
    xb = unit(1, live.dim, 2)
    seq = live.upsert([{"item_id": "NEW", "title": "green kettle", "price": 12}], xb)
    assert seq == 1 and live.seq == 1 and live.pending_updates == 1
    assert live.n_items == 201 and live.n_rows == 201
    row = live.row_of("NEW")
    assert row == 200 and live.item_id(row) == "NEW" and live.item_ids[row] == "NEW"
    assert live.record(row) == {"item_id": "NEW", "title": "green kettle", "price": 12.0}
    np.testing.assert_array_equal(live.vectors([row]), xb)
    D, I = live.search(xb, 3)
    assert I[0, 0] == row and D[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_upsert_replaces_and_tombstones_the_old_row(live):
    old_row = live.row_of("SKU0007")
    xb = unit(1, live.dim, 3)
    live.upsert([{"item_id": "SKU0007", "title": "blue lamp v2"}], xb)
    new_row = live.row_of("SKU0007")
    assert new_row == 200 and live.n_items == 200 and live.n_rows == 201
    assert not live.is_live(old_row) and live.is_live(new_row)
    assert list(live.dead_rows()) == [old_row]
    # The old vector no longer answers, even for its own query.
    D, I = live.search(live.vectors([old_row]), 250)
    assert old_row not in I and list(I[0]).count(new_row) == 1
    assert (I[0] >= 0).sum() == 200
    assert live.record(new_row)["title"] == "blue lamp v2"


def test_delete(live):
    seq, not_found = live.delete(["SKU0003", "nope", "SKU0003"])
    assert seq == 1 and not_found == ["nope"] and live.n_items == 199
    with pytest.raises(UnknownItemError, match="deleted") as info:
        live.row_of("SKU0003")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    D, I = live.search(live.vectors([3]), 200)
    assert 3 not in I and (I[0] >= 0).sum() == 199 and I[0, -1] == -1
    # Nothing to delete: nothing logged, the current seq comes back.
    assert live.delete(["SKU0003", "nope"]) == (1, ["SKU0003", "nope"])
    assert len(live.log.records()) == 1
    with pytest.raises(ValueError, match="list of item ids"):
        live.delete("SKU0004")


def test_attribute_updates_change_columns_without_reembedding(live):
    row = live.row_of("SKU0005")
    before = live.vectors([row])
    live.update_attributes({"SKU0005": {"price": 9.5}, "SKU0006": {"price": None}})
    assert live.record(row)["price"] == 9.5 and "price" not in live.record(6)
    assert live.row_of("SKU0005") == row and live.n_rows == 200  # same row, same vector
    np.testing.assert_array_equal(live.vectors([row]), before)
    prices = live.items.column("price").to_pylist()
    assert prices[row] == 9.5 and prices[6] is None and live.items.num_rows == 200
    columns = live.columns()
    assert columns.n_items == 200 and columns.price[row] == 9.5 and np.isnan(columns.price[6])
    # An attribute change after an upsert lands on the new row.
    live.upsert([{"item_id": "N", "title": "mug", "price": 1.0}], unit(1, live.dim, 4))
    live.update_attributes({"N": {"price": 2.0}})
    assert live.record(live.row_of("N"))["price"] == 2.0
    assert live.items.column("price").to_pylist()[200] == 2.0


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"SKU0001": {"price": -1.0}}, ValueError, "must be >= 0"),
        ({"SKU0001": {"price": "cheap"}}, ValueError, "must be a number"),
        ({"SKU0001": {"colour": "red"}}, ValueError, "unknown column 'colour'"),
        ({"SKU0001": {"title": "x"}}, ValueError, "upsert the item"),
        ({"SKU0001": {"item_id": "x"}}, ValueError, "item_id cannot"),
        ({"GONE": {"price": 1.0}}, UnknownItemError, "no live item 'GONE'"),
        ({"SKU0001": {}}, ValueError, "non-empty"),
    ],
)
def test_bad_attribute_updates(live, fields, error, match):
    with pytest.raises(error, match=match):
        live.update_attributes(fields)
    assert live.log.records() == [] and live.seq == 0


def test_bad_upserts_are_refused_before_logging(live):
    dim = live.dim
    good = {"item_id": "N", "title": "mug"}
    cases = [
        ([{"item_id": "N"}], unit(1, dim, 0), ValueError, "record 1: missing required field"),
        ([good, good], unit(2, dim, 0), ValueError, "duplicate item_id"),
        ([{**good, "price": -3}], unit(1, dim, 0), ValueError, "must be >= 0"),
        ([{**good, "weight": 3}], unit(1, dim, 0), ValueError, "unknown column 'weight'"),
        ([good], unit(2, dim, 0), ValueError, r"\(1, 32\) float array"),
        ([good], np.full((1, dim), np.nan, np.float32), ValueError, "NaN"),
        ([], unit(0, dim, 0), ValueError, "at least one record"),
    ]
    for records, xb, error, match in cases:
        with pytest.raises(error, match=match):
            live.upsert(records, xb)
    with pytest.raises(ModelMismatchError, match="encode items with the model"):
        live.upsert([good], unit(1, dim, 0), fingerprint="another-model")
    assert live.log.records() == [] and live.n_rows == 200


def test_upserted_values_are_typed_like_the_catalog(live):
    # An integer price becomes the column's float; numpy scalars are accepted.
    live.upsert(
        [{"item_id": "N", "title": "mug", "price": np.int64(3), "brand": "Acme"}],
        unit(1, live.dim, 0),
    )
    record = live.record(live.row_of("N"))
    assert record == {"item_id": "N", "title": "mug", "brand": "Acme", "price": 3.0}
    assert isinstance(record["price"], float)


def random_updates(live: LiveIndex, rng: np.random.Generator, n_ops: int) -> None:
    dim = live.dim
    for op in range(n_ops):
        kind = rng.integers(3)
        if kind == 0:
            ids = [f"SKU{int(i):04d}" for i in rng.choice(200, 2, replace=False)]
            ids.append(f"NEW{op}")
            records = [{"item_id": i, "title": f"item {i}", "price": float(op)} for i in ids]
            live.upsert(records, unit(3, dim, 100 + op))
        elif kind == 1:
            live.delete([f"SKU{int(rng.integers(200)):04d}", f"NEW{int(rng.integers(op + 1))}"])
        else:
            item = f"SKU{int(rng.integers(200)):04d}"
            if live.n_items and item in state(live):
                live.update_attributes({item: {"price": float(op)}})


def test_search_matches_brute_force_after_random_updates(live):
    random_updates(live, np.random.default_rng(0), 40)
    xq = unit(8, live.dim, 5)
    for k in (1, 7, 50, 400):
        D, I = live.search(xq, k)
        D_ref, I_ref = reference_search(live, xq, k)
        np.testing.assert_array_equal(I, I_ref)
        np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-6)
    assert live.n_items == len(state(live))
    assert live.pending_updates == live.seq == len(live.log.records())


def test_reopen_replays_to_the_same_state(live, flat_root_copy):
    random_updates(live, np.random.default_rng(1), 30)
    xq = unit(4, live.dim, 6)
    expected = (state(live), live.search(xq, 20), live.seq, live.n_rows)
    again = LiveIndex.open(flat_root_copy)
    assert again.pending_updates == again.seq == live.seq
    assert (state(again), again.seq, again.n_rows) == (expected[0], expected[2], expected[3])
    np.testing.assert_array_equal(again.search(xq, 20)[1], expected[1][1])
    rows = np.arange(live.n_rows)
    np.testing.assert_array_equal(again.vectors(rows), live.vectors(rows))
    # And it keeps appending after the replayed seqs.
    assert again.delete([next(iter(expected[0]))])[0] == live.seq + 1
    again.close()


def test_a_snapshot_does_not_change(live):
    view = live.snapshot()
    xq = unit(3, live.dim, 7)
    D0, I0 = view.search(xq, 30)
    record = view.record(10)
    live.delete(["SKU0010"])
    live.upsert([{"item_id": "SKU0011", "title": "replaced"}], unit(1, live.dim, 8))
    live.update_attributes({"SKU0012": {"price": 1.0}})
    D1, I1 = view.search(xq, 30)
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_array_equal(D0, D1)
    assert view.row_of("SKU0010") == 10 and view.row_of("SKU0011") == 11
    assert view.record(10) == record and view.n_items == 200 and view.n_rows == 200
    assert "price" not in view.record(12) or view.record(12)["price"] != 1.0
    assert len(view.item_ids) == 200 and view.dead_rows().size == 0
    assert live.snapshot().n_rows == 201 and live.record(12)["price"] == 1.0


def test_readers_see_consistent_states_while_a_writer_updates(live):
    """Each snapshot: every live item appears exactly once in a full search, and the number of
    results equals the snapshot's item count, however the writer interleaves."""
    errors: list[str] = []
    stop = threading.Event()
    xq = unit(2, live.dim, 9)

    def read() -> None:
        while not stop.is_set():
            view = live.snapshot()
            _, I = view.search(xq, view.n_rows)
            for q in range(len(xq)):
                rows = I[q][I[q] >= 0]
                ids = [view.item_id(r) for r in rows]
                if len(rows) != view.n_items or len(set(ids)) != len(ids):
                    errors.append(f"seq {view.seq}: {len(rows)} results, {view.n_items} items")
                if any(not view.is_live(r) for r in rows):
                    errors.append(f"seq {view.seq}: a dead row came back")

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        rng = np.random.default_rng(2)
        for op in range(60):
            item = f"SKU{int(rng.integers(200)):04d}"
            if op % 3 == 0:
                live.delete([item])
            else:
                live.upsert([{"item_id": item, "title": f"v{op}"}], unit(1, live.dim, op))
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert errors == []


def test_vector_store_and_columns_cover_every_row(live):
    from indexer.rerank.rerank import rerank

    live.upsert([{"item_id": "N", "title": "mug", "price": 4.0}], unit(1, live.dim, 10))
    store = live.vector_store()
    assert store.n == live.n_rows == 201 and store.kind == "f32"
    np.testing.assert_array_equal(store.gather(np.arange(201)), live.vectors(np.arange(201)))
    live.upsert([{"item_id": "M", "title": "cup"}], unit(1, live.dim, 11))  # appends to it
    assert live.vector_store().n == 202 and store.n == 201
    xq = live.vectors([201])[0]
    D, I, _ = rerank(xq, live.vector_store(), np.array([0, 201, 5]), 2, live.columns())
    assert I[0] == 201 and live.columns().n_items == 202


def test_replayed_upserts_of_another_model_are_reembedded(flat_root_copy, tiny_model_dir):
    records = [{"item_id": "OTHER", "title": "red drill", "price": 5.0}]
    with UpdateLog(flat_root_copy) as log:
        log.append_upsert(records, unit(1, 32, 0), "a-model-since-replaced")
    live = LiveIndex.open(flat_root_copy)  # loads the version's model from the manifest
    encoder = load_encoder(tiny_model_dir)
    expected = encoder.encode_items([item_text(records[0])])
    np.testing.assert_allclose(live.vectors([live.row_of("OTHER")]), expected, atol=1e-5)
    live.close()


def test_open_needs_an_index_root(flat_root, tmp_path):
    import shutil

    alone = Path(shutil.copytree(flat_root / "versions" / "1", tmp_path / "v1"))
    with pytest.raises(ValueError, match="need an index root"):
        LiveIndex.open(alone)
    LiveIndex.open(flat_root / "versions" / "1").close()  # a version dir inside a root is fine


def test_replay_tolerates_records_that_no_longer_fit(flat_root_copy, caplog):
    """A logged update is applied as far as it still fits this version (loudly), never refused."""
    fingerprint = IndexVersion.open(flat_root_copy, verify=False).manifest.model_fingerprint
    with UpdateLog(flat_root_copy) as log:
        records = [{"item_id": "N", "title": "mug", "weight": 3, "price": "n/a"}]
        log.append_upsert(records, unit(1, 32, 0), fingerprint)
        log.append_attributes({"GONE": {"price": 1.0}, "SKU0001": {"color_code": 4}})
    live = LiveIndex.open(flat_root_copy)
    assert live.record(live.row_of("N")) == {"item_id": "N", "title": "mug"}
    assert "weight" in caplog.text and "GONE" in caplog.text and "color_code" in caplog.text
    assert live.seq == 2
    live.close()
