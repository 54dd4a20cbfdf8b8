"""Impressions + events → training data: attributed engagement per (query, item), skip-above
negatives, inverse-propensity weights, and purchase sequences as next-item pairs.

Public API: ``FeedbackConfig``, ``build_dataset`` (tables in memory), ``write_dataset`` (a
dataset dir, written atomically) and ``read_dataset``. The output directory holds:

``pairs.parquet`` — one row per (query, item) from search result lists that was engaged with
(a positive) or shown above an engaged item and not engaged (a skip-above negative):

    query            the search text as the server logged it
    item_id          the catalog item
    label            graded relevance: the strongest action's weight (FeedbackConfig.weights:
                     click 1, add_to_cart 2, purchase 4 by default); 0 for a negative
    weight           the loss weight. Positive: sum over its engaged impressions of
                     action weight × ipw at that position (the IPS estimate of its gain);
                     negative: the number of times it was skipped
    ipw              positives: weight / sum of action weights (the mean clipped inverse
                     propensity of its engagements); negatives: 1.0
    position         positives: the best (smallest) 1-based position it was engaged at;
                     negatives: the best position it was skipped at
    propensity       examination propensity at ``position`` (relative to position 1)
    impressions      times it was shown for this query (any position, engaged or not)
    clicks, add_to_carts, purchases, views
                     attributed events of each type
    skips            times it was shown above an engaged item of the same list and not engaged

``next_items.parquet`` — consecutive purchases of one shopper (recommendation pairs):
    user_id, item_id (bought first), next_item_id (bought next), time (of the next purchase)

``propensity.json`` — the estimated examination curve (trainer.feedback.propensity).
``summary.json`` — the window, every count, and what was skipped and why.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.feedback.logs import LogStats, read_events, read_impressions
from trainer.feedback.privacy import allowed
from trainer.feedback.propensity import (
    METHODS,
    SHAPES,
    Propensities,
    estimate_propensities,
    inverse_propensity,
)
from trainer.io import fsync_dir
from trainer.privacy.exclusions import training_exclusions

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = {"view": 0.0, "click": 1.0, "add_to_cart": 2.0, "purchase": 4.0}
PAIRS_FILE = "pairs.parquet"
NEXT_ITEMS_FILE = "next_items.parquet"
PROPENSITY_FILE = "propensity.json"
SUMMARY_FILE = "summary.json"

PAIRS_SCHEMA = pa.schema(
    [
        ("query", pa.string()),
        ("item_id", pa.string()),
        ("label", pa.float64()),
        ("weight", pa.float64()),
        ("ipw", pa.float64()),
        ("position", pa.int64()),
        ("propensity", pa.float64()),
        ("impressions", pa.int64()),
        ("clicks", pa.int64()),
        ("add_to_carts", pa.int64()),
        ("purchases", pa.int64()),
        ("views", pa.int64()),
        ("skips", pa.int64()),
    ]
)
NEXT_ITEMS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("next_item_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class FeedbackConfig:
    """How logs become training data.

    weights: action → gain; an action with weight 0 (``view`` by default: a client may report
        an item merely shown in a list as viewed) is recorded but is no engagement.
    clip: inverse-propensity weights are at most this (>= 1).
    propensity: how position bias is estimated: ``harvest`` or ``em``.
    propensity_shape: ``monotone`` (the estimate made non-increasing in position) or ``free``.
    max_position: positions deeper than this share the last propensity.
    since, until: the window, by the server's recorded time (impressions: ``time``; events:
        ``recorded``, or ``time`` in logs older than that field); since inclusive, until
        exclusive, aware datetimes; None: open.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    clip: float = 10.0
    propensity: str = "harvest"  # or "em" (trainer.feedback.propensity)
    propensity_shape: str = "monotone"  # or "free"
    max_position: int = 50
    since: datetime | None = None
    until: datetime | None = None
    # Consent (docs/privacy.md): for shoppers who never chose, may their records train?
    default_use_for_training: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(
                f"weights: unknown action(s) {sorted(unknown)}; known: {list(DEFAULT_WEIGHTS)}"
            )
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights must be >= 0")
        if self.clip < 1:
            raise ValueError(f"clip must be >= 1 (1: no propensity weighting), got {self.clip}")
        if self.propensity not in METHODS:
            raise ValueError(f"propensity must be one of {METHODS}, got {self.propensity!r}")
        if self.propensity_shape not in SHAPES:
            raise ValueError(
                f"propensity_shape must be one of {SHAPES}, got {self.propensity_shape!r}"
            )
        if self.max_position < 1:
            raise ValueError(f"max_position must be >= 1, got {self.max_position}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware (e.g. 2026-12-01T00:00:00Z)")
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")

    def weight(self, action: str) -> float:
        return float({**DEFAULT_WEIGHTS, **self.weights}.get(action, 0.0))


@dataclass(frozen=True)
class FeedbackDataset:
    """The built tables, the fitted propensities, and the summary (JSON-ready)."""

    pairs: pa.Table  # PAIRS_SCHEMA
    next_items: pa.Table  # NEXT_ITEMS_SCHEMA
    propensities: Propensities
    summary: dict[str, Any]


def build_dataset(
    events_dir: str | Path,
    known_items: pa.Array | list[str] | None,
    config: FeedbackConfig | None = None,
) -> FeedbackDataset:
    """Read ``events_dir``'s impressions.jsonl and events.jsonl and build the training data.

    Args:
        events_dir: the server's events dir (``ROOT/events`` for an index root).
        known_items: the catalog's item ids; events and shown items outside it are counted
            and skipped. None: every id is known.
        config: weights, clip, window.
    """
    config = config or FeedbackConfig()
    impressions, impression_stats = read_impressions(events_dir)
    events, event_stats = read_events(events_dir)
    # Shoppers who did not consent to training, and erased records, never reach the tables.
    exclusions = training_exclusions(events_dir, config.default_use_for_training)
    impressions, n = allowed(impressions, impressions.column("time"), exclusions)
    impression_stats.skip("no_training_consent_or_erased", n)
    event_time = pc.coalesce(events.column("recorded"), events.column("time"))
    events, n = allowed(events, event_time, exclusions)
    event_stats.skip("no_training_consent_or_erased", n)
    return build_from_tables(
        impressions, events, known_items, config, stats=(impression_stats, event_stats)
    )


def _window(table: pa.Table, times: pa.ChunkedArray, config: FeedbackConfig) -> pa.Table:
    keep = None
    if config.since is not None:
        keep = pc.greater_equal(times, pa.scalar(config.since, pa.timestamp("us", tz="UTC")))
    if config.until is not None:
        before = pc.less(times, pa.scalar(config.until, pa.timestamp("us", tz="UTC")))
        keep = before if keep is None else pc.and_(keep, before)
    return table if keep is None else table.filter(pc.fill_null(keep, False))


def build_from_tables(
    impressions: pa.Table,
    events: pa.Table,
    known_items: pa.Array | list[str] | None,
    config: FeedbackConfig | None = None,
    *,
    stats: tuple[LogStats, LogStats] | None = None,
) -> FeedbackDataset:
    """``build_dataset`` on tables already read (trainer.feedback.logs schemas)."""
    config = config or FeedbackConfig()
    skipped: dict[str, int] = {}

    def skip(reason: str, n: int) -> None:
        if n:
            skipped[reason] = skipped.get(reason, 0) + int(n)

    impressions = _window(impressions, impressions.column("time"), config)
    event_time = pc.coalesce(events.column("recorded"), events.column("time"))
    events = _window(events, event_time, config)
    known = None if known_items is None else pa.array(known_items, pa.string())

    # -- shown cells: one per (impression, position) -----------------------------------------
    lists = impressions.column("items").combine_chunks()
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    cell_item = pc.list_flatten(lists)
    list_offsets = lists.offsets.to_numpy().astype(np.int64)
    rank = np.arange(len(cell_item), dtype=np.int64) - (list_offsets[parent] - list_offsets[0])
    page_offset = pc.fill_null(impressions.column("offset"), 0).to_numpy().astype(np.int64)
    cell_position = page_offset[parent] + rank + 1  # (cells,) 1-based
    surface = pc.fill_null(impressions.column("surface"), "search")
    is_search = pc.equal(surface, "search").to_numpy(zero_copy_only=False)[parent]
    cell_known = (
        np.ones(len(cell_item), bool)
        if known is None
        else pc.is_in(cell_item, value_set=known).to_numpy(zero_copy_only=False)
    )
    n_cells = len(cell_item)
    request_ids = impressions.column("request_id").combine_chunks()
    cell_request = pc.take(request_ids, pa.array(parent))

    # -- events: known ids, known types, attribution to a cell ---------------------------------
    n_events = events.num_rows
    types = events.column("type").combine_chunks()
    type_known = pc.is_in(types, value_set=pa.array(list(DEFAULT_WEIGHTS))).to_numpy(
        zero_copy_only=False
    )
    skip("unknown_event_type", np.count_nonzero(~type_known))
    events = events.filter(pa.array(type_known))
    if known is not None:
        item_known = pc.is_in(events.column("item_id"), value_set=known)
        skip("unknown_item", pc.sum(pc.cast(pc.invert(item_known), pa.int64())).as_py() or 0)
        events = events.filter(item_known)
    event_row = pa.array(np.arange(events.num_rows, dtype=np.int64))
    rid = pc.fill_null(events.column("request_id"), "")
    attributed = pc.not_equal(rid, "").to_numpy(zero_copy_only=False)
    cells_table = pa.table(
        {
            "request_id": cell_request,
            "item_id": cell_item,
            "cell": pa.array(np.arange(n_cells, dtype=np.int64)),
        }
    )
    probe = pa.table(
        {"request_id": rid, "item_id": events.column("item_id"), "event": event_row}
    ).filter(pa.array(attributed))
    joined = probe.join(cells_table, keys=["request_id", "item_id"], join_type="left outer")
    joined = joined.sort_by("event")
    event_cell = np.full(events.num_rows, -1, np.int64)
    j_event = joined.column("event").to_numpy()
    j_cell = pc.fill_null(joined.column("cell"), -1).to_numpy()
    # An item twice in one list (it should not be): attribute to the first position.
    order = np.lexsort((j_cell, j_event))
    first = np.ones(len(order), bool)
    first[1:] = j_event[order][1:] != j_event[order][:-1]
    event_cell[j_event[order][first]] = j_cell[order][first]
    unattributed = ~attributed
    skip_reasons = {"unattributed_events": int(np.count_nonzero(unattributed))}
    missing = attributed & (event_cell < 0)
    if missing.any():
        has_impression = pc.is_in(rid, value_set=request_ids).to_numpy(zero_copy_only=False)
        skip("event_without_impression", np.count_nonzero(missing & ~has_impression))
        skip("event_item_not_in_impression", np.count_nonzero(missing & has_impression))
    ok = event_cell >= 0
    positions = pc.fill_null(events.column("position"), 0).to_numpy().astype(np.int64)
    shown_at = np.zeros(len(event_cell), np.int64)
    shown_at[ok] = cell_position[event_cell[ok]]
    mismatch = ok & (positions > 0) & (positions != shown_at)
    event_types = events.column("type").to_numpy(zero_copy_only=False)

    # -- per cell: counts by type, strongest action -------------------------------------------
    counts = {}
    for action in DEFAULT_WEIGHTS:
        hit = ok & (event_types == action)
        counts[action] = np.bincount(event_cell[hit], minlength=n_cells).astype(np.int64)
    action = np.zeros(n_cells)
    for name in DEFAULT_WEIGHTS:
        action = np.maximum(action, np.where(counts[name] > 0, config.weight(name), 0.0))
    usable = is_search & cell_known
    skip("shown_unknown_item", np.count_nonzero(~cell_known))
    engaged = usable & (action > 0)
    deepest = np.zeros(impressions.num_rows, np.int64)  # deepest engaged position per list
    np.maximum.at(deepest, parent[engaged], cell_position[engaged])
    skipped_cell = usable & ~engaged & (cell_position < deepest[parent])

    # -- propensities over every usable search cell --------------------------------------------
    query = pc.fill_null(impressions.column("query"), "").combine_chunks()
    cell_query = pc.take(query, pa.array(parent))
    q_codes, q_dict = _codes(cell_query)
    i_codes, i_dict = _codes(cell_item)
    pair_code = q_codes * max(len(i_dict), 1) + i_codes
    pair_ids, pair_of_cell = np.unique(pair_code[usable], return_inverse=True)
    propensities = estimate_propensities(
        pair_of_cell,
        cell_position[usable],
        engaged[usable],
        method=config.propensity,
        max_position=config.max_position,
        shape=config.propensity_shape,
    )

    # -- pairs ---------------------------------------------------------------------------------
    pairs = _pairs(
        config,
        propensities,
        pair_ids,
        pair_of_cell,
        cell_position[usable],
        action[usable],
        engaged[usable],
        skipped_cell[usable],
        {name: c[usable] for name, c in counts.items()},
        q_dict,
        i_dict,
    )
    next_items = _next_items(events, event_time_of(events))

    window = {
        "since": config.since.isoformat() if config.since else None,
        "until": config.until.isoformat() if config.until else None,
    }
    seen_times = impressions.column("time")
    summary = {
        "window": window,
        "data_time": {
            "first": _iso(pc.min(seen_times).as_py()) if impressions.num_rows else None,
            "last": _iso(pc.max(seen_times).as_py()) if impressions.num_rows else None,
        },
        "weights": {name: config.weight(name) for name in DEFAULT_WEIGHTS},
        "clip": config.clip,
        "propensity": config.propensity,
        "propensity_shape": config.propensity_shape,
        # False: one ranker's traffic with no exploration, the curve is flat for want of
        # evidence (trainer.feedback.propensity, "Identifiability")
        "propensity_identifiable": propensities.identifiable,
        "impressions": impressions.num_rows,
        "explored_impressions": _explored(impressions),
        "impressions_by_surface": _value_counts(surface),
        "shown_cells": n_cells,
        "events": n_events,
        "events_attributed": int(np.count_nonzero(ok)),
        "events_position_mismatch": int(np.count_nonzero(mismatch)),
        "impressions_without_events": int(
            impressions.num_rows - len(np.unique(parent[event_cell[ok]]))
        ),
        "engaged_cells": int(np.count_nonzero(engaged)),
        "skipped_cells": int(np.count_nonzero(skipped_cell)),
        "pairs": pairs.num_rows,
        "positives": int(
            pc.sum(pc.cast(pc.greater(pairs.column("label"), 0), pa.int64())).as_py() or 0
        ),
        "negatives": int(
            pc.sum(pc.cast(pc.equal(pairs.column("label"), 0), pa.int64())).as_py() or 0
        ),
        "next_item_pairs": next_items.num_rows,
        "skipped": {**skipped, **skip_reasons},
        "logs": [
            {"path": s.path, "lines": s.lines, "kept": s.kept, "skipped": s.skipped}
            for s in (stats or ())
        ],
    }
    log.info(
        "dataset: %d impressions, %d events (%d attributed) → %d pairs, %d next-item pairs",
        impressions.num_rows,
        n_events,
        summary["events_attributed"],
        pairs.num_rows,
        next_items.num_rows,
    )
    return FeedbackDataset(pairs, next_items, propensities, summary)


def event_time_of(events: pa.Table) -> pa.ChunkedArray:
    """When the server recorded each event (``recorded``; ``time`` where the log predates it)."""
    return pc.coalesce(events.column("recorded"), events.column("time"))


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _value_counts(array: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    out = {}
    for row in pc.value_counts(array).to_pylist():
        out[str(row["values"])] = int(row["counts"])
    return out


def _codes(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(n,) int64 dense codes of string ``values`` and the dictionary they index."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary


def _explored(impressions: pa.Table) -> int:
    """Result lists shown with swapped pairs (an ``explore`` record, engine.search.explore)."""
    if "explore" not in impressions.column_names or not impressions.num_rows:
        return 0
    return int(impressions.num_rows - impressions.column("explore").null_count)


def _pairs(
    config: FeedbackConfig,
    propensities: Propensities,
    pair_ids: np.ndarray,
    pair_of_cell: np.ndarray,
    position: np.ndarray,
    action: np.ndarray,
    engaged: np.ndarray,
    skipped: np.ndarray,
    counts: dict[str, np.ndarray],
    q_dict: pa.Array,
    i_dict: pa.Array,
) -> pa.Table:
    n = len(pair_ids)
    ipw_cell = inverse_propensity(propensities.at(position), config.clip)
    gain = np.bincount(pair_of_cell, weights=np.where(engaged, action, 0.0), minlength=n)
    weighted = np.bincount(
        pair_of_cell, weights=np.where(engaged, action * ipw_cell, 0.0), minlength=n
    )
    label = np.zeros(n)
    np.maximum.at(label, pair_of_cell, np.where(engaged, action, 0.0))
    skips = np.bincount(pair_of_cell, weights=skipped, minlength=n).astype(np.int64)
    impressions = np.bincount(pair_of_cell, minlength=n).astype(np.int64)
    big = np.iinfo(np.int64).max
    best_engaged = np.full(n, big, np.int64)
    np.minimum.at(best_engaged, pair_of_cell[engaged], position[engaged])
    best_skipped = np.full(n, big, np.int64)
    np.minimum.at(best_skipped, pair_of_cell[skipped], position[skipped])
    positive = label > 0
    keep = positive | (skips > 0)
    best = np.where(positive, best_engaged, best_skipped)[keep]
    propensity = propensities.at(best)
    weight = np.where(positive, weighted, skips.astype(np.float64))[keep]
    ipw = np.where(positive[keep], weighted[keep] / np.maximum(gain[keep], 1e-12), 1.0)
    n_items = max(len(i_dict), 1)
    ids = pair_ids[keep]
    table = {
        "query": pc.take(q_dict, pa.array(ids // n_items)),
        "item_id": pc.take(i_dict, pa.array(ids % n_items)),
        "label": label[keep],
        "weight": weight,
        "ipw": ipw,
        "position": best,
        "propensity": propensity,
        "impressions": impressions[keep],
        "clicks": _per_pair(pair_of_cell, counts["click"], n)[keep],
        "add_to_carts": _per_pair(pair_of_cell, counts["add_to_cart"], n)[keep],
        "purchases": _per_pair(pair_of_cell, counts["purchase"], n)[keep],
        "views": _per_pair(pair_of_cell, counts["view"], n)[keep],
        "skips": skips[keep],
    }
    return pa.table(table, schema=PAIRS_SCHEMA)


def _per_pair(pair_of_cell: np.ndarray, per_cell: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(pair_of_cell, weights=per_cell, minlength=n).astype(np.int64)


def _next_items(events: pa.Table, times: pa.ChunkedArray) -> pa.Table:
    """Consecutive purchases of each user, in recorded order; a repeat of the same item is no
    pair."""
    bought = pc.equal(events.column("type"), "purchase")
    table = pa.table(
        {"user_id": events.column("user_id"), "item_id": events.column("item_id"), "time": times}
    ).filter(bought)
    if table.num_rows < 2:
        return NEXT_ITEMS_SCHEMA.empty_table()
    table = table.append_column("row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    table = table.sort_by([("user_id", "ascending"), ("time", "ascending"), ("row", "ascending")])
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    items = table.column("item_id").to_numpy(zero_copy_only=False)
    same_user = users[1:] == users[:-1]
    changed = items[1:] != items[:-1]
    keep = np.flatnonzero(same_user & changed)
    return pa.table(
        {
            "user_id": pa.array(users[keep + 1], pa.string()),
            "item_id": pa.array(items[keep], pa.string()),
            "next_item_id": pa.array(items[keep + 1], pa.string()),
            "time": pc.take(table.column("time"), pa.array(keep + 1)),
        },
        schema=NEXT_ITEMS_SCHEMA,
    )


def write_dataset(dataset: FeedbackDataset, out: str | Path) -> Path:
    """Write the dataset dir ``out`` atomically: every file goes to a temp dir beside it, which
    is fsynced and renamed into place (an existing ``out`` is replaced only once the new one is
    complete; a crash leaves the old one, or at worst a hidden ``.<name>.*`` temp dir)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pq.write_table(dataset.pairs, tmp / PAIRS_FILE)
        pq.write_table(dataset.next_items, tmp / NEXT_ITEMS_FILE)
        (tmp / PROPENSITY_FILE).write_text(json.dumps(dataset.propensities.to_json(), indent=2))
        (tmp / SUMMARY_FILE).write_text(json.dumps(dataset.summary, indent=2, default=str))
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        fsync_dir(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    return out


def read_dataset(path: str | Path) -> tuple[pa.Table, pa.Table, dict[str, Any], dict[str, Any]]:
    """(pairs, next_items, propensity json, summary json) of a dataset dir."""
    path = Path(path)
    return (
        pq.read_table(path / PAIRS_FILE),
        pq.read_table(path / NEXT_ITEMS_FILE),
        json.loads((path / PROPENSITY_FILE).read_text()),
        json.loads((path / SUMMARY_FILE).read_text()),
    )
