"""Fold the update log into a version: ``compact`` (no re-embedding) and a full build's replay.

``compact(root)`` opens the live index (CURRENT + replayed log), writes its live items as a new
version with the same model, factory, shard count, vector encoding and search defaults, sets
``applied_seq`` to the last update folded in and publishes it atomically (then keeps the newest
versions, and drops log segments no kept version needs). Rows are renumbered densely: the base's
live rows in order, then the live delta rows in order.

Each shard's FAISS index is the base shard's index emptied (``reset``) and refilled, so trained
parts (IVF centroids, PQ codebooks) are kept and the tuned search effort still fits; an index
that cannot be emptied and refilled is built afresh with ``indexer.build.build_shard_index``.

A full build (``indexer.build.build_index``) never silently drops updates its catalog may lack
(those newer than CURRENT, and those newer than the catalog file): ``updates_for_build`` replays
them onto the new catalog (upserts replace or add items, keeping their logged vectors when they
come from the build's model; deletes remove items; attribute changes patch columns) or, when
asked, discards them and says so in the log and the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.build.shard import build_shard_index
from indexer.storage.faults import fault_point
from indexer.storage.layout import DEFAULT_KEEP_VERSIONS, ITEMS_FILE, IndexRoot, index_file_name, rows_file_name
from indexer.live.index import LiveIndex
from indexer.live.view import LiveView
from indexer.live.records import conform_fields, conform_records
from indexer.storage.manifest import MANIFEST_NAME, IndexFormatError, Manifest, ShardInfo, file_sha256, load_manifest, save_manifest
from indexer.storage.sharding import shard_of
from indexer.storage.update_log import UPDATES_DIR, LogRecord, UpdateLog, applied_seqs

__all__ = ["BuildUpdates", "compact", "updates_for_build"]

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
    pq.write_table(view.items.take(pa.array(rows)), staging / ITEMS_FILE)
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
        },
    )


def _save_vectors(xb: np.ndarray, kind: str, staging: Path, shard: int) -> str:
    """Write a shard's vectors in the base's encoding, under the names the build uses;
    returns the vectors file name (``ShardInfo.vectors_file``)."""
    from indexer.rerank.vectors import VectorStore

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


# ---------------------------------------------------------------------------- full builds


@dataclass(frozen=True, eq=False)
class BuildUpdates:
    """What a full build does with the live updates newer than CURRENT.

    Attributes:
        catalog: the catalog to build (``trainer.data.Catalog``), updates applied unless
            discarded.
        applied_seq: the manifest's ``applied_seq`` for the new version.
        summary: for ``manifest.build["updates"]``: what was replayed or discarded.
        kept_rows: (m,) int64 ascending catalog rows whose logged vectors are kept.
        kept_vectors: (m, dim) float32 those vectors.
    """

    catalog: Any
    applied_seq: int
    summary: dict[str, Any] = field(default_factory=dict)
    kept_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kept_vectors: np.ndarray | None = None

    @property
    def changed(self) -> bool:
        """Whether the catalog differs from the one given."""
        return bool(self.summary.get("replayed"))

    def patch(self, start: int, xb: np.ndarray) -> np.ndarray:
        """Rows ``start .. start+len(xb)`` of freshly encoded vectors, with the logged vectors
        of replayed upserts put back in (same model: the client's vector is the truth)."""
        lo, hi = np.searchsorted(self.kept_rows, [start, start + len(xb)])
        if lo == hi or self.kept_vectors is None:
            return xb
        xb = np.array(xb, dtype=np.float32)  # a copy: the encoder's array is not ours to change
        xb[self.kept_rows[lo:hi] - start] = self.kept_vectors[lo:hi]
        return xb


def updates_for_build(
    root: str | Path, catalog: Any, fingerprint: str, *, discard: bool = False
) -> BuildUpdates:
    """Fold the live updates a new catalog may lack into it.

    Replayed: every log record newer than CURRENT (seq > its ``applied_seq``: in no published
    version yet), and every record appended after the catalog file was last modified (already
    folded into a version by ``compact``, but newer than this catalog, which cannot hold it).
    Older folded records are taken to be in the catalog. Records are replayed in seq order.

    Args:
        root: the index root the build publishes into (need not exist).
        catalog: the build's ``trainer.data.Catalog`` (its ``path`` gives the catalog's time).
        fingerprint: the build's model; logged vectors of other models are re-embedded (their
            rows are simply not in ``kept_rows``).
        discard: drop those updates instead (logged as a warning, recorded in the manifest).

    Raises:
        ValueError: updates newer than the catalog were folded and then pruned from the log
            (they cannot be replayed: build from a newer catalog, or discard them); or no item
            would remain.
    """
    from trainer.data.catalog import Catalog

    root = Path(root)
    applied = _current_applied_seq(IndexRoot(root))
    if not (root / UPDATES_DIR).is_dir():
        return BuildUpdates(catalog, applied)
    log = UpdateLog(root)
    catalog_time = _file_time(catalog.path)
    records = log.records()
    last = max([applied] + [r.seq for r in records[-1:]])
    pending = [r for r in records if r.seq > applied or _newer(r.time, catalog_time)]
    truncated = log.truncated()
    if truncated is not None and _newer(truncated[1], catalog_time) and not discard:
        raise ValueError(
            f"catalog {catalog.path} is older than live updates of {root} that were folded into "
            f"a version and then pruned from the update log (up to seq {truncated[0]}, "
            f"{truncated[1]}): a build from it would lose them. Build from a catalog exported "
            f"after that, or pass --discard-updates to drop every update the catalog lacks"
        )
    if not pending:
        return BuildUpdates(catalog, last)
    folded = sum(r.seq <= applied for r in pending)
    span = {
        "records": len(pending),
        "from_seq": pending[0].seq,
        "to_seq": pending[-1].seq,
        "newer_than_catalog": folded,  # already in CURRENT, but after the catalog's time
    }
    if discard:
        logger.warning(
            "discarding %d live update(s) (seq %d..%d) that the catalog may lack, as asked "
            "(--discard-updates): the new version has only the catalog's items",
            len(pending),
            pending[0].seq,
            pending[-1].seq,
        )
        return BuildUpdates(catalog, last, {"discarded": len(pending), **span})

    upserts, deleted, patches = _fold(pending)
    table, counts = _apply_to_table(catalog.table, upserts, deleted, patches)
    if table.num_rows == 0:
        raise ValueError(
            f"no item remains once the {len(pending)} live update(s) of {root} are replayed "
            f"onto {catalog.path}; pass --discard-updates to build from the catalog alone"
        )
    first_new = table.num_rows - len(upserts)
    kept = [
        (first_new + i, vector)
        for i, (_, vector, model) in enumerate(upserts.values())
        if model == fingerprint
    ]
    summary = {
        "replayed": len(pending),
        **span,
        **counts,
        "vectors_kept": len(kept),
        "reembedded": len(upserts) - len(kept),
    }
    logger.info(
        "replaying %d live update(s) (seq %d..%d; %d of them folded into CURRENT but newer "
        "than the catalog) onto the catalog: %s",
        len(pending),
        pending[0].seq,
        pending[-1].seq,
        folded,
        ", ".join(f"{k} {v}" for k, v in counts.items()),
    )
    return BuildUpdates(
        Catalog(table=table, path=catalog.path),
        last,
        summary,
        np.array([row for row, _ in kept], dtype=np.int64),
        np.stack([v for _, v in kept]).astype(np.float32) if kept else None,
    )


def _file_time(path: str | Path) -> datetime | None:
    """Last modification time of a file (UTC), None when it cannot be read."""
    try:
        return datetime.fromtimestamp(Path(path).stat().st_mtime, UTC)
    except (OSError, TypeError, ValueError):
        return None


def _newer(time: str, than: datetime | None) -> bool:
    """Whether an ISO 8601 record time is after ``than`` (False when either is unknown)."""
    if than is None or not time:
        return False
    try:
        return datetime.fromisoformat(time) > than
    except ValueError:
        return False


def _current_applied_seq(root: IndexRoot) -> int:
    current = root.current() if root.root.is_dir() else None
    if current is None:
        return 0
    try:
        return load_manifest(root.version_dir(current) / MANIFEST_NAME).applied_seq
    except IndexFormatError as e:
        # Replaying what a readable version already holds is safer than dropping updates.
        applied = max(applied_seqs(root.root)[0].values(), default=0)
        logger.warning("CURRENT is unreadable (%s); replaying updates after seq %d", e, applied)
        return applied


def _fold(
    records: list[LogRecord],
) -> tuple[dict[str, tuple[dict[str, Any], np.ndarray, str]], set[str], dict[str, dict[str, Any]]]:
    """The net effect of ``records``, in seq order: final upserts (record, vector, model),
    deleted ids, and attribute patches of items not upserted."""
    upserts: dict[str, tuple[dict[str, Any], np.ndarray, str]] = {}
    deleted: set[str] = set()
    patches: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.op == "upsert" and record.vectors is not None:
            for item, vector in zip(record.items, record.vectors, strict=True):
                item_id = item["item_id"]
                upserts.pop(item_id, None)  # re-insert: a re-upserted item goes last
                upserts[item_id] = (dict(item), vector, record.fingerprint)
                deleted.discard(item_id)
                patches.pop(item_id, None)
        elif record.op == "delete":
            for item_id in record.item_ids:
                upserts.pop(item_id, None)
                patches.pop(item_id, None)
                deleted.add(item_id)
        elif record.op == "attributes":
            for item_id, fields in record.attributes.items():
                if item_id in upserts:
                    item = upserts[item_id][0]
                    for name, value in fields.items():
                        if value is None:
                            item.pop(name, None)
                        else:
                            item[name] = value
                elif item_id not in deleted:
                    patches.setdefault(item_id, {}).update(fields)
    return upserts, deleted, patches


def _apply_to_table(
    table: pa.Table,
    upserts: dict[str, tuple[dict[str, Any], np.ndarray, str]],
    deleted: set[str],
    patches: dict[str, dict[str, Any]],
) -> tuple[pa.Table, dict[str, int]]:
    """The catalog table with the folded updates applied: upserted items (replaced ones too)
    appended at the end in upsert order, deleted ones gone, patched columns changed."""
    import pyarrow.compute as pc

    ids = table.column("item_id").to_pylist()
    drop = deleted | upserts.keys()
    keep = np.array([item_id not in drop for item_id in ids], dtype=bool)
    present = set(ids)
    base = table.filter(pa.array(keep))
    kept_ids = [item_id for item_id, k in zip(ids, keep, strict=True) if k]
    row_of = {item_id: r for r, item_id in enumerate(kept_ids) if item_id in patches}
    missing = [item_id for item_id in patches if item_id not in row_of]
    if missing:
        logger.warning(
            "%d attribute update(s) name items the catalog does not have (e.g. %r); skipped",
            len(missing),
            missing[0],
        )
    columns: dict[str, tuple[list[int], list[Any]]] = {}
    for item_id, row in sorted(row_of.items(), key=lambda pair: pair[1]):
        where = f"attribute update of {item_id!r}"
        for name, value in conform_fields(
            patches[item_id], base.schema, where, keep_nulls=True
        ).items():
            rows, values = columns.setdefault(name, ([], []))
            rows.append(row)
            values.append(value)
    for name, (rows, values) in columns.items():
        mask = np.zeros(base.num_rows, dtype=bool)
        mask[rows] = True
        j = base.schema.get_field_index(name)
        column = base.column(j).combine_chunks()
        replaced = pc.replace_with_mask(column, mask, pa.array(values, type=column.type))
        base = base.set_column(j, name, replaced)
    items = conform_records([u[0] for u in upserts.values()], base.schema, "replayed upsert")
    out = pa.concat_tables([base, pa.Table.from_pylist(items, schema=base.schema)])
    counts = {
        "upserted": len(upserts),
        "replaced": sum(item_id in present for item_id in upserts),
        "deleted": sum(item_id in present for item_id in deleted),
        "patched": len(row_of),
    }
    return out, counts
