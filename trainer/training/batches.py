"""The data side of training: token caches, pairs from graded labels, user histories,
duplicate-free random batches, hard-negative mining and the masks that keep relevant items out
of the negatives.

Everything here is NumPy over integer ids (catalog rows, query indices); the trainer turns
batches into tensors. Texts are tokenised once, up front, and batches are padded to their own
longest sequence (dynamic padding).

Graded labels (the documented choice): the file's top grade (ESCI E = 3, Home Depot 2) is a
positive with weight 1. The grade below it (ESCI S, Home Depot 1) is a *partial* match: a
positive with weight ``partial_weight`` (by default its NDCG gain relative to the top grade:
ESCI 0.1, Home Depot 0.5; 0 makes it only "not a negative"), and in every case it is masked out
of the negatives of its query, in-batch or mined. Lower grades (ESCI C and I, Home Depot 0) are
ordinary negatives; grade-0 judgments ("labeled irrelevant", items a production engine ranked
high) can join the mined hard negatives. A judgment's own ``weight`` (``Labels.weight``, e.g. an
inverse propensity weight of learned feedback) multiplies its pair weight; absent, it is 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.data.catalog import Catalog
from trainer.data.labels import Interactions, Labels
from trainer.encoder.user import DEFAULT_HISTORY_DECAY, history_vectors
from trainer.text import item_text, query_text

logger = logging.getLogger(__name__)

_TOKENIZE_CHUNK = 4096

# Stream ids for np.random.default_rng([seed, stream, ...]): every random draw in training is a
# pure function of (seed, stream, counters), so a resumed run draws exactly what a straight one
# would without saving generator states.
STREAM_EPOCH = 1
STREAM_MIX = 2
STREAM_HARD = 3
STREAM_HOLDOUT = 4
STREAM_EVAL_SAMPLE = 5


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator determined by ``seed`` and integer ``keys`` (stream id, counters)."""
    return np.random.default_rng([seed, *keys])


# ---------------------------------------------------------------------------------------------
# Tokens


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Token ids of each text (with [CLS]/[SEP]), truncated to ``max_length``, unpadded.

    Returns:
        One int32 array per text, in input order.
    """
    out: list[np.ndarray] = []
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = list(texts[start : start + _TOKENIZE_CHUNK])
        encoded = tokenizer(
            chunk,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        out.extend(np.asarray(ids, dtype=np.int32) for ids in encoded)
    return out


def pad_ids(seqs: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad sequences to the longest one (dynamic padding).

    Returns:
        (input_ids (b, L) int64, attention_mask (b, L) int64), L = longest sequence.
    """
    length = max((len(s) for s in seqs), default=1)
    ids = np.full((len(seqs), length), pad_id, dtype=np.int64)  # (b, L)
    mask = np.zeros((len(seqs), length), dtype=np.int64)  # (b, L)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask


def length_batches(seqs: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Row batches for inference, longest first, so each batch pads to lengths close to its own."""
    order = np.argsort([-len(s) for s in seqs], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# ---------------------------------------------------------------------------------------------
# Search: pairs from graded labels


@dataclass
class SearchData:
    """One search dataset, resolved to catalog rows and query indices.

    Attributes:
        name: dataset name (for logs).
        catalog: the catalog; item row r ↔ ``catalog.item_ids[r]``.
        query_ids / query_texts: training queries, index qi ↔ query_ids[qi].
        pair_query, pair_item, pair_weight: (n_pairs,) int64 / int64 / float32, one positive
            pair each.
        relevant: per query, sorted int64 rows never used as its negatives (top + partial).
        labeled_negatives: per query, int64 rows judged irrelevant (grade 0).
        log_q: (n_items,) float32 log probability of an item being drawn as a positive.
        top_grade: the file's top grade.
        mined: per query, int64 mined hard-negative rows (empty until mining runs).
    """

    name: str
    catalog: Catalog
    query_ids: list[str]
    query_texts: list[str]
    pair_query: np.ndarray
    pair_item: np.ndarray
    pair_weight: np.ndarray
    relevant: list[np.ndarray]
    labeled_negatives: list[np.ndarray]
    log_q: np.ndarray
    top_grade: int
    mined: list[np.ndarray] = field(default_factory=list)
    item_tokens: list[np.ndarray] = field(default_factory=list)
    query_tokens: list[np.ndarray] = field(default_factory=list)

    task = "search"

    @property
    def n_examples(self) -> int:
        return len(self.pair_query)

    def batch_keys(self) -> tuple[np.ndarray, ...]:
        """Per pair, the ids that must not repeat within a batch: query and item."""
        return self.pair_query, self.pair_item


def log_sampling_probability(rows: np.ndarray, n_items: int) -> np.ndarray:
    """log q_j: the log share of examples whose positive is item j.

    Items that are never a positive get log(1 / (n + 1)) so the array stays finite (they never
    appear as in-batch columns anyway).

    Returns:
        (n_items,) float32.
    """
    counts = np.bincount(rows, minlength=n_items).astype(np.float64)  # (n_items,)
    total = max(len(rows), 1)
    counts[counts == 0] = total / (total + 1)  # finite placeholder: these columns never occur
    return np.log(counts / total).astype(np.float32)


def search_data(
    name: str,
    catalog: Catalog,
    labels: Labels,
    *,
    partial_weight: float,
    top_grade: int | None = None,
) -> SearchData:
    """Pairs, relevance masks and labeled negatives of one labels file (see module docstring).

    Args:
        partial_weight: weight of (top grade - 1) pairs as positives, in [0, 1]; 0 = not a
            positive (still never a negative).
        top_grade: the grade that is a full positive; None = the highest grade in ``labels``.

    Raises:
        ValueError: an item missing from the catalog, or no positive pair at all.
    """
    row_of = {item_id: r for r, item_id in enumerate(catalog.item_ids)}
    if top_grade is None:
        top_grade = max(g for per_query in labels.judgments.values() for g in per_query.values())
    pair_query: list[int] = []
    pair_item: list[int] = []
    pair_weight: list[float] = []
    relevant: list[np.ndarray] = []
    negatives: list[np.ndarray] = []
    query_ids: list[str] = []
    for query_id, judged in labels.judgments.items():
        qi = len(query_ids)
        query_ids.append(query_id)
        rel: list[int] = []
        neg: list[int] = []
        for item_id, grade in judged.items():
            row = row_of.get(item_id)
            if row is None:
                raise ValueError(
                    f"{labels.path}: item {item_id!r} (query_id {query_id!r}) is not in the "
                    f"catalog {catalog.path}"
                )
            if grade >= top_grade - 1:
                rel.append(row)
                weight = 1.0 if grade >= top_grade else partial_weight
                weight *= labels.weight(query_id, item_id)  # 1 unless the row gave a weight
                if weight > 0:
                    pair_query.append(qi)
                    pair_item.append(row)
                    pair_weight.append(weight)
            elif grade == 0:
                neg.append(row)
        relevant.append(np.array(sorted(set(rel)), dtype=np.int64))
        negatives.append(np.array(sorted(set(neg)), dtype=np.int64))
    if not pair_query:
        raise ValueError(
            f"{labels.path}: no positive pairs (no judgment has the top grade {top_grade}); "
            "training needs at least one relevant item per query"
        )
    items = np.asarray(pair_item, dtype=np.int64)
    data = SearchData(
        name=name,
        catalog=catalog,
        query_ids=query_ids,
        query_texts=[query_text(labels.queries[q]) for q in query_ids],
        pair_query=np.asarray(pair_query, dtype=np.int64),
        pair_item=items,
        pair_weight=np.asarray(pair_weight, dtype=np.float32),
        relevant=relevant,
        labeled_negatives=negatives,
        log_q=log_sampling_probability(items, len(catalog)),
        top_grade=top_grade,
        mined=[np.zeros(0, dtype=np.int64) for _ in query_ids],
    )
    logger.info(
        "%s: %d search pairs (%d partial) over %d queries, %d labeled negatives",
        name,
        len(items),
        int(np.sum(data.pair_weight < 1)),
        len(query_ids),
        sum(len(n) for n in negatives),
    )
    return data


def split_labels(labels: Labels, fraction: float, seed: int) -> tuple[Labels, Labels]:
    """Hold a random ``fraction`` of the queries out of ``labels`` (for early stopping).

    Returns:
        (train labels, held-out labels); the held-out part has at least one query.
    """
    query_ids = list(labels.judgments)
    if len(query_ids) < 2:
        raise ValueError(f"{labels.path}: a held-out slice needs at least 2 queries")
    n_out = min(len(query_ids) - 1, max(1, round(fraction * len(query_ids))))
    rng = rng_for(seed, STREAM_HOLDOUT)
    held = {query_ids[i] for i in rng.permutation(len(query_ids))[:n_out]}

    def part(keep: bool) -> Labels:
        ids = [q for q in query_ids if (q in held) != keep]
        return Labels(
            queries={q: labels.queries[q] for q in ids},
            judgments={q: labels.judgments[q] for q in ids},
            path=labels.path + (" (train part)" if keep else " (held-out part)"),
            weights={q: labels.weights[q] for q in ids if q in labels.weights}
            if labels.weights
            else None,
        )

    return part(True), part(False)


# ---------------------------------------------------------------------------------------------
# Recommendation: user histories → next item


@dataclass
class RecommendData:
    """One recommendation dataset: each example is (user, position t), target = item at t,
    history = the user's items before t (the most recent ``history_length``).

    Attributes:
        histories: per user, int64 catalog rows in order.
        example_user, example_pos: (n_examples,) int64.
        log_q: (n_items,) float32 log probability of an item being a target.
        bank: (n_items, dim) float32 item vectors from the item tower (refreshed periodically);
            users are their history's rows pooled with ``history_decay``
            (``trainer.encoder.user``), as the server pools them.
    """

    name: str
    catalog: Catalog
    histories: list[np.ndarray]
    example_user: np.ndarray
    example_pos: np.ndarray
    log_q: np.ndarray
    history_length: int
    history_decay: float = DEFAULT_HISTORY_DECAY
    bank: np.ndarray | None = None
    item_tokens: list[np.ndarray] = field(default_factory=list)

    task = "recommend"

    @property
    def n_examples(self) -> int:
        return len(self.example_user)

    def targets(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) int64 target item rows of examples ``rows``."""
        return np.array(
            [
                self.histories[u][t]
                for u, t in zip(self.example_user[rows], self.example_pos[rows], strict=True)
            ],
            dtype=np.int64,
        )

    def batch_keys(self) -> tuple[np.ndarray, ...]:
        """Per example, the ids that must not repeat within a batch: the target item."""
        return (self.targets(np.arange(self.n_examples)),)


def recommend_data(
    name: str,
    catalog: Catalog,
    interactions: Interactions,
    *,
    history_length: int,
    history_decay: float = DEFAULT_HISTORY_DECAY,
) -> RecommendData:
    """Next-item examples from every position t >= 1 of every user's sequence.

    Raises:
        ValueError: an item missing from the catalog, or no user with two or more items.
    """
    row_of = {item_id: r for r, item_id in enumerate(catalog.item_ids)}
    histories: list[np.ndarray] = []
    users: list[int] = []
    positions: list[int] = []
    unknown: dict[str, None] = {}
    for items in interactions.histories.values():
        rows = [row_of.get(i, -1) for i in items]
        for item_id, row in zip(items, rows, strict=True):
            if row < 0:
                unknown.setdefault(item_id, None)
        u = len(histories)
        histories.append(np.asarray(rows, dtype=np.int64))
        users.extend([u] * max(len(rows) - 1, 0))
        positions.extend(range(1, len(rows)))
    if unknown:
        shown = ", ".join(repr(i) for i in list(unknown)[:5])
        raise ValueError(
            f"{interactions.path}: {len(unknown)} item id(s) are not in the catalog "
            f"{catalog.path}: {shown}"
        )
    if not users:
        raise ValueError(
            f"{interactions.path}: no user has two or more items, so there is no (history, next "
            "item) example to train on"
        )
    data = RecommendData(
        name=name,
        catalog=catalog,
        histories=histories,
        example_user=np.asarray(users, dtype=np.int64),
        example_pos=np.asarray(positions, dtype=np.int64),
        log_q=np.zeros(0, dtype=np.float32),
        history_length=history_length,
        history_decay=history_decay,
    )
    data.log_q = log_sampling_probability(data.batch_keys()[0], len(catalog))
    logger.info("%s: %d next-item examples from %d users", name, data.n_examples, len(histories))
    return data


def split_interactions(
    interactions: Interactions, fraction: float, seed: int
) -> tuple[Interactions, Interactions, Interactions]:
    """Leave-one-out hold-out: for a random ``fraction`` of the users with 2+ items, their last
    item becomes a target.

    Returns:
        (train interactions without those last items, held-out histories, held-out targets).
    """
    eligible = [u for u, items in interactions.histories.items() if len(items) >= 2]
    if not eligible:
        raise ValueError(f"{interactions.path}: no user has 2+ items to hold one out")
    n_out = max(1, round(fraction * len(eligible)))
    rng = rng_for(seed, STREAM_HOLDOUT)
    held = {eligible[i] for i in rng.permutation(len(eligible))[:n_out]}
    train = {u: (items[:-1] if u in held else items) for u, items in interactions.histories.items()}
    path = interactions.path
    return (
        Interactions(histories=train, path=path + " (train part)"),
        Interactions(histories={u: train[u] for u in held}, path=path + " (held-out history)"),
        Interactions(
            histories={u: interactions.histories[u][-1:] for u in held},
            path=path + " (held-out targets)",
        ),
    )


# ---------------------------------------------------------------------------------------------
# Batches


def epoch_batches(
    keys: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of random batches in which no key repeats (no query or item twice).

    A repeated query or item in a batch would be its own negative; masking fixes the loss but
    wastes a slot, so batches are built duplicate-free: examples are taken in a random order
    and each goes into the oldest open batch it does not collide with. Batches left unfilled
    at the end are dropped (the examples come back, reshuffled, next epoch), unless no batch
    fills at all (a dataset smaller than a batch), when they are kept, largest first.

    Args:
        keys: one (n,) int array per kind of key (e.g. query index, item row).
        batch_size: examples per batch.
        rng: draws the order.

    Returns:
        Batches of example indices (int64 arrays).
    """
    n = len(keys[0])
    order = rng.permutation(n)
    full: list[np.ndarray] = []
    open_batches: list[tuple[list[int], list[set[int]]]] = []
    columns = [np.asarray(k).tolist() for k in keys]
    for idx in order.tolist():
        ids = [column[idx] for column in columns]
        for b, (_, seen) in enumerate(open_batches):  # noqa: B007 (b is used after the loop)
            if not any(i in s for i, s in zip(ids, seen, strict=True)):
                break
        else:
            b = len(open_batches)
            open_batches.append(([], [set() for _ in keys]))
        members, seen = open_batches[b]
        members.append(idx)
        for i, s in zip(ids, seen, strict=True):
            s.add(i)
        if len(members) == batch_size:
            full.append(np.asarray(members, dtype=np.int64))
            del open_batches[b]
    if not full:
        rest = sorted((m for m, _ in open_batches), key=len, reverse=True)
        full = [np.asarray(m, dtype=np.int64) for m in rest]
    return full


@dataclass
class Batch:
    """One training batch as arrays (the trainer turns them into tensors).

    Attributes:
        task: "search" or "recommend".
        query_ids / query_mask: (B, Lq) int64 token ids and mask (search); None otherwise.
        user_vectors: (B, dim) float32 (recommend); None otherwise.
        item_ids / item_mask: (C, Li) int64: the B positives, then the extra negatives.
        items: (C,) int64 catalog rows of the columns.
        log_q: (B,) float32 log sampling probability of the positives.
        mask: (B, C) bool, True = not a negative of that row.
        weights: (B,) float32 row weights.
        query_chunks / item_chunks: with gradient caching, the queries and the C item columns
            as length-sorted mini-batches (rows, ids, mask) (``trainer.training.gradcache``).
    """

    task: str
    item_ids: np.ndarray
    item_mask: np.ndarray
    items: np.ndarray
    log_q: np.ndarray
    mask: np.ndarray
    weights: np.ndarray
    query_ids: np.ndarray | None = None
    query_mask: np.ndarray | None = None
    user_vectors: np.ndarray | None = None
    query_chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    item_chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    @property
    def size(self) -> int:
        return len(self.weights)


def relevance_mask(relevant: Sequence[Any], columns: np.ndarray) -> np.ndarray:
    """(B, C) bool: True where column item ``columns[c]`` is in row i's relevant set, except
    the row's own positive (column i), which is the target and not a negative to drop.

    Args:
        relevant: per row, a sorted int64 array of item rows relevant to it.
        columns: (C,) int64 item rows, C >= B; column i is row i's positive.
    """
    mask = np.zeros((len(relevant), len(columns)), dtype=bool)
    for i, rel in enumerate(relevant):
        if len(rel):
            mask[i] = np.isin(columns, rel)
        mask[i, i] = False
    return mask


def search_batch(
    data: SearchData,
    rows: np.ndarray,
    *,
    hard_negatives: int,
    labeled_negatives: bool,
    rng: np.random.Generator,
    pad_id: int,
) -> Batch:
    """The batch of pairs ``rows``: queries, positives, and up to ``hard_negatives`` extra
    negatives per pair drawn from its query's mined (and, if enabled, labeled) negatives."""
    queries = data.pair_query[rows]  # (B,)
    positives = data.pair_item[rows]  # (B,)
    extra: dict[int, None] = {}
    if hard_negatives > 0:
        in_batch = set(positives.tolist())
        for qi in queries.tolist():
            pool = data.mined[qi] if qi < len(data.mined) else np.zeros(0, dtype=np.int64)
            if labeled_negatives and len(data.labeled_negatives[qi]):
                pool = np.union1d(pool, data.labeled_negatives[qi])
            if not len(pool):
                continue
            take = rng.choice(pool, size=min(hard_negatives, len(pool)), replace=False)
            for row in take.tolist():
                if row not in in_batch:
                    extra.setdefault(row, None)
    columns = np.concatenate([positives, np.fromiter(extra, dtype=np.int64, count=len(extra))])
    query_ids, query_mask = pad_ids([data.query_tokens[q] for q in queries.tolist()], pad_id)
    item_ids, item_mask = pad_ids([data.item_tokens[r] for r in columns.tolist()], pad_id)
    return Batch(
        task="search",
        query_ids=query_ids,
        query_mask=query_mask,
        item_ids=item_ids,
        item_mask=item_mask,
        items=columns,
        log_q=data.log_q[positives],
        mask=relevance_mask([data.relevant[q] for q in queries.tolist()], columns),
        weights=data.pair_weight[rows],
    )


def recommend_batch(data: RecommendData, rows: np.ndarray, *, pad_id: int) -> Batch:
    """The batch of examples ``rows``: user vectors from the bank, target items to encode."""
    if data.bank is None:
        raise RuntimeError(f"{data.name}: the item bank must be computed before batching")
    users = data.example_user[rows]
    positions = data.example_pos[rows]
    histories = [
        data.histories[u][max(0, t - data.history_length) : t]
        for u, t in zip(users.tolist(), positions.tolist(), strict=True)
    ]
    targets = data.targets(rows)  # (B,)
    item_ids, item_mask = pad_ids([data.item_tokens[r] for r in targets.tolist()], pad_id)
    return Batch(
        task="recommend",
        # users from the item bank: the user tower's pooling, as the server and evaluation do
        user_vectors=history_vectors(data.bank, histories, data.history_decay),
        item_ids=item_ids,
        item_mask=item_mask,
        items=targets,
        log_q=data.log_q[targets],
        mask=relevance_mask([np.array([t]) for t in targets.tolist()], targets),
        weights=np.ones(len(rows), dtype=np.float32),
    )


# ---------------------------------------------------------------------------------------------
# Hard-negative mining


def mine_hard_negatives(
    xq: np.ndarray,
    xb: np.ndarray,
    relevant: Sequence[np.ndarray],
    window: tuple[int, int],
    *,
    block_size: int = 256,
) -> list[np.ndarray]:
    """Items the current model ranks in ``window`` (0-based ranks [lo, hi)) for each query,
    minus the query's relevant items: near misses that make informative negatives.

    Skipping the top ``lo`` ranks leaves out likely unlabeled positives (false negatives are
    common at the very top of an e-commerce ranking).

    Args:
        xq: (nq, dim) float32 query vectors; xb: (n, dim) float32 item vectors.
        relevant: per query, int64 rows never to mine.
        window: (lo, hi), 0 <= lo < hi.

    Returns:
        Per query, int64 rows in rank order (at most hi - lo).
    """
    lo, hi = window
    if not 0 <= lo < hi:
        raise ValueError(f"mining window must satisfy 0 <= lo < hi, got {window}")
    hi = min(hi, xb.shape[0])
    out: list[np.ndarray] = []
    if lo >= hi:
        return [np.zeros(0, dtype=np.int64) for _ in range(xq.shape[0])]
    for start in range(0, xq.shape[0], block_size):
        scores = xq[start : start + block_size] @ xb.T  # (b, n)
        top = np.argpartition(-scores, hi - 1, axis=1)[:, :hi]  # (b, hi) unordered
        for j in range(scores.shape[0]):
            ranked = top[j][np.lexsort((top[j], -scores[j, top[j]]))][lo:hi]
            keep = ~np.isin(ranked, relevant[start + j])
            out.append(ranked[keep].astype(np.int64))
    return out


def item_texts(catalog: Catalog) -> list[str]:
    """``item_text`` of every catalog row, in row order."""
    return [item_text(record) for record in catalog.records()]
