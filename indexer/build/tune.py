"""Search-effort tuning at build time: the smallest nprobe / efSearch that reaches a target
recall@k against exact search on the same shard.

Indexes that score with compressed codes (PQ, SQ, fast-scan, OPQ, ...) are measured as the
engine serves them: their top ``rescore_depth`` candidates (100, the engine's default depth)
re-scored exactly with the stored vectors, then cut to k. Their own top-k is capped far below
any useful target by the code error, while the re-scored top-k is not. Indexes with float
codes (Flat, IVF-Flat, HNSW-Flat) already score exactly and are measured on their own top-k.

Tuning queries must not be catalog items (an item finds itself at any effort, which flatters
recall): they are encoded real queries (``query_vectors_from_file``) or, without a query file,
sampled item vectors pushed off the data by random noise and re-normalised
(``perturbed_queries``). Real queries are the better choice by far. Measured on the 54,667
Home Depot titles embedded with MiniLM (benchmarks/bench_ann.py repeats the check at its preset
size), real search terms need nprobe 69 (IVF1024) and
efSearch 73 (HNSW32) for recall@10 0.95; perturbed items with noise 0.5 (cosine 0.9 to their
item) asked for 7 and 10, and reached only 0.74-0.76 on the real queries. Noise 2.0 (the
default, cosine ~0.45) asks for nprobe 18 and efSearch 65: right for HNSW, still short for IVF,
whose cells real queries fall between. No isotropic or covariance-shaped noise matched both;
pass ``--tune-queries`` when a query log exists.

Recall is tie-aware: a returned item counts when its exact score reaches the k-th exact score,
so duplicate vectors cannot make the target unreachable.

The search is a doubling walk over the effort values (nprobe 1, 2, 4, ... nlist; efSearch k,
2k, ... ), then a bisection between the last value that missed the target and the first that
reached it. Recall grows (almost) monotonically with effort, which is all bisection needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.version import search_parameters

__all__ = [
    "DEFAULT_NOISE",
    "MAX_EF_SEARCH",
    "TuneConfig",
    "TuneResult",
    "combine_results",
    "effort_range",
    "exact_search",
    "perturbed_queries",
    "float_codes",
    "query_vectors_from_file",
    "rescore",
    "tie_aware_recall",
    "tune_effort",
]

logger = logging.getLogger(__name__)

MAX_EF_SEARCH = 4096
DEFAULT_NOISE = 2.0  # see the module doc: calibrated against real Home Depot queries
_EXACT_CHUNK = 262_144  # rows of xb per exact-search block: bounds the float32 copy of a memmap
_SCORE_TOLERANCE = 1e-5  # float32 rounding between FAISS and NumPy dot products


@dataclass(frozen=True)
class TuneConfig:
    """How to tune.

    Attributes:
        target_recall: recall@k to reach, in (0, 1].
        k: results per query the recall is measured at.
        n_queries: tuning queries (at most; fewer when the catalog or query file is smaller).
        noise: norm of the random offset added to item vectors when they stand in for queries
            (unit vectors: 2.0 leaves a cosine of ~0.45 to the source item; see the module doc
            for how it compares with real queries).
        seed: sampling and noise seed.
        rescore_depth: candidates re-scored exactly for indexes with compressed codes; 0 =
            measure their own top-k.
    """

    target_recall: float = 0.95
    k: int = 10
    n_queries: int = 500
    noise: float = DEFAULT_NOISE
    seed: int = 0
    rescore_depth: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.target_recall, bool) or not 0 < self.target_recall <= 1:
            raise ValueError(
                f"target_recall must be in (0, 1], e.g. 0.95, got {self.target_recall!r}"
            )
        for name in ("k", "n_queries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tuning {name} must be an integer >= 1, got {value!r}")
        if not self.noise >= 0:
            raise ValueError(f"noise must be >= 0, got {self.noise!r}")
        if (
            isinstance(self.rescore_depth, bool)
            or not isinstance(self.rescore_depth, int)
            or self.rescore_depth < 0
        ):
            raise ValueError(f"rescore_depth must be an integer >= 0, got {self.rescore_depth!r}")


@dataclass(frozen=True)
class TuneResult:
    """Outcome of tuning one shard.

    Attributes:
        param: "nprobe", "efSearch", or None (nothing to tune: Flat, SQ, PQ without IVF).
        value: the chosen effort (None when param is None).
        recall: recall@k measured at ``value`` (or at the index's only setting).
        reached: whether ``recall >= target``.
        curve: ((effort, recall, microseconds per query), ...) in the order tried.
        n_queries: tuning queries used.
        rescore_depth: candidates re-scored exactly before the cut to k (0 = none).
    """

    param: str | None
    value: int | None
    recall: float
    reached: bool
    curve: tuple[tuple[int, float, float], ...]
    n_queries: int
    rescore_depth: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "param": self.param,
            "value": self.value,
            "recall": round(self.recall, 4),
            "reached": self.reached,
            "n_queries": self.n_queries,
            "rescore_depth": self.rescore_depth,
            "curve": [
                {"value": v, "recall": round(r, 4), "us_per_query": round(t, 1)}
                for v, r, t in self.curve
            ],
        }


def effort_range(index: faiss.Index, k: int) -> tuple[str, int, int] | None:
    """(param, lowest, highest) effort for ``index``; None if it has no effort knob.

    nprobe runs 1..nlist. efSearch runs k..max(k, min(4096, ntotal)): FAISS searches with
    max(efSearch, k) anyway, and a beam wider than the index visits nothing new.
    """
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", 1, int(ivf.nlist)
    part = faiss.downcast_index(index)  # a second proxy; `index` keeps owning the C++ object
    while isinstance(part, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
        part = faiss.downcast_index(part.index)
    if isinstance(part, faiss.IndexHNSW):
        return "efSearch", k, max(k, min(MAX_EF_SEARCH, int(index.ntotal)))
    return None


def _is_exact(index: faiss.Index) -> bool:
    part = faiss.downcast_index(index)
    while isinstance(part, faiss.IndexIDMap | faiss.IndexIDMap2):
        part = faiss.downcast_index(part.index)
    return isinstance(part, faiss.IndexFlat)


def float_codes(index: faiss.Index) -> bool:
    """Whether ``index`` scores candidates with the float vectors themselves (Flat, IVF-Flat,
    HNSW-Flat): then its top-k among its candidates is already the exact one."""
    part = faiss.downcast_index(index)
    while isinstance(part, faiss.IndexIDMap | faiss.IndexIDMap2):
        part = faiss.downcast_index(part.index)
    if isinstance(part, faiss.IndexHNSW):
        part = faiss.downcast_index(part.storage)
    return isinstance(part, faiss.IndexFlat | faiss.IndexIVFFlat)


def exact_search(
    xq: np.ndarray, xb: np.ndarray, k: int, *, block_rows: int = _EXACT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, over ``block_rows`` rows of xb at a time.

    Args:
        xq: (nq, dim) float32 queries.
        xb: (n, dim) float32 vectors (may be a memmap; read in blocks).
        k: results per query.

    Returns:
        D: (nq, min(k, n)) float32 scores, descending; I: (nq, min(k, n)) int64 rows of xb.
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    k = min(k, len(xb))
    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    for start in range(0, len(xb), block_rows):
        block = np.ascontiguousarray(xb[start : start + block_rows], dtype=np.float32)
        D, I = faiss.knn(xq, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(D, np.where(I >= 0, I + start, -1))
    heap.finalize()
    return heap.D, heap.I


def tie_aware_recall(
    xq: np.ndarray, xb: np.ndarray, I: np.ndarray, D_ref: np.ndarray, *, k: int | None = None
) -> float:
    """Mean recall@k of results ``I`` given the exact top-k scores ``D_ref``.

    A returned row counts when its exact score is at least the k-th exact score (so among
    tied items any may be returned); -1 never counts. Equals the usual |I ∩ I_ref| / k when
    there are no ties.

    Args:
        xq: (nq, dim) float32 queries.
        xb: (n, dim) float32 vectors.
        I: (nq, >= k) int rows of xb returned by the approximate search, -1 = none.
        D_ref: (nq, k_ref) exact scores, descending; k_ref = min(k, n).
        k: cut-off; default ``D_ref.shape[1]``.
    """
    k_ref = D_ref.shape[1] if k is None else min(k, D_ref.shape[1])
    if k_ref == 0 or len(xq) == 0:
        return 1.0
    I = np.asarray(I)[:, :k_ref]
    valid = I >= 0
    gathered = np.asarray(xb[np.where(valid, I, 0).reshape(-1)], dtype=np.float32)
    scores = np.einsum("qd,qkd->qk", xq, gathered.reshape(*I.shape, -1))  # (nq, k)
    threshold = D_ref[:, k_ref - 1 : k_ref] - _SCORE_TOLERANCE  # (nq, 1)
    hits = valid & (scores >= threshold)
    return float(hits.sum(axis=1).mean() / k_ref)


def perturbed_queries(
    xb: np.ndarray, n: int, *, noise: float = DEFAULT_NOISE, seed: int = 0
) -> np.ndarray:
    """``n`` stand-in queries: sampled rows of ``xb`` plus a random offset of norm ~``noise``.

    Args:
        xb: (N, dim) float32 item vectors (may be a memmap).
        n: queries wanted; at most N are made (rows sampled without replacement).

    Returns:
        (min(n, N), dim) float32, unit length.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(xb), min(n, len(xb)), replace=False))
    xq = np.asarray(xb[rows], dtype=np.float32)  # (n, dim)
    dim = xq.shape[1]
    xq = xq + (noise / np.sqrt(dim)) * rng.standard_normal(xq.shape).astype(np.float32)
    norms = np.linalg.norm(xq, axis=1, keepdims=True)
    return (xq / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def query_vectors_from_file(
    encoder: Any, path: str | Path, n: int, *, seed: int = 0, batch_size: int = 64
) -> np.ndarray:
    """Encode up to ``n`` queries (a fixed-seed sample) of a queries or labels file.

    Args:
        encoder: a ``trainer.encoder.load.Encoder``.
        path: ``queries_<split>.jsonl`` or ``labels_<split>.jsonl[.gz]`` (shared schema: rows
            with ``query_id`` and ``query``).

    Returns:
        (min(n, distinct queries), dim) float32 query vectors.

    Raises:
        trainer.data.rows.DataError: the file is missing or malformed.
    """
    from trainer.data.labels import read_queries
    from trainer.text import query_text

    texts = list(dict.fromkeys(query_text(q) for q in read_queries(path).values()))
    if len(texts) > n:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), n, replace=False))
        texts = [texts[i] for i in keep]
    logger.info("encoding %d tuning queries from %s", len(texts), path)
    return np.asarray(encoder.encode_queries(texts, batch_size=batch_size), dtype=np.float32)


def rescore(xq: np.ndarray, xb: np.ndarray, I: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` of candidates ``I`` by exact inner product (what the engine's re-ranking
    does before filters and boosts).

    Args:
        xq: (nq, dim) float32 queries.
        xb: (n, dim) float32 vectors.
        I: (nq, depth) int rows of xb, -1 = none.

    Returns:
        (nq, k) int64 rows, best first; -1 where fewer than k candidates.
    """
    I = np.asarray(I, dtype=np.int64)
    valid = I >= 0
    gathered = np.asarray(xb[np.where(valid, I, 0).reshape(-1)], dtype=np.float32)
    scores = np.einsum("qd,qcd->qc", xq, gathered.reshape(*I.shape, -1))  # (nq, depth)
    scores = np.where(valid, scores, -np.inf)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (nq, k)
    out = np.take_along_axis(I, best, axis=1)
    return np.where(np.take_along_axis(valid, best, axis=1), out, -1)


def _search(index: faiss.Index, xq: np.ndarray, k: int, params: Mapping[str, int]) -> np.ndarray:
    keep: list[Any] = []  # SWIG param objects must outlive the search call
    sp = search_parameters(index, dict(params), keep)
    _, I = index.search(xq, k, params=sp)
    return I


def tune_effort(
    index: faiss.Index,
    xb: np.ndarray,
    ids: np.ndarray,
    xq: np.ndarray,
    *,
    k: int = 10,
    target_recall: float = 0.95,
    rescore_depth: int = 100,
    shard: int = 0,
) -> TuneResult:
    """Find the smallest effort at which ``index`` reaches ``target_recall`` recall@k.

    Args:
        index: the shard's built index (CPU); its ids are ``ids``.
        xb: (n_s, dim) float32 vectors the index holds, row i = id ``ids[i]``.
        ids: (n_s,) int64 FAISS ids of the rows of xb.
        xq: (nq, dim) float32 tuning queries.
        k: recall cut-off.
        target_recall: the recall to reach.
        rescore_depth: for indexes with compressed codes, the candidates re-scored exactly with
            xb before the cut to k (0 = measure the index's own top-k); see the module doc.
        shard: shard number, for messages.

    Returns:
        The chosen effort and its measured recall. When no effort reaches the target (a PQ
        index's codes cap its recall), the value with the best recall, ``reached`` False and a
        warning in the log.
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    n = len(xb)
    if n == 0 or len(xq) == 0:
        return TuneResult(None, None, 1.0, True, (), len(xq))
    k_eff = min(k, n)
    depth = 0 if float_codes(index) else min(rescore_depth, n)
    D_ref, _ = exact_search(xq, xb, k_eff)
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def measure(params: Mapping[str, int]) -> tuple[float, float]:
        t0 = time.perf_counter()
        I_ids = _search(index, xq, max(k_eff, depth), params)
        us = (time.perf_counter() - t0) / len(xq) * 1e6
        pos = np.clip(np.searchsorted(sorted_ids, I_ids), 0, n - 1)
        found = (I_ids >= 0) & (sorted_ids[pos] == I_ids)
        local = np.where(found, order[pos], -1)  # FAISS id -> row of xb
        if depth > k_eff:
            local = rescore(xq, xb, local, k_eff)
        return tie_aware_recall(xq, xb, local, D_ref), us

    knob = effort_range(index, k_eff)
    if knob is None:
        recall, us = measure({})
        if not _is_exact(index) and recall < target_recall:
            logger.warning(
                "shard %d: recall@%d is %.3f < target %.3f and this index type has no search "
                "effort to raise; use an IVF or HNSW factory (or add ',RFlat') for more recall",
                shard,
                k_eff,
                recall,
                target_recall,
            )
        return TuneResult(None, None, recall, recall >= target_recall, (), len(xq), depth)

    param, lo, hi = knob
    tried: dict[int, tuple[float, float]] = {}

    def recall_at(value: int) -> float:
        if value not in tried:
            tried[value] = measure({param: value})
        return tried[value][0]

    # Doubling walk: the first value reaching the target bounds the answer from above.
    value, missed = lo, None
    while recall_at(value) < target_recall and value < hi:
        missed = value
        value = min(hi, value * 2)
    if recall_at(value) >= target_recall:
        low = lo - 1 if missed is None else missed  # largest value known (or assumed) to miss
        while value - low > 1:
            mid = (low + value) // 2
            if recall_at(mid) >= target_recall:
                value = mid
            else:
                low = mid
        reached = True
    else:
        best = max(r for r, _ in tried.values())
        value = min(v for v, (r, _) in tried.items() if r == best)
        reached = False
        logger.warning(
            "shard %d: recall@%d target %.3f not reached; best %.3f at %s=%d (the index "
            "type caps recall: use more PQ bytes, Flat codes or ',RFlat')",
            shard,
            k_eff,
            target_recall,
            best,
            param,
            value,
        )
    curve = tuple((v, r, us) for v, (r, us) in tried.items())
    logger.info(
        "shard %d: %s=%d gives recall@%d %.3f on %d tuning queries (target %.3f, %d settings "
        "tried)",
        shard,
        param,
        value,
        k_eff,
        tried[value][0],
        len(xq),
        target_recall,
        len(tried),
    )
    return TuneResult(param, value, tried[value][0], reached, curve, len(xq), depth)


def combine_results(results: list[TuneResult], config: TuneConfig) -> dict[str, Any]:
    """Manifest ``search_defaults`` from per-shard results: the largest chosen effort (one
    setting serves every shard), with the lowest measured shard recall, the target, and the
    re-scoring depth the recall assumes (when the codes are compressed).

    The measured recall is that of each shard at its own chosen value; at the (larger or equal)
    combined value a shard's recall can only be as high or higher.
    """
    tuned = [r for r in results if r.param is not None]
    measured = [r for r in results if r.n_queries]
    defaults: dict[str, Any] = {}
    for param in {r.param for r in tuned}:
        defaults[param] = max(r.value for r in tuned if r.param == param)
    if measured:
        defaults["measured_recall"] = round(min(r.recall for r in measured), 4)
        defaults["recall_k"] = config.k
        defaults["target_recall"] = config.target_recall
        depth = max(r.rescore_depth for r in measured)
        if depth:
            defaults["rescore_depth"] = depth
    return defaults
