"""Snapshot isolation of the lexical channel: a search reads BM25 postings of its own snapshot's
moment, never rows upserted after it (issue 20 item 4)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.search.pipeline import search_batch
from engine.search.service import SearchService
from engine.search.snapshot import load_snapshot
from engine.search.types import MODE_LEXICAL, SearchQuery


@pytest.fixture()
def own_root(tmp_path: Path, index_root: Path) -> Path:
    return Path(shutil.copytree(index_root, tmp_path / "index"))


def test_a_search_on_an_older_snapshot_never_sees_newer_lexical_rows(own_root: Path) -> None:
    """Deterministic: a lexical search holding the snapshot from before an upsert must not get
    the upserted rows from BM25 (issue 20 item 4: INTERNAL "rows must be ... in [0, n)")."""
    service = SearchService(load_snapshot(own_root), index_path=own_root, model_dir=None)
    before = service.snapshot
    service.upsert([{"item_id": f"new{i}", "title": "zyzzyva zyzzyva"} for i in range(5)])
    query = SearchQuery(text="zyzzyva", k=5, mode=MODE_LEXICAL)
    old = search_batch(before, service.batcher, service.users, [query])[0]
    new = search_batch(service.snapshot, service.batcher, service.users, [query])[0]
    assert len(old.hits) == 0
    assert len(new.hits) == 5
    service.close()
