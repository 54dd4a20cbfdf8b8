"""``aisle-train distill-query``: give a model dir a fast query tower (``trainer.distill.run``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from trainer.distill.run import DistillConfig, distill_query
from trainer.distill.students import AUTO_PASSES, AUTO_STEPS, FitSettings
from trainer.encoder.fast_tower import DEFAULT_FAST_TOWER, FAST_TOWER_VARIANTS

_EPILOG = """\
variants:
  int8     the teacher's ONNX query graph with int8 weights (no training, no --catalog)
  student  the teacher's BERT cut to --layers of its own layers, distilled, ONNX
  static   one distilled vector per token, mean-pooled in numpy (model2vec's design)

The student lands where the teacher's query tower lands (1 - cosine) and ranks the teacher's
item vectors as the teacher does (KL over in-batch items), on the --train queries plus queries
synthesised from catalog titles, brands, categories and attributes. OUT gets the teacher's
towers, the full query tower's ONNX export and query_fast/; its model fingerprint is the
teacher's, so indexes built with the teacher serve with it unchanged (aisle-serve
--query-tower fast|full). OUT may be the teacher itself (the fast tower is added in place).

example:
  aisle-train distill-query --teacher models/hd --out models/hd-fast \\
      --catalog data/homedepot/products.jsonl.gz --train data/homedepot/labels_train.jsonl.gz
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aisle-train distill-query",
        description="Distil a small, fast query tower from a model dir's query tower, into the "
        "same vector space (the item tower and any index built with it stay valid).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--teacher", type=Path, required=True, metavar="MODEL", help="model dir")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_FAST", help="model dir")
    p.add_argument("--catalog", type=Path, metavar="FILE", help="catalog (needed to train)")
    p.add_argument("--train", type=Path, metavar="FILE", help="labeled queries (optional)")
    p.add_argument(
        "--variant",
        choices=FAST_TOWER_VARIANTS,
        default=DEFAULT_FAST_TOWER,
        help=f"({DEFAULT_FAST_TOWER})",
    )
    p.add_argument("--layers", type=int, default=2, metavar="N", help="student layers (2)")
    p.add_argument(
        "--quantize", action="store_true", help="student: int8-quantise its ONNX graph too"
    )
    p.add_argument(
        "--synth-queries", type=int, default=20_000, metavar="N", help="from the catalog (20000)"
    )
    p.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help=f"training steps (default: about {AUTO_PASSES} passes over the queries, "
        f"{AUTO_STEPS[0]} to "
        f"{AUTO_STEPS[1]})",
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="queries (64)")
    p.add_argument(
        "--lr", type=float, metavar="LR", help="learning rate (static 1e-3, student 1e-4)"
    )
    p.add_argument("--temperature", type=float, default=0.05, metavar="T", help="(0.05)")
    p.add_argument(
        "--rank-weight", type=float, default=1.0, metavar="W", help="ranking term weight (1)"
    )
    p.add_argument(
        "--holdout-fraction", type=float, default=0.05, metavar="F", help="queries (0.05)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--num-threads", type=int, metavar="N", help="torch / ORT CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``aisle-train distill-query``; 0 done, 2 bad data or settings, 1 an I/O error."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    lr = args.lr if args.lr is not None else (1e-3 if args.variant == "static" else 1e-4)
    try:
        if args.num_threads is not None:
            if args.num_threads < 1:
                raise ValueError(f"--num-threads must be >= 1, got {args.num_threads}")
            import torch

            torch.set_num_threads(args.num_threads)
        config = DistillConfig(
            teacher=args.teacher,
            out=args.out,
            catalog=args.catalog,
            train=args.train,
            variant=args.variant,
            layers=args.layers,
            quantize=args.quantize,
            synth_queries=args.synth_queries,
            holdout_fraction=args.holdout_fraction,
            fit=FitSettings(
                steps=args.steps,
                batch_size=args.batch_size,
                lr=lr,
                temperature=args.temperature,
                rank_weight=args.rank_weight,
                seed=args.seed,
            ),
            num_threads=args.num_threads,
        )
        result = distill_query(config)
    except ValueError as e:
        print(f"aisle-train distill-query: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"aisle-train distill-query: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(result.out), **asdict(result.info)}))
    return 0
