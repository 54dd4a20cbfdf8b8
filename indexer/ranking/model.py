"""The ranker artifact: a LightGBM lambdarank model, its feature spec, and what it expects.

One JSON file (``RANKER_FILE`` inside an index version; any name elsewhere)::

    {"format": "aisle-ranker-1", "feature_spec_version": "aisle-rank-2",
     "features": [...], "expects": {"model_fingerprint": "...", "fields": [...]},
     "candidates_per_channel": 100, "training": {...}, "model": "<LightGBM model text>"}

``expects`` is the fingerprint of what the features were computed from: the towers (dense
scores come from them) and the catalog fields with a BM25 index (``indexer.ranking.fields``).
``check`` refuses a version whose model or fields differ, with a message that says what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from indexer.ranking.spec import CANDIDATES_PER_CHANNEL, FEATURE_SPEC_VERSION, FEATURES
from indexer.storage.manifest import IndexFormatError
from trainer.io import write_atomic

__all__ = ["RANKER_FILE", "RANKER_FORMAT", "Ranker", "RankerMismatchError"]

RANKER_FILE = "ranker.json"  # the ranker inside an index version dir
RANKER_FORMAT = "aisle-ranker-1"


class RankerMismatchError(IndexFormatError):
    """A ranker does not fit the index version (or this code's feature spec)."""


@dataclass(frozen=True)
class Ranker:
    """A trained ranker.

    Attributes:
        booster: the LightGBM model.
        model_fingerprint: the towers the features were computed with.
        fields: the catalog fields that had a BM25 index at training time.
        feature_spec_version, features: the spec it was trained on.
        candidates_per_channel: N of the candidate union it was trained on.
        training: what training recorded (data, sizes, validation NDCG, seconds).
    """

    booster: lgb.Booster
    model_fingerprint: str
    fields: tuple[str, ...]
    feature_spec_version: str = FEATURE_SPEC_VERSION
    features: tuple[str, ...] = FEATURES
    candidates_per_channel: int = CANDIDATES_PER_CHANNEL
    training: dict[str, Any] = field(default_factory=dict)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n,) float64 scores of a (n, len(features)) feature matrix; higher ranks first."""
        if len(X) == 0:
            return np.zeros(0, np.float64)
        return np.asarray(self.booster.predict(X, num_threads=1), np.float64)

    def order(self, X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions best first, scores) of candidates with features X (n, F) and global rows
        (n,): by score descending, ties by the lower row (as the server orders them)."""
        scores = self.predict(X)
        return np.lexsort((rows, -scores)), scores

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """(n, len(features) + 1) float64 SHAP contributions (TreeSHAP, LightGBM's
        ``pred_contrib``); the last column is the bias, and each row sums to ``predict``."""
        return np.asarray(self.booster.predict(X, pred_contrib=True, num_threads=1), np.float64)

    def check(self, model_fingerprint: str, fields: tuple[str, ...], where: str) -> None:
        """Refuse an index whose towers or fields differ from what the ranker was trained on.

        Raises:
            RankerMismatchError: naming what differs and what to do.
        """
        if model_fingerprint != self.model_fingerprint:
            raise RankerMismatchError(
                f"{where}: the ranker was trained on features of the model with fingerprint "
                f"{self.model_fingerprint[:12]}, but this index was built with "
                f"{model_fingerprint[:12]}; train a ranker on this index (aisle-rank train)"
            )
        if tuple(fields) != tuple(self.fields):
            raise RankerMismatchError(
                f"{where}: the ranker expects the catalog fields {list(self.fields)} to have a "
                f"BM25 index, but this index's items have {list(fields)}; train a ranker on "
                "this index (aisle-rank train)"
            )

    # ------------------------------------------------------------------------------ files

    def to_json(self) -> str:
        """The ranker file's text."""
        return json.dumps(
            {
                "format": RANKER_FORMAT,
                "feature_spec_version": self.feature_spec_version,
                "features": list(self.features),
                "expects": {
                    "model_fingerprint": self.model_fingerprint,
                    "fields": list(self.fields),
                },
                "candidates_per_channel": self.candidates_per_channel,
                "training": self.training,
                "model": self.booster.model_to_string(),
            },
            indent=1,
        )

    def save(self, path: str | Path) -> None:
        """Write the ranker file atomically (a crash leaves the old file, or none)."""
        write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Ranker:
        """Read a ranker file.

        Raises:
            RankerMismatchError: another format, or a feature spec this code does not compute.
            IndexFormatError: a file that is not a ranker.
        """
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            fmt = doc.get("format")
        except (OSError, ValueError, AttributeError) as e:
            raise IndexFormatError(f"{path}: not a readable ranker file ({e})") from e
        if fmt != RANKER_FORMAT:
            raise RankerMismatchError(f"{path}: ranker format {fmt!r}, expected {RANKER_FORMAT!r}")
        spec, features = doc.get("feature_spec_version"), tuple(doc.get("features", ()))
        if spec != FEATURE_SPEC_VERSION or features != FEATURES:
            raise RankerMismatchError(
                f"{path}: the ranker was trained on feature spec {spec!r} ({len(features)} "
                f"features), this server computes {FEATURE_SPEC_VERSION!r} ({len(FEATURES)}); "
                "train it again with this version (aisle-rank train)"
            )
        try:
            booster = lgb.Booster(model_str=doc["model"])
            expects = doc["expects"]
            ranker = cls(
                booster=booster,
                model_fingerprint=str(expects["model_fingerprint"]),
                fields=tuple(expects["fields"]),
                feature_spec_version=spec,
                features=features,
                candidates_per_channel=int(
                    doc.get("candidates_per_channel", CANDIDATES_PER_CHANNEL)
                ),
                training=dict(doc.get("training", {})),
            )
        except (KeyError, TypeError, ValueError, lgb.basic.LightGBMError) as e:
            raise IndexFormatError(f"{path}: corrupt ranker file ({e})") from e
        if booster.num_feature() != len(FEATURES):
            raise RankerMismatchError(
                f"{path}: the model takes {booster.num_feature()} features, the spec has "
                f"{len(FEATURES)}"
            )
        return ranker
