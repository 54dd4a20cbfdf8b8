"""The fast query tower: a small query encoder beside the full towers, in the same vector space.

A model dir may hold, in ``FAST_TOWER_DIR`` (``query_fast/``), a query tower that is cheaper than
the full one and was distilled into the item tower's vector space (``aisle-train distill-query``,
``trainer.distill``). It is query side only, so it is not part of ``model_fingerprint``, which is
what an index records (the item side): adding, replacing or removing the fast tower needs no
reindex. It records instead the model fingerprint it was distilled against
(``FastTowerInfo.item_fingerprint``); loading refuses a fast tower made for other item vectors.

Two kinds:

- ``"onnx"``: ``query_fast/query_tower.onnx`` in the format of ``trainer.encoder.onnx_export``
  (tokenizer in its metadata), e.g. the teacher's graph with int8 weights, or a 1-2 layer
  student; run by ``trainer.encoder.onnx_tower.OnnxTower``.
- ``"static"``: one vector per token (``query_fast/static.safetensors``, key ``embeddings``,
  (vocab, dim) float32) and the tokenizer (``query_fast/tokenizer.json``); a query is the mean of
  its tokens' vectors (their norms are the learned token weights) — model2vec's static model,
  run here by ``StaticTower`` in numpy (microseconds per query, no ONNX Runtime).

The trigram sketch (``trainer.encoder.trigram``), if the model has one, is appended by the
Encoder to whichever tower's vector, as for the full tower.
"""

from __future__ import annotations

import hashlib
import json
import queue
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from trainer.io import write_atomic

FAST_TOWER_DIR = "query_fast"
FAST_TOWER_INFO = "fast_tower.json"
STATIC_FILE = "static.safetensors"
STATIC_TOKENIZER = "tokenizer.json"
KINDS = ("onnx", "static")
# Which query tower an Encoder uses: "auto" = the fast one when the model dir has it.
QUERY_TOWERS = ("auto", "fast", "full")
# How a fast tower is made (``trainer.distill``); the default is the one ``aisle-train`` adds
# after training: the static tower alone meets 1 ms per query within 2 % NDCG (docs/training.md).
FAST_TOWER_VARIANTS = ("int8", "student", "static")
DEFAULT_FAST_TOWER = "static"
_HEX64_LEN = 64


@dataclass(frozen=True)
class FastTowerInfo:
    """What ``query_fast/fast_tower.json`` records.

    ``kind``: "onnx" or "static". ``variant``: how it was made ("int8", "student-2l",
    "static", ...). ``item_fingerprint``: ``model_fingerprint`` of the model dir it was distilled
    against (the item side it maps into). ``dim``: its output size (the towers' dim, before the
    trigram sketch). ``max_length``: token limit per query. ``teacher``: the teacher's base model
    name. ``metrics``: what distillation measured (held-out cosine to the teacher, etc.).
    """

    kind: str
    variant: str
    item_fingerprint: str
    dim: int
    max_length: int
    teacher: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"FastTowerInfo.kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.item_fingerprint, str) or len(self.item_fingerprint) != _HEX64_LEN:
            raise ValueError(
                "FastTowerInfo.item_fingerprint must be the 64-char model fingerprint the tower "
                f"was distilled against, got {self.item_fingerprint!r}"
            )
        for name in ("dim", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"FastTowerInfo.{name} must be a positive int, got {value!r}")


def fast_tower_dir(model_dir: str | Path) -> Path:
    """Where a model dir keeps its fast query tower."""
    return Path(model_dir) / FAST_TOWER_DIR


def read_fast_tower_info(model_dir: str | Path) -> FastTowerInfo | None:
    """The model dir's fast tower metadata, or None when it has no fast tower.

    Raises:
        ValueError: ``fast_tower.json`` exists but is unreadable or invalid.
    """
    path = fast_tower_dir(model_dir) / FAST_TOWER_INFO
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read JSON: {exc}") from exc
    known = {f.name for f in fields(FastTowerInfo)}
    if not isinstance(data, dict) or set(data) - known:
        raise ValueError(f"{path}: expected a JSON object with fields {sorted(known)}")
    try:
        return FastTowerInfo(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def write_fast_tower_info(tower_dir: str | Path, info: FastTowerInfo) -> None:
    """Write ``fast_tower.json`` into ``tower_dir`` atomically."""
    write_atomic(Path(tower_dir) / FAST_TOWER_INFO, json.dumps(asdict(info), indent=2) + "\n")


def query_fingerprint(model_dir: str | Path) -> str:
    """sha256 hex of the fast tower's files (its identity; "" when there is none).

    The query side only: an index never records it, ``model_fingerprint`` leaves it out.
    """
    tower = fast_tower_dir(model_dir)
    if not (tower / FAST_TOWER_INFO).is_file():
        return ""
    digest = hashlib.sha256(b"aisle-fast-query-tower-v1\0")
    for file in sorted(p for p in tower.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        digest.update(file.relative_to(tower).as_posix().encode("utf-8") + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


_SMALL_BATCH = 8  # up to this many texts are tokenised one by one on the calling thread


class StaticTower:
    """A static token-embedding query tower (a ``trainer.encoder.load.TowerBackend``).

    A query's vector is the mean of its tokens' rows of ``embeddings`` (tokenised without
    special tokens, truncated to ``max_length``); the rows' norms act as per-token weights.
    No token → a zero vector (the Encoder keeps it zero).
    """

    backend = "static"
    max_positions = 0  # no position embeddings: any length

    def __init__(self, tower_dir: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        try:
            self.embeddings = np.ascontiguousarray(
                load_file(str(tower_dir / STATIC_FILE))["embeddings"], dtype=np.float32
            )  # (vocab, dim)
            tokenizer = Tokenizer.from_file(str(tower_dir / STATIC_TOKENIZER))
        except Exception as exc:  # safetensors/tokenizers raise their own types
            raise ValueError(
                f"cannot load the static query tower in {str(tower_dir)!r}: {exc}; redo it with "
                "aisle-train distill-query"
            ) from exc
        if self.embeddings.ndim != 2:
            raise ValueError(f"{tower_dir / STATIC_FILE}: embeddings must be (vocab, dim)")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer_json = tokenizer.to_str()
        # A Tokenizer is not safe to call from two threads at once (PyO3 refuses a borrow with
        # "Already borrowed"; huggingface/tokenizers#537), and a lock around it made concurrent
        # server requests queue: each call borrows a spare copy, made when none is free.
        self._spare: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._spare.put(tokenizer)
        self.dim = int(self.embeddings.shape[1])

    def token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids per text, without special tokens, at most ``max_length`` each."""
        try:
            tokenizer = self._spare.get_nowait()
        except queue.Empty:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(self._tokenizer_json)
        try:
            if len(texts) <= _SMALL_BATCH:  # a request's query: no hand-off to rayon's pool
                encodings = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
            else:
                encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        finally:
            self._spare.put(tokenizer)
        vocab = self.embeddings.shape[0]
        return [[i for i in e.ids[:max_length] if i < vocab] for e in encodings]

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        """texts (b,) → (b, dim) float32 mean token vectors (not yet normalised)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, ids in enumerate(self.token_ids(texts, max_length)):
            if ids:
                out[row] = self.embeddings[ids].mean(axis=0)
        return out
