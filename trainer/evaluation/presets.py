"""Dataset presets: how each dataset of ``../shared/data`` is evaluated (task, gains, ks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.evaluation.metrics import DEFAULT_RECALL_GRADE


@dataclass(frozen=True)
class DatasetPreset:
    """How one dataset of ``../shared/data`` is evaluated (its README's "Evaluation convention").

    ``gains`` names a table in ``trainer.evaluation.metrics.GAIN_TABLES``; ``gains`` and
    ``recall_grade`` are None for recommendation, where the target is the only relevant item.
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
