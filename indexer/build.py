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

from indexer.embed import ShardVectorWriter, encode_chunks, item_text_chunks
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
from indexer.shards import shard_of

__all__ = ["BuildConfig", "build_index", "build_shard_index", "check_trainable"]

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
        factory: FAISS index_factory string, e.g. "Flat", "HNSW32", "IVF1024,Flat", "IVF1024,PQ32".
        batch_size: items per encoder forward pass.
        max_item_length: token cap for item texts; None = the model's own max_item_length.
    """

    catalog: Path
    out: Path
    model: Path | None = None
    shards: int = 1
    factory: str = "Flat"
    batch_size: int = 32
    max_item_length: int | None = None

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
    build. Adding to Flat is a copy, and HNSW has no GPU version, so those stay on the CPU.
    """
    if faiss.get_num_gpus() == 0 or faiss.try_extract_index_ivf(index) is None:
        return index, "cpu"
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as e:
        logger.warning("shard %d: cannot build this index type on GPU (%s); using CPU", shard, e)
        return index, "cpu"
    logger.info("shard %d: building on %d GPU(s)", shard, faiss.get_num_gpus())
    return gpu_index, "gpu"


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


def build_index(config: BuildConfig) -> Path:
    """Embed ``config.catalog``, build ``config.shards`` FAISS shards and publish a new version.

    On any failure the staging dir is removed; earlier versions and ``CURRENT`` are untouched.

    Returns:
        The published version dir, ``<out>/versions/<n>``.
    """
    # Imported here so `import indexer.build` stays cheap (the encoder pulls in torch).
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
    counts = np.bincount(shard_ids, minlength=config.shards)
    check_trainable(encoder.dim, config.factory, counts)

    root = IndexRoot(config.out.resolve())  # absolute, so the returned version dir is too
    with root.build_lock():
        n = root.next_version()
        staging = root.prepare_staging(n)
        try:
            manifest = _build_version(config, catalog, encoder, shard_ids, staging, n)
            seconds = round(time.perf_counter() - t_start, 3)
            build = {**manifest.build, "encoder_device": encoder_device, "seconds": seconds}
            manifest = dataclasses.replace(manifest, build=build)
            save_manifest(manifest, staging / MANIFEST_NAME)
            return root.publish(n)
        except BaseException:
            root.discard_staging(n)
            raise


def _encoder_device() -> str:
    # Embedding is most of a build's time; use a GPU for it when torch sees one.
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logger.info("encoding items on %s", device)
    return device


def _build_version(
    config: BuildConfig,
    catalog: Any,
    encoder: Any,
    shard_ids: np.ndarray,
    staging: Path,
    version: int,
) -> Manifest:
    """Write every file of a version into ``staging``; return its manifest (not yet saved)."""
    n_items, dim = len(catalog), encoder.dim
    writer = ShardVectorWriter(staging, shard_ids, config.shards, dim)
    t_encode = time.perf_counter()
    with tqdm(total=n_items, desc="embedding items", unit="item") as bar:
        chunks = item_text_chunks(catalog.records(), _CHUNK_ITEMS)
        for xb in encode_chunks(
            encoder, chunks, batch_size=config.batch_size, max_length=config.max_item_length
        ):
            writer.write(xb)
            bar.update(len(xb))
    writer.close()
    encode_seconds = time.perf_counter() - t_encode
    logger.info(
        "embedded %d items in %.1f s (%.0f items/s)",
        n_items,
        encode_seconds,
        n_items / max(encode_seconds, 1e-9),
    )

    shards, shard_builds, search_defaults = [], [], {}
    for s in range(config.shards):
        t_shard = time.perf_counter()
        xb = np.load(staging / vectors_file_name(s), mmap_mode="r")  # (n_s, dim) float32
        rows = np.load(staging / rows_file_name(s))  # (n_s,) int64 global rows
        index, device = build_shard_index(xb, rows, config.factory, shard=s)
        faiss.write_index(index, str(staging / index_file_name(s)))
        search_defaults = _search_defaults(index)
        del xb
        shards.append(
            ShardInfo(
                shard=s,
                count=len(rows),
                index_file=index_file_name(s),
                vectors_file=vectors_file_name(s),
                rows_file=rows_file_name(s),
            )
        )
        seconds = time.perf_counter() - t_shard
        shard_builds.append({"shard": s, "device": device, "seconds": round(seconds, 3)})
        logger.info("shard %d: %d items indexed on %s in %.1f s", s, len(rows), device, seconds)

    pq.write_table(catalog.table, staging / ITEMS_FILE)
    files = {
        p.name: file_sha256(p)
        for p in sorted(staging.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    devices = {b["device"] for b in shard_builds}
    return Manifest(
        schema_version=SCHEMA_VERSION,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model_fingerprint=encoder.fingerprint,
        model_path=str(Path(encoder.model_dir).resolve()),
        dim=dim,
        metric="inner_product",
        factory=config.factory,
        n_items=n_items,
        n_shards=config.shards,
        shards=tuple(shards),
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
        },
        search_defaults=search_defaults,
    )
