"""Shoppers' rights in training data: the log records a dataset build leaves out (users who
did not consent to training, records erased by a tombstone), and erasure of a built dataset's
rows (trainer.privacy.exclusions reads the events dir's consent and tombstones)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.io import atomic_path
from trainer.privacy.exclusions import TrainingExclusions

log = logging.getLogger(__name__)

TIMESTAMP = pa.timestamp("us", tz="UTC")
USER_FILES = ("next_items.parquet",)  # the dataset files with a user_id column


def allowed(
    table: pa.Table, times: pa.ChunkedArray | pa.Array, exclusions: TrainingExclusions
) -> tuple[pa.Table, int]:
    """`table` (with a user_id column; `times` its records' times) without the records
    `exclusions` forbids, and how many those were. Anonymous records (no user) stay."""
    if not table.num_rows:
        return table, 0
    users = table.column("user_id")
    anonymous = pc.fill_null(pc.equal(users, ""), True)
    if exclusions.default_use_for_training:
        out = {u for u, c in exclusions.consent.items() if not c.get("use_for_training", True)}
        drop = pc.is_in(users, value_set=pa.array(sorted(out), pa.string()))
    else:
        ins = {u for u, c in exclusions.consent.items() if c.get("use_for_training")}
        drop = pc.invert(pc.is_in(users, value_set=pa.array(sorted(ins), pa.string())))
    for user, forgotten in exclusions.tombstones.items():
        before = pc.fill_null(pc.less_equal(times, pa.scalar(forgotten, TIMESTAMP)), True)
        drop = pc.or_(drop, pc.and_(pc.equal(users, user), before))
    drop = pc.and_(pc.fill_null(drop, False), pc.invert(anonymous))
    n = pc.sum(pc.cast(drop, pa.int64())).as_py() or 0
    return (table.filter(pc.invert(drop)) if n else table), n


def forget_dataset_users(dataset_dir: str | Path, user_ids: set[str]) -> int:
    """Erasure: rewrite a built dataset's per-user files without `user_ids` (pseudonyms); the
    rows removed. (pairs.parquet holds per-(query, item) aggregates with no user: a user's
    share of it goes when the dataset is next built, which honours their tombstone.)"""
    removed = 0
    for name in USER_FILES:
        path = Path(dataset_dir) / name
        if not path.exists():
            continue
        table = pq.read_table(path)
        drop = pc.is_in(table.column("user_id"), value_set=pa.array(sorted(user_ids), pa.string()))
        n = pc.sum(pc.cast(drop, pa.int64())).as_py() or 0
        if n:
            with atomic_path(path, suffix=".parquet") as tmp:
                pq.write_table(table.filter(pc.invert(drop)), str(tmp))
            removed += n
    if removed:
        log.info("%s: removed %d rows of forgotten users", dataset_dir, removed)
    return removed


def allowed_spark(df: Any, when: Any, exclusions: TrainingExclusions) -> Any:
    """`allowed` for a Spark DataFrame with a user_id column; `when` is the Column of its
    records' times. (What was dropped is not counted: that would cost a pass over the data.)"""
    from pyspark.sql import functions as F

    user = F.col("user_id")
    anonymous = user.isNull() | (user == "")
    if exclusions.default_use_for_training:
        out = sorted(
            u for u, c in exclusions.consent.items() if not c.get("use_for_training", True)
        )
        consented = ~user.isin(out) if out else F.lit(True)
    else:
        ins = sorted(u for u, c in exclusions.consent.items() if c.get("use_for_training"))
        consented = user.isin(ins) if ins else F.lit(False)
    df = df.filter(anonymous | consented)
    if exclusions.tombstones:
        spark = df.sparkSession
        tombs = spark.createDataFrame(
            sorted(exclusions.tombstones.items()), "_tomb_user string, _forgotten timestamp"
        )
        df = df.join(F.broadcast(tombs), user == F.col("_tomb_user"), "left")
        kept = F.col("_forgotten").isNull() | (when > F.col("_forgotten"))
        df = df.filter(anonymous | kept).drop("_tomb_user", "_forgotten")
    return df
