"""One learning round: dataset → train → gate → build → reload → ledger, crash-safe and resumable.

Each round has a work dir, ``ROOT/learning/rounds/<n>/``, and a state file there
(``state.json``, replaced atomically) listing the steps done and what each produced. Every
step writes its output under a temporary name and renames it into place, then the state is
updated; a rerun of the same command skips the steps the state lists and redoes the first
unfinished one from scratch (its half-written output, if any, is discarded). Nothing changes
what is served before the build step publishes a complete version (``IndexRoot.publish``
replaces ``CURRENT`` atomically), so a crash at any earlier point leaves the serving model +
index pair untouched; a crash after the publish and before the Reload leaves a consistent pair
on disk (what a restarted server would load) and the rerun sends the Reload.

The steps:

1. **dataset**: the feedback logged since the previous round (its window's end) up to now,
   built into training labels (engaged items are positives, skipped items shown above them are
   negatives; weights by action and, with ``propensity_weighting``, by inverse examination
   propensity) plus the most recent slice of the logs held back for the gate
   (``engine.learning.feedback``).
2. **train**: a challenger warm-started from the champion model, on the feedback labels mixed
   with the original labeled data (so it does not forget), loss weighted per example
   (``Labels.weight``). Exported to ``OUT/round-<n>``.
3. **gate**: both models scored on the judged set (NDCG@10) and the held-back logs (IPS-DCG@10),
   and the decision (``engine.learning.gate``).
4. **build** (winners only): the challenger is copied to ``ROOT/models/<fingerprint>`` (where
   servers look for it, ``engine.search.snapshot.find_model_dir``), a new index version is
   built with it (reusing the item vectors the gate computed) and published.
5. **reload**: the server at ``server`` is told to ``Reload`` (model and index together) and
   must then report the new version and fingerprint.
6. **ledger**: one record appended to ``ROOT/learning/rounds.jsonl`` (``engine.learning.ledger``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from engine.learning import ledger
from engine.learning.feedback import (
    FEEDBACK_TOP_GRADE,
    FIT_FILE,
    FeedbackWindow,
    build_feedback,
)
from engine.learning.gate import GateThresholds, decide, read_held_back, score_model
from engine.search.snapshot import MODELS_DIR
from indexer.storage.faults import fault_point
from indexer.storage.layout import IndexRoot, resolve_version_dir
from indexer.storage.manifest import load_manifest
from trainer.encoder.model_dir import ModelInfo, model_fingerprint, read_model_info
from trainer.encoder.trigram import DEFAULT_BUCKETS, DEFAULT_HASHES, check_lexical_settings
from trainer.io import atomic_path, fsync_dir, write_atomic

log = logging.getLogger(__name__)

STEPS = ("dataset", "train", "gate", "build", "reload", "ledger")
# Default share of the window's queries held out of training to fit the sketch's weight on
# (when the challenger has a trigram sketch and no fixed weight): TrainSettings.lexical_holdout.
LEXICAL_HOLDOUT = 0.1
# TrainSettings.lexical_fit: which logs the sketch's weight is fitted on, and how
LEXICAL_FITS = ("window", "all", "shown")
ROUNDS_DIR = "rounds"
STATE_NAME = "state.json"


class RoundFault(Exception):  # noqa: N818 (a test signal, not an error)
    """Raised by a ``RoundConfig.fault`` hook to stop a round as a crash would."""


@dataclass(frozen=True)
class TrainSettings:
    """How the challenger is fine-tuned (a few ``trainer.training.config.TrainConfig`` fields;
    the rest keep their defaults). ``feedback_weight`` is how often feedback batches are drawn
    relative to the labeled data's. ``skip_negatives`` per pair are drawn from its query's
    skip-above items (and the labeled data's grade-0 items) as extra negatives in the softmax;
    0 = in-batch negatives only. Nothing is mined from the champion's rankings.

    ``lexical_dim``: the challenger's trigram sketch (``trainer.encoder.trigram``, appended to
    both towers' vectors as the label-trained recipe does): None = the champion's (none if it
    has none), 0 = none, N >= 8 = N dims. ``lexical_weight``: its weight; None = fitted after
    training on the ``lexical_holdout`` share of the queries, held out of training (their
    engaged items as the judgments: learned from the logs, no labels). ``lexical_fit``: which
    queries and logs: "window" = a random share of this window's queries, their engagement in
    this window; "all" = a fixed share of the query texts (the same in every round, never
    trained on), their engagement in every round's logs so far (``engine.learning.feedback``),
    each weight's towers ranking the catalog; "shown" = the same queries and logs, each weight's
    towers reordering the result lists shown for them (the unbiased IPS estimate of a ranker's
    clicks, Joachims et al. 2017: every candidate is scored on items that were shown)."""

    max_steps: int = 200
    batch_size: int = 32
    lr: float = 2e-5
    max_query_length: int = 32
    max_item_length: int = 64
    feedback_weight: float = 1.0
    skip_negatives: int = 0
    lexical_dim: int | None = None
    lexical_weight: float | None = None
    lexical_holdout: float = LEXICAL_HOLDOUT
    lexical_fit: str = "window"
    seed: int = 0
    num_threads: int | None = None
    export_onnx: bool = True
    # Differential privacy (docs/privacy.md), as aisle-train's --dp-* flags: DP-SGD on the
    # feedback (and labeled) pairs, or noisy logQ frequencies of the feedback dataset.
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    dp_trainable_layers: int | None = None
    dp_logq_epsilon: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "max_query_length", "max_item_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        n = self.skip_negatives
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"skip_negatives must be an integer >= 0, got {n!r}")
        d = self.lexical_dim
        if d != 0 and (d is not None or self.lexical_weight is not None):  # the trainer's check
            check_lexical_settings({
                "dim": 8 if d is None else d,
                "weight": 1.0 if self.lexical_weight is None else self.lexical_weight,
                "hashes": DEFAULT_HASHES, "buckets": DEFAULT_BUCKETS,
            }, "lexical")  # fmt: skip
        h = self.lexical_holdout
        if isinstance(h, bool) or not isinstance(h, int | float) or not 0 < h <= 0.5:
            raise ValueError(f"lexical_holdout must be in (0, 0.5], got {h!r}")
        if self.lexical_fit not in LEXICAL_FITS:
            raise ValueError(
                f"lexical_fit must be one of {', '.join(LEXICAL_FITS)}, got {self.lexical_fit!r}"
            )
        if self.lexical_weight is not None and d == 0:
            raise ValueError("lexical_weight needs a sketch: lexical_dim is 0")
        if self.dp_epsilon is not None and d and self.lexical_weight is None:
            raise ValueError(
                "--dp-epsilon: fitting the sketch's weight on held-out shoppers' queries is not "
                "private; give --lexical-weight"
            )
        if self.dp_epsilon is not None and self.skip_negatives:
            raise ValueError("--dp-epsilon scores every catalog item: no skip negatives")
        if not self.lr > 0 or not self.feedback_weight > 0:
            raise ValueError("lr and feedback_weight must be > 0")
        if self.dp_epsilon is not None and self.feedback_weight != 1.0:
            raise ValueError(
                "--dp-epsilon samples every example alike: the feedback weight must stay 1"
            )


@dataclass(frozen=True)
class RoundConfig:
    """One learning round (see the module docstring).

    Attributes:
        index: the index root served (its ``events/`` dir holds the logs unless ``events``).
        model: the champion model dir (what the server serves now).
        out: where challenger model dirs are written (``OUT/round-<n>``).
        events: the dir of ``impressions.jsonl`` and ``events.jsonl``; None = ``ROOT/events``.
        catalog: the catalog to train on and index; None = the served version's items.
        labeled: labels file (search) on ``labeled_catalog`` (default ``catalog``) mixed into
            training so the challenger does not forget; None = feedback only.
        judged: the fixed judged set of the gate (a labels file on the catalog); None = the
            gate uses the held-back logs only.
        judged_dataset: evaluation convention of ``judged`` ("esci", "homedepot"); None = from
            the catalog's directory name or the grades.
        server: address of the server to Reload after a publish; None = no Reload.
        admin_token: sent on the Reload.
        thresholds: the gate's.
        propensity_weighting: weight feedback by inverse propensity (False: action weights only).
        holdout_fraction: share of the window's most recent result lists held back for the gate.
        settle_s: the window ends this many seconds before the round starts, so impressions
            still in the server's background writer (it writes within about a second) land in
            this window or the next, not in neither.
        train: fine-tuning settings.
        vector_cache: where the gate caches catalog vectors by model fingerprint (the
            champion's are then computed once, and the build reuses the challenger's); None =
            ``ROOT/learning/vector-cache``.
        fault: called with each step's name before it runs and with "<step>:written" after its
            output is in place but before the state records it; raising there (``RoundFault``)
            is a crash at that point (tests).
    """

    index: Path
    model: Path
    out: Path
    events: Path | None = None
    catalog: Path | None = None
    labeled: Path | None = None
    labeled_catalog: Path | None = None
    judged: Path | None = None
    judged_dataset: str | None = None
    server: str | None = None
    admin_token: str | None = None
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    propensity_weighting: bool = True
    holdout_fraction: float = 0.2
    settle_s: float = 5.0
    train: TrainSettings = field(default_factory=TrainSettings)
    vector_cache: Path | None = None
    fault: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        paths = ("index", "model", "out", "events", "catalog", "labeled", "labeled_catalog")
        for name in (*paths, "vector_cache"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if self.judged is not None:
            object.__setattr__(self, "judged", Path(self.judged))
        if not (self.index / "CURRENT").is_file():
            raise ValueError(f"{self.index}: no published version (no CURRENT); pass --index ROOT")
        if not self.model.is_dir():
            raise ValueError(f"model {self.model} is not a directory; pass the served model dir")
        for name in ("catalog", "labeled", "labeled_catalog", "judged"):
            value = getattr(self, name)
            if value is not None and not value.is_file():
                raise ValueError(f"{name} file not found: {value}")
        if self.judged is None and self.thresholds.gate != "ips":
            raise ValueError(
                f"gate {self.thresholds.gate!r} needs a judged set: pass --judged LABELS, or "
                "--gate ips to gate on the held-back logs alone"
            )
        if not self.settle_s >= 0:
            raise ValueError(f"settle_s must be >= 0 seconds, got {self.settle_s!r}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}")

    @property
    def events_dir(self) -> Path:
        return self.events if self.events is not None else self.index / "events"


@dataclass
class RoundResult:
    """What a finished round did: its number, the gate decision and the served version."""

    round: int
    outcome: str
    promoted: bool
    version: int
    record: dict[str, Any]


def run_round(config: RoundConfig) -> RoundResult:
    """Run (or resume) the next learning round of ``config.index``; see the module docstring.

    Raises:
        ValueError: bad input (the message names it); the round can be rerun once fixed.
        grpc.RpcError: the Reload was refused; rerunning retries it.
    """
    root = IndexRoot(config.index.resolve())
    n = _round_number(root.root)
    work = root.root / ledger.LEARNING_DIR / ROUNDS_DIR / str(n)
    work.mkdir(parents=True, exist_ok=True)
    state = _load_state(work) or {"round": n, "started": _now(), "steps": {}}
    steps: dict[str, Any] = state["steps"]
    if steps:
        log.info("round %d: resuming after %s", n, ", ".join(steps))
    runners = {
        "dataset": _dataset,
        "train": _train,
        "gate": _gate,
        "build": _build,
        "reload": _reload,
        "ledger": _ledger,
    }
    for step in STEPS:
        if step in steps:
            continue
        _fault(config, step)
        log.info("round %d: %s", n, step)
        steps[step] = runners[step](config, root, n, work, steps)
        _fault(config, f"{step}:written")
        write_atomic(work / STATE_NAME, json.dumps(state, indent=1, sort_keys=True) + "\n")
    record = steps["ledger"]["record"]
    return RoundResult(
        n, record["decision"]["outcome"], record["decision"]["promote"], record["version"], record
    )


def _fault(config: RoundConfig, point: str) -> None:
    if config.fault is not None:
        config.fault(point)
    fault_point(f"round:{point}")  # AISLE_FAULT_AT=round:<point> kills the process (tests)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _round_number(root: Path) -> int:
    """The next round: one past the ledger's last (an unfinished round is resumed)."""
    done = [r["round"] for r in ledger.rounds(root)]
    return (max(done) if done else 0) + 1


def _load_state(work: Path) -> dict | None:
    path = work / STATE_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _catalog(config: RoundConfig, root: IndexRoot) -> Path:
    """The catalog file of the round: given, or the served version's items.parquet."""
    if config.catalog is not None:
        return config.catalog
    return resolve_version_dir(root.root) / "items.parquet"


def _fresh_dir(path: Path) -> Path:
    """``path`` emptied (a half-written output of a crashed step is discarded)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _publish_dir(tmp: Path, final: Path) -> None:
    """Rename a complete ``tmp`` dir to ``final`` (replacing a stale one) and fsync the parent."""
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(final.parent)


# ---------------------------------------------------------------------------------------------
# The steps: each takes (config, root, n, work dir, outputs of the earlier steps) and returns
# its own outputs (JSON-ready), written to the state file by run_round.


def _dataset(config: RoundConfig, root: IndexRoot, n: int, work: Path, steps: dict) -> dict:
    previous = ledger.rounds(root.root)
    since = previous[-1]["window"]["until"] if previous else None
    until = datetime.now(UTC) - timedelta(seconds=config.settle_s)
    window = FeedbackWindow(since=datetime.fromisoformat(since) if since else None, until=until)
    tmp = _fresh_dir(work / "dataset.partial")
    settings = config.train
    pooled = _sketch(config)[2] and settings.lexical_fit != "window"
    summary = build_feedback(
        config.events_dir,
        _catalog(config, root),
        window,
        tmp,
        holdout_fraction=config.holdout_fraction,
        propensity_weighting=config.propensity_weighting,
        clip=config.thresholds.clip,
        fit_share=settings.lexical_holdout if pooled else 0.0,
        fit_salt=settings.seed,
        fit_shown=settings.lexical_fit == "shown",
    )
    _publish_dir(tmp, work / "dataset")
    out = {
        "dir": str(work / "dataset"),
        "window": {"since": since, "until": window.until.isoformat()},
        "counts": summary,
    }
    if summary.get("fit_positives", 0) > 0:  # else the window's random share, as "window"
        out["fit"] = str(work / "dataset" / FIT_FILE)
    return out


def _sketch(
    config: RoundConfig, champion: ModelInfo | None = None
) -> tuple[int, float | None, bool]:
    """The challenger's trigram sketch: (dims, 0 = none; its fixed weight or None; whether the
    weight is fitted after training). ``champion``: the serving model's info when the caller
    has read it already (else read here when needed)."""
    settings = config.train
    lexical_dim, lexical_weight = settings.lexical_dim, settings.lexical_weight
    if lexical_dim is None:  # the champion's sketch, if it has one
        champion = champion or read_model_info(config.model)
        lexical_dim = int((champion.lexical or {}).get("dim", 0))
        if lexical_weight is None and settings.dp_epsilon is not None and lexical_dim:
            lexical_weight = float(champion.lexical["weight"])  # a fit would not be private
    return lexical_dim, lexical_weight, bool(lexical_dim) and lexical_weight is None


def _train(config: RoundConfig, root: IndexRoot, n: int, work: Path, steps: dict) -> dict:
    from trainer.training.config import DatasetSpec, TrainConfig
    from trainer.training.run import train

    dataset = Path(steps["dataset"]["dir"])
    if steps["dataset"]["counts"].get("train_positives", 0) == 0:
        return {"skipped": "no engaged item in the window: nothing to learn from"}
    catalog = _catalog(config, root)
    fit = steps["dataset"].get("fit")
    specs = [
        DatasetSpec(
            catalog=catalog,
            train=dataset / "train.jsonl",
            dev=Path(fit) if fit else None,  # the sketch's weight is fitted on it
            name="feedback",
            weight=config.train.feedback_weight,
            shoppers=True,  # shoppers' behaviour: --dp-logq-epsilon noises its frequencies
        )
    ]
    if config.labeled is not None:
        specs.append(
            DatasetSpec(
                catalog=config.labeled_catalog or catalog, train=config.labeled, name="labeled"
            )
        )
    final = config.out / f"round-{n:04d}"
    tmp = config.out / f".round-{n:04d}.partial"
    config.out.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    settings = config.train
    champion = read_model_info(config.model)
    lexical_dim, lexical_weight, fit_weight = _sketch(config, champion)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)  # a crashed run's: start afresh
    train(
        TrainConfig(
            datasets=tuple(specs),
            out=tmp,
            base_model=config.model,
            batch_size=settings.batch_size,
            max_steps=settings.max_steps,
            lr=settings.lr,
            warmup_steps=0,
            hard_negatives=settings.skip_negatives,
            mine=False,  # the shoppers' skips (labeled negatives), not the champion's ranks
            max_query_length=settings.max_query_length,
            max_item_length=settings.max_item_length,
            checkpoint_every=0,
            checkpoint_dir=work / "checkpoints",
            seed=settings.seed + n,
            num_threads=settings.num_threads,
            export_onnx=settings.export_onnx,
            progress=False,
            # a champion from a DP-SGD round has separate towers; keep what it has
            shared_towers=champion.shared_towers,
            lexical_dim=lexical_dim,
            lexical_weight=lexical_weight if lexical_dim else None,
            lexical_rerank=bool(fit) and settings.lexical_fit == "shown",
            holdout_fraction=settings.lexical_holdout if fit_weight else 0.0,
            dp_epsilon=settings.dp_epsilon,
            dp_delta=settings.dp_delta,
            dp_max_grad_norm=settings.dp_max_grad_norm,
            dp_trainable_layers=settings.dp_trainable_layers,
            dp_logq_epsilon=settings.dp_logq_epsilon,
        )
    )
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    _publish_dir(tmp, final)
    return {"model": str(final), "fingerprint": model_fingerprint(final)}


def _gate(config: RoundConfig, root: IndexRoot, n: int, work: Path, steps: dict) -> dict:
    from trainer.data.catalog import read_catalog
    from trainer.data.labels import read_labels
    from trainer.encoder.load import load_encoder
    from trainer.evaluation.cli import EvalConfig

    champion = {
        "model": str(config.model),
        "fingerprint": model_fingerprint(config.model),
        "version": root.current(),
    }
    if "skipped" in steps["train"]:
        decision = decide({}, {}, config.thresholds)
        decision.reasons.insert(0, steps["train"]["skipped"])
        return {"champion": champion, "challenger": None, "decision": decision.to_dict()}
    catalog_path = _catalog(config, root)
    catalog = read_catalog(catalog_path)
    judged = read_labels(config.judged) if config.judged is not None else None
    gains, recall_grade = "grade", FEEDBACK_TOP_GRADE
    if judged is not None:
        try:
            _, gains, recall_grade, _ = EvalConfig(
                catalog=catalog_path, labels=config.judged, dataset=config.judged_dataset
            ).settings()
        except ValueError:
            if config.judged_dataset is not None:
                raise
            # an unnamed dataset: gains by grade (ESCI's for 0..3), the top grade is relevant
            top = max(g for judged_q in judged.judgments.values() for g in judged_q.values())
            gains, recall_grade = ("esci" if top == 3 else "grade"), top
    held_path = Path(steps["dataset"]["dir"]) / "held_back.jsonl"
    held_back = read_held_back(held_path) if held_path.exists() else []
    challenger = dict(steps["train"])
    vectors = work / "challenger-vectors.npy"
    for entry, name in ((champion, "champion"), (challenger, "challenger")):
        encoder = load_encoder(entry["model"])
        metrics, xb = score_model(
            encoder,
            catalog,
            judged,
            held_back,
            gains=gains,
            recall_grade=recall_grade,
            clip=config.thresholds.clip,
            cache_dir=config.vector_cache or root.root / ledger.LEARNING_DIR / "vector-cache",
        )
        entry["metrics"] = metrics
        if name == "challenger":
            with atomic_path(vectors, suffix=".npy") as tmp:
                np.save(tmp, xb)
    decision = decide(champion["metrics"], challenger["metrics"], config.thresholds)
    log.info("round %d gate: %s (%s)", n, decision.outcome, "; ".join(decision.reasons))
    return {
        "champion": champion,
        "challenger": challenger,
        "decision": decision.to_dict(),
        "vectors": str(vectors),
        "held_back_clicks": len(held_back),
    }


def _build(config: RoundConfig, root: IndexRoot, n: int, work: Path, steps: dict) -> dict:
    from indexer.build.config import BuildConfig
    from indexer.build.local import build_index

    gate = steps["gate"]
    if not gate["decision"]["promote"]:
        return {"skipped": "the champion stays", "version": root.current()}
    fingerprint = gate["challenger"]["fingerprint"]
    current_dir = resolve_version_dir(root.root)
    manifest = load_manifest(current_dir / "manifest.json")
    if manifest.model_fingerprint == fingerprint:  # published before a crash: done already
        return {"version": manifest.version, "model": str(root.root / MODELS_DIR / fingerprint)}
    model = root.root / MODELS_DIR / fingerprint
    if not model.is_dir():  # copied whole, then renamed: a server never finds half a model
        tmp = root.root / MODELS_DIR / f".{fingerprint}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(gate["challenger"]["model"], tmp)
        _publish_dir(tmp, model)
    build = manifest.build
    catalog = _catalog(config, root)
    if catalog.parent == current_dir:  # the served items: copy them, versions get pruned
        copy = work / "items.parquet"
        shutil.copyfile(catalog, copy)
        catalog = copy
    version_dir = build_index(
        BuildConfig(
            catalog=catalog,
            out=root.root,
            model=model,
            shards=manifest.n_shards,
            factory=manifest.factory,
            vectors=build.get("vectors", "f32"),
            lexical="lexical" in build,
            item_vectors=Path(gate["vectors"]),
        )
    )
    return {"version": int(version_dir.name), "model": str(model)}


def _reload(config: RoundConfig, root: IndexRoot, n: int, work: Path, steps: dict) -> dict:
    from engine.client import AisleClient

    if "skipped" in steps["build"] or config.server is None:
        return {"skipped": "nothing published" if "skipped" in steps["build"] else "no --server"}
    version = steps["build"]["version"]
    fingerprint = steps["gate"]["challenger"]["fingerprint"]
    with AisleClient(config.server, admin_token=config.admin_token) as client:
        response = client.reload(0)
    if response.index.version != version or response.index.model_fingerprint != fingerprint:
        raise ValueError(
            f"{config.server} reloaded version {response.index.version} (model "
            f"{response.index.model_fingerprint[:12]}), expected {version} ({fingerprint[:12]}): "
            "another build published meanwhile, or the server serves another index root"
        )
    return {"server": config.server, "version": version, "previous": response.previous_version}


def _ledger(config: RoundConfig, root: IndexRoot, n: int, work: Path, steps: dict) -> dict:
    existing = [r for r in ledger.rounds(root.root) if r["round"] == n]
    if existing:  # appended before a crash kept the state from saying so
        return {"record": existing[-1]}
    gate = steps["gate"]
    record = {
        "kind": "round",
        "round": n,
        "started": (_load_state(work) or {}).get("started"),
        "finished": _now(),
        "window": steps["dataset"]["window"],
        "counts": steps["dataset"]["counts"],
        "propensity_weighting": config.propensity_weighting,
        "champion": gate["champion"],
        "challenger": gate["challenger"],
        "decision": gate["decision"],
        "thresholds": {
            k: getattr(config.thresholds, k)
            for k in ("min_ndcg_gain", "min_ips_gain", "tie_tolerance", "clip", "gate")
        },
        "version": steps["build"]["version"],
        "reload": steps["reload"],
    }
    ledger.append(root.root, record)
    return {"record": record}


def champion_after(result: RoundResult, config: RoundConfig) -> RoundConfig:
    """The config of the next round: the winner (or the kept champion) is its champion."""
    challenger = result.record.get("challenger")
    if result.promoted and challenger:
        return replace(config, model=config.index / MODELS_DIR / challenger["fingerprint"])
    return config
