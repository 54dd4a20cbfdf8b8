"""The Spark build: embed on executors, one FAISS shard per Spark task (``SparkEngine``).

The steps are the single-machine build's (``indexer.build.pipeline``); what runs where
(clip-retrieval style reader → model → writer, each stage restartable):

1. Spark reads the catalog and executors validate it (``indexer.build.spark_validate``: the
   rules and messages of ``trainer.data.catalog.read_catalog``), writing the typed items with
   their row to Parquet: the job's DataFrame. The driver loads that table (columnar) for the
   steps that need every item: replaying pending live updates (their result is then the
   DataFrame's input instead), the BM25 and users files, and ``items.parquet``.
2. ``mapInArrow`` embeds items on the executors; each Python worker loads the model once
   (cached per process) on its GPU when it has one. Embeddings go to Parquet
   (``item_id, row, shard, vector``) and are reused by a rerun.
3. The embeddings are grouped by the ``indexer.storage.sharding.shard_of`` hash and each
   shard's files are written by ``indexer.build.pipeline.write_shard`` in one Spark task, so
   factories and tuning behave as in the single-machine build.
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
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.build.config import BuildConfig
from indexer.build.pipeline import BuildJob, ShardBuild, ShardSettings, build_version, write_shard
from indexer.build.spark_progress import spark_progress
from indexer.build.spark_validate import ROW, ValidatedCatalog, validate_catalog_spark
from indexer.build.tune import TuneResult
from indexer.live.fold import BuildUpdates, KeptVectors
from indexer.storage.layout import IndexRoot, index_file_name, rows_file_name, vectors_file_name
from indexer.storage.manifest import file_sha256
from indexer.storage.sharding import shard_of
from indexer.version import vector_files
from trainer.io import atomic_path, write_atomic

__all__ = ["SparkConfig", "SparkEngine", "build_index_spark", "spark_session"]

logger = logging.getLogger(__name__)

WORK_DIR = ".spark"  # under the index root; one sub dir per (catalog, model, settings)
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


MIN_JAVA = 17  # Spark 4 runs on Java 17 or 21
_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


def java_major_version(java: str) -> int | None:
    """The major version `java -version` reports (8 for "1.8.0"), None if it says none."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _JAVA_VERSION.search(done.stderr + done.stdout)
    if match is None:
        return None
    major = int(match[1])
    return int(match[2] or 0) if major == 1 else major


def check_java() -> None:
    """ValueError, saying how to fix it, unless the Java Spark will start is MIN_JAVA or newer:
    without this a missing or old Java ends in a long Py4J traceback
    ("Java gateway process exited before sending its port number")."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    install = (
        f"install Java {MIN_JAVA} (Debian/Ubuntu: apt-get install openjdk-{MIN_JAVA}-jre-headless)"
        " and point JAVA_HOME at it, or use --engine local"
    )
    if java is None or not Path(java).is_file():
        where = f"JAVA_HOME={java_home} has no bin/java" if java_home else "no java on PATH"
        raise ValueError(f"--engine spark needs Java {MIN_JAVA} or newer, and {where}: {install}")
    major = java_major_version(java)
    if major is None:
        raise ValueError(f"--engine spark: {java} -version did not run or say a version: {install}")
    if major < MIN_JAVA:
        raise ValueError(
            f"--engine spark needs Java {MIN_JAVA} or newer; {java} is Java {major}: {install}"
        )


def spark_session(master: str | None = None, app_name: str = "aisle-reindex") -> Any:
    """Get or create a Spark session with Arrow on and quiet logs.

    Workers must run this virtualenv's Python (else they lack pandas, torch and Aisle), so
    ``PYSPARK_PYTHON`` is set to ``sys.executable`` when it is unset. ValueError when no
    suitable Java is found (check_java).
    """
    from pyspark.sql import SparkSession

    if SparkSession.getActiveSession() is None:
        check_java()

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
                item_text({k: v for k, v in r.items() if v is not None and k != ROW}) for r in rows
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
                    batch.column(ROW),
                    pa.array(shards),
                    vector,
                ],
                names=["item_id", "row", "shard", "vector"],
            )

    return embed


def _shard_done_file(work: Path, shard: int) -> Path:
    return work / "done" / f"shard_{shard:03d}.json"


def _done_shard(work: Path, shard: int) -> ShardBuild | None:
    """A shard's build when all its files exist with the recorded checksums, else None."""
    try:
        record = json.loads(_shard_done_file(work, shard).read_text(encoding="utf-8"))
        version_dir = work / "version"
        for name, digest in record.pop("files").items():
            if file_sha256(version_dir / name) != digest:
                logger.info("shard %d: %s fails its checksum; rebuilding the shard", shard, name)
                return None
        tune = record["tune"]
        if tune is not None:
            record["tune"] = TuneResult(**{**tune, "curve": tuple(map(tuple, tune["curve"]))})
        return ShardBuild(**record)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build_one_shard(
    shard: int,
    rows: np.ndarray,
    xb: np.ndarray,
    work: Path,
    settings: ShardSettings,
    kept: KeptVectors,
) -> float:
    """Build, write and checksum one shard's files (on an executor, or the driver if empty)."""
    version_dir = work / "version"
    order = np.argsort(rows, kind="stable")  # ascending global rows, as the local build has
    rows = np.ascontiguousarray(rows[order], dtype=np.int64)  # (n_s,)
    xb = np.ascontiguousarray(xb[order], dtype=np.float32)  # (n_s, dim)
    xb = kept.patch(rows, xb)  # replayed upserts keep their logged vectors, as in a local build
    for name in vector_files(shard, settings.vectors) + [vectors_file_name(shard)]:
        (version_dir / name).unlink(missing_ok=True)
    np.save(version_dir / vectors_file_name(shard), xb)
    np.save(version_dir / rows_file_name(shard), rows)
    build = write_shard(version_dir, shard, xb, rows, settings)
    names = [index_file_name(shard), rows_file_name(shard)] + vector_files(shard, settings.vectors)
    record = {
        **dataclasses.asdict(build),
        "files": {name: file_sha256(version_dir / name) for name in names},
    }
    done = _shard_done_file(work, shard)
    done.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(done, json.dumps(record))  # the record appears only once every file is written
    return build.seconds


def _shard_task(work: str, settings: ShardSettings, kept: KeptVectors) -> Any:
    """The ``applyInPandas`` function: all embeddings of one shard → its files."""
    import pandas as pd

    def build(pdf: pd.DataFrame) -> pd.DataFrame:
        shard = int(pdf["shard"].iloc[0])
        xb = np.stack(pdf["vector"].to_numpy()).astype(np.float32)  # (n_s, dim)
        rows = pdf["row"].to_numpy(dtype=np.int64)
        seconds = _build_one_shard(shard, rows, xb, Path(work), settings, kept)
        return pd.DataFrame({"shard": [shard], "seconds": [seconds]})

    return build


def _work_key(config: BuildConfig, fingerprint: str, updates: BuildUpdates) -> str:
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


def build_index_spark(
    config: BuildConfig, spark_config: SparkConfig | None = None, *, spark: Any = None
) -> Path:
    """``indexer.build.local.build_index`` as a Spark job; the same files, manifest and
    publishing.

    Args:
        config: what to index and how (as for the single-machine build).
        spark_config: how Spark runs; None = defaults.
        spark: an existing SparkSession (tests); None = ``spark_session(spark_config.master)``.

    Returns:
        The published version dir, ``<out>/versions/<n>``. On failure the work dir is kept
        and a rerun with the same inputs resumes from it.

    Raises:
        trainer.data.rows.DataError: a bad catalog, with ``read_catalog``'s message.
    """
    from trainer.encoder.load import load_encoder

    spark_config = spark_config or SparkConfig()
    started = time.perf_counter()
    if spark is None:
        spark = spark_session(spark_config.master, spark_config.app_name)
    root = IndexRoot(config.out.resolve())
    # Executors write the validated catalog beside the work dirs (so on shared storage). It
    # serves this run only (it is quick to redo), so it goes whether the build works or not.
    scratch = root.root / WORK_DIR / f"catalog-{uuid.uuid4().hex[:16]}"
    with spark_progress(spark):  # a line per running stage every few seconds
        try:
            validated = validate_catalog_spark(spark, config.catalog, scratch)
            # The driver-side steps (live updates, BM25, users, items.parquet) need every item: the
            # typed Arrow table only (read_catalog on the driver also held every row as a dict).
            catalog = validated.to_catalog()
            # The driver loads the model too: its fingerprint and dim, and tuning queries to encode.
            encoder = load_encoder(config.model, device="cpu")
            engine = SparkEngine(spark, spark_config, validated)
            return build_version(config, catalog, encoder, engine, started=started)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                scratch.parent.rmdir()  # only when no work dir is left


class SparkEngine:
    """Embeds items on Spark executors and builds one shard per Spark task
    (``indexer.build.pipeline.BuildEngine``), in the work dir ``<out>/.spark/<key>``.

    Args:
        spark: the SparkSession.
        spark_config: how Spark runs.
        validated: the validated catalog, the embedding's input unless live updates changed
            the items (then the driver's table is written out for Spark to read instead).
    """

    def __init__(self, spark: Any, spark_config: SparkConfig, validated: ValidatedCatalog) -> None:
        self.spark = spark
        self.spark_config = spark_config
        self.validated = validated
        self.work: Path | None = None  # set by workspace
        self.embeddings: Any = None  # the embeddings DataFrame, set by embed
        self.rebuilt: list[int] = []  # set by build_shards

    @contextmanager
    def workspace(self, job: BuildJob, root: IndexRoot, version: int) -> Iterator[Path]:
        """The version dir of the work dir of ``job``; the work dir is kept when the build
        fails (a rerun resumes from it) and deleted once the version is published."""
        self.work = (
            root.root / WORK_DIR / _work_key(job.config, job.encoder.fingerprint, job.updates)
        )
        (self.work / "version").mkdir(parents=True, exist_ok=True)
        logger.info("spark work dir %s", self.work)
        yield self.work / "version"
        shutil.rmtree(self.work, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.work.parent.rmdir()  # only when no other build's work dir is left

    def embed(self, job: BuildJob, version_dir: Path) -> float:
        """Embed every item on the executors into the embeddings dir (Parquet: ``item_id, row,
        shard, vector``), unless a run with the same key already did."""
        t_encode = time.perf_counter()
        emb_dir = self.spark_config.embeddings_out or self.work / "embeddings"
        marker, key = emb_dir / _KEY_FILE, self.work.name
        if marker.is_file() and marker.read_text(encoding="utf-8").strip() == key:
            logger.info("reusing the embeddings in %s (same catalog, model and settings)", emb_dir)
        else:
            inputs = None
            if not job.updates.changed:
                df = self.validated.dataframe(self.spark)
            else:
                inputs = self.work / "input.parquet"
                rows = pa.array(np.arange(len(job.catalog), dtype=np.int64))
                with atomic_path(inputs, suffix=".parquet") as tmp:
                    # row groups = Spark's read splits
                    table = job.catalog.table.append_column(ROW, rows)
                    pq.write_table(table, tmp, row_group_size=8192)
                df = self.spark.read.parquet(str(inputs))
            if self.spark_config.partitions is not None:
                df = df.repartition(self.spark_config.partitions)
            config = job.config
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
        seconds = time.perf_counter() - t_encode
        self.embeddings = self.spark.read.parquet(str(emb_dir))
        return seconds

    def sample_vectors(self, job: BuildJob, version_dir: Path, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` gathered from the embeddings."""
        embeddings = self.embeddings
        picked = (
            embeddings.where(embeddings.row.isin([int(r) for r in rows]))
            .select("row", "shard", "vector")
            .toPandas()
            .sort_values(["shard", "row"])
        )
        xb = np.stack(picked["vector"].to_numpy()).astype(np.float32)  # (n, dim)
        return job.updates.kept.patch(picked["row"].to_numpy(dtype=np.int64), xb)

    def build_shards(
        self, job: BuildJob, version_dir: Path, settings: ShardSettings
    ) -> list[ShardBuild]:
        """Build each shard whose files are missing or fail their checksums in a Spark task
        (an empty shard on the driver); the others are kept from an earlier run."""
        work, n_shards, kept = self.work, job.config.shards, job.updates.kept
        counts = np.bincount(job.shard_ids, minlength=n_shards)
        todo = [s for s in range(n_shards) if _done_shard(work, s) is None]
        logger.info("building %d of %d shards: %s", len(todo), n_shards, todo)
        for s in [s for s in todo if counts[s] == 0]:  # no rows → no Spark group: build here
            empty = np.zeros((0, job.encoder.dim), np.float32)
            _build_one_shard(s, np.zeros(0, np.int64), empty, work, settings, kept)
        busy = [s for s in todo if counts[s] > 0]
        if busy:
            task = _shard_task(str(work), settings, kept)
            embeddings = self.embeddings
            (
                embeddings.where(embeddings.shard.isin(busy))
                # Range partitioning on distinct shard numbers: one shard per partition (task),
                # and groupBy reuses it instead of shuffling again.
                .repartitionByRange(len(busy), "shard")
                .groupBy("shard")
                .applyInPandas(task, _SHARD_RESULT_SCHEMA)
                .collect()
            )
        self.rebuilt = todo
        shards = []
        for s in range(n_shards):
            shard = _done_shard(work, s)
            if shard is None:
                raise RuntimeError(f"shard {s}: its task finished but its files are missing")
            shards.append(shard)
        return shards

    def build_info(self, job: BuildJob) -> dict[str, Any]:
        """The engine, the Spark master, and which shards this run built."""
        return {
            "engine": "spark",
            "spark_master": self.spark.sparkContext.master,
            "shards_rebuilt": self.rebuilt,
        }
