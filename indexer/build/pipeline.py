"""One index build, step by step: the pipeline the single-machine and the Spark build share.

``build_version`` runs the steps in order: settle ``factory="auto"`` and check that every shard
can train the factory; read and encode the tuning queries (a bad file fails before the long
embedding); under the build lock, replay the live updates the catalog may lack
(``indexer.live.fold``); embed every item; tune on perturbed item vectors when there is no
query file; build each shard's files (``write_shard``); write ``items.parquet``, the BM25 and
users files (``write_companions``) and the manifest; publish atomically.

Two steps are the engine's, one switch as in autofaiss: how items are embedded and how shards
are built (``BuildEngine``), in this process (``indexer.build.local``) or as a Spark job with
one task per shard (``indexer.build.spark``). Both write the same files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
import pyarrow.parquet as pq

from indexer.build.config import BuildConfig
from indexer.build.factory import choose_factory
from indexer.build.ranker import install_ranker
from indexer.build.shard import (
    build_shard_index,
    builder_name,
    check_trainable,
    is_exact_factory,
    search_defaults,
)
from indexer.build.tune import (
    TuneConfig,
    TuneResult,
    combine_results,
    perturbed_queries,
    query_vectors_from_file,
    tune_effort,
)
from indexer.lexical.index import LexicalIndex
from indexer.live.fold import BuildUpdates, updates_for_build
from indexer.rerank.vectors import VectorStore
from indexer.storage.faults import fault_point
from indexer.storage.layout import (
    ITEMS_FILE,
    IndexRoot,
    index_file_name,
    rows_file_name,
    vectors_file_name,
)
from indexer.storage.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Manifest,
    ShardInfo,
    file_sha256,
    save_manifest,
)
from indexer.storage.sharding import shard_of
from indexer.storage.users import USERS_FILE, users_table, write_users
from indexer.version import vector_files
from trainer.data.catalog import Catalog
from trainer.data.labels import Interactions, read_interactions
from trainer.privacy.pseudonym import from_environment
from trainer.text import item_text

__all__ = ["BuildEngine", "BuildJob", "ShardBuild", "ShardSettings", "build_version", "write_shard"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class BuildJob:
    """What the engine builds, settled before any item is embedded.

    Attributes:
        config: the build's settings, with a concrete factory (never "auto").
        catalog: the items to index, live updates replayed.
        encoder: the model (``trainer.encoder``): fingerprint, dim, item encoder.
        shard_ids: (n_items,) int shard of each catalog row.
        updates: what was done with the live updates (``kept``: logged vectors to keep).
    """

    config: BuildConfig
    catalog: Catalog
    encoder: Any
    shard_ids: np.ndarray
    updates: BuildUpdates


@dataclass(frozen=True, eq=False)
class ShardSettings:
    """How every shard is built: the same in this process and in a Spark task.

    Attributes:
        factory: the FAISS index_factory string.
        vectors: encoding of the vector copies kept beside the shard: "f32", "f16" or "i8".
        tune: the effort-tuning settings; None = no tuning (the index type's defaults).
        xq_tune: (nq, dim) float32 tuning queries when ``tune`` is set.
    """

    factory: str
    vectors: str
    tune: TuneConfig | None = None
    xq_tune: np.ndarray | None = None


@dataclass(frozen=True)
class ShardBuild:
    """One shard's files, built: what the manifest says of it.

    Attributes:
        shard: the shard number.
        count: its items.
        vectors_file: the file of its vector copies (``ShardInfo.vectors_file``).
        device: where its index was built, "cpu" or "gpu".
        builder: what built it (``indexer.build.shard.builder_name``).
        seconds: how long its index, tuning and vector copies took.
        search_defaults: the index type's untuned search settings.
        tune: its tuning result; None without tuning.
    """

    shard: int
    count: int
    vectors_file: str
    device: str
    builder: str
    seconds: float
    search_defaults: dict[str, Any]
    tune: TuneResult | None = None


class BuildEngine(Protocol):
    """Where items are embedded and shards built. ``build_version`` calls these in this order,
    under the build lock, the others inside the ``workspace`` block."""

    def workspace(
        self, job: BuildJob, root: IndexRoot, version: int
    ) -> AbstractContextManager[Path]:
        """The dir the version's files are written into, for a block that ends by publishing
        them (from ``root``'s staging dir for ``version``; another dir is moved there)."""

    def embed(self, job: BuildJob, version_dir: Path) -> float:
        """Embed every catalog item, ``job.updates.kept`` put in; returns the seconds taken."""

    def sample_vectors(self, job: BuildJob, version_dir: Path, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float32 embedded vectors of the ascending catalog ``rows``, ordered
        by shard, then row (``kept`` put in)."""

    def build_shards(
        self, job: BuildJob, version_dir: Path, settings: ShardSettings
    ) -> list[ShardBuild]:
        """Write every shard's files into ``version_dir`` (``write_shard``); their builds, in
        shard order."""

    def build_info(self, job: BuildJob) -> dict[str, Any]:
        """What the manifest's ``build`` records about this engine's run."""


def build_version(
    config: BuildConfig, catalog: Catalog, encoder: Any, engine: BuildEngine, *, started: float
) -> Path:
    """Build ``catalog`` into a new version of ``config.out`` with ``engine``; publish it.

    Args:
        config: what to index and how.
        catalog: the items, read and validated.
        encoder: the model, loaded (``trainer.encoder.load.load_encoder``).
        engine: where items are embedded and shards built.
        started: ``time.perf_counter()`` when the build began (the manifest's ``seconds``).

    Returns:
        The published version dir, ``<out>/versions/<n>``.

    Raises:
        ValueError: a factory some shard is too small to train, a bad tuning query file, or
            live updates that cannot be replayed (``indexer.live.fold.updates_for_build``).
    """
    shard_ids = shard_of(catalog.item_ids, config.shards)
    config, factory_choice = _resolve_factory(config, shard_ids, encoder.dim)
    tune, xq_tune = _tuning(config, encoder)
    root = IndexRoot(config.out.resolve())  # absolute, so the returned version dir is too
    with root.build_lock():
        # Live updates the catalog may lack are replayed onto it, or dropped on request: never
        # silently (indexer.live.fold). Under the lock: no compaction runs.
        updates = updates_for_build(
            root.root, catalog, encoder.fingerprint, discard=config.discard_updates
        )
        if updates.changed:
            catalog = updates.catalog
            shard_ids = shard_of(catalog.item_ids, config.shards)
        job = BuildJob(config, catalog, encoder, shard_ids, updates)
        n = root.next_version()
        with engine.workspace(job, root, n) as version_dir:
            encode_seconds = engine.embed(job, version_dir)
            fault_point("after-embed")
            if tune is not None and xq_tune is None:
                logger.warning(
                    "tuning search effort with perturbed item vectors, a stand-in for queries "
                    "that can under-estimate the effort real queries need; pass tune_queries "
                    "(--tune-queries) with a queries or labels file to tune on real queries"
                )
                # A fixed-seed sample of items, gathered shard by shard.
                rng = np.random.default_rng(tune.seed)
                n_items = len(shard_ids)
                rows = np.sort(rng.choice(n_items, min(tune.n_queries, n_items), replace=False))
                xq_tune = perturbed_queries(
                    engine.sample_vectors(job, version_dir, rows),
                    tune.n_queries,
                    noise=tune.noise,
                    seed=tune.seed,
                )
            settings = ShardSettings(config.factory, config.vectors, tune, xq_tune)
            shards = engine.build_shards(job, version_dir, settings)

            pq.write_table(catalog.table, version_dir / ITEMS_FILE)
            companions = write_companions(
                version_dir, catalog, shard_ids, config.shards,
                lexical=config.lexical, interactions=config.interactions,
            )  # fmt: skip
            if config.ranker is not None:
                companions["ranker"] = install_ranker(
                    version_dir, config.ranker, encoder.fingerprint, catalog.table.column_names
                )
            fault_point("after-shards-written")
            manifest = _manifest(job, version_dir, n, shards, settings, encode_seconds)
            build = {
                **manifest.build,
                **companions,
                **engine.build_info(job),
                "seconds": round(time.perf_counter() - started, 3),
            }
            if factory_choice is not None:
                build["factory_choice"] = factory_choice
            if updates.summary:
                build["updates"] = updates.summary
            save_manifest(dataclasses.replace(manifest, build=build), version_dir / MANIFEST_NAME)
            fault_point("after-manifest")
            if version_dir != root.staging_dir(n):  # built in a work dir of its own: move it in
                root.prepare_staging(n).rmdir()
                os.rename(version_dir, root.staging_dir(n))
            return root.publish(n)


def _resolve_factory(
    config: BuildConfig, shard_ids: np.ndarray, dim: int
) -> tuple[BuildConfig, dict[str, Any] | None]:
    """Settle ``factory="auto"`` from the largest shard and the memory budget, then check that
    the factory can be trained on every shard.

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


def _tuning(config: BuildConfig, encoder: Any) -> tuple[TuneConfig | None, np.ndarray | None]:
    """The effort-tuning settings (None: no tuning asked, or an exact factory) and, from
    ``config.tune_queries``, the (nq, dim) float32 tuning queries (None: none given)."""
    if config.target_recall is None:
        return None, None
    if is_exact_factory(encoder.dim, config.factory):
        if config.tune_queries is not None:
            logger.info("factory %r is exact: no search effort to tune", config.factory)
        return None, None
    tune = config.tune_config()
    if config.tune_queries is None:
        return tune, None
    xq = query_vectors_from_file(encoder, config.tune_queries, tune.n_queries, seed=tune.seed)
    return tune, xq


def write_shard(
    version_dir: Path, shard: int, xb: np.ndarray, rows: np.ndarray, settings: ShardSettings
) -> ShardBuild:
    """Build one shard's FAISS index and write it beside the shard's float32 vectors and rows
    files in ``version_dir``; tune its search effort and re-encode its vector copies (the
    float32 file is then deleted) as ``settings`` say.

    Args:
        version_dir: the dir holding the shard's vectors and rows files.
        shard: the shard number.
        xb: (n_s, dim) float32 vectors of the shard (may be a memmap of its vectors file).
        rows: (n_s,) int64 ascending global rows: the FAISS ids.
    """
    t_shard = time.perf_counter()
    index, device = build_shard_index(xb, rows, settings.factory, shard=shard)
    faiss.write_index(index, str(version_dir / index_file_name(shard)))
    tuned = None
    if settings.tune is not None and settings.xq_tune is not None:
        tuned = tune_effort(
            index,
            xb,
            rows,
            settings.xq_tune,
            k=settings.tune.k,
            target_recall=settings.tune.target_recall,
            rescore_depth=settings.tune.rescore_depth,
            shard=shard,
        )
    vectors_file = vectors_file_name(shard)
    if settings.vectors != "f32":
        vectors_file = _write_compact_vectors(version_dir, shard, settings.vectors, xb)
    return ShardBuild(
        shard=shard,
        count=len(rows),
        vectors_file=vectors_file,
        device=device,
        builder=builder_name(settings.factory, device),
        seconds=round(time.perf_counter() - t_shard, 3),
        search_defaults=search_defaults(index),
        tune=tuned,
    )


def _write_compact_vectors(version_dir: Path, shard: int, kind: str, xb: np.ndarray) -> str:
    """Encode a shard's float32 vectors as ``kind`` beside it (in chunks: the shard may not fit
    in RAM twice) and delete the float32 file; returns the new vectors file's name."""
    names = vector_files(shard, kind)
    n = len(xb)
    data_dtype = np.float16 if kind == "f16" else np.int8  # f16 is saved as float16
    data = np.lib.format.open_memmap(
        version_dir / names[0], mode="w+", dtype=data_dtype, shape=xb.shape
    )
    scales = None
    if kind == "i8":
        scales = np.lib.format.open_memmap(
            version_dir / names[1], mode="w+", dtype=np.float32, shape=(n,)
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
    (version_dir / vectors_file_name(shard)).unlink()
    return names[0]


def _manifest(
    job: BuildJob,
    version_dir: Path,
    version: int,
    shards: list[ShardBuild],
    settings: ShardSettings,
    encode_seconds: float,
) -> Manifest:
    """The manifest of a version whose files are all written in ``version_dir`` (every file is
    checksummed); the caller adds what the engine and the companions record."""
    config, encoder, n_items, tune = job.config, job.encoder, len(job.catalog), settings.tune
    defaults = shards[-1].search_defaults
    tuning = None
    if tune is not None:
        results = [s.tune for s in shards]
        defaults = combine_results(results, tune)
        tuning = {
            "target_recall": tune.target_recall,
            "k": tune.k,
            "queries": (
                str(Path(config.tune_queries).resolve())
                if config.tune_queries is not None
                else f"perturbed item vectors (noise {tune.noise}, seed {tune.seed}); real "
                f"queries (--tune-queries) may need more effort"
            ),
            "n_queries": len(settings.xq_tune),
            "shards": [{"shard": s, **r.to_json_dict()} for s, r in enumerate(results)],
        }
    files = {
        p.name: file_sha256(p)
        for p in sorted(version_dir.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    devices = {s.device for s in shards}
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
        shards=tuple(
            ShardInfo(
                shard=s.shard,
                count=s.count,
                index_file=index_file_name(s.shard),
                vectors_file=s.vectors_file,
                rows_file=rows_file_name(s.shard),
            )
            for s in shards
        ),
        files=files,
        build={
            "device": devices.pop() if len(devices) == 1 else "mixed",
            "shards": [
                {"shard": s.shard, "device": s.device, "builder": s.builder, "seconds": s.seconds}
                for s in shards
            ],
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
        },
        search_defaults=defaults,
        applied_seq=job.updates.applied_seq,
    )


def write_companions(
    staging: Path,
    catalog: Any,
    shard_ids: np.ndarray,
    n_shards: int,
    *,
    lexical: bool = True,
    interactions: Path | Interactions | None = None,
) -> dict[str, Any]:
    """Write the lexical index (same item text and shard assignment as the dense side, corpus
    statistics global to the catalog) and, given interactions (a file, or histories already
    read: compaction passes the base version's users), each user's recent items that are in
    the catalog into `staging`. Returns build info for the manifest."""
    info: dict[str, Any] = {}
    if lexical:
        t = time.perf_counter()
        texts = [item_text(r) for r in catalog.records()]
        index = LexicalIndex.build(
            texts, np.arange(len(texts), dtype=np.int64), shard_ids, n_shards
        )
        files = index.save(staging)
        info["lexical"] = {
            "files": files,
            "terms": index.n_terms,
            "seconds": round(time.perf_counter() - t, 3),
        }
        logger.info("lexical index: %d terms in %.1f s", index.n_terms, time.perf_counter() - t)
    if interactions is not None:
        if isinstance(interactions, Interactions):
            source = interactions.path
        else:
            source = str(Path(interactions).resolve())
            interactions = read_interactions(interactions)
        table = users_table(interactions, set(catalog.item_ids), pseudonyms=from_environment())
        write_users(table, staging / USERS_FILE)
        info["users"] = {"interactions": source, "users": table.num_rows}
        logger.info("users: %d with recent items", table.num_rows)
    return info
