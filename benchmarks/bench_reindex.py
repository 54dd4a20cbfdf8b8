"""Benchmark batch reindexing: the single-machine build vs the Spark job (local[2]), items/s.

Both paths index the same slice of the Home Depot catalog with the same model (the packaged
all-MiniLM-L6-v2 unless ``--model``), factory and shards, into fresh temporary index roots:
nothing is cached between them (the Spark run gets its own new work dir, so it embeds
everything). Reported: wall seconds and items/s of each, the Spark session start separately,
and the Spark overhead as a ratio of wall times (>1 = Spark slower). The load average is
printed before and after, since other jobs on the machine skew both numbers.

``python -m benchmarks.bench_reindex [--preset S|M|L] [--out bench-out/reindex.jsonl]``
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import SHARED_DATA, append_jsonl
from benchmarks.common import machine as common_machine
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.build.spark import SparkConfig, build_index_spark, spark_session

HOMEDEPOT = SHARED_DATA / "homedepot" / "products.jsonl.gz"


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one run."""

    preset: str
    n_items: int | None  # first n items of the catalog; None = all (~54k)
    shards: int
    factory: str
    master: str
    partitions: int
    batch_size: int = 64


PRESETS = {
    "S": BenchConfig("S", n_items=5_000, shards=4, factory="Flat", master="local[2]", partitions=4),
    "M": BenchConfig("M", n_items=None, shards=4, factory="Flat", master="local[2]", partitions=8),
    "L": BenchConfig("L", n_items=None, shards=8, factory="IVF256,Flat", master="local[2]",
                     partitions=16),
}  # fmt: skip


def machine() -> dict[str, Any]:
    import torch

    return {**common_machine("pyspark"), "cuda": torch.cuda.is_available()}


def write_slice(source: Path, out: Path, n: int | None) -> int:
    """Copy the first ``n`` items of ``source`` (JSONL.gz) to ``out`` (JSONL); returns the count."""
    count = 0
    with gzip.open(source, "rt", encoding="utf-8") as f, out.open("w", encoding="utf-8") as g:
        for line in f:
            if n is not None and count >= n:
                break
            if line.strip():
                g.write(line)
                count += 1
    return count


def run(config: BenchConfig, catalog_source: Path, model: Path | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench_reindex_"))
    try:
        catalog = work / "products.jsonl"
        n_items = write_slice(catalog_source, catalog, config.n_items)
        common = dict(
            catalog=catalog,
            model=model,
            shards=config.shards,
            factory=config.factory,
            batch_size=config.batch_size,
            target_recall=None,  # tuning is the same code on both paths: time the reindex itself
        )
        t = time.perf_counter()
        build_index(BuildConfig(out=work / "local", **common))
        local_s = time.perf_counter() - t

        t = time.perf_counter()
        spark = spark_session(config.master, "bench-reindex")
        session_s = time.perf_counter() - t
        t = time.perf_counter()
        build_index_spark(
            BuildConfig(out=work / "spark", **common),
            SparkConfig(master=config.master, partitions=config.partitions),
            spark=spark,
        )
        spark_s = time.perf_counter() - t
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "n_items": n_items,
        "local_s": round(local_s, 2),
        "local_items_per_s": round(n_items / local_s, 1),
        "spark_session_start_s": round(session_s, 2),
        "spark_job_s": round(spark_s, 2),
        "spark_items_per_s": round(n_items / spark_s, 1),
        "spark_overhead_ratio": round(spark_s / local_s, 3),
        "spark_overhead_ratio_with_session": round((spark_s + session_s) / local_s, 3),
        "load_avg_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="S")
    parser.add_argument("--out", type=Path, default=Path("bench-out/reindex.jsonl"))
    parser.add_argument("--catalog", type=Path, default=HOMEDEPOT, help="a .jsonl.gz catalog")
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: packaged)")
    args = parser.parse_args(argv)
    config = PRESETS[args.preset]
    info = machine()
    print(f"config: {asdict(config)}")
    print(f"machine: {info}")
    started = time.perf_counter()
    results = run(config, args.catalog, args.model)
    for key, value in results.items():
        print(f"{key:>36}: {value}")
    record = {
        "bench": "reindex",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": info,
        "results": results,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    append_jsonl(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
