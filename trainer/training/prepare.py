"""Reading and checking every dataset of a training config before anything trains: catalogs,
labels and interactions, grades, dev files or held-out slices (``prepare_datasets``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.data.catalog import Catalog, read_catalog
from trainer.data.labels import (
    Interactions,
    Labels,
    check_labels_against_catalog,
    read_interactions,
    read_labels,
)
from trainer.data.rows import DataError
from trainer.evaluation.metrics import ESCI_GAINS, GAIN_TABLES, GRADE_GAINS
from trainer.evaluation.presets import DATASET_PRESETS, infer_dataset
from trainer.evaluation.recommend import next_item_targets
from trainer.text import query_text
from trainer.training.batches import (
    STREAM_EVAL_SAMPLE,
    RecommendData,
    SearchData,
    recommend_data,
    rng_for,
    search_data,
    split_interactions,
    split_labels,
)
from trainer.training.config import DatasetSpec, TrainConfig

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Reading and checking the datasets (all of them, before anything trains)


@dataclass
class PreparedDataset:
    """A dataset read, checked and resolved to rows, with what its evaluation needs."""

    spec: DatasetSpec
    data: SearchData | RecommendData
    eval_source: str  # "dev", "holdout" or "none"
    eval_labels: Labels | None = None
    eval_train: Interactions | None = None
    eval_dev: Interactions | None = None
    gains: dict[int, float] | None = None
    recall_grade: int | None = None
    eval_query_texts: list[str] = field(default_factory=list)
    eval_query_tokens: list[np.ndarray] = field(default_factory=list)
    eval_rows: np.ndarray | None = None  # catalog rows ranked at evaluation; None = all

    @property
    def task(self) -> str:
        return self.spec.task


def _search_gains(spec: DatasetSpec, labels: Labels) -> tuple[dict[int, float], int]:
    name = spec.dataset or infer_dataset(spec.catalog)
    preset = DATASET_PRESETS.get(name) if name else None
    if preset is not None and preset.task == "search":
        return dict(GAIN_TABLES[preset.gains]), int(preset.recall_grade)
    top = max(g for judged in labels.judgments.values() for g in judged.values())
    # ESCI-style 0..3 labels get the official ESCI gains; anything else gains its grade.
    return (dict(ESCI_GAINS) if top == 3 else dict(GRADE_GAINS)), top


def _check_grades(labels: Labels, gains: Mapping[int, float]) -> None:
    for query_id, judged in labels.judgments.items():
        for item_id, grade in judged.items():
            if grade not in gains:
                raise ValueError(
                    f"{labels.path}: grade {grade} (query_id {query_id!r}, item {item_id!r}) has "
                    f"no gain in the evaluation table {dict(gains)}; set the dataset's "
                    "'dataset' (esci, homedepot) to match its labels"
                )


def sample_eval_rows(
    n_items: int, needed: np.ndarray, max_items: int | None, seed: int, k: int
) -> np.ndarray | None:
    """Catalog rows to rank at evaluation: all of them (None) when ``n_items <= max_items`` (or
    ``max_items`` is None), else ``needed`` plus a random sample up to ``max_items`` rows in all,
    fixed by ``seed`` and the dataset index ``k``.

    Returns:
        None, or sorted unique int64 rows.
    """
    if max_items is None or n_items <= max_items:
        return None
    needed = np.unique(needed)
    others = np.setdiff1d(np.arange(n_items), needed)
    fill = max(0, max_items - len(needed))
    sample = rng_for(seed, STREAM_EVAL_SAMPLE, k).choice(
        others, size=min(fill, len(others)), replace=False
    )
    return np.union1d(needed, sample).astype(np.int64)


def prepare_datasets(config: TrainConfig) -> list[PreparedDataset]:
    """Read every dataset and check it: catalogs, label grades and ids, interactions, dev
    splits, empty files. Nothing is trained and no model is loaded.

    Raises:
        ValueError (``DataError`` for file problems): the first problem found, naming the file.
    """
    catalogs: dict[Path, Catalog] = {}
    prepared = []
    for k, spec in enumerate(config.datasets):
        key = spec.catalog.resolve()
        if key not in catalogs:
            catalogs[key] = read_catalog(spec.catalog)
        catalog = catalogs[key]
        if spec.task == "search":
            prepared.append(_prepare_search(config, k, spec, catalog))
        else:
            prepared.append(_prepare_recommend(config, k, spec, catalog))
    n_eval = sum(p.eval_source != "none" for p in prepared)
    if config.eval_every and not n_eval:
        logger.warning(
            "eval_every=%d but no dataset has a dev file or a held-out slice "
            "(holdout_fraction=0): training runs without early stopping",
            config.eval_every,
        )
    return prepared


def _read_for_task(path: Path, task: str) -> Labels | Interactions:
    """Read a train/dev file for ``task``, with a hint when it holds the other task's data."""
    reader, other_field, hint = (
        (read_labels, "user_id", "it looks like interactions: set task to recommend")
        if task == "search"
        else (read_interactions, "query_id", "it looks like labels: set task to search")
    )
    try:
        return reader(path)
    except DataError as exc:
        if exc.line == 1 and exc.field in ("query_id", "user_id"):
            first = _first_row_keys(path)
            if other_field in first:
                raise DataError(path, exc.line, f"{exc.problem} ({hint})", field=exc.field) from exc
        raise


def _first_row_keys(path: Path) -> set[str]:
    import gzip

    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            row = json.loads(f.readline())
        return set(row) if isinstance(row, dict) else set()
    except (OSError, ValueError):
        return set()


def _prepare_search(
    config: TrainConfig, k: int, spec: DatasetSpec, catalog: Catalog
) -> PreparedDataset:
    labels = _read_for_task(spec.train, "search")
    check_labels_against_catalog(labels, catalog)
    gains, recall_grade = _search_gains(spec, labels)
    top = max(g for judged in labels.judgments.values() for g in judged.values())
    eval_labels, source = None, "none"
    if spec.dev is not None:
        eval_labels, source = _read_for_task(spec.dev, "search"), "dev"
        check_labels_against_catalog(eval_labels, catalog)
    elif config.holdout_fraction > 0:
        labels, eval_labels = split_labels(labels, config.holdout_fraction, config.seed + k)
        source = "holdout"
    _check_grades(labels, gains)
    if eval_labels is not None:
        _check_grades(eval_labels, gains)
    partial = config.partial_weight
    if partial is None:
        partial = gains.get(top - 1, 0.0) / gains[top] if gains.get(top, 0) > 0 else 0.0
    data = search_data(spec.name, catalog, labels, partial_weight=partial, top_grade=top)
    item_rows = {item_id: r for r, item_id in enumerate(catalog.item_ids)}
    out = PreparedDataset(
        spec, data, source, eval_labels=eval_labels, gains=gains, recall_grade=recall_grade
    )
    if eval_labels is not None:
        out.eval_query_texts = [query_text(q) for q in eval_labels.queries.values()]
        judged = [item_rows[i] for j in eval_labels.judgments.values() for i in j]
        out.eval_rows = sample_eval_rows(
            len(catalog), np.asarray(judged, dtype=np.int64), config.eval_max_items, config.seed, k
        )
    return out


def _prepare_recommend(
    config: TrainConfig, k: int, spec: DatasetSpec, catalog: Catalog
) -> PreparedDataset:
    interactions = _read_for_task(spec.train, "recommend")
    eval_train = eval_dev = None
    source = "none"
    if spec.dev is not None:
        eval_train, eval_dev, source = interactions, _read_for_task(spec.dev, "recommend"), "dev"
    elif config.holdout_fraction > 0:
        interactions, eval_train, eval_dev = split_interactions(
            interactions, config.holdout_fraction, config.seed + k
        )
        source = "holdout"
    data = recommend_data(
        spec.name,
        catalog,
        interactions,
        history_length=config.history_length,
        history_decay=config.history_decay,
    )
    out = PreparedDataset(spec, data, source, eval_train=eval_train, eval_dev=eval_dev)
    if eval_dev is not None:
        targets = next_item_targets(eval_train, eval_dev, history_length=config.history_length)
        if not targets:
            raise ValueError(f"{spec.dev or spec.train}: no evaluation user has a train history")
        row_of = {item_id: r for r, item_id in enumerate(catalog.item_ids)}
        ids = {i for history, target in targets.values() for i in (*history, target)}
        unknown = sorted(ids - row_of.keys())
        if unknown:
            raise ValueError(
                f"{eval_dev.path}: {len(unknown)} item id(s) are not in the catalog "
                f"{catalog.path}: {', '.join(repr(i) for i in unknown[:5])}"
            )
        needed = np.asarray([row_of[i] for i in ids], dtype=np.int64)
        out.eval_rows = sample_eval_rows(
            len(catalog), needed, config.eval_max_items, config.seed, k
        )
    return out
