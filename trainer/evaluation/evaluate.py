"""Full-catalog retrieval evaluation: search (graded labels) and next-item recommendation.

Every catalog item is a candidate and the search is exact (inner product of L2-normalised
vectors), following the "Evaluation convention" of ``../shared/data/*/README.md``:

- search: rank the whole catalog for each labeled query; NDCG@k with the dataset's gains
  (ideal DCG from the query's judged items), Recall@k of the items with grade >=
  ``recall_grade``, MRR of the first such item; each metric averaged over the queries it is
  defined for, with its standard error.
- recommendation (UniSRec protocol): the user's history is their ``train`` sequence (at most
  the 50 most recent items), the target their ``dev`` item; score all items (history items
  are NOT removed), Recall@k = hit rate, NDCG@k = 1 / log2(rank + 1).

``evaluate_rankings`` scores any ranker's output (BM25, popularity, ...) with the same code.
CLI: ``python -m trainer.evaluate --model DIR --catalog FILE --labels FILE [--dataset esci]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trainer.data.catalog import Catalog, read_catalog
from trainer.data.labels import (
    Interactions,
    Labels,
    check_labels_against_catalog,
    read_interactions,
    read_labels,
)
from trainer.encoder.user import check_history_decay, history_vectors
from trainer.evaluation.metrics import (
    DEFAULT_RECALL_GRADE,
    GAIN_TABLES,
    EvalReport,
    check_ks,
    evaluate_rankings,
)
from trainer.text import item_text, query_text

__all__ = [
    "DATASET_PRESETS",
    "DatasetPreset",
    "EvalConfig",
    "catalog_vectors",
    "dataset_preset",
    "evaluate_recommendation",
    "evaluate_search",
    "exact_search",
    "infer_dataset",
    "main",
    "mean_history_vectors",
    "next_item_targets",
    "run_evaluation",
    "write_report_json",
]

logger = logging.getLogger(__name__)

HISTORY_LENGTH = 50  # the UniSRec protocol feeds at most the 50 most recent items
# Recommendation is scored as search with one judged item per user: the target, grade 1, gain 1
# (so ideal DCG = 1 and NDCG@k = 1 / log2(rank + 1)).
_TARGET_GAINS = {0: 0.0, 1: 1.0}
_SEARCH_BLOCK = 256  # queries per score block: 256 x 54,667 float32 scores = 56 MB


class ItemQueryEncoder(Protocol):
    """What evaluation needs from ``trainer.encoder.Encoder``."""

    dim: int
    fingerprint: str

    def encode_queries(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray: ...

    def encode_items(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        show_progress: bool = False,
        max_length: int | None = None,
    ) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------
# Exact search and item vectors


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


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a shared cache is read by others
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def catalog_vectors(
    encoder: ItemQueryEncoder,
    catalog: Catalog,
    *,
    max_item_length: int | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> tuple[np.ndarray, bool]:
    """Item vectors of the whole catalog, from ``item_text`` of each record, cached on disk.

    The cache file (``cache_dir/items-<key>.npy``, written atomically) is keyed by the model
    fingerprint, the max item length and a sha256 of the item texts, which changes with the
    catalog's content and with the item-text template alike.

    Returns:
        ((n_items, dim) float32 rows in catalog order, whether they came from the cache).
    """
    texts = [item_text(record) for record in catalog.records()]
    path = None
    if cache_dir is not None:
        length = _item_length(encoder, max_item_length)
        key = hashlib.sha256(
            f"aisle-item-vectors-v1\0{encoder.fingerprint}\0{length}\0{_texts_digest(texts)}".encode()
        ).hexdigest()[:32]
        path = Path(cache_dir) / f"items-{key}.npy"
        if path.is_file():
            try:
                xb = np.load(path)
            except (OSError, ValueError) as exc:
                logger.warning("unreadable item vector cache %s (%s); re-encoding", path, exc)
            else:
                if xb.shape == (len(texts), encoder.dim) and xb.dtype == np.float32:
                    logger.info("item vectors from cache %s", path)
                    return xb, True
                logger.warning("item vector cache %s has shape %s; re-encoding", path, xb.shape)
    logger.info("encoding %d items", len(texts))
    xb = np.asarray(
        encoder.encode_items(
            texts, batch_size=batch_size, show_progress=show_progress, max_length=max_item_length
        ),
        dtype=np.float32,
    )  # (n_items, dim)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_npy_atomic(path, xb)
        logger.info("cached item vectors in %s", path)
    return xb, False


def _item_length(encoder: Any, max_item_length: int | None) -> int | None:
    """The item token cap in effect: the override, else the model's own (None if unknown)."""
    if max_item_length is not None:
        return max_item_length
    return getattr(getattr(encoder, "info", None), "max_item_length", None)


def _encoder_info(encoder: Any) -> dict[str, Any]:
    info = getattr(encoder, "info", None)
    return {
        "model": str(getattr(encoder, "model_dir", "")),
        "base_model": getattr(info, "base_model", None),
        "fingerprint": getattr(encoder, "fingerprint", None),
    }


# ---------------------------------------------------------------------------------------------
# Search


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
        encoder: a loaded ``trainer.encoder.Encoder``.
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
        **_encoder_info(encoder),
        "catalog": catalog.path,
        "labels": labels.path,
        "n_items": len(catalog),
        "max_item_length": _item_length(encoder, max_item_length),
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


# ---------------------------------------------------------------------------------------------
# Recommendation


def next_item_targets(
    train: Interactions, dev: Interactions, *, history_length: int = HISTORY_LENGTH
) -> dict[str, tuple[list[str], str]]:
    """user_id → (history: the last ``history_length`` train items in order, dev target item).

    Users of ``dev`` with no train history are left out (they have nothing to rank from).

    Raises:
        ValueError: a dev user with more than one dev item (the leave-one-out split has one).
    """
    if history_length < 1:
        raise ValueError(f"history_length must be >= 1, got {history_length}")
    out: dict[str, tuple[list[str], str]] = {}
    no_history = 0
    for user_id, items in dev.histories.items():
        if len(items) != 1:
            raise ValueError(
                f"{dev.path}: user {user_id!r} has {len(items)} dev items; the next-item "
                "protocol expects exactly one per user (the item after their train sequence)"
            )
        history = train.histories.get(user_id, [])[-history_length:]
        if not history:
            no_history += 1
            continue
        out[user_id] = (history, items[0])
    if no_history:
        logger.warning("%d dev users have no train history and are left out", no_history)
    return out


def mean_history_vectors(xb: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """User vectors: the L2-normalised mean of their history item vectors (decay 1).

    Args:
        xb: (n_items, dim) float32 item vectors.
        histories: one int64 array of item rows per user, oldest first.

    Returns:
        (n_users, dim) float32.
    """
    return history_vectors(xb, histories, 1.0)


def evaluate_recommendation(
    encoder_or_item_vectors: ItemQueryEncoder | np.ndarray,
    catalog: Catalog,
    train_interactions: Interactions,
    dev_interactions: Interactions,
    *,
    ks: Sequence[int] = (10, 50),
    history_length: int = HISTORY_LENGTH,
    user_vectors: Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray] | None = None,
    history_decay: float | None = None,
    max_item_length: int | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> EvalReport:
    """Next-item recommendation over the whole catalog (UniSRec protocol).

    Each dev user's vector comes from their last ``history_length`` train items
    (``user_vectors``; by default the user tower of ``trainer.user_tower``: the normalised
    recency-weighted mean with ``history_decay``, which defaults to the encoder's
    ``history_decay``, or 1 = the plain mean for raw vectors); all items are ranked by
    inner product, history items included, and the dev target is scored: Recall@k (hit rate)
    and NDCG@k = 1 / log2(rank + 1), plus MRR within the top max(ks).

    Args:
        encoder_or_item_vectors: an Encoder, or precomputed (n_items, dim) float32 item
            vectors in catalog row order.
        catalog: every item is a candidate.
        train_interactions, dev_interactions: histories and one target per dev user.

    Raises:
        ValueError: history or target items missing from the catalog, vectors of the wrong
            shape, a dev user with several targets.
    """
    ks = check_ks(ks)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if user_vectors is None:
        if history_decay is None:
            history_decay = getattr(encoder_or_item_vectors, "history_decay", 1.0)
        decay = check_history_decay(history_decay)
        info["history_decay"] = decay

        def user_vectors(xb: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
            return history_vectors(xb, histories, decay)

    if isinstance(encoder_or_item_vectors, np.ndarray):
        xb = np.asarray(encoder_or_item_vectors, dtype=np.float32)
        if xb.ndim != 2 or xb.shape[0] != len(catalog):
            raise ValueError(
                f"item vectors have shape {xb.shape}, expected ({len(catalog)}, dim): one row "
                "per catalog item, in catalog order"
            )
        cached = False
    else:
        info.update(_encoder_info(encoder_or_item_vectors))
        xb, cached = catalog_vectors(
            encoder_or_item_vectors,
            catalog,
            max_item_length=max_item_length,
            batch_size=batch_size,
            cache_dir=cache_dir,
            show_progress=show_progress,
        )
    t1 = time.perf_counter()

    targets = next_item_targets(train_interactions, dev_interactions, history_length=history_length)
    row_of = {item_id: r for r, item_id in enumerate(catalog.item_ids)}
    unknown = sorted(
        {i for history, target in targets.values() for i in (*history, target)} - row_of.keys()
    )
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5])
        raise ValueError(
            f"{len(unknown)} interaction item id(s) are not in the catalog {catalog.path}: "
            f"{shown}; use the catalog the interactions were logged against"
        )
    user_ids = list(targets)
    histories = [np.array([row_of[i] for i in targets[u][0]], dtype=np.int64) for u in user_ids]
    xu = np.asarray(user_vectors(xb, histories), dtype=np.float32)  # (n_users, dim)
    _, I = exact_search(xu, xb, max(ks))
    item_ids = np.asarray(catalog.item_ids, dtype=object)
    rankings = {u: item_ids[I[j]].tolist() for j, u in enumerate(user_ids)}
    t2 = time.perf_counter()
    judgments = {u: {targets[u][1]: 1} for u in user_ids}
    report = evaluate_rankings(rankings, judgments, _TARGET_GAINS, 1, ks, task="recommendation")
    t3 = time.perf_counter()
    info.update(
        {
            "catalog": catalog.path,
            "interactions_train": train_interactions.path,
            "interactions_dev": dev_interactions.path,
            "n_items": len(catalog),
            "n_dev_users": len(dev_interactions.histories),
            "history_length": history_length,
            "max_item_length": _item_length(encoder_or_item_vectors, max_item_length),
            "ks": list(ks),
            "item_vectors_cached": cached,
            "seconds": {
                "items": round(t1 - t0, 3),
                "search": round(t2 - t1, 3),
                "metrics": round(t3 - t2, 3),
                "total": round(t3 - t0, 3),
            },
        }
    )
    return replace(report, info=info)


# ---------------------------------------------------------------------------------------------
# Dataset presets, config and the command line


@dataclass(frozen=True)
class DatasetPreset:
    """How one dataset of ``../shared/data`` is evaluated (its README's "Evaluation convention").

    ``gains`` names a table in ``trainer.metrics.GAIN_TABLES``; ``gains`` and ``recall_grade``
    are None for recommendation, where the target is the only relevant item.
    """

    name: str
    task: str
    gains: str | None
    recall_grade: int | None
    ks: tuple[int, ...]


DATASET_PRESETS: dict[str, DatasetPreset] = {
    "esci": DatasetPreset("esci", "search", "esci", DEFAULT_RECALL_GRADE["esci"], (10, 100)),
    "homedepot": DatasetPreset(
        "homedepot", "search", "grade", DEFAULT_RECALL_GRADE["homedepot"], (10, 100)
    ),
    "scientific": DatasetPreset("scientific", "recommendation", None, None, (10, 50)),
}


def dataset_preset(name: str) -> DatasetPreset:
    """The preset for a dataset name ("esci", "homedepot", "scientific"; case-insensitive).

    Raises:
        ValueError: an unknown name.
    """
    preset = DATASET_PRESETS.get(name.strip().lower())
    if preset is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_PRESETS)}")
    return preset


def infer_dataset(catalog: str | Path) -> str | None:
    """The dataset a catalog file belongs to, from its directory name (``data/esci/...``)."""
    name = Path(catalog).parent.name.lower()
    return name if name in DATASET_PRESETS else None


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run: a model, a catalog, and labels (search) or interactions (recommend).

    ``dataset`` picks gains, recall grade and ks (default: inferred from the catalog's directory
    name); ``gains`` / ``recall_grade`` / ``ks`` override it. ``model`` None = the packaged
    all-MiniLM-L6-v2. ``history_decay`` None = the model's own user tower
    (``aisle_model.json``).
    """

    catalog: Path
    model: Path | None = None
    labels: Path | None = None
    interactions_train: Path | None = None
    interactions_dev: Path | None = None
    dataset: str | None = None
    gains: str | None = None
    recall_grade: int | None = None
    ks: tuple[int, ...] | None = None
    history_length: int = HISTORY_LENGTH
    history_decay: float | None = None
    max_item_length: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    cache_dir: Path | None = None
    show_progress: bool = False

    def __post_init__(self) -> None:
        interactions = (self.interactions_train, self.interactions_dev)
        if (self.labels is None) == all(p is None for p in interactions):
            raise ValueError(
                "give either --labels (search) or --interactions-train and --interactions-dev "
                "(recommendation), not both or neither"
            )
        if self.labels is None and None in interactions:
            raise ValueError(
                "recommendation needs both --interactions-train and --interactions-dev"
            )
        for name in ("history_length", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_item_length is not None and self.max_item_length < 2:
            raise ValueError(f"max_item_length must be >= 2 tokens, got {self.max_item_length}")
        if self.history_decay is not None:
            check_history_decay(self.history_decay)
        if self.ks is not None:
            check_ks(self.ks)
        if self.gains is not None and self.gains not in GAIN_TABLES:
            raise ValueError(f"gains must be one of {sorted(GAIN_TABLES)}, got {self.gains!r}")
        self.settings()  # fail now, before a model is loaded, if the dataset settings clash

    @property
    def task(self) -> str:
        return "search" if self.labels is not None else "recommendation"

    def settings(self) -> tuple[str | None, str | None, int | None, tuple[int, ...]]:
        """(dataset, gains, recall_grade, ks) after applying the preset and the overrides."""
        dataset = self.dataset or infer_dataset(self.catalog)
        preset = dataset_preset(dataset) if dataset else None
        if preset is not None and preset.task != self.task:
            raise ValueError(
                f"dataset {preset.name!r} is evaluated as {preset.task}, but {self.task} inputs "
                f"were given; pass {'--labels' if preset.task == 'search' else '--interactions-*'}"
                " or another --dataset"
            )
        ks = check_ks(self.ks or (preset.ks if preset else (10, 100) if self.labels else (10, 50)))
        if self.task == "recommendation":
            return dataset, None, None, ks
        gains = self.gains or (preset.gains if preset else None)
        recall_grade = (
            self.recall_grade
            if self.recall_grade is not None
            else (preset.recall_grade if preset else None)
        )
        if gains is None or recall_grade is None:
            raise ValueError(
                f"cannot tell which dataset {str(self.catalog)!r} is; pass --dataset "
                f"({', '.join(DATASET_PRESETS)}) or both --gains ({', '.join(GAIN_TABLES)}) and "
                "--recall-grade"
            )
        return dataset, gains, recall_grade, ks


def run_evaluation(config: EvalConfig) -> EvalReport:
    """Read the files, load the model and evaluate (see ``evaluate_search`` and
    ``evaluate_recommendation``)."""
    from trainer.encoder.load import load_encoder

    dataset, gains, recall_grade, ks = config.settings()
    catalog = read_catalog(config.catalog)
    if config.labels is not None:
        labels = read_labels(config.labels)
        check_labels_against_catalog(labels, catalog)  # before the slow part
        encoder = load_encoder(config.model, device=config.device)
        report = evaluate_search(
            encoder,
            catalog,
            labels,
            gains=gains,
            recall_grade=recall_grade,
            ks=ks,
            max_item_length=config.max_item_length,
            batch_size=config.batch_size,
            cache_dir=config.cache_dir,
            show_progress=config.show_progress,
        )
    else:
        train = read_interactions(config.interactions_train)
        dev = read_interactions(config.interactions_dev)
        encoder = load_encoder(config.model, device=config.device)
        report = evaluate_recommendation(
            encoder,
            catalog,
            train,
            dev,
            ks=ks,
            history_length=config.history_length,
            history_decay=config.history_decay,
            max_item_length=config.max_item_length,
            batch_size=config.batch_size,
            cache_dir=config.cache_dir,
            show_progress=config.show_progress,
        )
    return replace(report, info={"dataset": dataset, **report.info})


def write_report_json(report: EvalReport, path: str | Path) -> None:
    """Write ``report.to_dict()`` as JSON, atomically (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a report is meant to be shared
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_EPILOG = """\
examples:
  python -m trainer.evaluate --catalog data/esci/products.jsonl.gz \\
      --labels data/esci/labels_dev.jsonl.gz --cache-dir /tmp/aisle-cache
  python -m trainer.evaluate --model ./model --catalog data/scientific/products.jsonl.gz \\
      --interactions-train data/scientific/interactions_train.jsonl.gz \\
      --interactions-dev data/scientific/interactions_dev.jsonl.gz --json report.json

The dataset (esci, homedepot, scientific) is taken from the catalog's directory name unless
--dataset is given; it sets the gains, the grade that counts as relevant and the cutoffs.
"""


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        return check_ks(tuple(int(part) for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive ints such as 10,100, got {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.evaluate",
        description="Evaluate a model by exact retrieval over the whole catalog: search "
        "(--labels: NDCG@k, Recall@k, MRR) or next-item recommendation (--interactions-train/"
        "--interactions-dev: Recall@k, NDCG@k). Prints mean ± standard error over queries.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, metavar="DIR", help="model dir (default: packaged all-MiniLM-L6-v2)"
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        required=True,
        metavar="FILE",
        help="catalog file; every item is a candidate",
    )
    parser.add_argument("--labels", type=Path, metavar="FILE", help="graded labels (search)")
    parser.add_argument(
        "--interactions-train", type=Path, metavar="FILE", help="user histories (recommendation)"
    )
    parser.add_argument(
        "--interactions-dev",
        type=Path,
        metavar="FILE",
        help="one next item per user (recommendation)",
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASET_PRESETS),
        help="evaluation convention (default: from the catalog's directory name)",
    )
    parser.add_argument("--gains", choices=sorted(GAIN_TABLES), help="override the gain table")
    parser.add_argument(
        "--recall-grade",
        type=int,
        metavar="G",
        help="override the lowest grade that counts as relevant for Recall/MRR",
    )
    parser.add_argument(
        "--ks",
        type=_parse_ks,
        metavar="K,K",
        help="cutoffs (default: 10,100 for search, 10,50 for recommendation)",
    )
    parser.add_argument(
        "--history-length",
        type=int,
        default=HISTORY_LENGTH,
        metavar="N",
        help=f"most recent history items per user (default: {HISTORY_LENGTH})",
    )
    parser.add_argument(
        "--history-decay",
        type=float,
        metavar="D",
        help="user tower recency decay in (0, 1]: the item a steps before the newest weighs D**a "
        "(1 = plain mean; default: the model's own, from aisle_model.json)",
    )
    parser.add_argument(
        "--max-item-length",
        type=int,
        metavar="N",
        help="token cap for item texts (default: the model's own)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="items per forward pass (default: 32)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="cache item vectors here, keyed by model, item texts and length",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation CLI; returns 0, 2 for bad input or config, 1 for IO errors."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = EvalConfig(
            catalog=args.catalog,
            model=args.model,
            labels=args.labels,
            interactions_train=args.interactions_train,
            interactions_dev=args.interactions_dev,
            dataset=args.dataset,
            gains=args.gains,
            recall_grade=args.recall_grade,
            ks=args.ks,
            history_length=args.history_length,
            history_decay=args.history_decay,
            max_item_length=args.max_item_length,
            batch_size=args.batch_size,
            device=args.device,
            cache_dir=args.cache_dir,
            show_progress=True,
        )
        report = run_evaluation(config)
        print(report.format_table())
        if args.json is not None:
            write_report_json(report, args.json)
    except ValueError as e:  # bad data or config: the message says what to fix
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
