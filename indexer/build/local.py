"""Build one index version: embed the catalog, shard it, build FAISS indexes, publish atomically."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from indexer.build.config import BuildConfig
from indexer.build.manifest import version_manifest
from indexer.build.shard import _new_index, _search_defaults, build_shard_index, check_trainable
from indexer.build.companions import write_companions
from indexer.build.embed import ShardVectorWriter, encode_chunks, item_text_chunks
from indexer.build.factory import choose_factory
from indexer.storage.faults import fault_point
from indexer.build.item_vectors import StoredItemVectors, open_item_vectors, replayed_source_rows
from indexer.storage.layout import ITEMS_FILE, IndexRoot, index_file_name, rows_file_name, vectors_file_name
from indexer.storage.manifest import MANIFEST_NAME, Manifest, ShardInfo, file_sha256, save_manifest
from indexer.rerank.vectors import VectorStore
from indexer.storage.sharding import shard_of
from indexer.version import vector_files
from indexer.build.tune import TuneResult, combine_results, perturbed_queries, query_vectors_from_file, tune_effort

__all__ = ["build_index", "resolve_factory"]

logger = logging.getLogger(__name__)

# Items embedded per chunk: bounds memory (texts + vectors of one chunk) for huge catalogs while
# keeping encoder calls large enough for length bucketing; also the progress-bar granularity.
_CHUNK_ITEMS = 2048


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
    from indexer.build.compact import updates_for_build
    from trainer.data.catalog import read_catalog
    from trainer.encoder.load import load_encoder

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
