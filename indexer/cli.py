"""The ``aisle-index`` command: build an index version from a catalog, or describe one."""

from __future__ import annotations

import argparse
import logging
import sys

from indexer.build import BuildConfig, build_index
from indexer.layout import IndexRoot, resolve_version_dir
from indexer.manifest import MANIFEST_NAME, load_manifest

__all__ = ["main"]

_DESCRIPTION = """\
Build and inspect Aisle search indexes.

An index ROOT is a directory that holds numbered versions (ROOT/versions/1, 2, ...) and a file
ROOT/CURRENT naming the live one. Each `build` embeds the whole catalog with the model, writes a
new version and then switches CURRENT to it; servers and `info` read whatever CURRENT names.
"""

_BUILD_EPILOG = """\
example:
  aisle-index build --catalog products.jsonl.gz --out ./index --shards 2
  aisle-index build --catalog products.parquet --out ./index --factory IVF1024,Flat --model ./model

On success the new version dir is printed on stdout. Progress goes to stderr.
"""


def _parser() -> argparse.ArgumentParser:
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
        "IVF1024,PQ32 (default: Flat)",
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
    build.add_argument("-v", "--verbose", action="store_true", help="log debug details")

    info = commands.add_parser(
        "info",
        help="describe an index (the live version, or a given version dir)",
        description="Print a summary of an index version: number, items, shards, factory, model.",
    )
    info.add_argument("root", metavar="ROOT", help="index root (uses CURRENT) or a version dir")
    info.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    return parser


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
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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
            )
            print(build_index(config))
        else:
            print(_info(args.root))
    except ValueError as e:  # bad data, bad config, corrupt index: the message says what to fix
        print(f"aisle-index: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions: not the user's input, but still one line
        print(f"aisle-index: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
