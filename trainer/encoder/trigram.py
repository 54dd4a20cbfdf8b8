"""The lexical part of the towers: a hashed character-trigram sketch appended to the BERT vector.

BERT towers trained on a few thousand queries miss what a keyword engine gets for free: rare
exact tokens such as model numbers, product lines and brands ("kohler whitehaven", "weber 330").
Product-search two-tower models have long added character-trigram features to each tower for
that reason. Here both towers append the same fixed sketch of a text's trigrams to their vector:

1. features: the lower-cased text split into words (``\\w+``), each padded with one space on
   both sides and cut into character trigrams (``" 330 "`` → ``" 33"``, ``"330"``, ``"30 "``);
   a trigram's id is its CRC-32 modulo ``buckets``.
2. weights: sublinear TF (1 + log count) times IDF, ``log((N + 1) / (df + 1)) + 1`` over the
   item texts it was fitted on (``N`` texts; a trigram never seen there gets the largest IDF),
   then L2-normalised: a TF-IDF vector over trigrams.
3. sketch: each trigram adds ``± weight / sqrt(hashes)`` at ``hashes`` positions of a
   ``dim``-sized vector (a count sketch: positions and signs from a multiplicative hash of the
   id), then the vector is L2-normalised. The inner product of two sketches estimates the
   cosine of their TF-IDF vectors.

The model's vector is ``[bert / sqrt(1 + w), sqrt(w) * sketch / sqrt(1 + w)]``: unit length,
and its inner product is ``(cos_bert + w * cos_trigrams) / (1 + w)``, so FAISS, the re-ranker
and the server need nothing new. ``w`` (``weight``) is fitted on the training run's eval queries
(``TrainConfig.lexical_weight``). The IDF table is stored in ``lexical_tower.safetensors``
(part of the fingerprint); the settings in ``aisle_model.json`` (``lexical``).

Numpy only: the serving path imports it without torch.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LEXICAL_FILE = "lexical_tower.safetensors"
DEFAULT_BUCKETS = 1 << 20
DEFAULT_HASHES = 2
DEFAULT_WEIGHT = 0.5  # when no eval query can score the grid
# Mix weights tried when fitting w on the eval queries.
WEIGHT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
_WORD = re.compile(r"\w+")
# Odd 64-bit multipliers, one per hash function (Fibonacci hashing and two more).
_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)
_SETTINGS = ("dim", "weight", "hashes", "buckets")


def trigram_ids(text: str, buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    """(m,) int64 bucket ids of the text's word-padded character trigrams, with repeats."""
    ids = []
    for word in _WORD.findall(text.lower()):
        padded = f" {word} "
        ids.extend(
            zlib.crc32(padded[i : i + 3].encode("utf-8")) % buckets for i in range(len(padded) - 2)
        )
    return np.asarray(ids, dtype=np.int64)


def check_lexical_settings(settings: Mapping[str, Any], where: str = "lexical") -> dict[str, Any]:
    """``settings`` checked: ``dim`` (int >= 8), ``weight`` (> 0), ``hashes`` (1..4),
    ``buckets`` (int >= 1024).

    Raises:
        ValueError: an unknown or missing key, or a bad value (the message names it).
    """
    if not isinstance(settings, Mapping):
        raise ValueError(f"{where} must be a table with {list(_SETTINGS)}, got {settings!r}")
    unknown = sorted(set(settings) - set(_SETTINGS))
    missing = [k for k in _SETTINGS if k not in settings]
    if unknown or missing:
        raise ValueError(
            f"{where}: unknown key(s) {unknown} / missing key(s) {missing}; "
            f"expected exactly {list(_SETTINGS)}"
        )
    out = dict(settings)
    limits = (("dim", 8, 4096), ("hashes", 1, len(_MULTIPLIERS)), ("buckets", 1024, 1 << 24))
    for key, low, high in limits:
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{where}.{key} must be an int in [{low}, {high}], got {value!r}")
    weight = out["weight"]
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ValueError(f"{where}.weight must be a number > 0, got {weight!r}")
    out["weight"] = float(weight)
    if not (math.isfinite(out["weight"]) and 0 < out["weight"] <= 100):
        raise ValueError(f"{where}.weight must be in (0, 100], got {weight!r}")
    return out


@dataclass(frozen=True)
class LexicalSketch:
    """A fitted trigram sketch: settings plus the (buckets,) float32 IDF table."""

    dim: int
    weight: float
    hashes: int
    buckets: int
    idf: np.ndarray

    def __post_init__(self) -> None:
        check_lexical_settings(self.settings())
        if self.idf.shape != (self.buckets,) or self.idf.dtype != np.float32:
            raise ValueError(
                f"the IDF table must be ({self.buckets},) float32, got {self.idf.shape} "
                f"{self.idf.dtype}"
            )

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        *,
        dim: int,
        weight: float = DEFAULT_WEIGHT,
        hashes: int = DEFAULT_HASHES,
        buckets: int = DEFAULT_BUCKETS,
    ) -> LexicalSketch:
        """IDF of each trigram bucket over ``texts`` (the item texts of the catalogs).

        Raises:
            ValueError: no texts, or bad settings.
        """
        if not len(texts):
            raise ValueError("cannot fit the lexical sketch on no texts")
        check_lexical_settings({"dim": dim, "weight": weight, "hashes": hashes, "buckets": buckets})
        df = np.zeros(buckets, dtype=np.float64)  # (buckets,)
        for text in texts:
            df[np.unique(trigram_ids(text, buckets))] += 1
        idf = (np.log((len(texts) + 1) / (df + 1)) + 1).astype(np.float32)
        return cls(dim=dim, weight=float(weight), hashes=hashes, buckets=buckets, idf=idf)

    def settings(self) -> dict[str, Any]:
        """What ``aisle_model.json`` records (``lexical``)."""
        return {
            "dim": self.dim,
            "weight": self.weight,
            "hashes": self.hashes,
            "buckets": self.buckets,
        }

    def with_weight(self, weight: float) -> LexicalSketch:
        return LexicalSketch(self.dim, float(weight), self.hashes, self.buckets, self.idf)

    def sketch(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 unit rows (zeros for a text with no word)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, dim)
        for r, text in enumerate(texts):
            ids = trigram_ids(text, self.buckets)
            if not len(ids):
                continue
            unique, counts = np.unique(ids, return_counts=True)
            w = (1.0 + np.log(counts)) * self.idf[unique]  # (u,) TF-IDF
            w /= np.linalg.norm(w) * math.sqrt(self.hashes)
            for j in range(self.hashes):
                h = unique.astype(np.uint64) * np.uint64(_MULTIPLIERS[j])  # wraps mod 2**64
                pos = ((h >> np.uint64(40)) % np.uint64(self.dim)).astype(np.int64)
                sign = np.where((h >> np.uint64(33)) & np.uint64(1), 1.0, -1.0)
                np.add.at(out[r], pos, sign * w)
        norms = np.linalg.norm(out, axis=1, keepdims=True)  # (n, 1)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def combine(self, dense: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """``[dense, sqrt(w) * sketch] / sqrt(1 + w)`` for unit ``dense`` rows: (n, d + dim)."""
        scale = 1.0 / math.sqrt(1.0 + self.weight)
        sketch = self.sketch(texts) * np.float32(math.sqrt(self.weight) * scale)
        return np.concatenate([dense * np.float32(scale), sketch], axis=1).astype(np.float32)

    def save(self, model_dir: str | Path) -> Path:
        """Write the IDF table to ``model_dir/lexical_tower.safetensors``."""
        from safetensors.numpy import save_file

        path = Path(model_dir) / LEXICAL_FILE
        save_file({"idf": self.idf}, str(path))
        return path

    @classmethod
    def load(cls, model_dir: str | Path, settings: Mapping[str, Any]) -> LexicalSketch:
        """The sketch of a model dir, from its ``lexical`` settings and IDF file.

        Raises:
            ValueError: the file is missing or unreadable, or does not match the settings.
        """
        from safetensors.numpy import load_file

        checked = check_lexical_settings(settings)
        path = Path(model_dir) / LEXICAL_FILE
        if not path.is_file():
            raise ValueError(
                f"{str(model_dir)!r} has lexical settings but no {LEXICAL_FILE}; copy the whole "
                "model dir"
            )
        try:
            idf = load_file(str(path))["idf"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a bad model dir
            raise ValueError(f"{path}: cannot read the IDF table: {exc}") from exc
        try:
            return cls(idf=idf, **checked)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
