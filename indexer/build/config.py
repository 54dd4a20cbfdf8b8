"""BuildConfig: the settings of one index build and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from indexer.build.factory import parse_memory
from indexer.build.tune import TuneConfig
from indexer.rerank.vectors import VECTOR_KINDS


@dataclass(frozen=True)
class BuildConfig:
    """What to index and how.

    Attributes:
        catalog: catalog file (.jsonl[.gz], .parquet, .csv[.gz]; see
            ``trainer.data.catalog.read_catalog``).
        out: index root; each build adds ``versions/<n>`` and points ``CURRENT`` at it.
        model: model dir; None = the packaged all-MiniLM-L6-v2.
        shards: number of shards (items are assigned by a stable hash of their id).
        factory: FAISS index_factory string, e.g. "Flat", "HNSW32", "IVF1024,Flat",
            "IVF1024,PQ32", "IVF1024,PQ192x4fs", or "auto"
            (``indexer.build.factory.choose_factory`` by shard size and ``memory_budget``).
        batch_size: items per encoder forward pass.
        max_item_length: token cap for item texts; None = the model's own max_item_length.
        memory_budget: RAM for the FAISS indexes of all shards, bytes or a string like "2GB";
            only with ``factory="auto"``; None = no limit.
        target_recall: tune nprobe / efSearch to the smallest value reaching this recall@k
            against exact search (``indexer.build.tune``); None = no tuning (fixed defaults).
        tune_k: the k of that recall@k.
        tune_queries: a queries or labels file (shared schema) whose queries, encoded, are the
            tuning queries; None = sampled item vectors perturbed by noise.
        vectors: encoding of the vector copies kept beside each shard for exact re-scoring:
            "f32" (exact), "f16" (half the bytes) or "i8" (a quarter, plus a scale per vector).
        lexical: also build the BM25 index of the item texts (hybrid search).
        interactions: an interactions file (user_id, item_id, position): each user's recent
            items are published with the version for personalisation and Recommend.
        discard_updates: drop the live updates the catalog may lack (``indexer.live.fold``;
            newer than CURRENT or than the catalog file) instead of replaying them onto the
            catalog; either way the log and the manifest say which.
        item_vectors: a float32 (or float16 / float64) ``.npy`` file of shape
            ``(n_items, dim)``, row r the embedding of catalog row r, taken as the item
            vectors instead of encoding the catalog (e.g. a later build that reuses a
            build's embeddings). They must be this model's output: unit rows (within 1e-3),
            finite. The model is still loaded, for its fingerprint, dim and the query side
            (tuning queries). None = encode the catalog.
        ranker: a ranker file (``aisle-rank train``) to publish with the version; it must
            have been trained on this model's features and the catalog's fields.
    """

    catalog: Path
    out: Path
    model: Path | None = None
    shards: int = 1
    factory: str = "Flat"
    batch_size: int = 32
    max_item_length: int | None = None
    memory_budget: int | str | None = None
    target_recall: float | None = 0.95
    tune_k: int = 10
    tune_queries: Path | None = None
    vectors: str = "f32"
    discard_updates: bool = False
    lexical: bool = True
    interactions: Path | None = None
    item_vectors: Path | None = None
    ranker: Path | None = None

    def __post_init__(self) -> None:
        # Accept str paths (CLI, notebooks) but store Paths.
        object.__setattr__(self, "catalog", Path(self.catalog))
        object.__setattr__(self, "out", Path(self.out))
        if self.model is not None:
            object.__setattr__(self, "model", Path(self.model))
        if not self.catalog.is_file():
            raise ValueError(f"catalog file not found: {self.catalog}; pass an existing file")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out must be a directory (the index root), but {self.out} is a file")
        for name in ("shards", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_item_length is not None and (
            isinstance(self.max_item_length, bool)
            or not isinstance(self.max_item_length, int)
            or self.max_item_length < 1
        ):
            raise ValueError(
                f"max_item_length must be an integer >= 1 or None (the model's default), "
                f"got {self.max_item_length!r}"
            )
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ValueError('factory must be a FAISS index_factory string such as "Flat"')
        object.__setattr__(self, "factory", self.factory.strip())
        if self.memory_budget is not None:
            if self.factory != "auto":
                raise ValueError(
                    f"memory_budget only applies to factory 'auto' (got factory "
                    f"{self.factory!r}); drop it, or pass factory 'auto'"
                )
            object.__setattr__(self, "memory_budget", parse_memory(self.memory_budget))
        if self.target_recall is not None:
            self.tune_config()  # validates target_recall and tune_k
        if self.interactions is not None:
            object.__setattr__(self, "interactions", Path(self.interactions))
            if not self.interactions.is_file():
                raise ValueError(f"interactions file not found: {self.interactions}")
        if self.tune_queries is not None:
            object.__setattr__(self, "tune_queries", Path(self.tune_queries))
            if not self.tune_queries.is_file():
                raise ValueError(
                    f"tune_queries file not found: {self.tune_queries}; pass a queries or labels "
                    f"file, or leave it out to tune with perturbed item vectors"
                )
        if self.item_vectors is not None:
            object.__setattr__(self, "item_vectors", Path(self.item_vectors))
            if not self.item_vectors.is_file():
                raise ValueError(
                    f"item_vectors file not found: {self.item_vectors}; pass a .npy of shape "
                    f"(n_items, dim), or leave it out to encode the catalog"
                )
        if self.ranker is not None:
            object.__setattr__(self, "ranker", Path(self.ranker))
            if not self.ranker.is_file():
                raise ValueError(f"ranker file not found: {self.ranker} (aisle-rank train)")
        if self.vectors not in VECTOR_KINDS:
            raise ValueError(f"vectors must be one of {VECTOR_KINDS}, got {self.vectors!r}")
        if not isinstance(self.discard_updates, bool):
            raise ValueError(f"discard_updates must be True or False, got {self.discard_updates!r}")

    def tune_config(self) -> TuneConfig:
        """The effort-tuning settings (``target_recall`` must not be None)."""
        return TuneConfig(target_recall=self.target_recall, k=self.tune_k)
