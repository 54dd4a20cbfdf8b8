"""`aisle-events`: erasure and retention on an index root's shopper logs (docs/privacy.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EPILOG = """examples:
  AISLE_USER_KEYS_FILE=/secrets/user-keys aisle-events forget --index ./index --user alice
  aisle-events compact --index ./index --retention-days 90

forget removes the shopper's events and impressions (logs rewritten atomically under the events
dir's lock, safe beside a running server), their rows in every version's users.parquet and in
training datasets (--datasets, default ROOT/datasets/*), and their consent; it leaves a tombstone
so a compaction, a replay at start or a dataset build cannot bring them back. A running server
also holds their recent items in memory until its next restart or Reload: call
Privacy.ForgetUser on it instead to clear those at once. User ids are pseudonymised with the same
keys the server uses (--user-keys-file, AISLE_USER_KEYS_FILE or AISLE_USER_KEYS).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="aisle-events",
        description="Erase a shopper's data, or drop old events and impressions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("forget", "erase everything held about one shopper; prints what was removed (JSON)"),
        ("compact", "drop records older than --retention-days, and forgotten users' records"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--index", type=Path, help="index root (its events dir is ROOT/events)")
        p.add_argument("--events-dir", type=Path, help="the events dir, when not ROOT/events")
        if name == "forget":
            p.add_argument(
                "--user", required=True, help="the shopper's user id, as the shop knows it"
            )
            p.add_argument(
                "--datasets",
                type=Path,
                action="append",
                default=[],
                metavar="DIR",
                help="a training dataset dir (aisle-learn dataset --out) to erase the user's rows "
                "from; repeatable (default: every dir under ROOT/datasets)",
            )
            p.add_argument(
                "--user-keys-file",
                type=Path,
                help="the server's user keys (else env AISLE_USER_KEYS_FILE / AISLE_USER_KEYS)",
            )
        else:
            p.add_argument(
                "--retention-days",
                type=float,
                default=None,
                help="drop events and impressions recorded more than this many days ago",
            )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from engine.privacy.consent import ConsentStore
    from engine.privacy.logs import compact, forget
    from indexer.storage.users import forget_users
    from trainer.feedback.privacy import forget_dataset_users
    from trainer.privacy.pseudonym import from_environment

    if args.events_dir is None and args.index is None:
        print("aisle-events: give --index or --events-dir", file=sys.stderr)
        return 2
    events_dir = args.events_dir or args.index / "events"
    try:
        if args.command == "compact":
            result = compact(events_dir, args.retention_days)
            print(json.dumps({"removed": result.removed}))
            return 0
        if not 1 <= len(args.user) <= 256:
            raise ValueError("--user must be 1 to 256 characters")
        pseudonyms = from_environment(keys_file=args.user_keys_file)
        candidates = pseudonyms.candidates(args.user) if pseudonyms else (args.user,)
        result = forget(events_dir, candidates)
        rows = 0
        versions = args.index / "versions" if args.index is not None else None
        if versions is not None and versions.is_dir():
            for version_dir in sorted(p for p in versions.iterdir() if p.is_dir()):
                rows += forget_users(version_dir, set(candidates))
        consent = ConsentStore(events_dir).forget(candidates)
        datasets = list(args.datasets)
        if not datasets and args.index is not None and (args.index / "datasets").is_dir():
            datasets = sorted(p for p in (args.index / "datasets").iterdir() if p.is_dir())
        dataset_rows = sum(forget_dataset_users(d, set(candidates)) for d in datasets)
    except (ValueError, OSError) as error:
        print(f"aisle-events: {error}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "events_removed": result.count("events.jsonl"),
                "impressions_removed": result.count("impressions.jsonl"),
                "users_rows_removed": rows,
                "dataset_rows_removed": dataset_rows,
                "consent_removed": consent,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
