"""Batch reindexing as a PySpark job: embed on executors, one FAISS shard per Spark task.

Stages (each restartable, clip-retrieval style reader → model → writer):

1. Spark reads the catalog and executors validate it (``indexer.spark_validate``: the rules
   and messages of ``trainer.data.read_catalog``), writing the typed items with their row to
   Parquet: the job's DataFrame. The driver loads that table (columnar) for the steps that
   need every item: replaying pending live updates exactly as ``indexer.build.build_index``
   does (their result is then the DataFrame's input instead), the BM25 and users files, and
   ``items.parquet``.
2. ``mapInArrow`` embeds items on the executors; each Python worker loads the model once
   (cached per process) on its GPU when it has one. Embeddings go to Parquet
   (``item_id, row, shard, vector``) and are reused by a rerun.
3. The embeddings are grouped by the ``indexer.shards.shard_of`` hash and each shard's index is
   built by ``indexer.build.build_shard_index`` in one Spark task, so factories and tuning
   behave as in the single-machine build.
4. The driver writes ``items.parquet`` and the manifest and publishes via ``IndexRoot``.

The work dir ``<out>/.spark/<key>`` is named by a hash of the catalog's sha256, the model
fingerprint, the build settings and the updates replayed, so a rerun of a failed build finds
it and rebuilds only the shards whose files are missing or fail their checksums. Executors
write into it: on a cluster ``out`` must be on a filesystem every node mounts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.build.config import BuildConfig
from indexer.build.local import _builder, _is_exact_factory, _write_compact_vectors, resolve_factory
from indexer.build.shard import _search_defaults, build_shard_index
from indexer.build.manifest import version_manifest
from indexer.build.companions import write_companions
from indexer.storage.faults import fault_point
from indexer.storage.layout import ITEMS_FILE, IndexRoot, index_file_name, rows_file_name, vectors_file_name
from indexer.storage.manifest import MANIFEST_NAME, Manifest, ShardInfo, file_sha256, save_manifest
from indexer.storage.sharding import shard_of
from indexer.build.spark_validate import ROW, ValidatedCatalog, validate_catalog_spark
from indexer.version import vector_files
from indexer.build.tune import TuneResult, combine_results, perturbed_queries, query_vectors_from_file

__all__ = ["SparkConfig", "build_index_spark", "spark_session"]

logger = logging.getLogger(__name__)

WORK_DIR = ".spark"  # under the index root; one sub dir per (catalog, model, settings)
_ROW = ROW  # the input column the job adds to the items; prefixed so no attribute clashes
_EMBEDDINGS_SCHEMA = "item_id string, row long, shard int, vector array<float>"
_SHARD_RESULT_SCHEMA = "shard int, seconds double"
_KEY_FILE = "_AISLE_KEY"  # in the embeddings dir: which build they belong to

# Encoders loaded in this Python process (a Spark worker is reused across tasks), by model+device.
_ENCODERS: dict[tuple[str | None, str], Any] = {}


@dataclass(frozen=True)
class SparkConfig:
    """How the Spark job runs.

    Attributes:
        master: Spark master URL, e.g. "local[2]" or "spark://host:7077"; None = whatever
            spark-submit or the environment sets (``local[*]`` when nothing does).
        partitions: partitions for embedding (about 2-4 per executor core or GPU); None =
            as Spark reads the input.
        embeddings_out: directory for the embeddings Parquet, kept after the build for reuse;
            None = inside the work dir, deleted once the version is published.
        app_name: the Spark application name.
    """

    master: str | None = None
    partitions: int | None = None
    embeddings_out: Path | None = None
    app_name: str = "aisle-reindex"

    def __post_init__(self) -> None:
        if self.master is not None and (not isinstance(self.master, str) or not self.master):
            raise ValueError(
                f"master must be a Spark master URL like 'local[2]', got {self.master!r}"
            )
        if self.partitions is not None and (
            isinstance(self.partitions, bool)
            or not isinstance(self.partitions, int)
            or self.partitions < 1
        ):
            raise ValueError(
                f"partitions must be an integer >= 1 or None (Spark's default), "
                f"got {self.partitions!r}"
            )
        if self.embeddings_out is not None:
            object.__setattr__(self, "embeddings_out", Path(self.embeddings_out))
            if self.embeddings_out.exists() and not self.embeddings_out.is_dir():
                raise ValueError(
                    f"embeddings_out must be a directory, but {self.embeddings_out} is a file"
                )


def spark_session(master: str | None = None, app_name: str = "aisle-reindex") -> Any:
    """Get or create a Spark session with Arrow on and quiet logs.

    Workers must run this virtualenv's Python (else they lack pandas, torch and Aisle), so
    ``PYSPARK_PYTHON`` is set to ``sys.executable`` when it is unset.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
    if master is not None and master.startswith("local"):
        # A local run (tests, benchmarks, a laptop): no web UI, no progress bars on stderr.
        builder = builder.config("spark.ui.enabled", "false").config(
            "spark.ui.showConsoleProgress", "false"
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines are per-call chatter
    return spark


def _worker_encoder(model_dir: str | None) -> Any:
    """The item encoder of this worker process, loaded once; on the task's GPU when it has one."""
    import torch

    from trainer.encoder.load import load_encoder

    device = "cpu"
    if torch.cuda.is_available():
        device = "cuda"
        try:
            from pyspark import TaskContext

            ctx = TaskContext.get()
            gpus = ctx.resources().get("gpu") if ctx is not None else None
            if gpus is not None and gpus.addresses:
                device = f"cuda:{gpus.addresses[0]}"  # the GPU Spark assigned to this task
        except (ImportError, AttributeError):
            pass
    key = (model_dir, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder(model_dir, device=device)
    return _ENCODERS[key]


def _embed_batches(
    model_dir: str | None, batch_size: int, max_length: int | None, n_shards: int
) -> Any:
    """The ``mapInArrow`` function: catalog record batches → (item_id, row, shard, vector)."""
    from trainer.text import item_text

    def embed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        encoder = _worker_encoder(model_dir)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            rows = batch.to_pylist()
            texts = [
                item_text({k: v for k, v in r.items() if v is not None and k != _ROW}) for r in rows
            ]
            shards = shard_of(batch.column("item_id").to_pylist(), n_shards)  # (n,) int32
            xb = np.asarray(
                encoder.encode_items(texts, batch_size=batch_size, max_length=max_length),
                dtype=np.float32,
            )  # (n, dim)
            if not np.isfinite(xb).all():
                raise ValueError("encoder returned non-finite values (NaN or inf) for some items")
            n, dim = xb.shape
            offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
            vector = pa.ListArray.from_arrays(offsets, pa.array(xb.reshape(-1)))
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("item_id"),
                    batch.column(_ROW),
                    pa.array(shards),
                    vector,
                ],
                names=["item_id", "row", "shard", "vector"],
            )

    return embed


def _shard_done_file(work: Path, shard: int) -> Path:
    return work / "done" / f"shard_{shard:03d}.json"


def _shard_ok(work: Path, shard: int) -> dict[str, Any] | None:
    """A shard's record when all its files exist with the recorded checksums, else None."""
    try:
        record = json.loads(_shard_done_file(work, shard).read_text(encoding="utf-8"))
        version_dir = work / "version"
        for name, digest in record["files"].items():
            if file_sha256(version_dir / name) != digest:
                logger.info("shard %d: %s fails its checksum; rebuilding the shard", shard, name)
                return None
    except (OSError, ValueError, KeyError):
        return None
    return record


def _build_one_shard(
    shard: int,
    rows: np.ndarray,
    xb: np.ndarray,
    work: Path,
    settings: dict[str, Any],
    xq_tune: np.ndarray | None,
    kept_rows: np.ndarray,
    kept_vectors: np.ndarray | None,
) -> float:
    """Build, write and checksum one shard's files (on an executor, or the driver if empty)."""
    t_shard = time.perf_counter()
    version_dir = work / "version"
    order = np.argsort(rows, kind="stable")  # ascending global rows, as the local build has
    rows = np.ascontiguousarray(rows[order], dtype=np.int64)  # (n_s,)
    xb = np.ascontiguousarray(xb[order], dtype=np.float32)  # (n_s, dim)
    if kept_vectors is not None and len(kept_rows):
        # Replayed upserts keep their logged vectors (same model), as in the local build.
        hit = np.isin(rows, kept_rows)
        xb[hit] = kept_vectors[np.searchsorted(kept_rows, rows[hit])]
    for name in vector_files(shard, settings["vectors"]) + [vectors_file_name(shard)]:
        (version_dir / name).unlink(missing_ok=True)
    np.save(version_dir / vectors_file_name(shard), xb)
    np.save(version_dir / rows_file_name(shard), rows)
    index, device = build_shard_index(xb, rows, settings["factory"], shard=shard)
    faiss.write_index(index, str(version_dir / index_file_name(shard)))
    tune = None
    if settings["tune"] is not None and xq_tune is not None:
        from indexer.build.tune import tune_effort

        t = settings["tune"]
        tune = dataclasses.asdict(
            tune_effort(
                index,
                xb,
                rows,
                xq_tune,
                k=t["k"],
                target_recall=t["target_recall"],
                rescore_depth=t["rescore_depth"],
                shard=shard,
            )
        )
    vectors_file = vectors_file_name(shard)
    if settings["vectors"] != "f32":
        vectors_file = _write_compact_vectors(version_dir, shard, settings["vectors"], xb)[0]
    names = [index_file_name(shard), rows_file_name(shard)] + vector_files(
        shard, settings["vectors"]
    )
    seconds = time.perf_counter() - t_shard
    record = {
        "shard": shard,
        "count": len(rows),
        "vectors_file": vectors_file,
        "device": device,
        "builder": _builder(settings["factory"], device),
        "seconds": round(seconds, 3),
        "search_defaults": _search_defaults(index),
        "tune": tune,
        "files": {name: file_sha256(version_dir / name) for name in names},
    }
    done = _shard_done_file(work, shard)
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, done)  # the record appears only once every file is written
    return seconds


def _shard_task(
    work: str,
    settings: dict[str, Any],
    xq_tune: np.ndarray | None,
    kept_rows: np.ndarray,
    kept_vectors: np.ndarray | None,
) -> Any:
    """The ``applyInPandas`` function: all embeddings of one shard → its files."""
    import pandas as pd

    def build(pdf: pd.DataFrame) -> pd.DataFrame:
        shard = int(pdf["shard"].iloc[0])
        xb = np.stack(pdf["vector"].to_numpy()).astype(np.float32)  # (n_s, dim)
        rows = pdf["row"].to_numpy(dtype=np.int64)
        seconds = _build_one_shard(
            shard, rows, xb, Path(work), settings, xq_tune, kept_rows, kept_vectors
        )
        return pd.DataFrame({"shard": [shard], "seconds": [seconds]})

    return build


def _work_key(config: BuildConfig, fingerprint: str, updates: Any) -> str:
    """Hash of everything that decides the build's files: the work dir's name."""
    parts = {
        "catalog_sha256": file_sha256(config.catalog),
        "model_fingerprint": fingerprint,
        "model": str(config.model.resolve()) if config.model is not None else None,
        "shards": config.shards,
        "factory": config.factory,
        "batch_size": config.batch_size,
        "max_item_length": config.max_item_length,
        "target_recall": config.target_recall,
        "tune_k": config.tune_k,
        "tune_queries": file_sha256(config.tune_queries) if config.tune_queries else None,
        "vectors": config.vectors,
        "updates": updates.summary,
        "applied_seq": updates.applied_seq,
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _embed(
    spark: Any,
    validated: ValidatedCatalog | None,
    catalog: Any,
    work: Path,
    emb_dir: Path,
    key: str,
    config: BuildConfig,
    spark_config: SparkConfig,
) -> None:
    """Embed every item on the executors into ``emb_dir`` (Parquet), unless already done.

    The items are the validated catalog's DataFrame; ``validated=None`` (replayed live updates
    changed them) makes the driver's ``catalog`` table the input instead.
    """
    marker = emb_dir / _KEY_FILE
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == key:
        logger.info("reusing the embeddings in %s (same catalog, model and settings)", emb_dir)
        return
    inputs = None
    if validated is not None:
        df = validated.dataframe(spark)
    else:
        inputs = work / "input.parquet"
        rows = pa.array(np.arange(len(catalog), dtype=np.int64))
        tmp = inputs.with_suffix(".tmp")
        # row groups = Spark's read splits
        pq.write_table(catalog.table.append_column(_ROW, rows), tmp, row_group_size=8192)
        os.replace(tmp, inputs)
        df = spark.read.parquet(str(inputs))
    if spark_config.partitions is not None:
        df = df.repartition(spark_config.partitions)
    embed = _embed_batches(
        str(config.model) if config.model is not None else None,
        config.batch_size,
        config.max_item_length,
        config.shards,
    )
    df.mapInArrow(embed, _EMBEDDINGS_SCHEMA).write.mode("overwrite").parquet(str(emb_dir))
    marker.write_text(key + "\n", encoding="utf-8")
    if inputs is not None:
        inputs.unlink()


def build_index_spark(
    config: BuildConfig, spark_config: SparkConfig | None = None, *, spark: Any = None
) -> Path:
    """``indexer.build.build_index`` as a Spark job; the same files, manifest and publishing.

    Args:
        config: what to index and how (as for the single-machine build).
        spark_config: how Spark runs; None = defaults.
        spark: an existing SparkSession (tests); None = ``spark_session(spark_config.master)``.

    Returns:
        The published version dir, ``<out>/versions/<n>``. On failure the work dir is kept
        and a rerun with the same inputs resumes from it.

    Raises:
        trainer.data.DataError: a bad catalog, with ``read_catalog``'s message.
    """
    spark_config = spark_config or SparkConfig()
    t_start = time.perf_counter()
    if spark is None:
        spark = spark_session(spark_config.master, spark_config.app_name)
    root = IndexRoot(config.out.resolve())
    # Executors write the validated catalog beside the work dirs (so on shared storage). It
    # serves this run only (it is quick to redo), so it goes whether the build works or not.
    scratch = root.root / WORK_DIR / f"catalog-{uuid.uuid4().hex[:16]}"
    try:
        validated = validate_catalog_spark(spark, config.catalog, scratch)
        return _build_validated(validated, config, spark_config, spark, root, t_start)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            scratch.parent.rmdir()  # only when no work dir is left


def _build_validated(
    validated: ValidatedCatalog,
    config: BuildConfig,
    spark_config: SparkConfig,
    spark: Any,
    root: IndexRoot,
    t_start: float,
) -> Path:
    """The build once the catalog is validated: see ``build_index_spark``."""
    from indexer.build.compact import updates_for_build
    from trainer.encoder.load import load_encoder

    # The driver-side steps (live updates, BM25, users, items.parquet) need every item: the
    # typed Arrow table only (read_catalog on the driver also held every row as a dict).
    catalog = validated.to_catalog()
    # The driver loads the model too: its fingerprint and dim, and tuning queries to encode.
    encoder = load_encoder(config.model, device="cpu")
    shard_ids = shard_of(catalog.item_ids, config.shards)
    config, factory_choice = resolve_factory(config, shard_ids, encoder.dim)
    exact = _is_exact_factory(encoder.dim, config.factory)
    tune = config.tune_config() if config.target_recall is not None and not exact else None
    xq_tune = None
    if tune is not None and config.tune_queries is not None:
        xq_tune = query_vectors_from_file(
            encoder, config.tune_queries, tune.n_queries, seed=tune.seed
        )
    with root.build_lock():
        updates = updates_for_build(
            root.root, catalog, encoder.fingerprint, discard=config.discard_updates
        )
        if updates.changed:
            catalog = updates.catalog
            shard_ids = shard_of(catalog.item_ids, config.shards)
        key = _work_key(config, encoder.fingerprint, updates)
        work = root.root / WORK_DIR / key
        (work / "version").mkdir(parents=True, exist_ok=True)
        emb_dir = spark_config.embeddings_out or work / "embeddings"
        logger.info("spark work dir %s", work)

        t_encode = time.perf_counter()
        items = None if updates.changed else validated
        _embed(spark, items, catalog, work, emb_dir, key, config, spark_config)
        encode_seconds = time.perf_counter() - t_encode
        fault_point("after-embed")
        embeddings = spark.read.parquet(str(emb_dir))

        if tune is not None and xq_tune is None:
            # The same sample as the local build: fixed-seed rows, gathered shard by shard.
            rng = np.random.default_rng(tune.seed)
            sample = rng.choice(len(shard_ids), min(tune.n_queries, len(shard_ids)), replace=False)
            picked = (
                embeddings.where(embeddings.row.isin([int(r) for r in sample]))
                .select("row", "shard", "vector")
                .toPandas()
                .sort_values(["shard", "row"])
            )
            sampled = np.stack(picked["vector"].to_numpy()).astype(np.float32)  # (n, dim)
            kept = updates.kept_rows
            if updates.kept_vectors is not None and len(kept):
                # The local build samples after replayed upserts got their logged vectors.
                rows = picked["row"].to_numpy(dtype=np.int64)
                hit = np.isin(rows, kept)
                sampled[hit] = updates.kept_vectors[np.searchsorted(kept, rows[hit])]
            xq_tune = perturbed_queries(
                sampled,
                tune.n_queries,
                noise=tune.noise,
                seed=tune.seed,
            )

        settings = {
            "factory": config.factory,
            "vectors": config.vectors,
            "tune": (
                {
                    "k": tune.k,
                    "target_recall": tune.target_recall,
                    "rescore_depth": tune.rescore_depth,
                }
                if tune is not None
                else None
            ),
        }
        kept_rows, kept_vectors = updates.kept_rows, updates.kept_vectors
        counts = np.bincount(shard_ids, minlength=config.shards)
        todo = [s for s in range(config.shards) if _shard_ok(work, s) is None]
        logger.info("building %d of %d shards: %s", len(todo), config.shards, todo)
        for s in [s for s in todo if counts[s] == 0]:  # no rows → no Spark group: build here
            _build_one_shard(
                s,
                np.zeros(0, np.int64),
                np.zeros((0, encoder.dim), np.float32),
                work,
                settings,
                xq_tune,
                kept_rows,
                kept_vectors,
            )
        busy = [s for s in todo if counts[s] > 0]
        if busy:
            task = _shard_task(str(work), settings, xq_tune, kept_rows, kept_vectors)
            (
                embeddings.where(embeddings.shard.isin(busy))
                # Range partitioning on distinct shard numbers: one shard per partition (task),
                # and groupBy reuses it instead of shuffling again.
                .repartitionByRange(len(busy), "shard")
                .groupBy("shard")
                .applyInPandas(task, _SHARD_RESULT_SCHEMA)
                .collect()
            )
        records = []
        for s in range(config.shards):
            record = _shard_ok(work, s)
            if record is None:
                raise RuntimeError(f"shard {s}: its task finished but its files are missing")
            records.append(record)

        version_dir = work / "version"
        pq.write_table(catalog.table, version_dir / ITEMS_FILE)
        # The same BM25 index and users file as the single-machine build (driver side: BM25
        # over the item texts takes seconds per 100k items).
        companions = write_companions(
            version_dir, catalog, shard_ids, config.shards,
            lexical=config.lexical, interactions=config.interactions,
        )  # fmt: skip
        fault_point("after-shards-written")
        manifest = _manifest(
            config, catalog, encoder, records, version_dir, tune, xq_tune, encode_seconds
        )
        build = {
            **manifest.build,
            **companions,
            "engine": "spark",
            "spark_master": spark.sparkContext.master,
            "shards_rebuilt": todo,
            "seconds": round(time.perf_counter() - t_start, 3),
        }
        if factory_choice is not None:
            build["factory_choice"] = factory_choice
        if updates.summary:
            build["updates"] = updates.summary
        n = root.next_version()
        manifest = dataclasses.replace(
            manifest, version=n, build=build, applied_seq=updates.applied_seq
        )
        save_manifest(manifest, version_dir / MANIFEST_NAME)
        fault_point("after-manifest")
        staging = root.prepare_staging(n)
        staging.rmdir()
        os.rename(version_dir, staging)
        published = root.publish(n)
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # only when no other build's work dir is left
        return published


def _manifest(
    config: BuildConfig,
    catalog: Any,
    encoder: Any,
    records: list[dict[str, Any]],
    version_dir: Path,
    tune: Any,
    xq_tune: np.ndarray | None,
    encode_seconds: float,
) -> Manifest:
    """The version's manifest (version number and run details are filled in by the caller)."""
    n_items = len(catalog)
    search_defaults = records[-1]["search_defaults"]
    tuning = None
    if tune is not None:
        results = [
            TuneResult(**{**r["tune"], "curve": tuple(tuple(c) for c in r["tune"]["curve"])})
            for r in records
        ]
        search_defaults = combine_results(results, tune)
        tuning = {
            "target_recall": tune.target_recall,
            "k": tune.k,
            "queries": (
                str(Path(config.tune_queries).resolve())
                if config.tune_queries is not None
                else f"perturbed item vectors (noise {tune.noise}, seed {tune.seed})"
            ),
            "n_queries": len(xq_tune),
            "shards": [{"shard": s, **r.to_json_dict()} for s, r in enumerate(results)],
        }
    shards = tuple(
        ShardInfo(
            shard=r["shard"],
            count=r["count"],
            index_file=index_file_name(r["shard"]),
            vectors_file=r["vectors_file"],
            rows_file=rows_file_name(r["shard"]),
        )
        for r in records
    )
    return version_manifest(
        config,
        encoder,
        version_dir,
        version=0,
        n_items=n_items,
        shards=shards,
        shard_builds=[
            {k: r[k] for k in ("shard", "device", "builder", "seconds")} for r in records
        ],
        encode_seconds=encode_seconds,
        tuning=tuning,
        search_defaults=search_defaults,
    )
