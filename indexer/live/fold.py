"""Fold the update log into a catalog: what a full build replays (or discards) of live updates.

A full build (``indexer.build.pipeline``) never silently drops updates its catalog may lack
(those newer than CURRENT, and those newer than the catalog file): ``updates_for_build`` replays
them onto the new catalog (upserts replace or add items, keeping their logged vectors when they
come from the build's model; deletes remove items; attribute changes patch columns) or, when
asked, discards them and says so in the log and the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer.live.records import conform_fields, conform_records
from indexer.storage.layout import IndexRoot
from indexer.storage.log_record import LogRecord
from indexer.storage.manifest import MANIFEST_NAME, IndexFormatError, load_manifest
from indexer.storage.update_log import UPDATES_DIR, UpdateLog, applied_seqs
from trainer.data.catalog import Catalog

__all__ = ["BuildUpdates", "KeptVectors", "updates_for_build"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class KeptVectors:
    """The logged vectors of replayed upserts that a build keeps (same model: the client's
    vector is the truth). Small, so a Spark task can carry it.

    Attributes:
        rows: (m,) int64 ascending catalog rows whose logged vectors are kept.
        xb: (m, dim) float32 those vectors; None when m is 0.
    """

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    xb: np.ndarray | None = None

    def patch(self, rows: np.ndarray, xb: np.ndarray) -> np.ndarray:
        """``xb`` (n, dim), the vectors of catalog ``rows`` (n,) int64, with the kept vectors
        put in; a float32 copy when any is (the caller's array is not ours to change)."""
        if self.xb is None or not len(self.rows):
            return xb
        hit = np.isin(rows, self.rows)
        if not hit.any():
            return xb
        xb = np.array(xb, dtype=np.float32)
        xb[hit] = self.xb[np.searchsorted(self.rows, rows[hit])]
        return xb


@dataclass(frozen=True, eq=False)
class BuildUpdates:
    """What a full build does with the live updates newer than CURRENT.

    Attributes:
        catalog: the catalog to build, updates applied unless discarded.
        applied_seq: the manifest's ``applied_seq`` for the new version.
        summary: for ``manifest.build["updates"]``: what was replayed or discarded.
        kept: the logged vectors of replayed upserts to keep.
        source_rows: (n_items,) int64 row in the given catalog of each row of ``catalog``, -1
            for an upserted item (whose old vector, if any, is stale); None when the catalog
            is unchanged.
    """

    catalog: Catalog
    applied_seq: int
    summary: dict[str, Any] = field(default_factory=dict)
    kept: KeptVectors = field(default_factory=KeptVectors)
    source_rows: np.ndarray | None = None

    @property
    def changed(self) -> bool:
        """Whether the catalog differs from the one given."""
        return bool(self.summary.get("replayed"))


def updates_for_build(
    root: str | Path, catalog: Catalog, fingerprint: str, *, discard: bool = False
) -> BuildUpdates:
    """Fold the live updates a new catalog may lack into it.

    Replayed: every log record newer than CURRENT (seq > its ``applied_seq``: in no published
    version yet), and every record appended after the catalog file was last modified (already
    folded into a version by ``compact``, but newer than this catalog, which cannot hold it).
    Older folded records are taken to be in the catalog. Records are replayed in seq order.

    Args:
        root: the index root the build publishes into (need not exist).
        catalog: the build's catalog (its ``path`` gives the catalog's time).
        fingerprint: the build's model; logged vectors of other models are re-embedded (their
            rows are simply not in ``kept``).
        discard: drop those updates instead (logged as a warning, recorded in the manifest).

    Raises:
        ValueError: updates newer than the catalog were folded and then pruned from the log
            (they cannot be replayed: build from a newer catalog, or discard them); or no item
            would remain.
    """
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
    table, kept_rows, counts = _apply_to_table(catalog.table, upserts, deleted, patches)
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
        KeptVectors(
            np.array([row for row, _ in kept], dtype=np.int64),
            np.stack([v for _, v in kept]).astype(np.float32) if kept else None,
        ),
        np.concatenate([kept_rows, np.full(len(upserts), -1, np.int64)]),
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
) -> tuple[pa.Table, np.ndarray, dict[str, int]]:
    """The catalog table with the folded updates applied: upserted items (replaced ones too)
    appended at the end in upsert order, deleted ones gone, patched columns changed; with the
    (n_kept,) int64 rows of ``table`` the kept items come from, in order, and the counts."""
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
    return out, np.flatnonzero(keep).astype(np.int64), counts
