"""Full-catalog search evaluation: exact top-k over item vectors, scored with graded labels.

Every catalog item is a candidate and the search is exact (inner product of L2-normalised
vectors), following the "Evaluation convention" of ``../shared/data/*/README.md``: rank the
whole catalog for each labeled query; NDCG@k with the dataset's gains (ideal DCG from the
query's judged items), Recall@k of the items with grade >= ``recall_grade``, MRR of the first
such item; each metric averaged over the queries it is defined for, with its standard error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainer.data.catalog import Catalog
from trainer.data.labels import Labels, check_labels_against_catalog
from trainer.evaluation.metrics import EvalReport, check_ks, evaluate_rankings
from trainer.evaluation.vector_cache import (
    ItemQueryEncoder,
    catalog_vectors,
    encoder_info,
    item_length,
)
from trainer.text import query_text

_SEARCH_BLOCK = 256  # queries per score block: 256 x 54,667 float32 scores = 56 MB


def exact_search(
    xq: np.ndarray, xb: np.ndarray, k: int, *, block_size: int = _SEARCH_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over every row of ``xb``, ties broken by lower row.

    Args:
        xq: (nq, dim) float32 queries.
        xb: (n, dim) float32 database vectors.
        k: results per query; more than n gives n.
        block_size: queries scored at once (memory: block_size * n float32).

    Returns:
        D (nq, min(k, n)) float32 scores, descending; I (nq, min(k, n)) int64 rows of ``xb``.
    """
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise ValueError(f"need xq (nq, dim) and xb (n, dim), got {xq.shape} and {xb.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not (np.isfinite(xq).all() and np.isfinite(xb).all()):
        # A NaN score compares false with everything and would silently drop out of the top k.
        raise ValueError("xq and xb must be finite; the encoder returned NaN or inf vectors")
    n = xb.shape[0]
    k = min(k, n)
    D = np.empty((xq.shape[0], k), dtype=np.float32)
    I = np.empty((xq.shape[0], k), dtype=np.int64)
    if k == 0:
        return D, I
    for start in range(0, xq.shape[0], block_size):
        scores = xq[start : start + block_size] @ xb.T  # (b, n)
        # The k-th largest score per query; everything above it is in, ties at it are cut by
        # row so the ranking is the same on every run and machine.
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]  # (b,)
        for j in range(scores.shape[0]):
            rows = np.flatnonzero(scores[j] >= kth[j])  # (>= k,) ascending rows
            order = np.lexsort((rows, -scores[j, rows]))[:k]
            I[start + j] = rows[order]
            D[start + j] = scores[j, rows[order]]
    return D, I


def evaluate_search(
    encoder: ItemQueryEncoder,
    catalog: Catalog,
    labels: Labels,
    *,
    gains: str | Mapping[int, float],
    recall_grade: int,
    ks: Sequence[int] = (10, 100),
    max_item_length: int | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> EvalReport:
    """Rank the whole catalog for every labeled query (exact search) and score it.

    Args:
        encoder: a loaded ``trainer.encoder.load.Encoder``.
        catalog: every item is a candidate; judged items must all be in it.
        labels: the queries and their graded judgments.
        gains, recall_grade, ks: as in ``evaluate_rankings``.
        max_item_length: item token cap; None = the model's own.
        batch_size: items per forward pass.
        cache_dir: where item vectors are cached (see ``catalog_vectors``); None = no cache.

    Raises:
        DataError: judged items missing from the catalog.
    """
    ks = check_ks(ks)
    check_labels_against_catalog(labels, catalog)
    t0 = time.perf_counter()
    xb, cached = catalog_vectors(
        encoder,
        catalog,
        max_item_length=max_item_length,
        batch_size=batch_size,
        cache_dir=cache_dir,
        show_progress=show_progress,
    )
    t1 = time.perf_counter()
    query_ids = list(labels.queries)
    xq = np.asarray(
        encoder.encode_queries([query_text(labels.queries[q]) for q in query_ids]),
        dtype=np.float32,
    )  # (nq, dim)
    t2 = time.perf_counter()
    _, I = exact_search(xq, xb, max(ks))
    item_ids = np.asarray(catalog.item_ids, dtype=object)
    rankings = {q: item_ids[I[i]].tolist() for i, q in enumerate(query_ids)}
    t3 = time.perf_counter()
    report = evaluate_rankings(rankings, labels, gains, recall_grade, ks, task="search")
    t4 = time.perf_counter()
    info = {
        **encoder_info(encoder),
        "catalog": catalog.path,
        "labels": labels.path,
        "n_items": len(catalog),
        "max_item_length": item_length(encoder, max_item_length),
        **report.info,
        "item_vectors_cached": cached,
        "seconds": {
            "items": round(t1 - t0, 3),
            "queries": round(t2 - t1, 3),
            "search": round(t3 - t2, 3),
            "metrics": round(t4 - t3, 3),
            "total": round(t4 - t0, 3),
        },
    }
    return replace(report, info=info)
