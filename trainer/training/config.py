"""Training configuration: the datasets (``DatasetSpec``), every setting (``TrainConfig``)
with its checks, and JSON/TOML config files (``read_config_file``)."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from trainer.encoder.fast_tower import DEFAULT_FAST_TOWER, FAST_TOWER_VARIANTS
from trainer.encoder.trigram import DEFAULT_BUCKETS, DEFAULT_HASHES, check_lexical_settings
from trainer.encoder.user import check_history_decay
from trainer.evaluation.presets import dataset_preset

TASKS = ("search", "recommend")
AMP_MODES = ("auto", "bf16", "off")
PADDING_FREE_MODES = ("auto", "on", "off")
EARLY_STOP_METRIC = "ndcg@10"
SEARCH_EVAL_KS = (10, 100)
RECOMMEND_EVAL_KS = (10, 50)


# ---------------------------------------------------------------------------------------------
# Configuration


def _positive_int(name: str, value: Any, *, zero_ok: bool = False) -> None:
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _as_path(value: Any) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class DatasetSpec:
    """One training dataset: its own catalog, a train file, an optional dev file, a task.

    ``train``/``dev`` are labels files (task "search") or interactions files ("recommend").
    ``weight`` sets how often its batches are drawn relative to the other datasets.
    ``dataset`` names the evaluation convention (esci, homedepot, scientific: gains and the
    relevant grade); None = from the catalog's directory name, else from the labels' grades.
    """

    catalog: Path
    train: Path
    dev: Path | None = None
    task: str = "search"
    weight: float = 1.0
    name: str = ""
    dataset: str | None = None
    # Its rows come from shoppers' behaviour (the learning loop's feedback), not from labels:
    # with dp_logq_epsilon its logQ frequencies are noised (trainer.training.private).
    shoppers: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.shoppers, bool):
            raise ValueError(f"dataset shoppers must be true or false, got {self.shoppers!r}")
        for name in ("catalog", "train", "dev"):
            object.__setattr__(self, name, _as_path(getattr(self, name)))
        if self.catalog is None or self.train is None:
            raise ValueError("a dataset needs a catalog and a train file")
        if self.task not in TASKS:
            raise ValueError(f"dataset task must be one of {TASKS}, got {self.task!r}")
        if (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, int | float)
            or not math.isfinite(self.weight)
            or self.weight <= 0
        ):
            raise ValueError(f"dataset weight must be a number > 0, got {self.weight!r}")
        if self.dataset is not None:
            preset = dataset_preset(self.dataset)
            expected = "search" if self.task == "search" else "recommendation"
            if preset.task != expected:
                raise ValueError(
                    f"dataset {preset.name!r} is a {preset.task} dataset but task is "
                    f"{self.task!r}; set task to "
                    f"{'search' if preset.task == 'search' else 'recommend'}"
                )
        if not self.name:
            object.__setattr__(self, "name", self.catalog.parent.name or self.catalog.stem)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; defaults suit a 2-core CPU.

    Model: ``base_model`` (None = packaged all-MiniLM-L6-v2, or an Aisle model dir to continue
    from), ``shared_towers``, ``projection_dim`` (None = hidden size), ``pooling``
    (None = the base's), token lengths.

    Loss: ``temperature`` (learnable with ``learnable_temperature``), ``logq`` correction,
    ``symmetric`` (adds item → query for search), ``partial_weight`` (weight of the grade below
    the top as a positive; None = its NDCG gain relative to the top grade), ``hard_negatives``
    per pair, mined every ``mine_every`` steps (0 = once, at the start) from ranks
    ``mine_window`` [lo, hi), plus labeled-irrelevant items if ``labeled_negatives``; with
    ``mine`` false nothing is mined and the negatives are the labeled-irrelevant items alone
    (feedback's skip-above items: what shoppers looked past).

    Recommendation: users are the item-bank vectors of their last ``history_length`` items
    pooled by the user tower (``trainer.encoder.user``: the recency-weighted mean, item ``a``
    steps before the newest weighing ``history_decay``**a; 1 = plain mean); the bank is
    re-encoded every ``refresh_every`` steps. With ``fit_history_decay`` each evaluation also
    scores the decays of ``trainer.encoder.user.DECAY_GRID`` on the eval users (the dev file's,
    or the held-out ones) and keeps the best (one decay for all recommendation datasets, by
    their weighted NDCG@10); the exported model records the decay of its best step
    (``aisle_model.json`` ``history_decay``), otherwise ``history_decay``.

    Lexical part: with ``lexical_dim`` > 0 the exported towers append a ``lexical_dim``-sized
    hashed character-trigram sketch to their vectors (``trainer.encoder.trigram``; IDF fitted on
    the item texts of every dataset's catalog), mixed in with weight ``lexical_weight``; None =
    fitted after training on the search eval queries (``WEIGHT_GRID``, best weighted NDCG@10,
    with the best step's weights). Training itself is unchanged: the BERT towers learn alone.
    ``lexical_rerank``: the fit ranks only each eval query's judged items, not the catalog (eval
    labels that list a logged result list: its clicks scored as the shown list reordered, the
    unbiased inverse-propensity estimate of Joachims et al. 2017).

    Optimisation: ``batch_size`` pairs per micro-batch per process, ``grad_accum`` micro-batches
    per step, AdamW (``lr``, ``weight_decay``), ``warmup_steps`` (None = 10 % of the steps)
    then linear decay to 0, ``max_grad_norm`` clipping, ``amp`` ("auto": bf16 autocast on CUDA,
    off on CPU), ``length_buckets`` (item sub-batches by length, None = 2 on CPU, 1 on GPU).
    Large batches: with ``mini_batch_size`` set, each micro-batch of ``batch_size`` pairs (the
    in-batch negative pool) is encoded in length-sorted mini-batches of that many texts with
    gradient caching (``trainer.training.gradcache``): the full batch's gradient in the memory of
    one mini-batch. ``prefetch`` batches are built ahead by a thread (0 = in the step);
    ``compile`` runs the encoders through ``torch.compile`` (falls back with a warning).
    ``padding_free`` ("auto": on for fp32 training on CPU without ``compile``; "on"; "off") runs
    training forwards of BERT encoders on the real tokens only, with 16-bit dropout draws
    (``trainer.training.padfree``).
    Length: ``max_steps`` and/or ``epochs`` (both: the smaller; neither: 1 epoch).

    Evaluation: every ``eval_every`` steps (0 = only at the end) on each dataset's dev file,
    or, without one, on ``holdout_fraction`` of its train queries/users; NDCG@10 (weighted
    mean over datasets) picks the best checkpoint and stops after ``patience`` evaluations
    without improvement. ``eval_max_items`` ranks among the judged items plus a fixed random
    sample of the catalog instead of all of it (faster, optimistic; None = whole catalog).

    Checkpoints: every ``checkpoint_every`` steps (0 = none) under ``checkpoint_dir``
    (None = ``<out>.checkpoints``), the newest ``keep_checkpoints`` kept; ``resume`` continues
    from the newest.

    Differential privacy (``trainer.training.private``, docs/privacy.md): ``dp_epsilon`` trains
    the query tower with DP-SGD (Opacus: per-example clipping to ``dp_max_grad_norm``, Gaussian
    noise calibrated to (``dp_epsilon``, ``dp_delta``) over the run's steps) against the frozen
    item tower of the base model, a softmax over every catalog item (no in-batch negatives, no
    logQ); ``dp_trainable_layers`` trains only the last N transformer layers (fewer parameters
    to clip and noise, less time and memory per step). ``dp_logq_epsilon`` instead keeps the
    usual loss and noises the logQ frequencies of the ``shoppers`` datasets (Laplace, one count
    per example). The two do not combine.

    Export: the model dir at ``out``, plus the ONNX query tower (``trainer.encoder.onnx_export``)
    when ``export_onnx`` and the exporter's packages (onnx, onnxscript) are installed; without
    them a warning says how to export later. ``fast_query_tower``: the fast query tower the
    ``aisle-train`` command distils into ``out`` after training ("static", the default; "int8",
    "student"; "none" = skip), from the first search dataset; ``train`` itself never distils
    (``trainer.cli`` does, once, after every DDP process is done).
    """

    datasets: tuple[DatasetSpec, ...]
    out: Path
    base_model: Path | None = None
    shared_towers: bool = True
    projection_dim: int | None = None
    pooling: str | None = None
    max_query_length: int = 32
    max_item_length: int = 64
    temperature: float = 0.05
    learnable_temperature: bool = False
    logq: bool = True
    symmetric: bool = False
    partial_weight: float | None = None
    hard_negatives: int = 0
    mine_every: int = 0
    mine_window: tuple[int, int] = (10, 100)
    mine: bool = True
    labeled_negatives: bool = True
    history_length: int = 50
    history_decay: float = 1.0
    fit_history_decay: bool = False
    refresh_every: int = 200
    lexical_dim: int = 0
    lexical_weight: float | None = None
    lexical_rerank: bool = False
    batch_size: int = 32
    mini_batch_size: int | None = None
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    max_grad_norm: float = 1.0
    amp: str = "auto"
    length_buckets: int | None = None
    prefetch: int = 2
    compile: bool = False
    padding_free: str = "auto"
    eval_every: int = 0
    patience: int = 3
    holdout_fraction: float = 0.0
    eval_max_items: int | None = None
    eval_batch_size: int = 128
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    checkpoint_dir: Path | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    log_every: int = 10
    tensorboard_dir: Path | None = None
    progress: bool = True
    export_onnx: bool = True
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    dp_trainable_layers: int | None = None
    dp_logq_epsilon: float | None = None
    fast_query_tower: str = DEFAULT_FAST_TOWER

    def __post_init__(self) -> None:
        datasets = tuple(
            d if isinstance(d, DatasetSpec) else DatasetSpec(**d) for d in self.datasets
        )
        if not datasets:
            raise ValueError("no dataset to train on: give --catalog/--train or a --config file")
        names = [d.name for d in datasets]
        for i, d in enumerate(datasets):  # make names unique for logs and metrics
            if names.count(d.name) > 1:
                datasets = (*datasets[:i], _renamed(d, f"{d.name}-{i}"), *datasets[i + 1 :])
        object.__setattr__(self, "datasets", datasets)
        for name in ("out", "base_model", "checkpoint_dir", "tensorboard_dir"):
            object.__setattr__(self, name, _as_path(getattr(self, name)))
        if self.out is None:
            raise ValueError("out (the model dir to write) is required")
        object.__setattr__(self, "mine_window", tuple(self.mine_window))
        for name in ("max_query_length", "max_item_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an int >= 2 ([CLS] + [SEP]), got {value!r}")
        for name in (
            "batch_size",
            "grad_accum",
            "history_length",
            "refresh_every",
            "patience",
            "eval_batch_size",
            "keep_checkpoints",
            "log_every",
        ):
            _positive_int(name, getattr(self, name))
        for name in (
            "hard_negatives",
            "mine_every",
            "eval_every",
            "checkpoint_every",
            "seed",
            "prefetch",
        ):
            _positive_int(name, getattr(self, name), zero_ok=True)
        for name in (
            "max_steps",
            "projection_dim",
            "eval_max_items",
            "num_threads",
            "length_buckets",
            "mini_batch_size",
        ):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.warmup_steps is not None:
            _positive_int("warmup_steps", self.warmup_steps, zero_ok=True)
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: in-batch negatives need a second pair")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}")
        if not 0 < self.temperature <= 1:
            raise ValueError(f"temperature must be in (0, 1], got {self.temperature!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay!r}")
        if self.max_grad_norm < 0:
            raise ValueError(
                f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}"
            )
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        if self.partial_weight is not None and not 0 <= self.partial_weight <= 1:
            raise ValueError(f"partial_weight must be in [0, 1], got {self.partial_weight!r}")
        if not 0 <= self.holdout_fraction <= 0.5:
            raise ValueError(f"holdout_fraction must be in [0, 0.5], got {self.holdout_fraction!r}")
        lo, hi = self.mine_window if len(self.mine_window) == 2 else (-1, -1)
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi):
            raise ValueError(f"mine_window must be two ints 0 <= lo < hi, got {self.mine_window}")
        if not isinstance(self.mine, bool):
            raise ValueError(f"mine must be true or false, got {self.mine!r}")
        if self.hard_negatives and not (self.mine or self.labeled_negatives):
            raise ValueError(
                "hard_negatives without mining draws from the labeled negatives: "
                "labeled_negatives must be true"
            )
        object.__setattr__(self, "history_decay", check_history_decay(self.history_decay))
        if not isinstance(self.fit_history_decay, bool):
            raise ValueError(
                f"fit_history_decay must be true or false, got {self.fit_history_decay!r}"
            )
        if self.lexical_dim:
            settings = {
                "dim": self.lexical_dim,
                "weight": 1.0 if self.lexical_weight is None else self.lexical_weight,
                "hashes": DEFAULT_HASHES,
                "buckets": DEFAULT_BUCKETS,
            }
            check_lexical_settings(settings, "lexical")  # names lexical.dim / lexical.weight
            has_eval = any(
                d.task == "search" and (d.dev is not None or self.holdout_fraction > 0)
                for d in datasets
            )
            if self.lexical_weight is None and not has_eval:
                raise ValueError(
                    "lexical_weight is unset, so it is fitted on search eval queries, but no "
                    "search dataset has a dev file and holdout_fraction is 0; give a weight or "
                    "an eval split"
                )
            if not isinstance(self.lexical_rerank, bool):
                raise ValueError(
                    f"lexical_rerank must be true or false, got {self.lexical_rerank!r}"
                )
        elif self.lexical_dim != 0 or self.lexical_weight is not None or self.lexical_rerank:
            raise ValueError(
                f"lexical_dim must be an int >= 8 to add the trigram sketch (0 = none), got "
                f"{self.lexical_dim!r}; lexical_weight and lexical_rerank need it"
            )
        if self.padding_free not in PADDING_FREE_MODES:
            raise ValueError(
                f"padding_free must be one of {PADDING_FREE_MODES}, got {self.padding_free!r}"
            )
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.fast_query_tower not in ("none", *FAST_TOWER_VARIANTS):
            raise ValueError(
                f"fast_query_tower must be one of {('none', *FAST_TOWER_VARIANTS)}, got "
                f"{self.fast_query_tower!r}"
            )
        if self.pooling is not None and self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )

        self._check_privacy(datasets)

    def _check_privacy(self, datasets: tuple[DatasetSpec, ...]) -> None:
        """DP settings, and the combinations DP-SGD cannot honour (errors, never ignored)."""
        for name in ("dp_epsilon", "dp_logq_epsilon"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if not 0 < self.dp_delta < 1:
            raise ValueError(f"dp_delta must be in (0, 1), got {self.dp_delta!r}")
        if not self.dp_max_grad_norm > 0:
            raise ValueError(f"dp_max_grad_norm must be > 0, got {self.dp_max_grad_norm!r}")
        if self.dp_trainable_layers is not None:
            _positive_int("dp_trainable_layers", self.dp_trainable_layers)
        if self.dp_logq_epsilon is not None and not any(d.shoppers for d in datasets):
            raise ValueError(
                "dp_logq_epsilon noises the logQ frequencies of shopper-derived datasets, but "
                "no dataset sets shoppers = true (labeled data's frequencies stay exact)"
            )
        if self.dp_epsilon is None:
            return
        why = {
            "dp_logq_epsilon": "DP-SGD's loss is a softmax over the whole catalog: no logQ",
            "mini_batch_size": "gradient caching has no per-example gradients to clip",
            "compile": "Opacus' per-example gradient hooks do not run under torch.compile",
            "hard_negatives": "DP-SGD scores every catalog item; there is nothing to mine",
            "symmetric": "item -> query needs in-batch queries (one example's loss would "
            "depend on others)",
            "learnable_temperature": "DP-SGD trains the query tower only",
            "resume": "a DP-SGD run writes no mid-run checkpoints (the accountant starts afresh)",
        }
        for name, reason in why.items():
            value = getattr(self, name)
            if value not in (None, False, 0):
                raise ValueError(f"dp_epsilon cannot be combined with {name}: {reason}")
        if self.padding_free == "on":
            raise ValueError(
                "dp_epsilon cannot be combined with padding_free = on: Opacus' per-example "
                "gradient hooks need the encoder's own modules to run"
            )
        if self.grad_accum != 1:
            raise ValueError(
                "dp_epsilon cannot be combined with grad_accum > 1: the batch size sets the "
                "sampling rate the privacy accounting uses; raise batch_size instead"
            )
        if any(d.task != "search" for d in datasets):
            raise ValueError(
                "dp_epsilon trains the query tower on search pairs; recommend datasets (user "
                "histories) are not supported with DP-SGD"
            )
        if len({d.weight for d in datasets}) > 1:
            raise ValueError(
                "dp_epsilon samples every example with the same probability (the accounting "
                "needs it), so datasets cannot have different weights"
            )

    @property
    def checkpoint_root(self) -> Path:
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir
        return self.out.parent / f"{self.out.name}.checkpoints"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (paths as strings)."""
        return jsonable(asdict(self))


def _renamed(spec: DatasetSpec, name: str) -> DatasetSpec:
    return DatasetSpec(**{**{f.name: getattr(spec, f.name) for f in fields(spec)}, "name": name})


def jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


_DATASET_KEYS = {f.name for f in fields(DatasetSpec)}
_CONFIG_KEYS = {f.name for f in fields(TrainConfig)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML training config into ``TrainConfig`` keyword arguments.

    Top-level keys are TrainConfig fields; ``datasets`` is a list of tables with ``catalog``,
    ``train``, ``dev``, ``task`` (search | recommend), ``weight``, ``name``, ``dataset``.
    Relative paths are taken relative to the config file's directory.

    Raises:
        ValueError: unreadable file, unknown keys, or wrong shapes (message names the file).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw.decode("utf-8"))
        elif path.suffix.lower() == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            raise ValueError(f"config {path} must be a .json or .toml file")
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config {path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a table/object at the top level")
    unknown = sorted(set(data) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"config {path}: unknown key(s) {unknown}; known: {sorted(_CONFIG_KEYS)}")
    base = path.parent
    out = dict(data)
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
        raise ValueError(f"config {path}: 'datasets' must be a list of tables")
    resolved = []
    for i, entry in enumerate(datasets):
        bad = sorted(set(entry) - _DATASET_KEYS)
        if bad:
            raise ValueError(
                f"config {path}: datasets[{i}] has unknown key(s) {bad}; known: "
                f"{sorted(_DATASET_KEYS)}"
            )
        entry = dict(entry)
        for key in ("catalog", "train", "dev"):
            if isinstance(entry.get(key), str):
                entry[key] = base / entry[key]
        try:
            resolved.append(DatasetSpec(**entry))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config {path}: datasets[{i}]: {exc}") from exc
    out["datasets"] = tuple(resolved)
    for key in ("out", "base_model", "checkpoint_dir", "tensorboard_dir"):
        if isinstance(out.get(key), str):
            out[key] = base / out[key]
    return out
