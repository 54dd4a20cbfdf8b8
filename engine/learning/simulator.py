"""A seeded shopper simulator: labeled queries against a running server, clicks by position and
hidden grade, events reported through the API. For tests and benchmarks, never the serving path.

The shopper model (documented in docs/learning.md):

* **Examination** is position-based: the shopper looks at the hit at 1-based position k with
  probability ``theta_k = 1 / k**eta`` (``eta`` = 1 by default; 0 = every hit is examined),
  independently of the other hits (the position-based model, Richardson et al. 2007; Joachims
  et al. 2017 use the same form for unbiased learning to rank).
* **Attraction** depends only on the item's hidden grade g for the query (unlabeled = 0,
  irrelevant): ``p_click(g) = noise + (1 - noise) * (2**g - 1) / (2**G - 1)`` with G the top
  grade of the labels; an examined hit is clicked with that probability.
* After a click the shopper adds the item to the cart with ``cart * rel(g)`` and buys a carted
  item with ``buy * rel(g)`` (rel(g) = (2**g - 1) / (2**G - 1)), so noise clicks never buy.

Every session draws from its own generator, ``numpy.random.default_rng((seed, session))``, so a
run is a pure function of (seed, the server's answers): the same seed against the same model and
index sends the same events.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from aisle.v1 import events_pb2, events_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc

log = logging.getLogger(__name__)

EVENT_CLICK = "click"
EVENT_ADD_TO_CART = "add_to_cart"
EVENT_PURCHASE = "purchase"
_PROTO_TYPES = {
    EVENT_CLICK: events_pb2.EVENT_TYPE_CLICK,
    EVENT_ADD_TO_CART: events_pb2.EVENT_TYPE_ADD_TO_CART,
    EVENT_PURCHASE: events_pb2.EVENT_TYPE_PURCHASE,
}


@dataclass(frozen=True)
class ShopperModel:
    """The simulated shoppers' behaviour (see the module docstring).

    Attributes:
        eta: examination decay, ``theta_k = 1 / k**eta``; >= 0.
        depth: hits requested and looked at per search (k), 1..100.
        noise: click probability of an examined irrelevant hit, in [0, 1).
        cart: add-to-cart probability after a click on a top-grade hit, in [0, 1].
        buy: purchase probability of a carted top-grade hit, in [0, 1].
    """

    eta: float = 1.0
    depth: int = 10
    noise: float = 0.05
    cart: float = 0.5
    buy: float = 0.6

    def __post_init__(self) -> None:
        if not (isinstance(self.eta, int | float) and self.eta >= 0):
            raise ValueError(f"eta must be a number >= 0, got {self.eta!r}")
        depth_ok = isinstance(self.depth, int) and not isinstance(self.depth, bool)
        if not depth_ok or not 1 <= self.depth <= 100:
            raise ValueError(f"depth must be an integer in 1..100, got {self.depth!r}")
        if not 0 <= self.noise < 1:
            raise ValueError(f"noise must be in [0, 1), got {self.noise!r}")
        for name in ("cart", "buy"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")

    def examination(self, n: int | None = None) -> np.ndarray:
        """(n,) float64 ``theta_k`` for positions 1..n (default ``depth``)."""
        k = np.arange(1, (self.depth if n is None else n) + 1, dtype=np.float64)
        return 1.0 / k**self.eta

    def relevance(self, grades: np.ndarray, top_grade: int) -> np.ndarray:
        """(n,) float64 ``(2**g - 1) / (2**G - 1)`` in [0, 1]; grades above G count as G."""
        g = np.clip(np.asarray(grades, dtype=np.float64), 0, top_grade)
        return (2.0**g - 1) / (2.0**top_grade - 1)


@dataclass(frozen=True)
class SimulatedAction:
    """One thing a shopper did: ``type`` on the hit at 1-based ``position``."""

    position: int
    item_id: str
    type: str


def shop(
    model: ShopperModel,
    item_ids: Sequence[str],
    grades: Mapping[str, int],
    top_grade: int,
    rng: np.random.Generator,
) -> list[SimulatedAction]:
    """What one shopper does with one result list (pure: no server).

    Args:
        item_ids: the hits, best first (at most ``model.depth`` are looked at).
        grades: item_id → hidden grade for this query; missing = 0.
        top_grade: the labels' top grade G (> 0).
        rng: the session's generator; exactly 4 uniforms are drawn per looked-at hit, so the
            draws of a position do not depend on what happened above it.

    Returns:
        Actions in position order (click, then add_to_cart, then purchase of the same hit).
    """
    if top_grade < 1:
        raise ValueError(f"top_grade must be >= 1, got {top_grade}")
    shown = list(item_ids[: model.depth])
    n = len(shown)
    theta = model.examination(n)  # (n,)
    rel = model.relevance(np.array([grades.get(i, 0) for i in shown]), top_grade)  # (n,)
    u = rng.random((n, 4))  # (n, 4): examine, click, cart, buy
    actions = []
    for k in range(n):
        if u[k, 0] >= theta[k]:
            continue  # not examined
        if u[k, 1] >= model.noise + (1 - model.noise) * rel[k]:
            continue  # examined, not attractive
        actions.append(SimulatedAction(k + 1, shown[k], EVENT_CLICK))
        if u[k, 2] < model.cart * rel[k]:
            actions.append(SimulatedAction(k + 1, shown[k], EVENT_ADD_TO_CART))
            if u[k, 3] < model.buy * rel[k]:
                actions.append(SimulatedAction(k + 1, shown[k], EVENT_PURCHASE))
    return actions


@dataclass
class SimulationReport:
    """What a simulation did.

    Attributes:
        sessions: searches issued (one per session).
        attributed: searches whose response carried a request_id (the server logs impressions).
        events: events recorded by the server (clicks + carts + purchases).
        clicks, carts, purchases: counts by type.
        clicks_by_position: (depth,) int64 clicks at positions 1..depth.
        shown_by_position: (depth,) int64 hits shown at positions 1..depth.
    """

    sessions: int = 0
    attributed: int = 0
    events: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    clicks_by_position: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    shown_by_position: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def to_dict(self) -> dict:
        return {
            "sessions": self.sessions,
            "attributed": self.attributed,
            "events": self.events,
            "clicks": self.clicks,
            "carts": self.carts,
            "purchases": self.purchases,
            "clicks_by_position": self.clicks_by_position.tolist(),
            "shown_by_position": self.shown_by_position.tolist(),
        }


@dataclass(frozen=True)
class TrafficConfig:
    """One simulated traffic run.

    Attributes:
        queries: query_id → query text (a labeled train split: never the evaluation queries).
        judgments: query_id → {item_id: grade}, the hidden grades.
        sessions: number of searches (each by one shopper, on one uniformly drawn query).
        shoppers: distinct user ids (``shopper-<i>``), sessions are spread over them.
        seed: the run's seed; session s draws from ``default_rng((seed, s))``.
        first_session: the index of the first session (so consecutive runs with the same seed
            continue the stream instead of repeating it).
        model: the shoppers' behaviour.
        timeout_s: per RPC.
    """

    queries: Mapping[str, str]
    judgments: Mapping[str, Mapping[str, int]]
    sessions: int
    shoppers: int = 100
    seed: int = 0
    first_session: int = 0
    model: ShopperModel = field(default_factory=ShopperModel)
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.queries:
            raise ValueError("queries is empty: the simulator needs labeled train queries")
        missing = [q for q in self.queries if q not in self.judgments]
        if missing:
            raise ValueError(f"queries without judgments: {missing[:5]}")
        if self.sessions < 0 or self.shoppers < 1 or self.first_session < 0:
            raise ValueError(
                f"sessions >= 0, shoppers >= 1 and first_session >= 0 are required, got "
                f"{self.sessions}, {self.shoppers}, {self.first_session}"
            )


def simulate(address: str, config: TrafficConfig) -> SimulationReport:
    """Run ``config.sessions`` shopper sessions against the server at ``address``.

    Each session: draw a query, ``Search`` it (k = depth), ``shop`` the hits, and send its
    actions in one ``Events.Record`` call with the response's request_id and each hit's
    position. Raises grpc.RpcError when the server refuses a call.
    """
    query_ids = sorted(config.queries)
    top_grade = max((g for judged in config.judgments.values() for g in judged.values()), default=1)
    top_grade = max(top_grade, 1)
    depth = config.model.depth
    report = SimulationReport(
        clicks_by_position=np.zeros(depth, dtype=np.int64),
        shown_by_position=np.zeros(depth, dtype=np.int64),
    )
    with grpc.insecure_channel(address) as channel:
        search = retrieval_pb2_grpc.RetrievalStub(channel).Search
        record = events_pb2_grpc.EventsStub(channel).Record
        for s in range(config.first_session, config.first_session + config.sessions):
            rng = np.random.default_rng((config.seed, s))
            query_id = query_ids[int(rng.integers(len(query_ids)))]
            user_id = f"shopper-{int(rng.integers(config.shoppers))}"
            query = config.queries[query_id]
            response = search(
                # no user_id: the ranking stays a function of the model and index alone
                retrieval_pb2.SearchRequest(query=query, k=depth),
                timeout=config.timeout_s,
            )
            hits = [h.item_id for h in response.hits]
            actions = shop(config.model, hits, config.judgments[query_id], top_grade, rng)
            report.sessions += 1
            report.attributed += bool(response.request_id)
            report.shown_by_position[: len(hits)] += 1
            for action in actions:
                if action.type == EVENT_CLICK:
                    report.clicks += 1
                    report.clicks_by_position[action.position - 1] += 1
                elif action.type == EVENT_ADD_TO_CART:
                    report.carts += 1
                else:
                    report.purchases += 1
            if actions:
                events = [
                    events_pb2.Event(
                        user_id=user_id,
                        item_id=a.item_id,
                        type=_PROTO_TYPES[a.type],
                        query=query,
                        request_id=response.request_id,
                        position=a.position,
                    )
                    for a in actions
                ]
                done = record(events_pb2.RecordRequest(events=events), timeout=config.timeout_s)
                report.events += done.recorded
    log.info(
        "simulated %d sessions: %d clicks, %d carts, %d purchases (%d attributed searches)",
        report.sessions,
        report.clicks,
        report.carts,
        report.purchases,
        report.attributed,
    )
    return report
