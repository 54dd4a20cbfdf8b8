"""The ``aisle-index`` command: build an index version from a catalog, or describe one."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from indexer.build.compact import compact
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.build.query_tower import with_query_tower
from indexer.build.ranker import attach_ranker
from indexer.build.spark import SparkConfig, build_index_spark
from indexer.ranking.model import RANKER_FILE, Ranker
from indexer.ranking.training import (
    CV_BELOW,
    VALIDATIONS,
    RankerConfig,
    evaluate_ranker,
    prepare_queries,
    train_ranker,
    version_source,
)
from indexer.storage.layout import DEFAULT_KEEP_VERSIONS, IndexRoot, resolve_version_dir
from indexer.storage.manifest import MANIFEST_NAME, load_manifest
from indexer.storage.update_log import UPDATES_DIR, UpdateLog
from indexer.version import IndexVersion
from trainer.data.labels import read_labels
from trainer.encoder.load import load_encoder
from trainer.feedback.engagement import ENGAGEMENT_DAYS, read_engagement
from trainer.logs import configure_logging

__all__ = ["main", "rank_main"]

_DESCRIPTION = """\
Build and inspect Aisle search indexes.

An index ROOT is a directory that holds numbered versions (ROOT/versions/1, 2, ...) and a file
ROOT/CURRENT naming the live one. Each `build` embeds the whole catalog with the model, writes a
new version and then switches CURRENT to it; servers and `info` read whatever CURRENT names.

Live updates (upserts, deletes, attribute changes sent to a server) are logged durably in
ROOT/updates; `compact` folds them into a new version, and a `build` replays them onto its
catalog. The newest versions are kept: `rollback` switches CURRENT back, `prune` deletes more.
`repair-log` moves a damaged update-log tail aside when the log refuses to replay past it.
"""

_BUILD_EPILOG = """\
example:
  aisle-index build --catalog products.jsonl.gz --out ./index --shards 2
  aisle-index build --catalog products.parquet --out ./index --factory IVF1024,Flat --model ./model
  aisle-index build --catalog products.jsonl.gz --out ./index --factory auto --memory-budget 2GB \
      --tune-queries queries_dev.jsonl --target-recall 0.95 --vectors f16

IVF and HNSW indexes get their search effort (nprobe / efSearch) tuned at build time: the
smallest value reaching --target-recall recall@k against exact search is written to the
manifest (requests may still override it).

On success the new version dir is printed on stdout. Progress goes to stderr.
"""


def arg_parser() -> argparse.ArgumentParser:
    """The ``aisle-index`` parser: build, info, compact, rollback, prune and repair-log
    subcommands."""
    parser = argparse.ArgumentParser(
        prog="aisle-index",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser(
        "build",
        help="embed a catalog and publish a new index version",
        description="Embed every catalog item, build sharded FAISS indexes and publish them as "
        "a new version of the index ROOT (CURRENT is switched only once the version is complete).",
        epilog=_BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument(
        "--catalog",
        required=True,
        metavar="FILE",
        help="catalog file: .jsonl / .jsonl.gz (one JSON object per line), .parquet or "
        ".csv / .csv.gz; needs item_id and title per item",
    )
    build.add_argument(
        "--out", required=True, metavar="ROOT", help="index root dir (created if missing)"
    )
    build.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="model dir (a trained Aisle model or a Hugging Face dir); "
        "default: the packaged all-MiniLM-L6-v2",
    )
    build.add_argument(
        "--shards", type=int, default=1, metavar="N", help="number of shards (default: 1)"
    )
    build.add_argument(
        "--factory",
        default="Flat",
        metavar="STR",
        help="FAISS index_factory string, e.g. Flat (exact), HNSW32, IVF1024,Flat, "
        "IVF1024,PQ32, IVF1024,PQ192x4fs (fast-scan), SQ8; or 'auto': chosen by shard size "
        "and --memory-budget (default: Flat)",
    )
    build.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help="RAM for the FAISS indexes of all shards, for --factory auto: bytes or e.g. 2GB, "
        "512MiB (default: no limit)",
    )
    build.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        metavar="R",
        help="tune nprobe / efSearch to the smallest value reaching this recall@k against "
        "exact search (default: 0.95)",
    )
    build.add_argument(
        "--tune-k", type=int, default=10, metavar="K", help="k of that recall@k (default: 10)"
    )
    build.add_argument(
        "--tune-queries",
        default=None,
        metavar="FILE",
        help="queries or labels file (query_id, query per row) to tune with; default: sampled "
        "item vectors perturbed by noise, which can under-estimate the effort real queries need",
    )
    build.add_argument(
        "--no-tune",
        action="store_true",
        help="skip the tuning; use fixed defaults (nprobe ~ nlist/32, efSearch 64)",
    )
    build.add_argument(
        "--vectors",
        choices=("f32", "f16", "i8"),
        default="f32",
        help="encoding of the vector copies kept for exact re-scoring: f32 (exact), f16 (half "
        "the bytes), i8 (a quarter; one scale per vector) (default: f32)",
    )
    build.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="items per encoder forward pass (default: 32)",
    )
    build.add_argument(
        "--max-item-length",
        type=int,
        default=None,
        metavar="N",
        help="token cap for item texts (default: the model's own, 128 for the packaged model)",
    )
    build.add_argument(
        "--discard-updates",
        action="store_true",
        help="drop the live updates the catalog may lack (newer than the current version or "
        "than the catalog file) instead of replaying them onto it (the default); the log and "
        "the manifest record it either way",
    )
    build.add_argument(
        "--interactions",
        type=Path,
        default=None,
        metavar="FILE",
        help="user histories (user_id, item_id, position; JSONL/Parquet/CSV): each user's recent "
        "items are published with the version for personalised Search and Recommend",
    )
    build.add_argument(
        "--item-vectors",
        type=Path,
        default=None,
        metavar="FILE",
        help="float32 .npy of shape (n_items, dim), row r the embedding of catalog row r (e.g. "
        "a previous build's, reused): taken as the item vectors instead of encoding the "
        "catalog; rows must be the model's normalised output (default: encode the catalog)",
    )
    build.add_argument(
        "--ranker",
        type=Path,
        default=None,
        metavar="FILE",
        help="a ranker file (aisle-rank train) to publish with the version: searches then "
        "default to mode RANKED; it must be trained on this model and the catalog's fields "
        "(to add one to the current version without re-embedding: aisle-rank attach)",
    )
    build.add_argument(
        "--no-lexical",
        action="store_true",
        help="skip the BM25 index (the lexical channel of hybrid search)",
    )
    build.add_argument(
        "--no-onnx-export",
        action="store_true",
        help="without --model, the packaged model is copied once to OUT/models/<fingerprint> "
        "with its query tower exported to ONNX, so aisle-serve encodes queries with ONNX "
        "Runtime (~3x faster than torch on a CPU; needs the `train` extra): this skips that "
        "(with --model DIR nothing is exported: the log says how)",
    )
    _add_spark_arguments(build)
    build.add_argument("-v", "--verbose", action="store_true", help="log debug details")

    info = commands.add_parser(
        "info",
        help="describe an index (the live version, or a given version dir)",
        description="Print a summary of an index version: number, items, shards, factory, model.",
    )
    info.add_argument("root", metavar="ROOT", help="index root (uses CURRENT) or a version dir")
    info.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    _add_version_commands(commands)
    return parser


def _add_spark_arguments(build: argparse.ArgumentParser) -> None:
    """``build`` flags for the Spark engine (``indexer.build.spark``; needs ``aisle[spark]``)."""
    build.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local: embed and build on this machine (default); spark: run the batch reindex "
        "as a PySpark job (see docs/spark.md)",
    )
    build.add_argument(
        "--master",
        default=None,
        metavar="URL",
        help="with --engine spark: Spark master, e.g. local[2] (default: spark-submit's, or "
        "local[*])",
    )
    build.add_argument(
        "--partitions",
        type=int,
        default=None,
        metavar="N",
        help="with --engine spark: partitions for embedding, ~2-4 per executor core or GPU "
        "(default: as Spark reads the catalog)",
    )
    build.add_argument(
        "--embeddings-out",
        default=None,
        metavar="DIR",
        help="with --engine spark: keep the embeddings (Parquet: item_id, row, shard, vector) "
        "in DIR for reuse (default: a work dir deleted after publishing)",
    )


def _add_version_commands(commands: argparse._SubParsersAction) -> None:
    """The ``compact``, ``rollback``, ``prune`` and ``repair-log`` subcommands (live updates
    and versions)."""
    compact_cmd = commands.add_parser(
        "compact",
        help="fold the live updates into a new version",
        description="Publish the current version plus every pending live update (upserts, "
        "deletes, attribute changes from ROOT/updates) as a new version, re-using the stored "
        "vectors: no re-embedding. Prints the new version dir (the current one if nothing was "
        "pending).",
    )
    compact_cmd.add_argument("root", metavar="ROOT", help="index root")
    rollback = commands.add_parser(
        "rollback",
        help="switch CURRENT back to an older kept version",
        description="Point ROOT/CURRENT at the version before the current one (or --to N), "
        "atomically, after checking its files. Live updates are kept: a live index opened on "
        "the older version replays those newer than it. Prints the version dir now current.",
    )
    rollback.add_argument("root", metavar="ROOT", help="index root")
    rollback.add_argument("--to", type=int, default=None, metavar="N", help="version to serve")
    prune = commands.add_parser(
        "prune",
        help="delete old versions",
        description="Delete all but the newest N versions (never the current one) and the "
        "update-log segments no kept version needs. Builds and compactions prune to "
        f"{DEFAULT_KEEP_VERSIONS} on their own.",
    )
    prune.add_argument("root", metavar="ROOT", help="index root")
    for command in (compact_cmd, prune):
        command.add_argument(
            "--keep",
            type=int,
            default=DEFAULT_KEEP_VERSIONS,
            metavar="N",
            help=f"versions to keep (default: {DEFAULT_KEEP_VERSIONS})",
        )
    repair = commands.add_parser(
        "repair-log",
        help="move a damaged update-log tail aside so the index opens again",
        description="The update log refuses to replay past a missing or damaged record (the "
        "error names the segment, the seqs and this command). Stop every server of ROOT, then "
        "move every record from --truncate-at SEQ on aside into ROOT/updates/quarantine/<time>/ "
        "(nothing is deleted; the live updates moved are no longer served: re-send them, or "
        "restore the segment from a backup instead). Prints the quarantine dir.",
    )
    repair.add_argument("root", metavar="ROOT", help="index root")
    repair.add_argument(
        "--truncate-at",
        type=int,
        required=True,
        metavar="SEQ",
        help="the first seq to move aside (the one the error names)",
    )
    for command in (compact_cmd, rollback, prune, repair):
        command.add_argument("-v", "--verbose", action="store_true", help="log debug details")


def _run_version_command(args: argparse.Namespace) -> str:
    """Run compact / rollback / prune / repair-log; returns what to print on stdout."""
    root = IndexRoot(args.root)
    if not root.root.is_dir():
        raise ValueError(f"{root.root}: no such index root")
    if args.command == "compact":
        return str(compact(root.root, keep=args.keep))
    if args.command == "repair-log":
        if not (root.root / UPDATES_DIR).is_dir():
            raise ValueError(f"{root.root}: has no update log")
        with root.build_lock(), UpdateLog(root.root) as log:  # no compaction reads it meanwhile
            quarantine, _ = log.repair(args.truncate_at)
        return str(quarantine)
    with root.build_lock():  # no build may publish while CURRENT or the versions change
        if args.command == "rollback":
            return str(root.version_dir(root.rollback(args.to)))
        removed = root.prune(args.keep)
        return f"removed {removed}; kept {root.versions()} (current: {root.current()})"


def _info(path: str) -> str:
    version_dir = resolve_version_dir(path)
    m = load_manifest(version_dir / MANIFEST_NAME)
    lines = [
        f"path:        {version_dir}",
        f"version:     {m.version} (created {m.created_at})",
        f"items:       {m.n_items}",
        f"shards:      {m.n_shards} ({', '.join(str(s.count) for s in m.shards)} items)",
        f"factory:     {m.factory} ({m.metric}, dim {m.dim})",
        f"model:       {m.model_path}",
        f"fingerprint: {m.model_fingerprint}",
    ]
    if m.search_defaults:
        params = ", ".join(f"{k}={v}" for k, v in m.search_defaults.items())
        lines.append(f"search:      {params}")
    build = m.build
    if "seconds" in build:
        lines.append(
            f"build:       {build.get('seconds')} s on {build.get('device', '?')}, "
            f"{build.get('items_per_second', '?')} items/s"
        )
    root = IndexRoot(version_dir.parent.parent)
    if version_dir.parent.name == "versions":
        lines.append(f"versions:    {root.versions()} (current: {root.current()})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``aisle-index``; returns the exit code (2 for bad input or config, 1 for IO errors)."""
    args = arg_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)  # faiss.loader's INFO noise demoted
    try:
        if args.command == "build":
            config = BuildConfig(
                catalog=args.catalog,
                out=args.out,
                model=args.model,
                shards=args.shards,
                factory=args.factory,
                batch_size=args.batch_size,
                max_item_length=args.max_item_length,
                memory_budget=args.memory_budget,
                target_recall=None if args.no_tune else args.target_recall,
                tune_k=args.tune_k,
                tune_queries=args.tune_queries,
                vectors=args.vectors,
                discard_updates=args.discard_updates,
                lexical=not args.no_lexical,
                interactions=args.interactions,
                item_vectors=args.item_vectors,
                ranker=args.ranker,
            )
            if not args.no_onnx_export:
                config = with_query_tower(config)
            if args.engine == "spark":
                if args.item_vectors is not None:
                    raise ValueError(
                        "--item-vectors is for the local engine; the Spark build encodes the "
                        "catalog itself (drop --engine spark, or drop --item-vectors)"
                    )
                spark_config = SparkConfig(
                    master=args.master,
                    partitions=args.partitions,
                    embeddings_out=args.embeddings_out,
                )
                print(build_index_spark(config, spark_config))
            else:
                print(build_index(config))
        elif args.command == "info":
            print(_info(args.root))
        else:
            print(_run_version_command(args))
    except ValueError as e:  # bad data, bad config, corrupt index: the message says what to fix
        print(f"aisle-index: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions: not the user's input, but still one line
        print(f"aisle-index: error: {e}", file=sys.stderr)
        return 1
    return 0


_RANK_DESCRIPTION = """\
Train, evaluate and attach the learned ranker (LightGBM lambdarank) of an index.

The ranker orders the union of the dense and lexical channels' top candidates by features of
each (query, item) pair (indexer.ranking.spec). `train` computes them over an index version for
labelled queries (labels_train: query_id, query, item_id, grade) and holds out a slice of those
queries for early stopping; `evaluate` scores it on other labels (labels_dev); `attach` publishes
the current version again with the ranker (no re-embedding), and servers then search in mode
RANKED by default.
"""


def rank_arg_parser() -> argparse.ArgumentParser:
    """The ``aisle-rank`` parser: train, evaluate and attach subcommands."""
    parser = argparse.ArgumentParser(
        prog="aisle-rank",
        description=_RANK_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a ranker on labelled queries")
    evaluate = commands.add_parser(
        "evaluate", help="NDCG@10 / Recall@100 of a ranker and of each channel over its candidates"
    )
    for sub in (train, evaluate):
        sub.add_argument("--index", required=True, metavar="ROOT",
                         help="index root (its CURRENT version) or version dir")  # fmt: skip
        sub.add_argument("--labels", required=True, type=Path, metavar="FILE",
                         help="graded labels: query_id, query, item_id, grade per row")  # fmt: skip
        sub.add_argument("--model", default=None, metavar="DIR",
                         help="model dir (default: the version's own)")  # fmt: skip
        sub.add_argument("--gains", default="grade", choices=["grade", "esci"],
                         help="grade -> gain table: grade (gain = grade) or esci (E=1, S=0.1, "
                         "C=0.01) (default: grade)")  # fmt: skip
        sub.add_argument("--events", type=Path, default=None, metavar="DIR",
                         help="the server's events dir: the engagement feature counts its "
                         "engaged events per item (consent and erasure respected); without "
                         "it the feature is missing (NaN), as for a server with no event "
                         "log")  # fmt: skip
        sub.add_argument("--engagement-days", type=float, default=ENGAGEMENT_DAYS, metavar="D",
                         help="the engagement window, in days back from now (default "
                         f"{ENGAGEMENT_DAYS:g}; aisle-serve --engagement-days)")  # fmt: skip
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    train.add_argument("--out", required=True, type=Path, metavar="FILE",
                       help="ranker file to write (JSON; written atomically)")  # fmt: skip
    train.add_argument("--max-rounds", type=int, default=500, metavar="N",
                       help="boosting rounds at most (default 500)")  # fmt: skip
    train.add_argument("--threads", type=int, default=2, metavar="N",
                       help="LightGBM threads (default 2)")  # fmt: skip
    train.add_argument("--seed", type=int, default=0, help="held-out split and model seed")
    train.add_argument("--validation", choices=VALIDATIONS, default="auto",
                       help="holdout: early stopping on 15%% of the train queries; cv: K-fold "
                       "cross-validation over them picks the tree size and rounds, then all "
                       f"train; auto: cv under {CV_BELOW} usable queries "
                       "(default auto)")  # fmt: skip
    train.add_argument("--cv-folds", type=int, default=5, metavar="K",
                       help="folds of --validation cv (default 5)")  # fmt: skip
    evaluate.add_argument("--ranker", type=Path, default=None, metavar="FILE",
                          help="ranker file; default: the version's own")  # fmt: skip
    evaluate.add_argument("--recall-grade", type=int, default=None, metavar="G",
                          help="lowest relevant grade for Recall@100 (default: 3 with esci "
                          "gains, 2 otherwise)")  # fmt: skip
    attach = commands.add_parser(
        "attach", help="publish the current version again with a ranker (no re-embedding)"
    )
    attach.add_argument("--index", required=True, metavar="ROOT", help="index root")
    attach.add_argument("--ranker", required=True, type=Path, metavar="FILE", help="ranker file")
    attach.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def rank_main(argv: list[str] | None = None) -> int:
    """Entry point of ``aisle-rank``; returns the exit code."""
    args = rank_arg_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        if args.command == "attach":
            print(attach_ranker(args.index, args.ranker))
            return 0
        print(json.dumps(_rank_train_or_evaluate(args), indent=1))
    except ValueError as e:
        print(f"aisle-rank: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"aisle-rank: error: {e}", file=sys.stderr)
        return 1
    return 0


def _rank_train_or_evaluate(args: argparse.Namespace) -> dict:
    version_dir = resolve_version_dir(args.index)
    manifest = load_manifest(version_dir / MANIFEST_NAME)
    encoder = load_encoder(args.model or manifest.model_path)
    index = IndexVersion.open(version_dir, expected_fingerprint=encoder.fingerprint)
    engagement = None
    if args.events is not None:
        if not args.events.is_dir():
            raise ValueError(f"--events {args.events}: not a directory")
        engagement = read_engagement(args.events, days=args.engagement_days)
    source = version_source(index, encoder, engagement)
    labels = read_labels(args.labels)
    qs = prepare_queries(index, source, encoder, labels, show_progress=True)
    if args.command == "train":
        config = RankerConfig(
            gains=args.gains,
            max_rounds=args.max_rounds,
            threads=args.threads,
            seed=args.seed,
            validation=args.validation,
            cv_folds=args.cv_folds,
        )
        ranker = train_ranker(
            qs, config, model_fingerprint=encoder.fingerprint, fields=source.fields.fields
        )
        if engagement is not None:  # what the engagement feature was read from, in the file
            used = {"events_dir": str(args.events), "days": args.engagement_days,
                    "events": engagement.events, "items": len(engagement.counts),
                    "until": engagement.until.isoformat()}  # fmt: skip
            ranker = replace(ranker, training={**ranker.training, "engagement": used})
        ranker.save(args.out)
        return {"ranker": str(args.out), **ranker.training}
    path = args.ranker or version_dir / RANKER_FILE
    ranker = Ranker.load(path)
    ranker.check(encoder.fingerprint, source.fields.fields, str(path))
    grade = args.recall_grade or (3 if args.gains == "esci" else 2)
    return evaluate_ranker(qs, ranker, args.gains, recall_grade=grade)


if __name__ == "__main__":
    sys.exit(main())
