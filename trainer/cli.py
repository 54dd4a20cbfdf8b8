"""`aisle-train`: fine-tune the two towers (the training loop itself is not built yet)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="aisle-train",
        description=(
            "Fine-tune Aisle's query and item towers on a shop's labeled queries and interaction "
            "logs. NOT BUILT YET: this version only checks its inputs and says so; until training "
            "lands, index and serve the packaged base model (aisle-index build without --model)."
        ),
    )
    parser.add_argument("--catalog", type=Path, help="catalog file (JSONL[.gz], Parquet or CSV)")
    parser.add_argument("--train", type=Path, help="labels or interactions file to train on")
    parser.add_argument("--dev", type=Path, help="labels or interactions file for early stopping")
    parser.add_argument(
        "--base-model", type=Path, help="base model dir (default: all-MiniLM-L6-v2)"
    )
    parser.add_argument("--out", type=Path, help="model dir to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_args(argv)
    print(
        "aisle-train: training is not implemented in this version; "
        "serve the packaged base model instead (aisle-index build --catalog FILE --out ROOT)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
