"""A round's feedback: the window's logs split by time into training labels and a held-back
slice for the gate, through the dataset builder (``trainer.feedback.dataset``).

The most recent ``holdout_fraction`` of the window's result lists (by the server's time) is held
back: the builder runs once on the older part (training) and once on the recent part, whose
engaged items become the gate's held-back clicks.

Examination propensities are fitted on all the logs before the split, earlier rounds' too: one
window holds the rankings of one model, where an item rarely changes position for a query, so
neither intervention harvesting nor EM can tell examination from relevance there; across
rounds the rankers differ, which is what the fit needs. The held-back clicks take the
propensity of the position they were engaged at from that fit.

Training labels are a labels file (``trainer.data.labels.read_labels``) over the catalog:
one query_id per distinct query text, grade ``FEEDBACK_TOP_GRADE`` (2) for an engaged item and
0 for a skip-above negative, and a ``weight`` on positives: its summed action weight times the
clipped inverse propensity of its engaged position, or with ``propensity_weighting`` off the
summed action weight alone. Negatives carry no weight: they join the labeled negatives of
their query, which training draws from with the round's ``skip_negatives`` (else unused).

With ``fit_share`` > 0 a fixed share of the query texts is set apart to fit the trigram sketch's
weight on (``fit_queries``: a stable hash of the text and ``fit_salt``, the same queries in
every round): they leave the training labels, and ``fit.jsonl`` holds their engagement in every
log before the split, earlier rounds' included (no model of the chain trained on them). Its
positives keep the builder's per-event weights (each engagement × the clipped inverse
propensity of the position it happened at; with ``propensity_weighting`` off, the summed action
weight), exact where one pair was engaged at several positions, as across rounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.io import write_atomic

log = logging.getLogger(__name__)

FEEDBACK_TOP_GRADE = 2
TRAIN_FILE = "train.jsonl"
HELD_BACK_FILE = "held_back.jsonl"
FIT_FILE = "fit.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class FeedbackWindow:
    """Aware UTC datetimes: logs recorded in [since, until); since None = from the start."""

    since: datetime | None
    until: datetime


def build_feedback(
    events_dir: Path,
    catalog: Path,
    window: FeedbackWindow,
    out: Path,
    *,
    holdout_fraction: float,
    propensity_weighting: bool,
    clip: float,
    fit_share: float = 0.0,
    fit_salt: int = 0,
    fit_shown: bool = False,
) -> dict[str, Any]:
    """Write ``out/train.jsonl``, ``out/held_back.jsonl``, ``out/summary.json`` and, with
    ``fit_share`` > 0, ``out/fit.jsonl`` (the module's doc).

    Returns:
        Counts (JSON-ready): impressions, events, train_positives, train_negatives,
        held_back_clicks, the split time and the builder's skip counts; with ``fit_share``,
        fit_queries and fit_positives too (and with ``fit_shown`` fit_shown_items).
    """
    if not 0 <= fit_share < 1:
        raise ValueError(f"fit_share must be in [0, 1), got {fit_share!r}")
    from trainer.data.catalog import read_catalog
    from trainer.feedback.dataset import FeedbackConfig, build_dataset
    from trainer.feedback.logs import read_impressions
    from trainer.feedback.privacy import allowed
    from trainer.privacy.exclusions import training_exclusions

    if window.since is not None and window.since >= window.until:  # rounds back to back
        write_atomic(out / TRAIN_FILE, "")
        write_atomic(out / HELD_BACK_FILE, "")
        if fit_share > 0:
            write_atomic(out / FIT_FILE, "")
        counts = {"impressions": 0, "events": 0, "train_positives": 0, "held_back_clicks": 0}
        write_atomic(out / SUMMARY_FILE, json.dumps({"counts": counts}) + "\n")
        return counts
    known = read_catalog(catalog).item_ids
    impressions, _ = read_impressions(events_dir)
    split = _split_time(impressions, window, holdout_fraction)
    train = build_dataset(
        events_dir, known, FeedbackConfig(clip=clip, since=window.since, until=split)
    )
    # Position bias is fitted on every log before the split, not just this window's: within one
    # window one model ranked, so an item rarely moves and neither harvesting nor EM can tell
    # examination from relevance; across rounds the rankers differ and the same (query, item)
    # lands at other positions, which is what the fit needs.
    history = train
    if window.since is not None:
        history = build_dataset(events_dir, known, FeedbackConfig(clip=clip, until=split))
    propensities = history.propensities
    held = None
    if split < window.until:  # else the window holds no result list: nothing to hold back
        held = build_dataset(
            events_dir, known, FeedbackConfig(clip=clip, since=split, until=window.until)
        )
    train_pairs, fit_counts = train.pairs, {}
    if fit_share > 0:
        keep = fit_queries(train_pairs.column("query").to_pylist(), fit_share, fit_salt)
        train_pairs = train_pairs.filter(~keep)
        fit_pairs = history.pairs.filter(
            fit_queries(history.pairs.column("query").to_pylist(), fit_share, fit_salt)
        )
        fit_texts = set(fit_pairs.column("query").to_pylist())
        shown = {}
        if fit_shown:  # the lists the builder may read: consented, not erased
            exclusions = training_exclusions(events_dir, FeedbackConfig().default_use_for_training)
            consented, _ = allowed(impressions, impressions.column("time"), exclusions)
            shown = _shown(consented, fit_texts, split, set(known))
        n_fit, n_other = _write_labels(
            fit_pairs, out / FIT_FILE, propensities if propensity_weighting else None, clip,
            as_built=True, shown=shown,
        )  # fmt: skip
        fit_counts = {"fit_queries": len(fit_texts), "fit_positives": n_fit}
        if fit_shown:
            fit_counts["fit_shown_items"] = n_fit + n_other
    n_pos, n_neg = _write_labels(
        train_pairs, out / TRAIN_FILE, propensities if propensity_weighting else None, clip
    )
    held_pairs = held.pairs if held is not None else train.pairs.slice(0, 0)
    positives = held_pairs.filter(pc.greater(held_pairs.column("label"), 0))
    positions = positives.column("position").to_numpy()
    propensity = propensities.at(positions) if history.summary["pairs"] else np.ones(len(positions))
    lines = [
        json.dumps(
            {"query": q, "item_id": i, "position": int(p), "propensity": float(w)},
            ensure_ascii=False,
        )
        + "\n"
        for q, i, p, w in zip(
            positives.column("query").to_pylist(),
            positives.column("item_id").to_pylist(),
            positions,
            propensity,
            strict=True,
        )
    ]
    write_atomic(out / HELD_BACK_FILE, "".join(lines))
    held_summary = held.summary if held is not None else {}
    counts = {
        "impressions": train.summary["impressions"] + held_summary.get("impressions", 0),
        "events": train.summary["events"] + held_summary.get("events", 0),
        "events_attributed": train.summary["events_attributed"]
        + held_summary.get("events_attributed", 0),
        "train_positives": n_pos,
        "train_negatives": n_neg,
        "held_back_clicks": len(lines),
        "split": split.isoformat(),
        "propensity": propensities.to_json()["by_position"][:20],
        "propensity_impressions": history.summary["impressions"],
        # False: no exploration and one ranker so far, the curve above is flat for want of
        # evidence (trainer.feedback.propensity, "Identifiability")
        "propensity_identifiable": history.summary.get("propensity_identifiable"),
        "explored_impressions": train.summary.get("explored_impressions", 0)
        + held_summary.get("explored_impressions", 0),
        **fit_counts,
        "skipped": train.summary["skipped"],
    }
    summary = {"train": train.summary, "held_back": held_summary, "counts": counts}
    write_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=1, default=str) + "\n")
    return counts


def fit_queries(queries: list[str], share: float, salt: int) -> np.ndarray:
    """Which of ``queries`` (texts) are set apart to fit the sketch's weight: those whose hash
    with ``salt`` falls below ``share`` of the hash range, so the same texts in every round and
    on every machine (boolean array, one per query)."""

    def unit(q: str) -> float:
        digest = hashlib.blake2b(f"{salt}\0{q}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    return np.fromiter((unit(q) < share for q in queries), dtype=bool, count=len(queries))


def _split_time(impressions, window: FeedbackWindow, fraction: float) -> datetime:
    """The time after which the most recent ``fraction`` of the window's impressions lie."""
    times = impressions.column("time").to_pylist()
    since = window.since
    times = sorted(
        t for t in times if t is not None and (since is None or t >= since) and t < window.until
    )
    if not times:
        return window.until
    cut = min(len(times) - 1, int(round(len(times) * (1 - fraction))))
    return times[cut]


def _shown(impressions, queries: set[str], until: datetime, known: set[str]) -> dict[str, set]:
    """Per text of ``queries``: the known items of every search result list shown for it
    before ``until`` (any page)."""
    surface = pc.fill_null(impressions.column("surface"), "search")
    mask = pc.and_(
        pc.equal(surface, "search"),
        pc.is_in(impressions.column("query"), pa.array(sorted(queries))),
    )
    rows = impressions.filter(mask).select(["query", "time", "items"]).to_pylist()
    shown: dict[str, set] = {}
    for row in rows:
        if row["time"] is not None and row["time"] < until:
            shown.setdefault(row["query"], set()).update(
                i for i in row["items"] or () if i in known
            )
    return shown


def _write_labels(
    pairs, path: Path, propensities, clip: float, *, as_built: bool = False, shown=None
) -> tuple[int, int]:
    """The builder's pairs as a labels file; (positives, negatives) written.

    A positive's weight is its summed action weight (the builder's weight / its ipw) times the
    clipped inverse propensity of its best engaged position under ``propensities`` (None: no
    propensity weighting). Exact when its engagements share one position, as they do within a
    window one model ranked. ``as_built``: the pairs were built with ``propensities`` themselves,
    so a positive keeps the builder's weight (per engagement, at its own position). ``shown``:
    query text → items shown for it; those not among its pairs join it at grade 0 (the whole
    logged list, for a fit that reranks it)."""
    from trainer.feedback.propensity import inverse_propensity

    queries = pairs.column("query").to_pylist()
    items = pairs.column("item_id").to_pylist()
    labels = pairs.column("label").to_numpy()
    weights = pairs.column("weight").to_numpy()
    ipw = pairs.column("ipw").to_numpy()
    position = pairs.column("position").to_numpy()
    if propensities is None:
        new_ipw = np.ones(len(position))
    elif as_built:
        new_ipw = ipw
    else:
        new_ipw = inverse_propensity(propensities.at(position), clip)
    query_ids = {q: f"fq{i}" for i, q in enumerate(sorted(set(queries)))}
    lines = []
    n_pos = n_neg = 0
    rows = zip(queries, items, labels, weights, ipw, new_ipw, strict=True)
    for q, item, label, weight, inverse, new_inverse in rows:
        row: dict[str, Any] = {"query_id": query_ids[q], "query": q, "item_id": item}
        if label > 0:
            row["grade"] = FEEDBACK_TOP_GRADE
            # the builder's weight = sum(action x ipw), so sum(action) = weight / mean ipw
            row["weight"] = float(weight / max(inverse, 1e-12) * new_inverse)
            n_pos += 1
        else:
            row["grade"] = 0
            n_neg += 1
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    judged: dict[str, set] = {}
    for q, item in zip(queries, items, strict=True) if shown else ():
        judged.setdefault(q, set()).add(item)
    for q in sorted(judged):
        for item in sorted(shown.get(q, set()) - judged[q]):
            row = {"query_id": query_ids[q], "query": q, "item_id": item, "grade": 0}
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            n_neg += 1
    write_atomic(path, "".join(lines))
    return n_pos, n_neg
