"""The dataset step as a Spark job (``aisle-learn dataset --engine spark``), for logs past what
one machine's memory holds.

Same inputs, same definitions, same output as ``trainer.feedback.dataset.build_dataset``: Spark
parses both logs (a bad line is a corrupt record, counted and skipped), explodes the shown
lists into cells, attributes events to cells, and aggregates per (query, item, position); the
driver estimates the propensities from those aggregates (their size grows with distinct
(query, item, position) cells, not with events) and Spark then builds the pairs with the curve
as a literal. The driver receives only the outputs (pairs, next-item pairs) as Arrow.

The caller owns the SparkSession (``indexer.build.spark.spark_session`` makes one; this package
may not import it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from trainer.feedback.dataset import (
    DEFAULT_WEIGHTS,
    NEXT_ITEMS_SCHEMA,
    PAIRS_SCHEMA,
    FeedbackConfig,
    FeedbackDataset,
)
from trainer.feedback.logs import EVENTS_FILE, IMPRESSIONS_FILE
from trainer.feedback.privacy import allowed_spark
from trainer.feedback.propensity import estimate_propensities, inverse_propensity
from trainer.privacy.exclusions import training_exclusions

log = logging.getLogger(__name__)

_IMPRESSION_DDL = (
    "request_id string, time string, surface string, user_id string, query string, "
    "mode string, model_fingerprint string, index_version long, offset long, k long, "
    "seed_item_id string, items array<string>, "
    "explore struct<scheme: string, pairs: array<array<long>>>, _corrupt string"
)
_EVENT_DDL = (
    "user_id string, item_id string, type string, query string, time string, "
    "recorded string, request_id string, position long, _corrupt string"
)


def _read(spark: Any, path: Path, ddl: str, required: tuple[str, ...]) -> tuple[Any, dict]:
    """The good records of one JSON-lines log as a DataFrame, and the counts of what was
    skipped (as trainer.feedback.logs counts them)."""
    from pyspark.sql import functions as F

    stats: dict[str, Any] = {"path": str(path), "lines": 0, "kept": 0, "skipped": {}}
    if not path.exists() or path.stat().st_size == 0:
        return None, stats
    with open(path, "rb") as f:
        f.seek(-1, 2)
        torn = f.read(1) != b"\n"
    df = (
        spark.read.schema(ddl)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", "_corrupt")
        .json(str(path))
        .withColumn("_row", F.monotonically_increasing_id())  # file order, before any shuffle
    )
    df = df.withColumn("_bad", F.col("_corrupt").isNotNull())
    missing = None
    for name in required:
        null = F.col(name).isNull()
        missing = null if missing is None else (missing | null)
    df = df.withColumn("_missing", ~F.col("_bad") & missing).cache()
    counts = df.agg(
        F.count(F.lit(1)).alias("lines"),
        F.sum(F.col("_bad").cast("long")).alias("bad"),
        F.sum(F.col("_missing").cast("long")).alias("missing"),
    ).first()
    bad = int(counts["bad"] or 0)
    if torn and bad:
        stats["skipped"]["torn_last_line"] = 1
        bad -= 1
    if bad:
        stats["skipped"]["bad_json"] = bad
    if counts["missing"]:
        stats["skipped"]["missing_field"] = int(counts["missing"])
    stats["lines"] = int(counts["lines"])
    good = df.filter(~F.col("_bad") & ~F.col("_missing")).drop("_corrupt", "_bad", "_missing")
    # _row stays: ties in time are broken by file order, as the local engine does
    for name in ("time", "recorded"):
        if name in good.columns:
            good = good.withColumn(name, F.to_timestamp(F.col(name)))
    stats["kept"] = good.count()
    return good, stats


def _window(df: Any, column: Any, config: FeedbackConfig) -> Any:
    from pyspark.sql import functions as F

    if config.since is not None:
        df = df.filter(column >= F.lit(config.since))
    if config.until is not None:
        df = df.filter(column < F.lit(config.until))
    return df


def build_dataset_spark(
    events_dir: str | Path,
    known_items: list[str] | None,
    config: FeedbackConfig | None = None,
    *,
    spark: Any,
) -> FeedbackDataset:
    """``trainer.feedback.dataset.build_dataset`` as a Spark job on ``spark``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    config = config or FeedbackConfig()
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    events_dir = Path(events_dir)
    impressions, impression_stats = _read(
        spark, events_dir / IMPRESSIONS_FILE, _IMPRESSION_DDL, ("request_id", "time", "items")
    )
    events, event_stats = _read(
        spark, events_dir / EVENTS_FILE, _EVENT_DDL, ("user_id", "item_id", "type", "time")
    )
    if impressions is None:
        impressions = spark.createDataFrame([], _IMPRESSION_DDL.replace(", _corrupt string", ""))
        impressions = impressions.withColumn("time", F.to_timestamp("time"))
    if events is None:
        events = spark.createDataFrame([], _EVENT_DDL.replace(", _corrupt string", ""))
        events = events.withColumn("time", F.to_timestamp("time"))
        events = events.withColumn("recorded", F.to_timestamp("recorded"))
        events = events.withColumn("_row", F.lit(0).cast("long"))
    skipped: dict[str, int] = {}

    def skip(reason: str, n: int) -> None:
        if n:
            skipped[reason] = skipped.get(reason, 0) + int(n)

    # Shoppers who did not consent to training, and erased records (docs/privacy.md).
    exclusions = training_exclusions(events_dir, config.default_use_for_training)
    impressions = allowed_spark(impressions, F.col("time"), exclusions)
    events = allowed_spark(events, F.coalesce("recorded", "time"), exclusions)
    impressions = _window(impressions, F.col("time"), config).withColumn(
        "surface", F.coalesce("surface", F.lit("search"))
    )
    events = events.withColumn("_when", F.coalesce("recorded", "time"))
    events = _window(events, F.col("_when"), config).cache()
    n_events = events.count()
    known = None
    if known_items is not None:
        known = spark.createDataFrame([(i,) for i in known_items], "item_id string").distinct()

    # -- cells ---------------------------------------------------------------------------------
    cells = impressions.select(
        "request_id",
        "surface",
        F.coalesce("query", F.lit("")).alias("query"),
        F.posexplode("items").alias("rank", "item_id"),
        F.coalesce("offset", F.lit(0)).alias("offset"),
    ).withColumn("position", F.col("offset") + F.col("rank") + 1)
    if known is not None:
        cells = cells.join(known.withColumn("_known", F.lit(True)), "item_id", "left")
        cells = cells.withColumn("_known", F.coalesce("_known", F.lit(False)))
    else:
        cells = cells.withColumn("_known", F.lit(True))
    cells = cells.cache()

    # -- events: types, known ids, attribution -------------------------------------------------
    typed = events.filter(F.col("type").isin(list(DEFAULT_WEIGHTS)))
    skip("unknown_event_type", n_events - typed.count())
    if known is not None:
        in_catalog = typed.join(known, "item_id", "left_semi")
        skip("unknown_item", typed.count() - in_catalog.count())
        typed = in_catalog
    typed = typed.withColumn("request_id", F.coalesce("request_id", F.lit(""))).cache()
    unattributed = typed.filter(F.col("request_id") == "").count()
    attributed = typed.filter(F.col("request_id") != "")
    shown_at = cells.groupBy("request_id", "item_id").agg(F.min("position").alias("shown_at"))
    matched = attributed.join(shown_at, ["request_id", "item_id"], "left").cache()
    unmatched = matched.filter(F.col("shown_at").isNull())
    has_impression = impressions.select("request_id").distinct()
    without = unmatched.join(has_impression, "request_id", "left_anti").count()
    skip("event_without_impression", without)
    skip("event_item_not_in_impression", unmatched.count() - without)
    ok = matched.filter(F.col("shown_at").isNotNull())
    n_ok = ok.count()
    mismatch = ok.filter(
        (F.coalesce("position", F.lit(0)) > 0) & (F.col("position") != F.col("shown_at"))
    ).count()
    weight_of = F.create_map(
        *[x for name in DEFAULT_WEIGHTS for x in (F.lit(name), F.lit(config.weight(name)))]
    )
    per_cell = ok.groupBy("request_id", F.col("shown_at").alias("position")).agg(
        F.max(weight_of[F.col("type")]).alias("action"),
        *[
            F.sum((F.col("type") == name).cast("long")).alias(f"n_{name}")
            for name in DEFAULT_WEIGHTS
        ],
    )
    cells = cells.join(per_cell, ["request_id", "position"], "left").fillna(
        0, subset=["action", *[f"n_{name}" for name in DEFAULT_WEIGHTS]]
    )
    cells = cells.withColumn("usable", (F.col("surface") == "search") & F.col("_known"))
    cells = cells.withColumn("engaged", F.col("usable") & (F.col("action") > 0))
    deepest = Window.partitionBy("request_id")
    cells = cells.withColumn(
        "deepest",
        F.max(F.when(F.col("engaged"), F.col("position")).otherwise(0)).over(deepest),
    )
    cells = cells.withColumn(
        "skipped",
        F.col("usable") & ~F.col("engaged") & (F.col("position") < F.col("deepest")),
    ).cache()
    cell_counts = cells.agg(
        F.count(F.lit(1)).alias("cells"),
        F.sum((~F.col("_known")).cast("long")).alias("unknown"),
        F.sum(F.col("engaged").cast("long")).alias("engaged"),
        F.sum(F.col("skipped").cast("long")).alias("skipped"),
    ).first()
    skip("shown_unknown_item", cell_counts["unknown"] or 0)

    # -- propensities from (query, item, position) aggregates ---------------------------------
    usable = cells.filter("usable")
    grid = (
        usable.groupBy("query", "item_id", "position")
        .agg(F.count(F.lit(1)).alias("shown"), F.sum(F.col("engaged").cast("long")).alias("c"))
        .toArrow()
    )
    pair_key = pa.compute.binary_join_element_wise(
        grid.column("query"), grid.column("item_id"), "\x1f"
    )
    _, pair_ids = np.unique(np.asarray(pair_key.to_pylist(), dtype=object), return_inverse=True)
    propensities = estimate_propensities(
        pair_ids,
        grid.column("position").to_numpy(),
        grid.column("c").to_numpy(),
        shown=grid.column("shown").to_numpy(),
        method=config.propensity,
        max_position=config.max_position,
        shape=config.propensity_shape,
    )

    # -- pairs ----------------------------------------------------------------------------------
    curve = propensities.by_position
    ipw_curve = inverse_propensity(curve, config.clip)
    last = len(curve)

    def lookup(values: np.ndarray, position: Any) -> Any:
        index = F.least(F.greatest(position, F.lit(1)), F.lit(last)).cast("int")
        return F.element_at(F.array(*[F.lit(float(v)) for v in values]), index)

    usable = usable.withColumn("ipw_cell", lookup(ipw_curve, F.col("position")))
    big = F.lit(2**62)
    grouped = usable.groupBy("query", "item_id").agg(
        F.max(F.when(F.col("engaged"), F.col("action")).otherwise(0.0)).alias("label"),
        F.sum(F.when(F.col("engaged"), F.col("action")).otherwise(0.0)).alias("gain"),
        F.sum(F.when(F.col("engaged"), F.col("action") * F.col("ipw_cell")).otherwise(0.0)).alias(
            "weighted"
        ),
        F.min(F.when(F.col("engaged"), F.col("position")).otherwise(big)).alias("best_engaged"),
        F.min(F.when(F.col("skipped"), F.col("position")).otherwise(big)).alias("best_skipped"),
        F.sum(F.col("skipped").cast("long")).alias("skips"),
        F.count(F.lit(1)).alias("impressions"),
        F.sum("n_click").alias("clicks"),
        F.sum("n_add_to_cart").alias("add_to_carts"),
        F.sum("n_purchase").alias("purchases"),
        F.sum("n_view").alias("views"),
    )
    positive = F.col("label") > 0
    pairs_df = grouped.filter(positive | (F.col("skips") > 0)).select(
        "query",
        "item_id",
        F.col("label").cast("double"),
        F.when(positive, F.col("weighted"))
        .otherwise(F.col("skips").cast("double"))
        .alias("weight"),
        F.when(positive, F.col("weighted") / F.col("gain")).otherwise(1.0).alias("ipw"),
        F.when(positive, F.col("best_engaged")).otherwise(F.col("best_skipped")).alias("position"),
        "impressions",
        "clicks",
        "add_to_carts",
        "purchases",
        "views",
        "skips",
    )
    pairs_df = pairs_df.withColumn("propensity", lookup(curve, F.col("position")))
    pairs = pairs_df.orderBy("query", "item_id").toArrow().select(PAIRS_SCHEMA.names)
    pairs = pairs.cast(PAIRS_SCHEMA)

    # -- next items -------------------------------------------------------------------------
    bought = typed.filter(F.col("type") == "purchase").select(
        "user_id", "item_id", F.col("_when").alias("time"), F.col("_row").alias("row")
    )
    by_user = Window.partitionBy("user_id").orderBy("time", "row")
    next_df = (
        bought.withColumn("next_item_id", F.lead("item_id").over(by_user))
        .withColumn("next_time", F.lead("time").over(by_user))
        .filter(F.col("next_item_id").isNotNull() & (F.col("next_item_id") != F.col("item_id")))
        .select("user_id", "item_id", "next_item_id", F.col("next_time").alias("time"))
        .orderBy("user_id", "time")
    )
    next_items = next_df.toArrow()
    next_items = (
        next_items.cast(NEXT_ITEMS_SCHEMA)
        if next_items.num_rows
        else NEXT_ITEMS_SCHEMA.empty_table()
    )

    n_impressions = impressions.count()
    with_events = per_cell.select("request_id").distinct().count()
    times = impressions.agg(F.min("time").alias("first"), F.max("time").alias("last")).first()
    positives = sum(1 for v in pairs.column("label").to_pylist() if v > 0)
    summary = {
        "engine": "spark",
        "window": {
            "since": config.since.isoformat() if config.since else None,
            "until": config.until.isoformat() if config.until else None,
        },
        "data_time": {
            "first": times["first"].isoformat() if times["first"] else None,
            "last": times["last"].isoformat() if times["last"] else None,
        },
        "weights": {name: config.weight(name) for name in DEFAULT_WEIGHTS},
        "clip": config.clip,
        "propensity": config.propensity,
        "propensity_shape": config.propensity_shape,
        "propensity_identifiable": propensities.identifiable,
        "impressions": n_impressions,
        "explored_impressions": impressions.filter(F.col("explore").isNotNull()).count(),
        "impressions_by_surface": {
            row["surface"]: row["count"] for row in impressions.groupBy("surface").count().collect()
        },
        "shown_cells": int(cell_counts["cells"] or 0),
        "events": n_events,
        "events_attributed": n_ok,
        "events_position_mismatch": mismatch,
        "impressions_without_events": n_impressions - with_events,
        "engaged_cells": int(cell_counts["engaged"] or 0),
        "skipped_cells": int(cell_counts["skipped"] or 0),
        "pairs": pairs.num_rows,
        "positives": positives,
        "negatives": pairs.num_rows - positives,
        "next_item_pairs": next_items.num_rows,
        "skipped": {**skipped, "unattributed_events": unattributed},
        "logs": [impression_stats, event_stats],
    }
    for df in (events, cells, typed, matched):
        df.unpersist()
    log.info(
        "dataset (spark): %d impressions, %d events (%d attributed) → %d pairs",
        n_impressions,
        n_events,
        n_ok,
        pairs.num_rows,
    )
    return FeedbackDataset(pairs, next_items, propensities, summary)
