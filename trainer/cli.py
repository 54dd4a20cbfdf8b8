"""`aisle-train`: fine-tune the query and item towers on labeled queries and interaction logs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from trainer.encoder.fast_tower import DEFAULT_FAST_TOWER, FAST_TOWER_VARIANTS
from trainer.logs import configure_logging

logger = logging.getLogger(__name__)

_EPILOG = """\
examples:
  aisle-train --catalog data/homedepot/products.jsonl.gz \\
      --train data/homedepot/labels_train.jsonl.gz --dev data/homedepot/labels_dev.jsonl.gz \\
      --out models/hd --max-steps 1000 --batch-size 32
  aisle-train --catalog data/scientific/products.jsonl.gz --task recommend \\
      --train data/scientific/interactions_train.jsonl.gz --holdout-fraction 0.1 --out models/sci
  aisle-train --config train.toml --resume
  aisle-train distill-query --teacher models/hd --out models/hd-fast \\
      --catalog data/homedepot/products.jsonl.gz   (a fast query tower; see its --help)

After training, OUT also gets a fast query tower, OUT/query_fast/ (--fast-query-tower,
default static: one distilled vector per token, tens of microseconds per query instead of
milliseconds, same vector space, no reindex; aisle-serve uses it unless --query-tower full).
It is distilled on the first search dataset's catalog and train queries plus queries made
from catalog text (a few minutes on a CPU for a large catalog; the log gives an ETA); runs
with recommendation datasets only skip it. --fast-query-tower none (or fast_query_tower =
"none" in the config) skips it.

A --config file (JSON or TOML) holds any of the settings below by their long names with
underscores (max_steps, batch_size, ...) and a list of datasets, e.g. in TOML:

  out = "models/multi"
  max_steps = 2000
  [[datasets]]
  catalog = "data/homedepot/products.jsonl.gz"
  train = "data/homedepot/labels_train.jsonl.gz"
  task = "search"
  weight = 2
  [[datasets]]
  catalog = "data/scientific/products.jsonl.gz"
  train = "data/scientific/interactions_train.jsonl.gz"
  dev = "data/scientific/interactions_dev.jsonl.gz"
  task = "recommend"

Flags given on the command line override the file. Exit codes: 0 done, 2 bad data or
config (reported before any training step; or a fast query tower that could not be made, the
model dir then complete without it), 1 an I/O error.
"""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _window(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI such as 10,100, got {text!r}") from None
    return lo, hi


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aisle-train",
        description="Fine-tune Aisle's query and item towers (two-tower BERT) on a shop's "
        "labeled queries (search) and user histories (recommendation), then export the best "
        "checkpoint as a model dir that aisle-index and aisle-serve load.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # unset flags leave the config file's values
    )
    data = p.add_argument_group("data (one dataset; use --config for several)")
    data.add_argument("--config", type=Path, metavar="FILE", help="JSON or TOML config file")
    data.add_argument("--catalog", type=Path, metavar="FILE", help="catalog file")
    data.add_argument("--train", type=Path, metavar="FILE", help="labels or interactions file")
    data.add_argument("--dev", type=Path, metavar="FILE", help="dev split for early stopping")
    data.add_argument(
        "--task", choices=("search", "recommend"), help="what --train holds (default: search)"
    )
    data.add_argument(
        "--dataset",
        choices=("esci", "homedepot", "scientific"),
        help="evaluation convention (default: from the catalog's directory name)",
    )
    data.add_argument(
        "--holdout-fraction",
        type=float,
        metavar="F",
        help="without --dev: evaluate on this share of the train queries/users (default: 0)",
    )

    model = p.add_argument_group("model")
    model.add_argument("--out", type=Path, metavar="DIR", help="model dir to write (required)")
    model.add_argument(
        "--base-model", type=Path, metavar="DIR", help="base model dir (default: all-MiniLM-L6-v2)"
    )
    model.add_argument(
        "--shared-towers", type=_bool, metavar="BOOL", help="one encoder for both (default: true)"
    )
    model.add_argument("--projection-dim", type=int, metavar="N", help="project to N dims")
    model.add_argument("--pooling", choices=("mean", "cls"), help="default: the base model's")
    model.add_argument("--max-query-length", type=int, metavar="N", help="tokens (default: 32)")
    model.add_argument("--max-item-length", type=int, metavar="N", help="tokens (default: 64)")

    loss = p.add_argument_group("loss")
    loss.add_argument("--temperature", type=float, metavar="T", help="softmax temperature (0.05)")
    loss.add_argument("--learnable-temperature", type=_bool, metavar="BOOL")
    loss.add_argument("--logq", type=_bool, metavar="BOOL", help="popularity correction (true)")
    loss.add_argument("--symmetric", type=_bool, metavar="BOOL", help="add item->query (false)")
    loss.add_argument(
        "--partial-weight",
        type=float,
        metavar="W",
        help="weight of partial matches as positives (default: their gain ratio; 0 = none)",
    )
    loss.add_argument(
        "--hard-negatives", type=int, metavar="N", help="hard negatives per pair (default: 0)"
    )
    loss.add_argument("--mine-every", type=int, metavar="STEPS", help="re-mine (0 = once)")
    loss.add_argument("--mine-window", type=_window, metavar="LO,HI", help="ranks (10,100)")
    loss.add_argument("--mine", type=_bool, metavar="BOOL", help="false: grade 0 only (true)")
    loss.add_argument("--labeled-negatives", type=_bool, metavar="BOOL", help="use grade 0")
    loss.add_argument("--history-length", type=int, metavar="N", help="recommend: items (50)")
    loss.add_argument(
        "--history-decay",
        type=float,
        metavar="D",
        help="recommend: user tower recency decay in (0, 1], 1 = plain mean (1)",
    )
    loss.add_argument(
        "--fit-history-decay",
        type=_bool,
        metavar="BOOL",
        help="recommend: pick the decay on the eval users at each evaluation (false)",
    )
    loss.add_argument("--refresh-every", type=int, metavar="STEPS", help="item bank (200)")
    model.add_argument(
        "--lexical-dim",
        type=int,
        metavar="N",
        help="append an N-dim hashed character-trigram sketch to both towers' vectors (0 = none)",
    )
    model.add_argument(
        "--lexical-weight",
        type=float,
        metavar="W",
        help="the sketch's mixing weight (default: fitted on the search eval queries)",
    )
    model.add_argument(
        "--lexical-rerank",
        type=_bool,
        metavar="BOOL",
        help="fit the weight by reordering each eval query's judged items (a logged result "
        "list) instead of ranking the catalog (false)",
    )

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, metavar="N", help="pairs per batch (32)")
    opt.add_argument("--grad-accum", type=int, metavar="N", help="batches per step (1)")
    opt.add_argument("--lr", type=float, metavar="LR", help="peak learning rate (2e-5)")
    opt.add_argument("--weight-decay", type=float, metavar="WD", help="AdamW (0.01)")
    opt.add_argument("--warmup-steps", type=int, metavar="N", help="default: 10%% of the steps")
    opt.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps")
    opt.add_argument("--epochs", type=float, metavar="E", help="passes over the data (1)")
    opt.add_argument("--max-grad-norm", type=float, metavar="X", help="clipping (1.0; 0 = off)")
    opt.add_argument("--amp", choices=("auto", "bf16", "off"), help="bf16 autocast (auto)")
    opt.add_argument(
        "--length-buckets", type=int, metavar="N", help="item sub-batches (2 on CPU, 1 on GPU)"
    )
    opt.add_argument(
        "--mini-batch-size",
        type=int,
        metavar="N",
        help="gradient caching: encode each --batch-size batch N texts at a time (off)",
    )
    opt.add_argument("--prefetch", type=int, metavar="N", help="batches built ahead (2; 0 = off)")
    opt.add_argument("--compile", type=_bool, metavar="BOOL", help="torch.compile (false)")
    opt.add_argument(
        "--padding-free",
        choices=("auto", "on", "off"),
        help="train BERT on the real tokens only (auto: on for fp32 on CPU)",
    )
    opt.add_argument("--seed", type=int, metavar="S", help="random seed (0)")

    dp = p.add_argument_group("differential privacy (docs/privacy.md)")
    dp.add_argument(
        "--dp-epsilon",
        type=float,
        metavar="E",
        help="train the query tower with DP-SGD (Opacus) to this ε: per-example clipping and "
        "calibrated Gaussian noise, a softmax over every catalog item against the base's "
        "frozen item tower; search datasets only, one process (default: off)",
    )
    dp.add_argument("--dp-delta", type=float, metavar="D", help="DP-SGD's δ (1e-5)")
    dp.add_argument(
        "--dp-max-grad-norm", type=float, metavar="C", help="DP-SGD's per-example clip (1.0)"
    )
    dp.add_argument(
        "--dp-trainable-layers",
        type=int,
        metavar="N",
        help="DP-SGD trains only the last N transformer layers of the query tower (all): "
        "fewer parameters to clip and noise, much less time and memory per step",
    )
    dp.add_argument(
        "--dp-logq-epsilon",
        type=float,
        metavar="E",
        help="without --dp-epsilon: Laplace-noise the logQ frequencies of datasets marked "
        "shoppers = true (config file) at this ε; labeled data stays exact (default: off)",
    )

    run = p.add_argument_group("evaluation, checkpoints, runtime")
    run.add_argument("--eval-every", type=int, metavar="STEPS", help="0 = at the end only")
    run.add_argument("--patience", type=int, metavar="N", help="evaluations without gain (3)")
    run.add_argument("--eval-max-items", type=int, metavar="N", help="rank a catalog sample")
    run.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="0 = never (500)")
    run.add_argument("--checkpoint-dir", type=Path, metavar="DIR", help="default: OUT.checkpoints")
    run.add_argument("--keep-checkpoints", type=int, metavar="N", help="newest kept (2)")
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N (auto)")
    run.add_argument("--nproc", type=int, metavar="N", help="DDP processes on this machine (1)")
    run.add_argument("--num-threads", type=int, metavar="N", help="torch CPU threads")
    run.add_argument("--tensorboard-dir", type=Path, metavar="DIR")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--export-onnx", type=_bool, metavar="BOOL", help="add the ONNX query tower (true)"
    )
    run.add_argument(
        "--fast-query-tower",
        choices=("none", *FAST_TOWER_VARIANTS),
        help="after training, distil this fast query tower into OUT/query_fast/ on the first "
        f"search dataset (aisle-train distill-query's defaults; {DEFAULT_FAST_TOWER}; none = skip)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    return p


_DATASET_FLAGS = ("catalog", "train", "dev", "task", "dataset")
_NOT_CONFIG = ("config", "nproc", "verbose", "no_progress")


def build_config(args: argparse.Namespace) -> Any:
    """The TrainConfig for parsed arguments: the --config file, overridden by flags.

    Raises:
        ValueError: a bad file, a bad value, or a dataset both in flags and in the file.
    """
    from trainer.training.config import DatasetSpec, TrainConfig, read_config_file

    given = vars(args)
    settings: dict[str, Any] = {}
    if "config" in given:
        settings.update(read_config_file(given["config"]))
    flags = {k: v for k, v in given.items() if k not in _DATASET_FLAGS and k not in _NOT_CONFIG}
    settings.update(flags)
    if given.get("no_progress"):
        settings["progress"] = False
    dataset_flags = {k: given[k] for k in _DATASET_FLAGS if k in given}
    if dataset_flags:
        if settings.get("datasets"):
            raise ValueError(
                "--catalog/--train/--dev/--task/--dataset describe one dataset; the --config "
                "file already lists datasets, so give them there only"
            )
        if "catalog" not in dataset_flags or "train" not in dataset_flags:
            raise ValueError("one dataset needs both --catalog and --train")
        settings["datasets"] = (DatasetSpec(**dataset_flags),)
    if "out" not in settings:
        raise ValueError(
            "--out (the model dir to write) is required, on the command line or "
            "in the --config file"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in settings.items() if k in known})


def _distill_fast_tower(config: Any, out: Path) -> str | None:
    """Add ``config.fast_query_tower`` to the trained model dir ``out`` (``trainer.distill``),
    distilled on the first search dataset; returns its variant, or None when skipped ("none",
    or no search dataset to distil on: an info line says so)."""
    if config.fast_query_tower == "none":
        return None
    search = [d for d in config.datasets if d.task == "search"]
    if not search:
        logger.info(
            "no fast query tower: no search dataset to distil it on (recommendation only); "
            "the full query tower serves"
        )
        return None
    from trainer.distill.run import DistillConfig, distill_query

    logger.info(
        "adding the %s fast query tower to %s (--fast-query-tower none skips it)",
        config.fast_query_tower,
        out,
    )
    result = distill_query(
        DistillConfig(
            teacher=out,
            out=out,
            catalog=search[0].catalog,
            train=search[0].train,
            variant=config.fast_query_tower,
            num_threads=config.num_threads,
        )
    )
    return result.info.variant


def _privacy_summary(out: Path) -> dict[str, Any] | None:
    """ε, δ and the noise multiplier the run spent, from its training_metrics.json."""
    from trainer.training.model import TRAINING_METRICS_NAME

    try:
        metrics = json.loads((out / TRAINING_METRICS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    privacy = metrics.get("privacy")
    if not privacy:
        return None
    summary = {"epsilon": privacy["total_epsilon"], "delta": privacy["total_delta"]}
    if privacy.get("dp_sgd"):
        summary["noise_multiplier"] = privacy["dp_sgd"]["noise_multiplier"]
    if privacy.get("logq"):
        summary["logq_laplace_scale"] = privacy["logq"]["scale"]
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run ``aisle-train``; returns 0, 2 for bad data or config, 1 for I/O errors.

    ``aisle-train distill-query ...`` distils a fast query tower instead
    (``trainer.distill.cli``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["distill-query"]:
        from trainer.distill.cli import main as distill_main

        return distill_main(argv[1:])
    args = _parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    configure_logging(verbose=verbose)  # faiss.loader's INFO noise demoted
    from trainer.training.loop import TrainingInterrupted
    from trainer.training.run import train, train_distributed

    try:
        config = build_config(args)
        nproc = getattr(args, "nproc", 1)
        if nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {nproc}")
        if nproc > 1 and config.dp_epsilon is not None:
            raise ValueError("--dp-epsilon runs in one process: DP-SGD with DDP is not supported")
        result = train_distributed(config, nproc) if nproc > 1 else train(config)
    except TrainingInterrupted as e:  # SIGTERM: the checkpoint of the last step is saved
        print(f"aisle-train: {e}", file=sys.stderr)
        return 143
    except ValueError as e:  # bad data or config: the message says what to fix
        print(f"aisle-train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"aisle-train: error: {e}", file=sys.stderr)
        return 1
    if result is None:  # a rank > 0 under torchrun: rank 0 reports
        return 0
    try:  # once, here: after every DDP process is done (ranks > 0 returned above)
        fast = _distill_fast_tower(config, result.out)
    except (ValueError, OSError) as e:
        print(
            f"aisle-train: error: the fast query tower: {e} (the model dir {result.out} is "
            "complete and serves with its full query tower; add the fast one with "
            "aisle-train distill-query --teacher OUT --out OUT --catalog ...)",
            file=sys.stderr,
        )
        return 2 if isinstance(e, ValueError) else 1
    summary = {
        "out": str(result.out),
        "steps": result.steps,
        "best_step": result.best_step,
        "best_ndcg@10": result.best_metric,
        "best_evaluated_on": result.best_evaluated_on,
        "stopped_early": result.stopped_early,
        "pairs_per_second": round(result.pairs_per_second, 2),
        "fast_query_tower": fast,
    }
    privacy = _privacy_summary(result.out)
    if privacy is not None:
        summary["privacy"] = privacy
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
