"""``python -m trainer.evaluation``: evaluate a model on a dataset's search or recommendation
split (``EvalConfig``, ``run_evaluation``), print the table and optionally write JSON.

CLI: ``python -m trainer.evaluation --model DIR --catalog FILE --labels FILE [--dataset esci]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from trainer.data.catalog import read_catalog
from trainer.data.labels import check_labels_against_catalog, read_interactions, read_labels
from trainer.encoder.load import load_encoder
from trainer.encoder.user import check_history_decay
from trainer.evaluation.metrics import GAIN_TABLES, EvalReport, check_ks
from trainer.evaluation.presets import DATASET_PRESETS, dataset_preset, infer_dataset
from trainer.evaluation.recommend import HISTORY_LENGTH, evaluate_recommendation
from trainer.evaluation.search import evaluate_search
from trainer.io import write_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run: a model, a catalog, and labels (search) or interactions (recommend).

    ``dataset`` picks gains, recall grade and ks (default: inferred from the catalog's directory
    name); ``gains`` / ``recall_grade`` / ``ks`` override it. ``model`` None = the packaged
    all-MiniLM-L6-v2. ``history_decay`` None = the model's own user tower
    (``aisle_model.json``).
    """

    catalog: Path
    model: Path | None = None
    labels: Path | None = None
    interactions_train: Path | None = None
    interactions_dev: Path | None = None
    dataset: str | None = None
    gains: str | None = None
    recall_grade: int | None = None
    ks: tuple[int, ...] | None = None
    history_length: int = HISTORY_LENGTH
    history_decay: float | None = None
    max_item_length: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    cache_dir: Path | None = None
    show_progress: bool = False

    def __post_init__(self) -> None:
        interactions = (self.interactions_train, self.interactions_dev)
        if (self.labels is None) == all(p is None for p in interactions):
            raise ValueError(
                "give either --labels (search) or --interactions-train and --interactions-dev "
                "(recommendation), not both or neither"
            )
        if self.labels is None and None in interactions:
            raise ValueError(
                "recommendation needs both --interactions-train and --interactions-dev"
            )
        for name in ("history_length", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_item_length is not None and self.max_item_length < 2:
            raise ValueError(f"max_item_length must be >= 2 tokens, got {self.max_item_length}")
        if self.history_decay is not None:
            check_history_decay(self.history_decay)
        if self.ks is not None:
            check_ks(self.ks)
        if self.gains is not None and self.gains not in GAIN_TABLES:
            raise ValueError(f"gains must be one of {sorted(GAIN_TABLES)}, got {self.gains!r}")
        self.settings()  # fail now, before a model is loaded, if the dataset settings clash

    @property
    def task(self) -> str:
        return "search" if self.labels is not None else "recommendation"

    def settings(self) -> tuple[str | None, str | None, int | None, tuple[int, ...]]:
        """(dataset, gains, recall_grade, ks) after applying the preset and the overrides."""
        dataset = self.dataset or infer_dataset(self.catalog)
        preset = dataset_preset(dataset) if dataset else None
        if preset is not None and preset.task != self.task:
            raise ValueError(
                f"dataset {preset.name!r} is evaluated as {preset.task}, but {self.task} inputs "
                f"were given; pass {'--labels' if preset.task == 'search' else '--interactions-*'}"
                " or another --dataset"
            )
        ks = check_ks(self.ks or (preset.ks if preset else (10, 100) if self.labels else (10, 50)))
        if self.task == "recommendation":
            return dataset, None, None, ks
        gains = self.gains or (preset.gains if preset else None)
        recall_grade = (
            self.recall_grade
            if self.recall_grade is not None
            else (preset.recall_grade if preset else None)
        )
        if gains is None or recall_grade is None:
            raise ValueError(
                f"cannot tell which dataset {str(self.catalog)!r} is; pass --dataset "
                f"({', '.join(DATASET_PRESETS)}) or both --gains ({', '.join(GAIN_TABLES)}) and "
                "--recall-grade"
            )
        return dataset, gains, recall_grade, ks


def run_evaluation(config: EvalConfig) -> EvalReport:
    """Read the files, load the model and evaluate (see ``evaluate_search`` and
    ``evaluate_recommendation``)."""
    dataset, gains, recall_grade, ks = config.settings()
    catalog = read_catalog(config.catalog)
    if config.labels is not None:
        labels = read_labels(config.labels)
        check_labels_against_catalog(labels, catalog)  # before the slow part
        encoder = load_encoder(config.model, device=config.device)
        report = evaluate_search(
            encoder,
            catalog,
            labels,
            gains=gains,
            recall_grade=recall_grade,
            ks=ks,
            max_item_length=config.max_item_length,
            batch_size=config.batch_size,
            cache_dir=config.cache_dir,
            show_progress=config.show_progress,
        )
    else:
        train = read_interactions(config.interactions_train)
        dev = read_interactions(config.interactions_dev)
        encoder = load_encoder(config.model, device=config.device)
        report = evaluate_recommendation(
            encoder,
            catalog,
            train,
            dev,
            ks=ks,
            history_length=config.history_length,
            history_decay=config.history_decay,
            max_item_length=config.max_item_length,
            batch_size=config.batch_size,
            cache_dir=config.cache_dir,
            show_progress=config.show_progress,
        )
    return replace(report, info={"dataset": dataset, **report.info})


def write_report_json(report: EvalReport, path: str | Path) -> None:
    """Write ``report.to_dict()`` as JSON, atomically (``trainer.io.write_atomic``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n")


_EPILOG = """\
examples:
  python -m trainer.evaluation --catalog data/esci/products.jsonl.gz \\
      --labels data/esci/labels_dev.jsonl.gz --cache-dir /tmp/aisle-cache
  python -m trainer.evaluation --model ./model --catalog data/scientific/products.jsonl.gz \\
      --interactions-train data/scientific/interactions_train.jsonl.gz \\
      --interactions-dev data/scientific/interactions_dev.jsonl.gz --json report.json

The dataset (esci, homedepot, scientific) is taken from the catalog's directory name unless
--dataset is given; it sets the gains, the grade that counts as relevant and the cutoffs.
"""


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        return check_ks(tuple(int(part) for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive ints such as 10,100, got {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.evaluation",
        description="Evaluate a model by exact retrieval over the whole catalog: search "
        "(--labels: NDCG@k, Recall@k, MRR) or next-item recommendation (--interactions-train/"
        "--interactions-dev: Recall@k, NDCG@k). Prints mean ± standard error over queries.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, metavar="DIR", help="model dir (default: packaged all-MiniLM-L6-v2)"
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        required=True,
        metavar="FILE",
        help="catalog file; every item is a candidate",
    )
    parser.add_argument("--labels", type=Path, metavar="FILE", help="graded labels (search)")
    parser.add_argument(
        "--interactions-train", type=Path, metavar="FILE", help="user histories (recommendation)"
    )
    parser.add_argument(
        "--interactions-dev",
        type=Path,
        metavar="FILE",
        help="one next item per user (recommendation)",
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASET_PRESETS),
        help="evaluation convention (default: from the catalog's directory name)",
    )
    parser.add_argument("--gains", choices=sorted(GAIN_TABLES), help="override the gain table")
    parser.add_argument(
        "--recall-grade",
        type=int,
        metavar="G",
        help="override the lowest grade that counts as relevant for Recall/MRR",
    )
    parser.add_argument(
        "--ks",
        type=_parse_ks,
        metavar="K,K",
        help="cutoffs (default: 10,100 for search, 10,50 for recommendation)",
    )
    parser.add_argument(
        "--history-length",
        type=int,
        default=HISTORY_LENGTH,
        metavar="N",
        help=f"most recent history items per user (default: {HISTORY_LENGTH})",
    )
    parser.add_argument(
        "--history-decay",
        type=float,
        metavar="D",
        help="user tower recency decay in (0, 1]: the item a steps before the newest weighs D**a "
        "(1 = plain mean; default: the model's own, from aisle_model.json)",
    )
    parser.add_argument(
        "--max-item-length",
        type=int,
        metavar="N",
        help="token cap for item texts (default: the model's own)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="items per forward pass (default: 32)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="cache item vectors here, keyed by model, item texts and length",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation CLI; returns 0, 2 for bad input or config, 1 for IO errors."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = EvalConfig(
            catalog=args.catalog,
            model=args.model,
            labels=args.labels,
            interactions_train=args.interactions_train,
            interactions_dev=args.interactions_dev,
            dataset=args.dataset,
            gains=args.gains,
            recall_grade=args.recall_grade,
            ks=args.ks,
            history_length=args.history_length,
            history_decay=args.history_decay,
            max_item_length=args.max_item_length,
            batch_size=args.batch_size,
            device=args.device,
            cache_dir=args.cache_dir,
            show_progress=True,
        )
        report = run_evaluation(config)
        print(report.format_table())
        if args.json is not None:
            write_report_json(report, args.json)
    except ValueError as e:  # bad data or config: the message says what to fix
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    return 0
