"""Fold the update log into a new version without re-embedding: ``compact``.

``compact(root)`` opens the live index (CURRENT + replayed log), writes its live items as a new
version with the same model, factory, shard count, vector encoding and search defaults, sets
``applied_seq`` to the last update folded in and publishes it atomically (then keeps the newest
versions, and drops log segments no kept version needs). Rows are renumbered densely: the base's
live rows in order, then the live delta rows in order. The base's companions come along, rebuilt
over the compacted items by the build's own ``write_companions``: the BM25 index (so hybrid stays
the default mode) and the users' recent items (restricted to items still live).

Each shard's FAISS index is the base shard's index emptied (``reset``) and refilled, so trained
parts (IVF centroids, PQ codebooks) are kept and the tuned search effort still fits; an index
that cannot be emptied and refilled is built afresh with
``indexer.build.shard.build_shard_index``. A full build replays the log onto its catalog
instead (``indexer.live.fold``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.build.pipeline import write_companions
from indexer.build.ranker import install_ranker
from indexer.build.shard import build_shard_index
from indexer.lexical.files import LEXICAL_META_FILE
from indexer.live.index import LiveIndex
from indexer.live.view import LiveView
from indexer.ranking.model import RANKER_FILE
from indexer.rerank.vectors import VectorStore
from indexer.storage.faults import fault_point
from indexer.storage.layout import (
    DEFAULT_KEEP_VERSIONS,
    ITEMS_FILE,
    IndexRoot,
    index_file_name,
    rows_file_name,
)
from indexer.storage.manifest import MANIFEST_NAME, Manifest, ShardInfo, file_sha256, save_manifest
from indexer.storage.sharding import shard_of
from indexer.storage.users import USERS_FILE, read_users
from trainer.data.catalog import Catalog
from trainer.data.labels import Interactions

__all__ = ["compact"]

logger = logging.getLogger(__name__)


def compact(
    root: str | Path,
    *,
    keep: int | None = DEFAULT_KEEP_VERSIONS,
    verify: bool = True,
    encoder: Any = None,
) -> Path:
    """Publish CURRENT plus all pending updates as a new version.

    Args:
        root: the index root.
        keep: versions to keep after publishing (None keeps all).
        verify: check CURRENT's checksums before reading it.
        encoder: only needed when the log holds upserts made by another model (see
            ``LiveIndex``); None loads the version's model in that case.

    Returns:
        The new version dir, or CURRENT's when there was nothing to fold in.

    Raises:
        ValueError: nothing is published, another build holds the root, or every item is
            deleted (build from a catalog instead).
    """
    index_root = IndexRoot(Path(root).resolve())
    if index_root.current() is None:
        raise ValueError(f"{index_root.root}: nothing is published yet; build an index first")
    t_start = time.perf_counter()
    with index_root.build_lock():
        live = LiveIndex.open(index_root.root, verify=verify, encoder=encoder)
        try:
            view = live.snapshot()
            if view.pending_updates == 0:
                logger.info("nothing to compact: version %d has no pending updates", live.version)
                return live.path
            # Later appends go to a new segment: this one can go once every kept version has it.
            live.log.rotate()
            n = index_root.next_version()
            staging = index_root.prepare_staging(n)
            try:
                manifest = _write_version(live, view, staging, n)
                build = {**manifest.build, "seconds": round(time.perf_counter() - t_start, 3)}
                manifest = dataclasses.replace(manifest, build=build)
                save_manifest(manifest, staging / MANIFEST_NAME)
                fault_point("after-manifest")
                path = index_root.publish(n, keep=keep)
            except BaseException:
                index_root.discard_staging(n)
                raise
        finally:
            live.close()
    logger.info(
        "compacted version %d + %d update(s) (seq %d..%d) into version %d: %d items",
        live.version,
        view.pending_updates,
        live.manifest.applied_seq + 1,
        view.seq,
        n,
        manifest.n_items,
    )
    return path


def _write_version(live: LiveIndex, view: LiveView, staging: Path, version: int) -> Manifest:
    """Write the live items of ``view`` as version ``version`` into ``staging``."""
    base = live.base.manifest
    rows = np.setdiff1d(np.arange(view.n_rows, dtype=np.int64), view.dead_rows())  # old rows
    if not len(rows):
        raise ValueError(
            f"every item of index version {live.version} is deleted; there is nothing to "
            f"compact (build a new index from a catalog instead)"
        )
    item_ids = view.item_ids[rows]
    shard_ids = shard_of(list(item_ids), base.n_shards)
    kind = getattr(live.base, "vector_kind", "f32")

    # Vectors first (the stage a build calls "after-embed"), then one FAISS index per shard.
    shard_rows, vector_files = [], []
    for s in range(base.n_shards):
        new_rows = np.flatnonzero(shard_ids == s).astype(np.int64)  # ascending new global rows
        np.save(staging / rows_file_name(s), new_rows)
        shard_rows.append(new_rows)
        vector_files.append(_save_vectors(view.vectors(rows[new_rows]), kind, staging, s))
    fault_point("after-embed")

    shards, shard_builds = [], []
    for s, new_rows in enumerate(shard_rows):
        t_shard = time.perf_counter()
        xb = view.vectors(rows[new_rows])  # (n_s, dim) float32; decoded when stored compact
        index, device, how = _refill(live.base.path / base.shards[s].index_file, xb, new_rows)
        if index is None:
            index, device = build_shard_index(xb, new_rows, base.factory, shard=s)
            how = "rebuilt"
        faiss.write_index(index, str(staging / index_file_name(s)))
        shards.append(
            ShardInfo(
                shard=s,
                count=len(new_rows),
                index_file=index_file_name(s),
                vectors_file=vector_files[s],
                rows_file=rows_file_name(s),
            )
        )
        seconds = round(time.perf_counter() - t_shard, 3)
        shard_builds.append({"shard": s, "device": device, "index": how, "seconds": seconds})
    items = view.items.take(pa.array(rows))
    pq.write_table(items, staging / ITEMS_FILE)
    companions = _write_companions(
        live, Catalog(items, str(staging / ITEMS_FILE)), shard_ids, staging
    )
    fault_point("after-shards-written")

    files = {
        p.name: file_sha256(p)
        for p in sorted(staging.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    devices = {b["device"] for b in shard_builds}
    return dataclasses.replace(
        base,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        n_items=len(rows),
        shards=tuple(shards),
        files=files,
        applied_seq=view.seq,
        build={
            "kind": "compact",
            "compacted_from": live.version,
            "updates": {
                "records": view.pending_updates,
                "from_seq": base.applied_seq + 1,
                "to_seq": view.seq,
            },
            "device": devices.pop() if len(devices) == 1 else "mixed",
            "shards": shard_builds,
            "vectors": kind,
            # The catalog the lineage started from; the updates above came on top of it.
            "catalog": base.build.get("catalog"),
            "faiss_version": faiss.__version__,
            **companions,
        },
    )


def _write_companions(
    live: LiveIndex, catalog: Catalog, shard_ids: np.ndarray, staging: Path
) -> dict[str, Any]:
    """The companions the base version has, rebuilt over the compacted items exactly as a full
    build of them would write them (``write_companions``): the BM25 index, and the users'
    recent items restricted to items still live. Without this a reload of the compacted
    version would silently lose hybrid search and personalisation."""
    base = live.base
    users = None
    if (base.path / USERS_FILE).exists():
        source = base.manifest.build.get("users", {}).get("interactions", "")
        users = Interactions(read_users(base.path), source or str(base.path / USERS_FILE))
    info = write_companions(
        staging,
        catalog,
        shard_ids,
        base.manifest.n_shards,
        lexical=(base.path / LEXICAL_META_FILE).exists(),
        interactions=users,
    )
    if (base.path / RANKER_FILE).exists():  # same towers and fields: the ranker still fits
        info["ranker"] = install_ranker(
            staging, base.path / RANKER_FILE, base.manifest.model_fingerprint,
            catalog.table.column_names,
        )  # fmt: skip
    if "users" in info:
        info["users"]["from_version"] = live.version  # carried forward, not read again
        # Events recorded since the base's users were made are still to be replayed on them.
        made = base.manifest.build.get("users", {}).get("as_of", base.manifest.created_at)
        info["users"]["as_of"] = made
    return info


def _save_vectors(xb: np.ndarray, kind: str, staging: Path, shard: int) -> str:
    """Write a shard's vectors in the base's encoding, under the names the build uses;
    returns the vectors file name (``ShardInfo.vectors_file``)."""
    return VectorStore.encode(xb, kind).save(staging, f"shard_{shard:03d}")[0]


def _refill(
    index_path: Path, xb: np.ndarray, ids: np.ndarray
) -> tuple[faiss.Index | None, str, str]:
    """The base shard's index emptied and refilled with ``xb`` under ``ids``; (None, ..) when
    this index type cannot be emptied or refilled (the caller builds it afresh)."""
    try:
        index = faiss.read_index(str(index_path))
        index.reset()  # keeps training (IVF centroids, PQ codebooks); drops vectors and ids
        if len(xb):
            index.add_with_ids(np.ascontiguousarray(xb), np.ascontiguousarray(ids))
    except RuntimeError as e:
        logger.info("%s cannot be refilled (%s); rebuilding it", index_path.name, e)
        return None, "cpu", ""
    return index, "cpu", "refilled"
