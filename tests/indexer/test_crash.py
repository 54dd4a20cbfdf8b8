"""Crash safety: kill a build, a compaction or a log append (exit 137, no cleanup) at each stage,
then check the previous version still serves (checksums verified), no acknowledged update is
lost, and the next build or compaction succeeds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.build.compact import compact
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.live.index import LiveIndex
from indexer.storage.faults import FAULT_ENV, FAULT_EXIT_CODE, STAGES
from indexer.storage.layout import IndexRoot
from indexer.storage.update_log import UpdateLog
from indexer.version import IndexVersion
from tests.helpers import write_catalog

VERSION_STAGES = [s for s in STAGES if not s.startswith("log-")]

_BUILD = """
import sys
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
build_index(BuildConfig(catalog=sys.argv[1], out=sys.argv[2], model=sys.argv[3], shards=2,
                        target_recall=None))
"""
_COMPACT = """
import sys
from indexer.build.compact import compact
compact(sys.argv[1])
"""
_APPEND = """
import os, sys
from indexer.storage.update_log import UpdateLog
log = UpdateLog(sys.argv[1])
log.append_delete(["A"])
log.append_delete(["B"])
os.environ["AISLE_FAULT_AT"] = sys.argv[2]  # only the third append dies
log.append_delete(["C"])
"""


def crash(script: str, stage: str | None, *args: object) -> None:
    """Run ``script`` in a subprocess that dies at ``stage`` (None: the script arms the fault
    itself); check it died there."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if stage is not None:
        env[FAULT_ENV] = stage
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == FAULT_EXIT_CODE, proc.stderr[-2000:]


def stages(fast: set[str]) -> list:
    """Every publish stage; those not in ``fast`` marked slow (a subprocess takes seconds)."""
    return [s if s in fast else pytest.param(s, marks=pytest.mark.slow) for s in VERSION_STAGES]


def live_state(root: Path) -> dict[str, dict]:
    with LiveIndex.open(root) as live:
        view = live.snapshot()
        rows = np.setdiff1d(np.arange(view.n_rows), view.dead_rows())
        return {view.item_id(r): view.record(r) for r in rows}


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """(catalog of 50 items, an index root with version 1 and three pending updates)."""
    tmp = tmp_path_factory.mktemp("crash")
    catalog = tmp / "products.jsonl"
    write_catalog(catalog, 50)
    root = tmp / "index"
    build_index(
        BuildConfig(catalog=catalog, out=root, model=tiny_model_dir, shards=2, target_recall=None)
    )
    with LiveIndex.open(root) as live:
        xb = np.ones((1, live.dim), np.float32) / np.sqrt(live.dim)
        live.upsert([{"item_id": "NEW", "title": "green kettle"}], xb)
        live.delete(["SKU0003"])
        live.update_attributes({"SKU0004": {"price": 2.0}})
    return catalog, root


@pytest.fixture()
def root(small, tmp_path) -> Path:
    return Path(shutil.copytree(small[1], tmp_path / "index"))


# A build subprocess imports torch and loads the model: the whole matrix is slow.
@pytest.mark.parametrize("stage", stages(fast=set()))
def test_build_crash_leaves_previous_version_serving(stage, small, root, tiny_model_dir):
    before = live_state(root)
    crash(_BUILD, stage, small[0], root, tiny_model_dir)
    published = stage == "after-current"
    version = IndexVersion.open(root)  # verify=True: every checksum
    assert version.version == (2 if published else 1)
    assert IndexRoot(root).versions() == ([1] if stage in VERSION_STAGES[:4] else [1, 2])
    # Every acknowledged update is still served: pending on version 1, or folded into 2.
    assert live_state(root) == before
    path = build_index(
        BuildConfig(catalog=small[0], out=root, model=tiny_model_dir, shards=2, target_recall=None)
    )
    assert IndexVersion.open(root).path == path and live_state(root) == before
    assert not (root / "staging").exists()


@pytest.mark.parametrize("stage", stages(fast={"after-rename-before-current"}))
def test_compact_crash_leaves_previous_version_serving(stage, root):
    before = live_state(root)
    crash(_COMPACT, stage, root)
    published = stage == "after-current"
    version = IndexVersion.open(root)
    assert version.version == (2 if published else 1)
    assert version.manifest.applied_seq == (3 if published else 0)
    assert live_state(root) == before
    with LiveIndex.open(root) as live:
        live.delete(["SKU0005"])
    path = compact(root)
    version = IndexVersion.open(root)
    assert version.path == path and version.manifest.applied_seq == 4
    assert "SKU0005" not in set(version.item_ids) and "NEW" in set(version.item_ids)


@pytest.mark.parametrize("stage", ["log-before-fsync", "log-after-fsync"])
def test_log_append_crash_keeps_earlier_records(stage, tmp_path):
    crash(_APPEND, None, tmp_path, stage)
    records = UpdateLog(tmp_path).records()
    assert [r.item_ids for r in records[:2]] == [("A",), ("B",)]
    if stage == "log-after-fsync":
        assert len(records) == 3  # fsynced: durable, even though the call never returned
    # Killed before fsync, the record may or may not be there (the page cache survives a
    # process kill, not a power cut), but if it is, it is whole.
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert records[2:] == [] or records[2].item_ids == ("C",)
    with UpdateLog(tmp_path) as log:
        assert log.append_delete(["D"]) == len(records) + 1
