"""Build one index version: embed the catalog, shard it, build FAISS indexes, publish atomically."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from indexer.companions import write_companions
from indexer.embed import ShardVectorWriter, encode_chunks, item_text_chunks
from indexer.factory import choose_factory, parse_memory
from indexer.faults import fault_point
from indexer.item_vectors import StoredItemVectors, open_item_vectors, replayed_source_rows
from indexer.layout import (
    ITEMS_FILE,
    IndexRoot,
    index_file_name,
    rows_file_name,
    vectors_file_name,
)
from indexer.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Manifest,
    ShardInfo,
    file_sha256,
    save_manifest,
)
from indexer.rerank import VECTOR_KINDS, VectorStore
from indexer.shards import shard_of
from indexer.store import vector_files
from indexer.tune import (
    TuneConfig,
    TuneResult,
    combine_results,
    perturbed_queries,
    query_vectors_from_file,
    tune_effort,
)

__all__ = ["BuildConfig", "build_index", "build_shard_index", "check_trainable", "resolve_factory"]

logger = logging.getLogger(__name__)

# Items embedded per chunk: bounds memory (texts + vectors of one chunk) for huge catalogs while
# keeping encoder calls large enough for length bucketing; also the progress-bar granularity.
_CHUNK_ITEMS = 2048
# k-means uses at most this many points per centroid (FAISS's own default); more only costs time.
_TRAIN_POINTS_PER_LIST = 256
# Quantizers without k-means (SQ, PCA) still want a broad sample for their value ranges.
_MIN_TRAIN_SAMPLE = 65536
_TRAIN_SEED = 1234
_DEFAULT_EF_SEARCH = 64


@dataclass(frozen=True)
class BuildConfig:
    """What to index and how.

    Attributes:
        catalog: catalog file (.jsonl[.gz], .parquet, .csv[.gz]; see trainer.data.read_catalog).
        out: index root; each build adds ``versions/<n>`` and points ``CURRENT`` at it.
        model: model dir; None = the packaged all-MiniLM-L6-v2.
        shards: number of shards (items are assigned by a stable hash of their id).
        factory: FAISS index_factory string, e.g. "Flat", "HNSW32", "IVF1024,Flat",
            "IVF1024,PQ32", "IVF1024,PQ192x4fs", or "auto" (``indexer.factory.choose_factory``
            by shard size and ``memory_budget``).
        batch_size: items per encoder forward pass.
        max_item_length: token cap for item texts; None = the model's own max_item_length.
        memory_budget: RAM for the FAISS indexes of all shards, bytes or a string like "2GB";
            only with ``factory="auto"``; None = no limit.
        target_recall: tune nprobe / efSearch to the smallest value reaching this recall@k
            against exact search (``indexer.tune``); None = no tuning (fixed defaults).
        tune_k: the k of that recall@k.
        tune_queries: a queries or labels file (shared schema) whose queries, encoded, are the
            tuning queries; None = sampled item vectors perturbed by noise.
        vectors: encoding of the vector copies kept beside each shard for exact re-scoring:
            "f32" (exact), "f16" (half the bytes) or "i8" (a quarter, plus a scale per vector).
        lexical: also build the BM25 index of the item texts (hybrid search).
        interactions: an interactions file (user_id, item_id, position): each user's recent
            items are published with the version for personalisation and Recommend.
        discard_updates: drop the live updates the catalog may lack (``indexer.updates``;
            newer than CURRENT or than the catalog file) instead of replaying them onto the
            catalog; either way the log and the manifest say which.
        item_vectors: a float32 (or float16 / float64) ``.npy`` file of shape
            ``(n_items, dim)``, row r the embedding of catalog row r, taken as the item
            vectors instead of encoding the catalog (e.g. a later build that reuses a
            build's embeddings). They must be this model's output: unit rows (within 1e-3),
            finite. The model is still loaded, for its fingerprint, dim and the query side
            (tuning queries). None = encode the catalog.
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
        if self.vectors not in VECTOR_KINDS:
            raise ValueError(f"vectors must be one of {VECTOR_KINDS}, got {self.vectors!r}")
        if not isinstance(self.discard_updates, bool):
            raise ValueError(f"discard_updates must be True or False, got {self.discard_updates!r}")

    def tune_config(self) -> TuneConfig:
        """The effort-tuning settings (``target_recall`` must not be None)."""
        return TuneConfig(target_recall=self.target_recall, k=self.tune_k)


def _new_index(dim: int, factory: str) -> faiss.Index:
    """An empty index for ``factory`` that accepts our int64 ids (global rows)."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(
            f"invalid FAISS factory string {factory!r} for dim {dim}: {_faiss_message(e)}"
        ) from e
    if not _supports_ids(index):
        # Flat, HNSW, PQ, ... only number vectors 0..n-1; the map keeps global rows as ids.
        index = faiss.IndexIDMap2(index)
    return index


def _supports_ids(index: faiss.Index) -> bool:
    part = faiss.downcast_index(index)  # a second proxy; `index` keeps owning the C++ object
    if isinstance(part, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexIVF):
        return True
    if isinstance(part, faiss.IndexPreTransform):
        return _supports_ids(part.index)
    return False


def _min_train_points(index: faiss.Index) -> int:
    """Fewest training vectors ``index`` can be trained on (0 if it needs no training)."""
    if index.is_trained:
        return 0
    need = 1
    # Never rebind `index` itself: the caller's proxy may be the only owner of the C++ object,
    # and dropping it here would free the index under our feet (FAISS/SWIG ownership).
    part = faiss.downcast_index(index)
    while True:
        if isinstance(part, faiss.IndexIDMap | faiss.IndexIDMap2):
            part = faiss.downcast_index(part.index)
        elif isinstance(part, faiss.IndexPreTransform):
            for i in range(part.chain.size()):
                if isinstance(faiss.downcast_VectorTransform(part.chain.at(i)), faiss.OPQMatrix):
                    need = max(need, 256)  # OPQ trains an 8-bit PQ: k-means with 256 centroids
            part = faiss.downcast_index(part.index)
        else:
            break
    if isinstance(part, faiss.IndexIVF):
        need = max(need, part.nlist)
    pq = getattr(part, "pq", None)
    if pq is not None:
        need = max(need, pq.ksub)  # each sub-quantizer runs k-means with ksub centroids
    return need


def _faiss_message(error: Exception) -> str:
    """The useful part of a FAISS C++ exception ("Error in <signature> at <file>:<line>: ...")."""
    text = str(error).strip()
    match = re.search(r" at \S+:\d+: (?:Error: '.*?' failed: )?(.*)$", text, flags=re.DOTALL)
    return match.group(1).strip() if match else text


def check_trainable(dim: int, factory: str, counts: np.ndarray) -> None:
    """Fail fast, before any encoding, when a shard has too few items for ``factory``."""
    need = _min_train_points(_new_index(dim, factory))
    small = [(s, int(c)) for s, c in enumerate(counts) if c < need]
    if small:
        s, c = small[0]
        raise ValueError(
            f"shard {s} has {c} items, but factory {factory!r} needs at least {need} to train "
            f"({len(small)} of {len(counts)} shards are too small); use fewer IVF lists / PQ bits, "
            f"fewer shards, or 'Flat'"
        )


def _search_defaults(index: faiss.Index) -> dict[str, Any]:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        # FAISS's default nprobe=1 gives poor recall; probe ~1/32 of the lists, at least 16.
        return {"nprobe": int(min(ivf.nlist, max(16, ivf.nlist // 32)))}
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIDMap | faiss.IndexIDMap2):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        return {"efSearch": _DEFAULT_EF_SEARCH}
    return {}


def _to_gpu(index: faiss.Index, shard: int) -> tuple[faiss.Index, str]:
    """Move an IVF index to all GPUs for training and adding, when there are any.

    Only IVF indexes go to the GPU: their k-means and list assignment are the costly part of a
    build. Adding to Flat is a copy, and FAISS's HNSW has no GPU version (``_cagra_hnsw``
    builds HNSW graphs on the GPU where cuVS is there), so those stay on the CPU.
    """
    if faiss.get_num_gpus() == 0:
        return index, "cpu"
    if faiss.try_extract_index_ivf(index) is None:
        logger.info("shard %d: this index type is built on the CPU (no FAISS GPU build)", shard)
        return index, "cpu"
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as e:
        logger.warning("shard %d: cannot build this index type on GPU (%s); using CPU", shard, e)
        return index, "cpu"
    logger.info("shard %d: building on %d GPU(s)", shard, faiss.get_num_gpus())
    return gpu_index, "gpu"


def _with_ids(index: faiss.Index, ids: np.ndarray) -> faiss.Index:
    """Wrap an index already holding n vectors (numbered 0..n-1) so that it answers ``ids``.

    FAISS only wraps empty indexes in an IndexIDMap2; a graph built elsewhere (CAGRA) arrives
    full, so the map is made around a placeholder and then pointed at the real index.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if index.ntotal != len(ids):
        raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
    wrapped = faiss.IndexIDMap2(faiss.IndexFlatIP(index.d))
    wrapped.index = index
    index.this.disown()  # the map deletes it now (own_fields), not Python's proxy
    wrapped.own_fields = True
    wrapped.ntotal = index.ntotal
    faiss.copy_array_to_vector(ids, wrapped.id_map)
    wrapped.construct_rev_map()
    return wrapped


def _cagra_hnsw(xb: np.ndarray, ids: np.ndarray, factory: str, shard: int) -> faiss.Index | None:
    """Build an ``HNSWm`` factory's graph with CAGRA on the GPU, as an HNSW index for the CPU.

    Needs a GPU and a FAISS built with cuVS (``faiss.GpuIndexCagra``); returns None, having
    logged why, when either is missing or the GPU build fails, and the caller builds on the
    CPU. The CAGRA graph (degree 2m, like HNSW's base level) becomes the base level of an
    ``IndexHNSWCagra``, which FAISS completes with upper levels; the file it writes is a
    plain FAISS HNSW index that CPU servers search with efSearch as usual.
    """
    match = re.fullmatch(r"HNSW(\d+)(?:,Flat)?", factory)
    if match is None or faiss.get_num_gpus() == 0:
        return None
    if not hasattr(faiss, "GpuIndexCagra"):
        logger.info(
            "shard %d: %s built on the CPU: this FAISS has no CAGRA (install a cuVS build of "
            "faiss-gpu to build HNSW graphs on the GPU)",
            shard,
            factory,
        )
        return None
    m = int(match.group(1))
    try:
        resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexCagraConfig()
        config.graph_degree = 2 * m
        config.intermediate_graph_degree = 4 * m
        gpu_index = faiss.GpuIndexCagra(resources, xb.shape[1], faiss.METRIC_INNER_PRODUCT, config)
        gpu_index.train(np.ascontiguousarray(xb, dtype=np.float32))  # builds the graph
        cpu_index = faiss.IndexHNSWCagra(xb.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        gpu_index.copyTo(cpu_index)
    except (RuntimeError, AttributeError, TypeError) as e:
        logger.warning(
            "shard %d: CAGRA build of %s on the GPU failed (%s); building it on the CPU",
            shard,
            factory,
            _faiss_message(e),
        )
        return None
    logger.info(
        "shard %d: built the %s graph of %d vectors with CAGRA on the GPU, converted to HNSW "
        "for CPU serving",
        shard,
        factory,
        len(xb),
    )
    return _with_ids(cpu_index, ids)


def build_shard_index(
    xb: np.ndarray, ids: np.ndarray, factory: str, *, shard: int = 0
) -> tuple[faiss.Index, str]:
    """Build one shard's FAISS index (inner product) from its vectors.

    Args:
        xb: (n_s, dim) float32 vectors (may be a memmap).
        ids: (n_s,) int64 global rows, used as FAISS ids.
        factory: FAISS index_factory string.
        shard: shard number, for messages.

    Returns:
        (index on the CPU, ready to write; "cpu" or "gpu" = where it was built).
    """
    n, dim = xb.shape
    index = _new_index(dim, factory)
    cagra = _cagra_hnsw(xb, ids, factory, shard) if n else None
    if cagra is not None:
        return cagra, "gpu"
    need = _min_train_points(index)
    if n < need:
        raise ValueError(
            f"shard {shard} has {n} items, but factory {factory!r} needs at least {need} to train"
        )
    index, device = _to_gpu(index, shard)
    if not index.is_trained:
        max_train = max(_TRAIN_POINTS_PER_LIST * need, _MIN_TRAIN_SAMPLE)
        if n > max_train:
            sample = np.sort(np.random.default_rng(_TRAIN_SEED).choice(n, max_train, replace=False))
        else:
            sample = np.arange(n)
        xt = np.ascontiguousarray(xb[sample], dtype=np.float32)  # (n_train, dim)
        logger.info("shard %d: training %r on %d vectors", shard, factory, len(xt))
        try:
            index.train(xt)
        except RuntimeError as e:
            raise ValueError(
                f"shard {shard}: training {factory!r} on {len(xt)} vectors failed: "
                f"{_faiss_message(e)}"
            ) from e
    # Add in chunks so a memmapped shard is never copied into RAM twice.
    for start in range(0, n, 65536):
        chunk = np.ascontiguousarray(xb[start : start + 65536], dtype=np.float32)
        index.add_with_ids(chunk, np.ascontiguousarray(ids[start : start + 65536], dtype=np.int64))
    if device == "gpu":
        index = faiss.index_gpu_to_cpu(index)
    return index, device


def resolve_factory(
    config: BuildConfig, shard_ids: np.ndarray, dim: int
) -> tuple[BuildConfig, dict[str, Any] | None]:
    """Settle ``factory="auto"`` from the largest shard and the memory budget, then check that
    the factory can be trained on every shard (local and Spark builds alike).

    Args:
        shard_ids: (n_items,) int shard of each catalog row.
        dim: the model's vector dim.

    Returns:
        The config with a concrete factory, and the manifest's ``factory_choice`` record (None
        unless the factory was "auto").

    Raises:
        ValueError: a shard too small to train the factory.
    """
    counts = np.bincount(shard_ids, minlength=config.shards)
    record = None
    if config.factory == "auto":
        choice = choose_factory(
            int(counts.max()), dim, memory_budget=config.memory_budget, n_shards=config.shards
        )
        logger.info("factory auto: %s, because %s", choice.factory, choice.reason)
        record = {
            "requested": "auto",
            "memory_budget": config.memory_budget,
            **choice.to_json_dict(),
        }
        config = dataclasses.replace(config, factory=choice.factory, memory_budget=None)
    check_trainable(dim, config.factory, counts)
    return config, record


def build_index(config: BuildConfig) -> Path:
    """Embed ``config.catalog``, build ``config.shards`` FAISS shards and publish a new version.

    On any failure the staging dir is removed; earlier versions and ``CURRENT`` are untouched.

    Returns:
        The published version dir, ``<out>/versions/<n>``.
    """
    # Imported here so `import indexer.build` stays cheap (the encoder pulls in torch).
    from indexer.compact import updates_for_build  # imports this module: not at the top
    from trainer.data import read_catalog
    from trainer.encoder import load_encoder

    t_start = time.perf_counter()
    catalog = read_catalog(config.catalog)
    if len(catalog) == 0:
        raise ValueError(f"{config.catalog}: the catalog has no items; nothing to index")
    logger.info("read %d items from %s", len(catalog), config.catalog)
    encoder_device = _encoder_device()
    encoder = load_encoder(config.model, device=encoder_device)
    shard_ids = shard_of(catalog.item_ids, config.shards)
    config, factory_choice = resolve_factory(config, shard_ids, encoder.dim)
    stored = None
    if config.item_vectors is not None:  # header checks now; row checks as the rows are read
        stored = StoredItemVectors(
            config.item_vectors, open_item_vectors(config.item_vectors, len(catalog), encoder.dim)
        )
    # Read and encode a tuning query file now: a bad file should fail before the long embedding.
    xq_tune = None
    if config.target_recall is not None and config.tune_queries is not None:
        if _is_exact_factory(encoder.dim, config.factory):
            logger.info("factory %r is exact: no search effort to tune", config.factory)
        else:
            xq_tune = query_vectors_from_file(
                encoder,
                config.tune_queries,
                config.tune_config().n_queries,
                seed=config.tune_config().seed,
            )

    root = IndexRoot(config.out.resolve())  # absolute, so the returned version dir is too
    with root.build_lock():
        # Live updates the catalog may lack are replayed onto it, or dropped on request: never
        # silently (indexer.compact.updates_for_build). Under the lock: no compaction runs.
        updates = updates_for_build(
            root.root, catalog, encoder.fingerprint, discard=config.discard_updates
        )
        if updates.changed:
            if stored is not None:
                stored = dataclasses.replace(
                    stored, source_rows=replayed_source_rows(catalog.item_ids, updates)
                )
            catalog = updates.catalog
            shard_ids = shard_of(catalog.item_ids, config.shards)
        n = root.next_version()
        staging = root.prepare_staging(n)
        try:
            manifest = _build_version(
                config,
                catalog,
                encoder,
                shard_ids,
                staging,
                n,
                xq_tune,
                updates=updates,
                stored=stored,
            )
            seconds = round(time.perf_counter() - t_start, 3)
            build = {**manifest.build, "encoder_device": encoder_device, "seconds": seconds}
            if stored is not None:
                build["item_vectors"] = {
                    "path": str(stored.path.resolve()),
                    "sha256": file_sha256(stored.path),
                }
            if factory_choice is not None:
                build["factory_choice"] = factory_choice
            if updates.summary:
                build["updates"] = updates.summary
            manifest = dataclasses.replace(manifest, build=build, applied_seq=updates.applied_seq)
            save_manifest(manifest, staging / MANIFEST_NAME)
            fault_point("after-manifest")
            return root.publish(n)
        except BaseException:
            root.discard_staging(n)
            raise


def _is_exact_factory(dim: int, factory: str) -> bool:
    """Whether ``factory`` searches exactly (Flat): nothing to tune then."""
    index = _new_index(dim, factory)  # keep this proxy: it owns the C++ object `part` points into
    part = faiss.downcast_index(index)
    return isinstance(part, faiss.IndexIDMap2) and isinstance(
        faiss.downcast_index(part.index), faiss.IndexFlat
    )


def _sample_item_vectors(
    staging: Path, shard_ids: np.ndarray, n_shards: int, n: int, seed: int
) -> np.ndarray:
    """(min(n, n_items), dim) float32 vectors of a fixed-seed sample of items, all shards."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(shard_ids), min(n, len(shard_ids)), replace=False))
    parts = []
    for s in range(n_shards):
        rows = np.load(staging / rows_file_name(s))  # ascending global rows
        xb = np.load(staging / vectors_file_name(s), mmap_mode="r")
        mine = sample[shard_ids[sample] == s]
        parts.append(np.asarray(xb[np.searchsorted(rows, mine)], dtype=np.float32))
    return np.concatenate(parts)


def _write_compact_vectors(staging: Path, shard: int, kind: str, xb: np.ndarray) -> list[str]:
    """Encode a shard's float32 vectors as ``kind`` beside it (in chunks: the shard may not fit
    in RAM twice) and delete the float32 file; returns the files written."""
    names = vector_files(shard, kind)
    n = len(xb)
    data_dtype = np.float16 if kind == "f16" else np.int8  # f16 is saved as float16
    data = np.lib.format.open_memmap(
        staging / names[0], mode="w+", dtype=data_dtype, shape=xb.shape
    )
    scales = None
    if kind == "i8":
        scales = np.lib.format.open_memmap(
            staging / names[1], mode="w+", dtype=np.float32, shape=(n,)
        )
    for start in range(0, n, 65536):
        part = VectorStore.encode(np.asarray(xb[start : start + 65536]), kind)
        end = start + len(part.data)
        data[start:end] = part.data.view(np.float16) if kind == "f16" else part.data
        if scales is not None:
            scales[start:end] = part.scales
    data.flush()
    if scales is not None:
        scales.flush()
    del data, scales
    (staging / vectors_file_name(shard)).unlink()
    return names


def _encoder_device() -> str:
    # Embedding is most of a build's time; use a GPU for it when torch sees one.
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logger.info("encoding items on %s", device)
    return device


def _builder(factory: str, device: str) -> str:
    """What built a shard, for the manifest: the CPU, FAISS's GPU IVF, or CAGRA on the GPU."""
    if device == "cpu":
        return "faiss-cpu"
    return "cuvs-cagra->hnsw" if factory.startswith("HNSW") else "faiss-gpu"


def _build_version(
    config: BuildConfig,
    catalog: Any,
    encoder: Any,
    shard_ids: np.ndarray,
    staging: Path,
    version: int,
    xq_tune: np.ndarray | None = None,
    *,
    updates: Any = None,
    stored: StoredItemVectors | None = None,
) -> Manifest:
    """Write every file of a version into ``staging``; return its manifest (not yet saved).

    ``stored``: item vectors read from a file (``BuildConfig.item_vectors``) instead of
    encoding the catalog.
    """
    n_items, dim = len(catalog), encoder.dim
    writer = ShardVectorWriter(staging, shard_ids, config.shards, dim)
    t_encode = time.perf_counter()
    if stored is None:
        vector_chunks = encode_chunks(
            encoder,
            item_text_chunks(catalog.records(), _CHUNK_ITEMS),
            batch_size=config.batch_size,
            max_length=config.max_item_length,
        )
    else:
        vector_chunks = stored.chunks(catalog, encoder, config, updates)
    desc = "embedding items" if stored is None else "reading item vectors"
    with tqdm(total=n_items, desc=desc, unit="item") as bar:
        start = 0
        for xb in vector_chunks:
            if updates is not None:  # replayed upserts keep their logged vectors (same model)
                xb = updates.patch(start, xb)
            writer.write(xb)
            start += len(xb)
            bar.update(len(xb))
    writer.close()
    fault_point("after-embed")
    encode_seconds = time.perf_counter() - t_encode
    logger.info(
        "%s %d items in %.1f s (%.0f items/s)",
        "embedded" if stored is None else f"read the vectors of {stored.path} for",
        n_items,
        encode_seconds,
        n_items / max(encode_seconds, 1e-9),
    )

    tune = None
    if config.target_recall is not None and not _is_exact_factory(dim, config.factory):
        tune = config.tune_config()
        if xq_tune is None:
            logger.warning(
                "tuning search effort with perturbed item vectors, a stand-in for queries that "
                "can under-estimate the effort real queries need; pass tune_queries "
                "(--tune-queries) with a queries or labels file to tune on real queries"
            )
            xq_tune = perturbed_queries(
                _sample_item_vectors(staging, shard_ids, config.shards, tune.n_queries, tune.seed),
                tune.n_queries,
                noise=tune.noise,
                seed=tune.seed,
            )
    shards, shard_builds, search_defaults = [], [], {}
    tune_results: list[TuneResult] = []
    for s in range(config.shards):
        t_shard = time.perf_counter()
        xb = np.load(staging / vectors_file_name(s), mmap_mode="r")  # (n_s, dim) float32
        rows = np.load(staging / rows_file_name(s))  # (n_s,) int64 global rows
        index, device = build_shard_index(xb, rows, config.factory, shard=s)
        faiss.write_index(index, str(staging / index_file_name(s)))
        search_defaults = _search_defaults(index)
        if tune is not None:
            tune_results.append(
                tune_effort(
                    index,
                    xb,
                    rows,
                    xq_tune,
                    k=tune.k,
                    target_recall=tune.target_recall,
                    rescore_depth=tune.rescore_depth,
                    shard=s,
                )
            )
        vectors_file = vectors_file_name(s)
        if config.vectors != "f32":
            vectors_file = _write_compact_vectors(staging, s, config.vectors, xb)[0]
        del xb, index
        shards.append(
            ShardInfo(
                shard=s,
                count=len(rows),
                index_file=index_file_name(s),
                vectors_file=vectors_file,
                rows_file=rows_file_name(s),
            )
        )
        seconds = time.perf_counter() - t_shard
        shard_builds.append(
            {
                "shard": s,
                "device": device,
                "builder": _builder(config.factory, device),
                "seconds": round(seconds, 3),
            }
        )
        logger.info("shard %d: %d items indexed on %s in %.1f s", s, len(rows), device, seconds)
    tuning = None
    if tune is not None:
        search_defaults = combine_results(tune_results, tune)
        tuning = {
            "target_recall": tune.target_recall,
            "k": tune.k,
            "queries": (
                str(Path(config.tune_queries).resolve())
                if config.tune_queries is not None
                else f"perturbed item vectors (noise {tune.noise}, seed {tune.seed}); real "
                f"queries (--tune-queries) may need more effort"
            ),
            "n_queries": len(xq_tune),
            "shards": [{"shard": s, **r.to_json_dict()} for s, r in enumerate(tune_results)],
        }

    pq.write_table(catalog.table, staging / ITEMS_FILE)
    companions = write_companions(
        staging, catalog, shard_ids, config.shards,
        lexical=config.lexical, interactions=config.interactions,
    )  # fmt: skip
    fault_point("after-shards-written")
    return version_manifest(
        config,
        encoder,
        staging,
        version=version,
        n_items=n_items,
        shards=tuple(shards),
        shard_builds=shard_builds,
        encode_seconds=encode_seconds,
        tuning=tuning,
        search_defaults=search_defaults,
        extra_build=companions,
    )


def version_manifest(
    config: BuildConfig,
    encoder: Any,
    version_dir: Path,
    *,
    version: int,
    n_items: int,
    shards: tuple[ShardInfo, ...],
    shard_builds: list[dict[str, Any]],
    encode_seconds: float,
    tuning: dict[str, Any] | None,
    search_defaults: dict[str, Any],
    extra_build: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of a version whose files are all written in `version_dir` (every file is
    checksummed); shared by the single-machine and the Spark build."""
    files = {
        p.name: file_sha256(p)
        for p in sorted(version_dir.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    devices = {b["device"] for b in shard_builds}
    return Manifest(
        schema_version=SCHEMA_VERSION,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model_fingerprint=encoder.fingerprint,
        model_path=str(Path(encoder.model_dir).resolve()),
        dim=encoder.dim,
        metric="inner_product",
        factory=config.factory,
        n_items=n_items,
        n_shards=config.shards,
        shards=shards,
        files=files,
        build={
            "device": devices.pop() if len(devices) == 1 else "mixed",
            "shards": shard_builds,
            "catalog": {
                "path": str(config.catalog.resolve()),
                "sha256": file_sha256(config.catalog),
            },
            "encode_seconds": round(encode_seconds, 3),
            "items_per_second": round(n_items / max(encode_seconds, 1e-9), 1),
            "batch_size": config.batch_size,
            "max_item_length": config.max_item_length or encoder.info.max_item_length,
            "faiss_version": faiss.__version__,
            "vectors": config.vectors,
            "vectors_bytes": sum(
                (version_dir / name).stat().st_size
                for s in range(config.shards)
                for name in vector_files(s, config.vectors)
            ),
            **({"tuning": tuning} if tuning is not None else {}),
            **(extra_build or {}),
        },
        search_defaults=search_defaults,
    )
