"""`aisle-learn`: the learning loop's commands (`dataset`: the server's logs → training data;
`round`: one learning round; `rollback`: the previous champion again; `ledger`: the rounds)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


def _when(text: str) -> datetime:
    """An ISO 8601 time; naive times are UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-12-01T00:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _weights(text: str) -> dict[str, float]:
    """ACTION=W,... e.g. click=1,add_to_cart=2,purchase=4."""
    out = {}
    try:
        for part in filter(None, text.split(",")):
            name, value = part.split("=")
            out[name.strip()] = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give ACTION=WEIGHT pairs, e.g. click=1,add_to_cart=2,purchase=4"
        ) from None
    return out


def add_dataset_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "dataset",
        help="build training data from the impression and event logs",
        description=(
            "Join the server's events to the result lists they came from (impressions.jsonl + "
            "events.jsonl in the events dir), estimate position bias from the logs, and write a "
            "dataset dir: pairs.parquet (query, item, graded label, inverse-propensity "
            "weight, counts; skip-above negatives), next_items.parquet (consecutive "
            "purchases), propensity.json, summary.json. Bad log lines, unknown item ids and "
            "events without an impression are counted in summary.json and skipped. "
            "See docs/learning.md."
        ),
    )
    parser.add_argument(
        "--events", type=Path, help="the server's events dir (default: ROOT/events with --index)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--index", type=Path, help="index root: its current version's items are the known ids"
    )
    source.add_argument("--catalog", type=Path, help="catalog file (JSONL/CSV/Parquet) instead")
    parser.add_argument("--out", type=Path, required=True, help="dataset dir to write (replaced)")
    parser.add_argument(
        "--since", type=_when, help="first recorded time to use, inclusive (ISO 8601; UTC)"
    )
    parser.add_argument("--until", type=_when, help="recorded time to stop at, exclusive")
    parser.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local: pyarrow on this machine (default); spark: the same step as a Spark job",
    )
    parser.add_argument(
        "--spark-master", default="local[2]", help="Spark master for --engine spark"
    )
    parser.add_argument(
        "--default-use-for-training",
        choices=("on", "off"),
        default="on",
        help="shoppers who never chose (docs/privacy.md): on = their records are used (default); "
        "off = only shoppers who opted in. Opted-out shoppers and erased records are always left "
        "out",
    )
    parser.add_argument(
        "--clip",
        type=float,
        default=10.0,
        help="largest inverse-propensity weight (>= 1; 1 turns the weighting off; default 10)",
    )
    parser.add_argument(
        "--propensity",
        choices=("harvest", "em"),
        default="harvest",
        help="position-bias estimate: harvest (intervention harvesting, default) or em "
        "(docs/learning.md)",
    )
    parser.add_argument(
        "--propensity-shape",
        choices=("monotone", "free"),
        default="monotone",
        help="monotone (default): the estimate made non-increasing in position (isotonic); "
        "free: as fitted, for layouts where a deeper slot can draw more eyes (docs/learning.md)",
    )
    parser.add_argument(
        "--weights",
        type=_weights,
        default={},
        help="action weights, e.g. click=1,add_to_cart=2,purchase=4 (the default; view=0)",
    )
    parser.set_defaults(run=run_dataset)


def known_item_ids(index: Path | None, catalog: Path | None) -> list[str]:
    """The catalog's item ids: the current version's items.parquet of an index root, or a
    catalog file."""
    if catalog is not None:
        from trainer.data.catalog import read_catalog

        return read_catalog(catalog).item_ids
    import pyarrow.parquet as pq

    from indexer.storage.layout import ITEMS_FILE, IndexRoot

    root = IndexRoot(index)
    current = root.current()
    if current is None:
        raise ValueError(f"{index} has no published version (no CURRENT)")
    return (
        pq.read_table(root.version_dir(current) / ITEMS_FILE, columns=["item_id"])
        .column("item_id")
        .to_pylist()
    )


def run_dataset(args: argparse.Namespace) -> int:
    from trainer.feedback.dataset import FeedbackConfig, build_dataset, write_dataset

    events = args.events or (args.index / "events" if args.index else None)
    if events is None:
        raise ValueError("give --events DIR (the server's events dir)")
    if not events.is_dir():
        raise ValueError(f"events dir {events} does not exist")
    config = FeedbackConfig(
        weights=args.weights or FeedbackConfig().weights,
        clip=args.clip,
        propensity=args.propensity,
        propensity_shape=args.propensity_shape,
        since=args.since,
        until=args.until,
        default_use_for_training=args.default_use_for_training == "on",
    )
    known = known_item_ids(args.index, args.catalog)
    if args.engine == "spark":
        from indexer.build.spark import spark_session
        from trainer.feedback.spark import build_dataset_spark

        spark = spark_session(args.spark_master, "aisle-learn")
        try:
            dataset = build_dataset_spark(events, known, config, spark=spark)
        finally:
            spark.stop()
    else:
        dataset = build_dataset(events, known, config)
    write_dataset(dataset, args.out)
    print(json.dumps({"out": str(args.out), **_headline(dataset.summary)}))
    return 0


def _headline(summary: dict) -> dict:
    keys = ("impressions", "events", "events_attributed", "pairs", "positives", "negatives")
    extra = ("propensity_identifiable", "explored_impressions")  # absent in older summaries
    return {
        **{key: summary[key] for key in (*keys, "next_item_pairs", "skipped")},
        **{key: summary[key] for key in extra if key in summary},
    }


def add_round_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "round",
        help="one learning round: dataset → train → gate → build → Reload → ledger",
        description=(
            "Build training data from the logs since the last round (holding back the most "
            "recent slice), fine-tune a challenger from the serving model (mixed with --labeled), "
            "gate it against the champion on --judged (NDCG@10) and/or the held-back logs "
            "(IPS-DCG@10), as --gate says; if it wins, build and publish a new index version "
            "with it and Reload --server. Appends ROOT/learning/rounds.jsonl. Crash-safe: rerun "
            "the same command to resume at the first unfinished step. See docs/learning.md."
        ),
    )
    parser.add_argument("--index", type=Path, required=True, help="the served index root")
    parser.add_argument(
        "--model", type=Path, required=True, help="the champion: the model dir served now"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="models dir: the challenger goes to OUT/round-<n>"
    )
    parser.add_argument("--events", type=Path, help="events dir (default: ROOT/events)")
    parser.add_argument(
        "--catalog", type=Path, help="catalog to train on and index (default: the served items)"
    )
    parser.add_argument(
        "--labeled", type=Path, help="labels file mixed into training so the model does not forget"
    )
    parser.add_argument(
        "--labeled-catalog", type=Path, help="catalog of --labeled (default: --catalog)"
    )
    parser.add_argument("--judged", type=Path, help="fixed judged set (labels) for the gate")
    parser.add_argument(
        "--judged-dataset", help="evaluation convention of --judged: esci, homedepot, ..."
    )
    parser.add_argument("--server", help="HOST:PORT of the server to Reload after a publish")
    parser.add_argument("--admin-token", help="IndexAdmin token of --server")
    parser.add_argument(
        "--gate",
        choices=("judged", "ips", "both"),
        help="which metrics decide: judged = NDCG@10 on --judged (the default when --judged "
        "is given: unbiased, while the held-back clicks were logged under the champion and "
        "favour it), ips = IPS-DCG@10 on the held-back logs (the default without --judged), "
        "both = each must pass its threshold; the others are reported only",
    )
    parser.add_argument(
        "--min-ndcg-gain",
        type=float,
        default=0.0,
        help="least challenger - champion NDCG@10 on --judged to promote (default 0)",
    )
    parser.add_argument(
        "--min-ips-gain",
        type=float,
        default=0.0,
        help="least challenger - champion IPS-DCG@10 on the held-back logs, with --gate ips or "
        "both (default 0; negative: a tolerated loss)",
    )
    parser.add_argument(
        "--tie-tolerance",
        type=float,
        default=1e-4,
        help="differences this small on every metric are a tie: the champion stays",
    )
    parser.add_argument(
        "--clip", type=float, default=10.0, help="largest inverse-propensity weight (default 10)"
    )
    parser.add_argument(
        "--no-propensity-weighting",
        action="store_true",
        help="weight feedback by action only, not by inverse examination propensity",
    )
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.2,
        help="most recent share of the window's result lists held back for the gate",
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=5.0,
        help="end the window this many seconds ago, so impressions still being written by the "
        "server land in a window (default 5)",
    )
    parser.add_argument("--max-steps", type=int, default=200, help="fine-tuning steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument(
        "--skip-negatives",
        type=int,
        default=0,
        metavar="N",
        help="per engaged pair, N of its query's skip-above items join the softmax as negatives "
        "(default 0: in-batch negatives only)",
    )
    parser.add_argument(
        "--lexical-dim",
        type=int,
        metavar="N",
        help="the challenger's trigram sketch, as aisle-train's: N dims appended to both towers' "
        "vectors (0 = none; default: the champion's, none if it has none)",
    )
    parser.add_argument(
        "--lexical-weight",
        type=float,
        metavar="W",
        help="the sketch's weight (default: fitted on --lexical-holdout of the window's queries, "
        "held out of training, their engaged items as judgments)",
    )
    parser.add_argument(
        "--lexical-holdout",
        type=float,
        default=0.1,
        metavar="F",
        help="share of the queries held out of training to fit the sketch's weight on, "
        "in (0, 0.5] (default 0.1; unused with --lexical-weight or no sketch)",
    )
    parser.add_argument(
        "--lexical-fit",
        choices=("window", "all", "shown"),
        default="window",
        help="whose logs the sketch's weight is fitted on: window = a random --lexical-holdout "
        "share of this window's queries; all = a fixed share of the query texts, never trained "
        "on in any round, with their engagement in every round's logs so far; shown = those, "
        "each weight reordering the result lists shown for them (default window)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--no-onnx", action="store_true", help="do not export the challenger's ONNX query tower"
    )
    dp = parser.add_argument_group("differential privacy (as aisle-train's; docs/privacy.md)")
    dp.add_argument(
        "--dp-epsilon",
        type=float,
        metavar="E",
        help="train the challenger's query tower with DP-SGD to this ε (default: off)",
    )
    dp.add_argument("--dp-delta", type=float, default=1e-5, metavar="D", help="(1e-5)")
    dp.add_argument(
        "--dp-max-grad-norm", type=float, default=1.0, metavar="C", help="per-example clip (1.0)"
    )
    dp.add_argument(
        "--dp-trainable-layers", type=int, metavar="N", help="DP-SGD trains the last N layers (all)"
    )
    dp.add_argument(
        "--dp-logq-epsilon",
        type=float,
        metavar="E",
        help="without --dp-epsilon: Laplace-noise the feedback's logQ frequencies (default: off)",
    )
    parser.set_defaults(run=run_round_command)


def run_round_command(args: argparse.Namespace) -> int:
    from engine.learning.gate import GateThresholds
    from engine.learning.round import RoundConfig, TrainSettings, run_round

    config = RoundConfig(
        index=args.index,
        model=args.model,
        out=args.out,
        events=args.events,
        catalog=args.catalog,
        labeled=args.labeled,
        labeled_catalog=args.labeled_catalog,
        judged=args.judged,
        judged_dataset=args.judged_dataset,
        server=args.server,
        admin_token=args.admin_token,
        thresholds=GateThresholds(
            min_ndcg_gain=args.min_ndcg_gain,
            min_ips_gain=args.min_ips_gain,
            tie_tolerance=args.tie_tolerance,
            clip=args.clip,
            gate=args.gate or ("judged" if args.judged is not None else "ips"),
        ),
        propensity_weighting=not args.no_propensity_weighting,
        holdout_fraction=args.holdout_fraction,
        settle_s=args.settle_s,
        train=TrainSettings(
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            skip_negatives=args.skip_negatives,
            lexical_dim=args.lexical_dim,
            lexical_weight=args.lexical_weight,
            lexical_holdout=args.lexical_holdout,
            lexical_fit=args.lexical_fit,
            seed=args.seed,
            num_threads=args.threads,
            export_onnx=not args.no_onnx,
            dp_epsilon=args.dp_epsilon,
            dp_delta=args.dp_delta,
            dp_max_grad_norm=args.dp_max_grad_norm,
            dp_trainable_layers=args.dp_trainable_layers,
            dp_logq_epsilon=args.dp_logq_epsilon,
        ),
    )
    import grpc

    try:
        result = run_round(config)
    except grpc.RpcError as error:  # the Reload: the round resumes there when rerun
        raise ValueError(
            f"--server {args.server}: {error.code().name}: {error.details()}; the new version is "
            "published; rerun the same command to retry the Reload"
        ) from None
    record = result.record
    print(
        json.dumps(
            {
                "round": result.round,
                "outcome": result.outcome,
                "promoted": result.promoted,
                "version": result.version,
                "deltas": record["decision"]["deltas"],
                "reasons": record["decision"]["reasons"],
            }
        )
    )
    return 0


def add_rollback_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "rollback",
        help="serve the previous champion again (CURRENT back one version, Reload)",
        description=(
            "Point ROOT/CURRENT at the version before it (or --to N), Reload --server (model and "
            "index together: a version names its model by fingerprint) and append a rollback "
            "record to ROOT/learning/rounds.jsonl."
        ),
    )
    parser.add_argument("--index", type=Path, required=True, help="the served index root")
    parser.add_argument("--to", type=int, help="version to serve (default: the one before)")
    parser.add_argument("--server", help="HOST:PORT of the server to Reload")
    parser.add_argument("--admin-token", help="IndexAdmin token of --server")
    parser.set_defaults(run=run_rollback_command)


def run_rollback_command(args: argparse.Namespace) -> int:
    import grpc

    from engine.learning.rollback import rollback

    try:
        record = rollback(args.index, to=args.to, server=args.server, admin_token=args.admin_token)
    except grpc.RpcError as error:
        raise ValueError(
            f"--server {args.server}: {error.code().name}: {error.details()}; CURRENT was rolled "
            "back; Reload the server (or restart it) to serve it"
        ) from None
    print(json.dumps(record))
    return 0


def add_ledger_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ledger",
        help="print the learning ledger (ROOT/learning/rounds.jsonl), one JSON line per record",
    )
    parser.add_argument("--index", type=Path, required=True, help="the index root")
    parser.set_defaults(run=run_ledger_command)


def run_ledger_command(args: argparse.Namespace) -> int:
    from engine.learning import ledger

    for record in ledger.read(args.index):
        print(json.dumps(record, sort_keys=True))
    return 0


# Each subcommand registers itself here: (name, add-parser function).
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_dataset_parser,
    add_round_parser,
    add_rollback_parser,
    add_ledger_parser,
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="aisle-learn",
        description="The learning loop: shoppers' behaviour → training data → better towers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"aisle-learn {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
