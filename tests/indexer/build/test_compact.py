"""Tests for compaction, full builds over pending updates, pruning and rollback."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from indexer.build.compact import compact
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.cli import main
from indexer.lexical.index import LexicalIndex
from indexer.live.index import LiveIndex
from indexer.storage.layout import IndexRoot
from indexer.storage.log_record import UpdateLogError
from indexer.storage.update_log import UpdateLog
from indexer.storage.users import USERS_FILE, read_users
from indexer.version import IndexVersion
from tests.helpers import live_state, some_updates, unit, version_state, write_catalog
from trainer.encoder.load import load_encoder
from trainer.text import item_text


def test_compact_folds_updates_into_a_new_version(flat_root_copy):
    live = LiveIndex.open(flat_root_copy)
    xb = some_updates(live)
    expected = live_state(live)
    xq = unit(6, live.dim, 1)
    D_live, I_live = live.search(xq, 15)
    ids_live = [[live.item_id(r) for r in row] for row in I_live]
    live.close()

    path = compact(flat_root_copy)
    assert path == flat_root_copy.resolve() / "versions" / "2"
    version = IndexVersion.open(flat_root_copy)  # checksums verified
    m = version.manifest
    assert version.version == 2 and m.applied_seq == 3 and m.n_items == 200
    assert m.factory == "Flat" and m.n_shards == 3 and m.build["kind"] == "compact"
    assert m.build["updates"] == {"records": 3, "from_seq": 1, "to_seq": 3}
    assert {s["index"] for s in m.build["shards"]} == {"refilled"}
    assert version_state(version) == expected
    # Stored vectors are re-used, bit for bit: no re-embedding.
    np.testing.assert_array_equal(version.vectors([version.row_of("NEW")]), xb[:1])
    D, I = version.search(xq, 15)
    assert [[version.item_ids[r] for r in row] for row in I] == ids_live
    np.testing.assert_allclose(D, D_live, rtol=1e-5, atol=1e-6)

    again = LiveIndex.open(flat_root_copy)
    assert again.pending_updates == 0 and again.seq == 3 and live_state(again) == expected
    # Later updates replay on top of the compacted version only.
    again.delete(["NEW"])
    again.close()
    assert LiveIndex.open(flat_root_copy).pending_updates == 1


def test_compact_with_nothing_pending_publishes_nothing(flat_root_copy):
    assert compact(flat_root_copy) == flat_root_copy.resolve() / "versions" / "1"
    assert IndexRoot(flat_root_copy).versions() == [1]


def test_compact_keeps_factory_training_and_vector_encoding(tmp_path, catalog, tiny_model_dir):
    root = tmp_path / "index"
    config = BuildConfig(
        catalog=catalog[0],
        out=root,
        model=tiny_model_dir,
        factory="IVF4,Flat",
        shards=2,
        vectors="f16",
        target_recall=None,
    )
    build_index(config)
    base = IndexVersion.open(root)
    live = LiveIndex(base, UpdateLog(root))
    some_updates(live)
    expected = live_state(live)
    live.close()
    compact(root)
    version = IndexVersion.open(root)
    assert version.manifest.factory == "IVF4,Flat" and version.vector_kind == "f16"
    assert version.manifest.search_defaults == base.manifest.search_defaults
    assert version.manifest.build["vectors"] == "f16"
    assert version_state(version) == expected
    # The same trained IVF lists answer: probing every list is exact over the stored vectors.
    xq = unit(4, version.dim, 2)
    _, I = version.search(xq, 10, params={"nprobe": 4})
    scores = xq @ version.vectors(np.arange(version.n_items)).T
    np.testing.assert_array_equal(I, np.argsort(-scores, axis=1, kind="stable")[:, :10])


def test_compact_refuses_an_empty_result(flat_root_copy):
    live = LiveIndex.open(flat_root_copy)
    live.delete(list(live.item_ids))
    live.close()
    with pytest.raises(ValueError, match="every item .* is deleted"):
        compact(flat_root_copy)
    assert IndexRoot(flat_root_copy).versions() == [1]
    assert not (flat_root_copy / "staging").exists()


def test_prune_and_rollback(flat_root_copy):
    root = IndexRoot(flat_root_copy)
    for i in range(4):  # versions 2..5, each folding one more delete
        with LiveIndex.open(flat_root_copy) as live:
            live.delete([f"SKU{i:04d}"])
        compact(flat_root_copy, keep=None)
    assert root.versions() == [1, 2, 3, 4, 5] and root.current() == 5
    assert root.rollback() == 4 and root.current() == 4
    assert root.rollback(to=2) == 2
    # CURRENT (2) is kept even though it is not among the newest three.
    assert root.prune(3) == [1]
    assert root.versions() == [2, 3, 4, 5] and root.current() == 2
    # Rolled back to version 2, a live index still sees every acknowledged update: it replays
    # the deletes that later versions had folded in.
    live = LiveIndex.open(flat_root_copy)
    assert live.n_items == 196 and live.pending_updates == 3
    live.close()
    with pytest.raises(ValueError, match="not kept"):
        root.rollback(to=1)
    assert root.rollback(to=5) == 5
    assert root.prune(1) == [2, 3, 4]
    assert root.versions() == [5]
    with pytest.raises(ValueError, match="no version older"):
        root.rollback()
    # No kept version needs the folded log records any more: only the active segment is left.
    segments = UpdateLog(flat_root_copy).segments()
    assert len(segments) == 1 and UpdateLog(flat_root_copy).records() == []


def test_publish_prunes_to_three_versions(flat_root_copy):
    root = IndexRoot(flat_root_copy)
    for i in range(4):
        with LiveIndex.open(flat_root_copy) as live:
            live.delete([f"SKU{i:04d}"])
        compact(flat_root_copy)
    assert root.versions() == [3, 4, 5] and root.current() == 5
    assert not list(root.versions_dir.glob(".pruning-*"))


def test_full_build_replays_pending_updates(flat_root_copy, catalog, tiny_model_dir):
    live = LiveIndex.open(flat_root_copy)
    xb = some_updates(live)
    expected = live_state(live)
    live.close()
    path = build_index(BuildConfig(catalog=catalog[0], out=flat_root_copy, model=tiny_model_dir))
    version = IndexVersion.open(path)
    m = version.manifest
    assert m.applied_seq == 3
    updates = m.build["updates"]
    assert updates["replayed"] == 3 and (updates["from_seq"], updates["to_seq"]) == (1, 3)
    assert updates["upserted"] == 2 and updates["replaced"] == 1 and updates["deleted"] == 1
    assert updates["patched"] == 1 and updates["vectors_kept"] == 2
    assert version_state(version) == expected
    # Logged vectors of the same model are kept (they are not what the model would give).
    np.testing.assert_array_equal(version.vectors([version.row_of("NEW")]), xb[:1])
    np.testing.assert_array_equal(version.vectors([version.row_of("SKU0001")]), xb[1:])
    # Nothing is pending any more.
    assert LiveIndex.open(flat_root_copy).pending_updates == 0


def test_full_build_reembeds_upserts_of_another_model(flat_root_copy, catalog, tiny_model_dir):
    record = {"item_id": "NEW", "title": "red drill", "price": 5.0}
    with UpdateLog(flat_root_copy) as log:
        log.append_upsert([record], unit(1, 32, 3), "a-model-since-replaced")
    path = build_index(BuildConfig(catalog=catalog[0], out=flat_root_copy, model=tiny_model_dir))
    version = IndexVersion.open(path)
    assert version.manifest.build["updates"]["reembedded"] == 1
    expected = load_encoder(tiny_model_dir).encode_items([item_text(record)])
    np.testing.assert_allclose(version.vectors([version.row_of("NEW")]), expected, atol=1e-5)


def test_full_build_can_discard_updates(flat_root_copy, catalog, tiny_model_dir, caplog):
    live = LiveIndex.open(flat_root_copy)
    some_updates(live)
    live.close()
    config = BuildConfig(
        catalog=catalog[0], out=flat_root_copy, model=tiny_model_dir, discard_updates=True
    )
    with caplog.at_level(logging.WARNING, logger="indexer.live.fold"):
        path = build_index(config)
    assert "discarding 3 live update(s)" in caplog.text
    version = IndexVersion.open(path)
    assert version.manifest.applied_seq == 3
    assert version.manifest.build["updates"] == {
        "discarded": 3,
        "records": 3,
        "from_seq": 1,
        "to_seq": 3,
        "newer_than_catalog": 0,
    }
    assert "NEW" not in set(version.item_ids) and version.n_items == 200
    assert LiveIndex.open(flat_root_copy).pending_updates == 0


def test_full_build_from_an_older_catalog_replays_folded_updates(
    flat_root_copy, catalog, tiny_model_dir
):
    """Updates compacted into CURRENT are newer than the catalog file: a build replays them."""
    with LiveIndex.open(flat_root_copy) as live:
        some_updates(live)
        expected = live_state(live)
    compact(flat_root_copy)
    path = build_index(BuildConfig(catalog=catalog[0], out=flat_root_copy, model=tiny_model_dir))
    version = IndexVersion.open(path)
    assert version_state(version) == expected
    updates = version.manifest.build["updates"]
    assert updates["replayed"] == 3 and updates["newer_than_catalog"] == 3
    assert version.manifest.applied_seq == 3


def test_full_build_from_a_newer_catalog_trusts_it(flat_root_copy, tmp_path, tiny_model_dir):
    with LiveIndex.open(flat_root_copy) as live:
        some_updates(live)
    compact(flat_root_copy)
    with LiveIndex.open(flat_root_copy) as live:
        live.delete(["SKU0009"])  # not folded yet: replayed whatever the catalog's age
    fresh = tmp_path / "fresh.jsonl"
    write_catalog(fresh)  # exported after the folded updates: it is the truth for them
    path = build_index(BuildConfig(catalog=fresh, out=flat_root_copy, model=tiny_model_dir))
    version = IndexVersion.open(path)
    ids = set(version.item_ids)
    assert "NEW" not in ids and "SKU0002" in ids and "SKU0009" not in ids
    assert version.manifest.build["updates"]["replayed"] == 1
    assert version.manifest.applied_seq == 4


def test_full_build_refuses_when_updates_it_lacks_were_pruned(
    flat_root_copy, catalog, tiny_model_dir
):
    with LiveIndex.open(flat_root_copy) as live:
        some_updates(live)
    compact(flat_root_copy, keep=1)  # version 1 goes, and with it the log records 1..3
    assert UpdateLog(flat_root_copy).records() == []
    assert UpdateLog(flat_root_copy).truncated()[0] == 3
    config = BuildConfig(catalog=catalog[0], out=flat_root_copy, model=tiny_model_dir)
    with pytest.raises(ValueError, match=r"older than live updates .* \(up to seq 3"):
        build_index(config)
    assert IndexRoot(flat_root_copy).versions() == [2]
    path = build_index(dataclasses.replace(config, discard_updates=True))
    assert "NEW" not in set(IndexVersion.open(path).item_ids)


def test_live_index_refuses_a_version_whose_updates_were_pruned(flat_root_copy):
    with LiveIndex.open(flat_root_copy) as live:
        some_updates(live)
    compact(flat_root_copy, keep=1)
    manifest_path = flat_root_copy / "versions" / "2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["applied_seq"] = 1  # as if this version predated updates 2..3
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UpdateLogError, match="no longer has records up to seq 3"):
        LiveIndex.open(flat_root_copy)


def test_cli_compact_rollback_prune(flat_root_copy, capsys):
    with LiveIndex.open(flat_root_copy) as live:
        live.delete(["SKU0000"])
    assert main(["compact", str(flat_root_copy)]) == 0
    assert capsys.readouterr().out == f"{flat_root_copy.resolve() / 'versions' / '2'}\n"
    assert main(["rollback", str(flat_root_copy)]) == 0
    assert capsys.readouterr().out == f"{flat_root_copy / 'versions' / '1'}\n"
    assert (flat_root_copy / "CURRENT").read_text() == "1\n"
    assert main(["rollback", str(flat_root_copy), "--to", "7"]) == 2
    assert "version 7 is not kept" in capsys.readouterr().err
    assert main(["prune", str(flat_root_copy), "--keep", "1"]) == 0  # CURRENT stays
    assert capsys.readouterr().out == "removed []; kept [1, 2] (current: 1)\n"
    assert main(["rollback", str(flat_root_copy), "--to", "2"]) == 0
    assert main(["prune", str(flat_root_copy), "--keep", "1"]) == 0
    assert capsys.readouterr().out.endswith("removed [1]; kept [2] (current: 2)\n")
    manifest = json.loads((flat_root_copy / "versions" / "2" / "manifest.json").read_text())
    assert manifest["applied_seq"] == 1


def test_compact_carries_the_lexical_index_and_users_forward(tmp_path, catalog, tiny_model_dir):
    """A compacted version has the companions a full build of its items would have: the BM25
    index over the compacted items (an upserted item is found by a word of its title) and the
    users' recent items (restricted to items still live)."""
    interactions = tmp_path / "interactions.jsonl"
    rows = [("u1", "SKU0002", 0), ("u1", "SKU0003", 1), ("u2", "SKU0002", 0)]
    interactions.write_text(
        "".join(json.dumps({"user_id": u, "item_id": i, "position": p}) + "\n" for u, i, p in rows)
    )
    root = tmp_path / "index"
    config = BuildConfig(
        catalog=catalog[0], out=root, model=tiny_model_dir, shards=2, interactions=interactions
    )
    build_index(config)
    assert (root / "versions" / "1" / USERS_FILE).exists()
    with LiveIndex.open(root) as live:
        some_updates(live)  # deletes SKU0002, among others
        live.upsert([{"item_id": "ZEP", "title": "silver zeppelin"}], unit(1, live.dim, 5))
    compact(root)

    version_dir = root / "versions" / "2"
    version = IndexVersion.open(root)  # checksums of the companions verified too
    assert version.version == 2
    lexical = LexicalIndex.load(version_dir)
    _, rows_found = lexical.search("zeppelin", 5)
    assert [version.item_ids[r] for r in rows_found if r >= 0] == ["ZEP"]
    _, rows_found = lexical.search("lamp", 200)
    assert "SKU0002" not in {version.item_ids[r] for r in rows_found if r >= 0}  # deleted
    assert read_users(version_dir) == {"u1": ["SKU0003"]}  # u2's only item was deleted
    build = version.manifest.build
    assert build["lexical"]["terms"] == lexical.n_terms and build["users"]["users"] == 1
