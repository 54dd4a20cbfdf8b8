"""The gate: score champion and challenger on a judged set and on held-back logs, and decide.

Two metrics, both over the whole catalog ranked by exact search with each model's vectors:

* ``ndcg@10`` on a fixed judged set (a labels file that never enters training), as
  ``aisle-eval`` computes it;
* ``ips_dcg@10`` on the held-back slice of the most recent logs: for every engaged item a
  shopper found at logged position p, the DCG gain ``1 / log2(1 + r)`` of the rank r the model
  gives it (0 past rank 10), weighted by ``min(1 / propensity(p), clip)`` and averaged with the
  same weights (a self-normalised inverse-propensity estimate of the DCG@10 of clicked items,
  Joachims et al., "Unbiased Learning-to-Rank with Biased Feedback", WSDM 2017). Clicks low in a
  list, which few shoppers examined, count for more, as they stand in for the unseen ones.

Which metrics decide is the gate policy (``GateThresholds.gate``, ``aisle-learn round
--gate``): ``judged`` (the default), ``ips``, or ``both`` (the behaviour before the policy
existed). The default is ``judged`` because the IPS metric is not fair to a challenger: the
held-back clicks were logged under the champion, so only items the champion showed can have
been clicked. Inverse propensities (identified from exploration traffic, ``aisle-serve
--explore-share``) correct for where in its list a shopper looked, not for the items it never
showed; a challenger that surfaces better, never-shown items is scored as if it had lost them.
Measured in bench_loop preset S: a challenger +0.019 ± 0.008 dev NDCG@10 better lost by −0.057
IPS-DCG@10. The judged set does not depend on what the champion showed. Use ``ips`` where no
judged set exists, and ``both`` with a negative ``min_ips_gain`` to keep IPS as a bounded
regression guard. Metrics outside the policy are still measured and reported, never decide.

The decision (``decide``): with d = challenger - champion for each gated metric both models
have, the challenger is a **tie** when every |d| <= ``tie_tolerance`` (the champion stays),
**loses** when some d is below its threshold (``min_ndcg_gain``, ``min_ips_gain``; negative
values allow a bounded loss), and **wins** (is promoted) otherwise. A gated metric missing for
either model (no held-back logs yet) is skipped and said so; with no gated metric at all the
round is a tie.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer.data.catalog import Catalog
from trainer.data.labels import Labels
from trainer.evaluation.metrics import evaluate_rankings, weighted_dcg
from trainer.evaluation.search import exact_search
from trainer.evaluation.vector_cache import catalog_vectors
from trainer.text import query_text

NDCG = "ndcg@10"
IPS_DCG = "ips_dcg@10"
CUTOFF = 10
# gate policy → the metrics that decide (see the module docstring)
GATES = {"judged": (NDCG,), "ips": (IPS_DCG,), "both": (NDCG, IPS_DCG)}
DEFAULT_GATE = "judged"


@dataclass(frozen=True)
class GateThresholds:
    """When a challenger replaces the champion (see the module docstring).

    Attributes:
        min_ndcg_gain: smallest challenger - champion NDCG@10 on the judged set that passes.
        min_ips_gain: smallest challenger - champion IPS-DCG@10 on held-back logs that passes.
        tie_tolerance: differences at most this large, on every metric, are a tie.
        clip: the largest inverse-propensity weight of one held-back click.
        gate: which metrics decide: ``judged`` (NDCG@10 on the judged set), ``ips``
            (IPS-DCG@10 on held-back logs) or ``both``.
    """

    min_ndcg_gain: float = 0.0
    min_ips_gain: float = 0.0
    tie_tolerance: float = 1e-4
    clip: float = 10.0
    gate: str = DEFAULT_GATE

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        for name in ("min_ndcg_gain", "min_ips_gain", "tie_tolerance", "clip"):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.tie_tolerance < 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {self.tie_tolerance}")
        if self.clip < 1:
            raise ValueError(f"clip must be >= 1 (a weight is 1 / propensity), got {self.clip}")


@dataclass(frozen=True)
class GateDecision:
    """``outcome`` "win", "lose" or "tie"; ``promote`` only on a win; ``deltas`` gated metric →
    challenger - champion; ``reasons`` say why, one line per metric."""

    outcome: str
    promote: bool
    deltas: dict[str, float]
    reasons: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    champion: Mapping[str, float | None],
    challenger: Mapping[str, float | None],
    thresholds: GateThresholds,
) -> GateDecision:
    """Compare two models' metrics (``NDCG``, ``IPS_DCG``; None = not measured)."""
    minimum = {NDCG: thresholds.min_ndcg_gain, IPS_DCG: thresholds.min_ips_gain}
    gated = GATES[thresholds.gate]
    deltas: dict[str, float] = {}
    reasons: list[str] = []
    for name in minimum:
        a, b = champion.get(name), challenger.get(name)
        measured = not (a is None or b is None or math.isnan(a) or math.isnan(b))
        if name not in gated:
            if measured:
                d = float(b) - float(a)
                reasons.append(f"{name}: {d:+.4f}, reported only (--gate {thresholds.gate})")
            continue
        if not measured:
            reasons.append(f"{name}: not measured for both models, skipped")
            continue
        deltas[name] = float(b) - float(a)
    if not deltas or all(abs(d) <= thresholds.tie_tolerance for d in deltas.values()):
        reasons += [f"{n}: {d:+.4f} is within the tie tolerance" for n, d in deltas.items()]
        if not deltas:
            reasons.append("no metric to compare: the champion stays")
        return GateDecision("tie", False, deltas, reasons)
    failed = False
    for name, d in deltas.items():
        ok = d >= minimum[name]
        failed |= not ok
        reasons.append(f"{name}: {d:+.4f} {'>=' if ok else '<'} threshold {minimum[name]:+.4f}")
    outcome = "lose" if failed else "win"
    return GateDecision(outcome, not failed, deltas, reasons)


def ips_dcg(ranks: np.ndarray, propensities: np.ndarray, clip: float, k: int = CUTOFF) -> float:
    """Self-normalised inverse-propensity DCG@k of engaged items (``weighted_dcg`` with weights
    ``min(1 / propensity, clip)``).

    Args:
        ranks: (n,) int64 1-based rank the model gives each engaged item; 0 or > k = a miss.
        propensities: (n,) float64 examination propensity of the position it was logged at.
        clip: largest weight ``1 / propensity``.

    Returns:
        The weighted mean gain in [0, 1]; NaN for n = 0.
    """
    p = np.asarray(propensities, dtype=np.float64)
    if p.shape != np.shape(ranks) or np.any(~np.isfinite(p)) or np.any(p <= 0):
        raise ValueError("propensities must be finite, > 0 and one per rank")
    return weighted_dcg(ranks, np.minimum(1.0 / p, clip), k)


@dataclass(frozen=True)
class HeldBackClick:
    """One engaged item of the held-back logs: the query, the item, the logged 1-based
    position and that position's examination propensity."""

    query: str
    item_id: str
    position: int
    propensity: float


def read_held_back(path: str | Path) -> list[HeldBackClick]:
    """Held-back clicks from JSON lines ``{"query", "item_id", "position", "propensity"}``."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                raw = json.loads(line)
                out.append(
                    HeldBackClick(
                        str(raw["query"]),
                        str(raw["item_id"]),
                        int(raw["position"]),
                        float(raw["propensity"]),
                    )
                )
    return out


def score_model(
    encoder,
    catalog: Catalog,
    judged: Labels | None,
    held_back: Sequence[HeldBackClick],
    *,
    gains: str,
    recall_grade: int,
    clip: float,
    cache_dir: Path | None,
    batch_size: int = 32,
) -> tuple[dict[str, float | None], np.ndarray]:
    """One model's gate metrics, and its (n_items, dim) float32 catalog vectors.

    Args:
        encoder: a loaded ``trainer.encoder.load`` encoder.
        judged: the fixed judged set; None = no NDCG.
        held_back: engaged items of the held-back logs; empty = no IPS-DCG.
        cache_dir: where item vectors are cached by model fingerprint (the build reuses them).
    """
    xb, _ = catalog_vectors(encoder, catalog, batch_size=batch_size, cache_dir=cache_dir)
    item_ids = np.asarray(catalog.item_ids, dtype=object)
    metrics: dict[str, float | None] = {NDCG: None, IPS_DCG: None, "ndcg@10_stderr": None}
    if judged is not None:
        query_ids = list(judged.queries)
        xq = np.asarray(
            encoder.encode_queries([query_text(judged.queries[q]) for q in query_ids]),
            dtype=np.float32,
        )  # (nq, dim)
        _, I = exact_search(xq, xb, CUTOFF)
        rankings = {q: item_ids[I[i]].tolist() for i, q in enumerate(query_ids)}
        report = evaluate_rankings(rankings, judged, gains, recall_grade, (CUTOFF,))
        metrics[NDCG] = report.metrics[NDCG].mean
        metrics["ndcg@10_stderr"] = report.metrics[NDCG].stderr
    known = [c for c in held_back if c.item_id in set(catalog.item_ids)]
    if known:
        queries = sorted({c.query for c in known})
        xq = np.asarray(
            encoder.encode_queries([query_text(q) for q in queries]), dtype=np.float32
        )  # (nq, dim)
        _, I = exact_search(xq, xb, CUTOFF)
        row_of = {q: i for i, q in enumerate(queries)}
        ranks = np.zeros(len(known), dtype=np.int64)
        for j, c in enumerate(known):
            top = item_ids[I[row_of[c.query]]].tolist()
            ranks[j] = top.index(c.item_id) + 1 if c.item_id in top else 0
        metrics[IPS_DCG] = ips_dcg(ranks, np.array([c.propensity for c in known]), clip)
    return metrics, xb
