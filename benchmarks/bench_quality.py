"""Retrieval quality on the shared dev splits: lexical, dense and hybrid, zero-shot and fine-tuned.

Rows, every one a full-catalog ranking scored with the dataset's own convention
(``trainer.evaluation``: ESCI gains E=1, S=0.1, C=0.01; Home Depot gain = grade; Scientific the
UniSRec next-item protocol), mean and standard error over queries (users):

* ``bm25s``: the ``bm25s`` package (Lucene BM25, k1=1.5, b=0.75), English stop words and
  Snowball stemming (PyStemmer): the reference baseline.
* ``lexical``: Aisle's own BM25 channel (``indexer.lexical.index``), what the engine serves.
* ``zero-shot``: the packaged all-MiniLM-L6-v2, exact search.
* ``fine-tuned``: the towers trained by ``aisle-train`` (``--model DIR``, or trained here from
  the preset's training configs and cached under ``OUT/models/<digest>`` so a second run reuses
  them). Each dataset is scored with the model of the config that lists it: preset S trains one
  model on all three datasets (``train_quick.toml``), preset M a search model on Home Depot +
  ESCI (``train_search.toml``) and a recommendation model on Scientific
  (``train_recommend.toml``), as two shops would each train their own.
* ``hybrid zero-shot`` / ``hybrid fine-tuned``: the dense top 100 and the lexical top 100 fused
  as the engine fuses them (``engine.search.fusion.fuse``), with the fusion method and weights
  chosen per model on the slice of the train split that the training run held out for early
  stopping (the same queries: ``trainer.training.batches.split_labels`` with the config's
  fraction and seed), never on dev.
* ``popularity`` (Scientific): every user gets the items most interacted with in train.
* ``fine-tuned, fast query tower (VARIANT)`` and its ``hybrid ...`` row (search datasets): when
  the fine-tuned model dir holds a fast query tower (``query_fast/``, which ``aisle-train``
  writes by default), the same item vectors with queries encoded by that distilled tower.
  The ``fine-tuned`` rows are always the model's full query tower.

Item vectors are cached by model fingerprint, item length and item texts (``--cache-dir``).
Appends one JSON line to ``OUT/quality.jsonl`` and draws ``OUT/quality.png``.

``python -m benchmarks.bench_quality [--preset S|M] [--model [DATASET=]DIR ...]
[--train-config FILE ...]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SHARED_DATA, append_jsonl, machine, require_shared_data
from engine.search.fusion import FusionParams, fuse
from indexer.lexical.index import LexicalIndex
from trainer.data.catalog import Catalog, read_catalog
from trainer.data.labels import Labels, read_interactions, read_labels
from trainer.encoder.fast_tower import read_fast_tower_info
from trainer.encoder.load import Encoder, load_encoder
from trainer.encoder.model_dir import default_model_dir, model_fingerprint
from trainer.evaluation.metrics import EvalReport, evaluate_rankings
from trainer.evaluation.presets import DATASET_PRESETS
from trainer.evaluation.recommend import evaluate_recommendation
from trainer.evaluation.search import exact_search
from trainer.evaluation.vector_cache import catalog_vectors
from trainer.text import item_text, query_text
from trainer.training.batches import split_labels
from trainer.training.config import read_config_file

logger = logging.getLogger("benchmarks.bench_quality")

CONFIGS = Path(__file__).resolve().parent / "configs"
DEPTH = 100  # candidates per channel, as the engine's HYBRID_CANDIDATES
KS = (10, 100)
ZERO_SHOT_DECAYED = "zero-shot, fitted user tower"
BERT_ONLY = "fine-tuned, BERT part only"
SEARCH_DATASETS = ("homedepot", "esci")


@dataclass(frozen=True)
class Preset:
    """What one preset trains."""

    name: str
    train_configs: tuple[Path, ...]


PRESETS = {
    # ~12 min of training on 2 cores: one model for all three datasets.
    "S": Preset("S", (CONFIGS / "train_quick.toml",)),
    # ~65 min on 2 cores (minutes on a GPU): a search model and a recommendation model.
    "M": Preset("M", (CONFIGS / "train_search.toml", CONFIGS / "train_recommend.toml")),
}


def configs_by_dataset(paths: Sequence[Path]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Dataset name → (config path, parsed config) of the training config that lists it; a
    dataset listed by two configs is an error (which model would score it?)."""
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in paths:
        raw = read_config_file(path)
        for spec in raw["datasets"]:
            if spec.name in out:
                raise SystemExit(
                    f"dataset {spec.name!r} is in two training configs: {out[spec.name][0]} and "
                    f"{path}; give each dataset one"
                )
            out[spec.name] = (path, raw)
    return out


def parse_model_args(values: Sequence[str], datasets: Sequence[str]) -> dict[str, Path]:
    """``--model`` values: ``DIR`` (every dataset) or ``DATASET=DIR``."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if sep and name in (*SEARCH_DATASETS, "scientific"):
            out[name] = Path(folder)
        else:
            out.update({d: Path(value) for d in datasets})
    return out


# The fusion settings tried on the held-out train slice (engine.search.fusion.FusionParams).
FUSION_GRID: tuple[FusionParams, ...] = (
    *(FusionParams(method="rrf", k_rrf=k) for k in (10, 30, 60)),
    *(FusionParams(method="rrf", k_rrf=60, rrf_weights=w) for w in ((2.0, 1.0), (1.0, 2.0))),
    *(
        FusionParams(method="blend", alpha=a, norm=n)
        for n in ("minmax", "zscore")
        for a in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    ),
)


# ---------------------------------------------------------------------------------------------
# The fine-tuned model: given, or trained here once per config


def model_cache_dir(out: Path, train_config: Path) -> Path:
    """Where the model trained from ``train_config`` is kept: keyed by the config's bytes, the
    bytes of the train files it names and the base model's fingerprint."""
    digest = hashlib.sha256(train_config.read_bytes())
    raw = read_config_file(train_config)
    base = raw.get("base_model") or default_model_dir()
    digest.update(model_fingerprint(base).encode())
    for spec in raw["datasets"]:
        for path in (spec.catalog, spec.train, spec.dev):
            if path is not None:
                digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return out / "models" / f"{train_config.stem}-{digest.hexdigest()[:12]}"


def trained_model(out: Path, train_config: Path) -> Path:
    """The model dir trained from ``train_config``, training it first unless it is cached."""
    model = model_cache_dir(out, train_config)
    if (model / "aisle_model.json").is_file():
        print(f"fine-tuned model: {model} (cached)", flush=True)
        return model
    cmd = [
        sys.executable,
        "-m",
        "trainer.cli",
        "--config",
        str(train_config),
        "--out",
        str(model),
        "--checkpoint-dir",
        str(model.with_name(model.name + ".ckpt")),
        "--no-progress",
    ]
    print(f"training: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return model


# ---------------------------------------------------------------------------------------------
# Rankers: each returns query_id -> (scores (n,), catalog rows (n,)) best first


Ranked = dict[str, tuple[np.ndarray, np.ndarray]]


def fast_encoder(model_dir: Path) -> tuple[str, Encoder] | None:
    """(row label, Encoder with the model's fast query tower) when ``model_dir`` has one."""
    info = read_fast_tower_info(model_dir)
    if info is None:
        return None
    return f"fine-tuned, fast query tower ({info.variant})", load_encoder(
        model_dir, query_tower="fast"
    )


def query_vectors(encoder: Encoder, queries: Mapping[str, str]) -> np.ndarray:
    """(nq, dim) float32 query vectors, in the order of ``queries``."""
    return np.asarray(encoder.encode_queries(list(queries.values())), dtype=np.float32)


def dense_ranked(
    xq: np.ndarray, xb: np.ndarray, queries: Mapping[str, str], depth: int = DEPTH
) -> Ranked:
    """Exact inner-product top ``depth`` of every query (``xq`` rows, in the order of
    ``queries``) against item vectors ``xb``."""
    D, I = exact_search(xq, xb, depth)  # (nq, depth) each
    return {q: (D[i], I[i].astype(np.int64)) for i, q in enumerate(queries)}


def bert_only_ranked(
    dim: int, xq: np.ndarray, xb: np.ndarray, queries: Mapping[str, str], depth: int = DEPTH
) -> Ranked:
    """Dense top ``depth`` of a model with a trigram sketch, on its BERT columns alone (the
    first ``dim`` = ``info.dim`` of each vector, renormalised: exactly the BERT towers'
    vectors)."""
    xq = xq[:, :dim] / np.linalg.norm(xq[:, :dim], axis=1, keepdims=True)
    xb = xb[:, :dim] / np.linalg.norm(xb[:, :dim], axis=1, keepdims=True)
    return dense_ranked(np.ascontiguousarray(xq), np.ascontiguousarray(xb), queries, depth)


def lexical_ranked(index: LexicalIndex, queries: Mapping[str, str], depth: int = DEPTH) -> Ranked:
    """Aisle's BM25 top ``depth`` (rows that match no query term are not returned)."""
    out = {}
    for q, text in queries.items():
        D, I = index.search(text, depth)
        keep = I >= 0
        out[q] = (D[keep], I[keep])
    return out


def bm25s_ranked(texts: Sequence[str], queries: Mapping[str, str], depth: int = DEPTH) -> Ranked:
    """The ``bm25s`` package: Lucene BM25 with English stop words and Snowball stemming."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    ids = list(queries)
    tokens = bm25s.tokenize(
        [queries[q] for q in ids],
        stopwords="en",
        stemmer=stemmer,
        return_ids=False,
        show_progress=False,
    )
    known = [[t for t in toks if t in retriever.vocab_dict] for toks in tokens]
    asked = [i for i, toks in enumerate(known) if toks]
    out: Ranked = {q: (np.zeros(0, np.float32), np.zeros(0, np.int64)) for q in ids}
    if asked:
        docs, scores = retriever.retrieve(
            [known[i] for i in asked], k=min(depth, len(texts)), show_progress=False
        )
        for j, i in enumerate(asked):
            keep = scores[j] > 0  # zero-score rows match nothing: not retrieved
            out[ids[i]] = (scores[j][keep], docs[j][keep].astype(np.int64))
    return out


def fused(dense: Ranked, lexical: Ranked, params: FusionParams) -> Ranked:
    return {q: fuse(dense[q], lexical[q], params) for q in dense}


def score(
    ranked: Ranked, item_ids: np.ndarray, labels: Labels, gains: str, recall_grade: int
) -> EvalReport:
    rankings = {q: item_ids[rows[:DEPTH]].tolist() for q, (_, rows) in ranked.items()}
    return evaluate_rankings(rankings, labels, gains, recall_grade, KS)


def fusion_name(p: FusionParams) -> str:
    if p.method == "rrf":
        return f"rrf k={p.k_rrf:g} w={p.rrf_weights[0]:g}/{p.rrf_weights[1]:g}"
    return f"blend {p.norm} alpha={p.alpha:g}"


def fusion_dict(p: FusionParams) -> dict[str, Any]:
    return {
        "method": p.method,
        "k_rrf": p.k_rrf,
        "rrf_weights": list(p.rrf_weights),
        "alpha": p.alpha,
        "norm": p.norm,
    }


def result_row(
    dataset: str, method: str, report: EvalReport, seconds: float, recall: str, **extra: Any
) -> dict[str, Any]:
    """One result row of the JSON line, printed as it is made (NDCG@10 and ``recall``)."""
    m = report.metrics
    print(
        f"  {dataset:10} {method:18} ndcg@10 {m['ndcg@10'].mean:.4f} ± {m['ndcg@10'].stderr:.4f}"
        f"  {recall} {m[recall].mean:.4f}  ({seconds:.1f} s)",
        flush=True,
    )
    return {
        "dataset": dataset,
        "split": "dev",
        "method": method,
        "n_queries": report.n_queries,
        "metrics": metrics_of(report),
        "seconds": round(seconds, 2),
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# One search dataset


@dataclass
class SearchSet:
    """A search dataset: catalog, dev labels and the held-out train slice for tuning."""

    name: str
    catalog: Catalog
    texts: list[str]
    item_ids: np.ndarray
    dev: Labels
    tune: Labels | None  # the train queries held out from training (None: no config)
    gains: str
    recall_grade: int


def load_search_set(name: str, train_config: dict[str, Any] | None) -> SearchSet:
    folder = require_shared_data(name)
    catalog = read_catalog(folder / "products.jsonl.gz")
    preset = DATASET_PRESETS[name]
    tune = None
    if train_config is not None:
        for k, spec in enumerate(train_config["datasets"]):
            if spec.task == "search" and spec.name == name and spec.dev is None:
                fraction = train_config.get("holdout_fraction", 0.0)
                if fraction > 0:
                    # The same split as trainer.training.prepare makes for search: the same queries.
                    _, tune = split_labels(
                        read_labels(spec.train), fraction, train_config.get("seed", 0) + k
                    )
    return SearchSet(
        name=name,
        catalog=catalog,
        texts=[item_text(r) for r in catalog.records()],
        item_ids=np.asarray(catalog.item_ids, dtype=object),
        dev=read_labels(folder / "labels_dev.jsonl.gz"),
        tune=tune,
        gains=preset.gains,
        recall_grade=preset.recall_grade,
    )


def query_texts(labels: Labels) -> dict[str, str]:
    return {q: query_text(text) for q, text in labels.queries.items()}


def metrics_of(report: EvalReport) -> dict[str, dict[str, float]]:
    return {
        name: {"mean": m.mean, "stderr": m.stderr, "n": m.n} for name, m in report.metrics.items()
    }


def run_search(
    ds: SearchSet, models: Mapping[str, Encoder], cache_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every row of one search dataset, and the fusion chosen per model on the tuning slice."""
    rows: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {}

    def add(method: str, report: EvalReport, seconds: float, **extra: Any) -> None:
        rows.append(result_row(ds.name, method, report, seconds, "recall@100", **extra))

    dev_q = query_texts(ds.dev)
    tune_q = query_texts(ds.tune) if ds.tune is not None else {}
    t0 = time.perf_counter()
    add("bm25s", score(bm25s_ranked(ds.texts, dev_q), ds.item_ids, ds.dev, ds.gains,
                       ds.recall_grade), time.perf_counter() - t0)  # fmt: skip
    t0 = time.perf_counter()
    n = len(ds.texts)
    lexical = LexicalIndex.build(ds.texts, np.arange(n), np.zeros(n, dtype=np.int64), 1)
    lex_dev = lexical_ranked(lexical, dev_q)
    lex_tune = lexical_ranked(lexical, tune_q)
    add("lexical", score(lex_dev, ds.item_ids, ds.dev, ds.gains, ds.recall_grade),
        time.perf_counter() - t0)  # fmt: skip

    for label, encoder in models.items():
        t0 = time.perf_counter()
        xb, cached = catalog_vectors(encoder, ds.catalog, cache_dir=cache_dir)
        xq_dev = query_vectors(encoder, dev_q)
        dense_dev = dense_ranked(xq_dev, xb, dev_q)
        add(label, score(dense_dev, ds.item_ids, ds.dev, ds.gains, ds.recall_grade),
            time.perf_counter() - t0, item_vectors_cached=cached,
            fingerprint=encoder.fingerprint, query_tower=encoder.query_tower,
            lexical=encoder.info.lexical)  # fmt: skip
        if encoder.lexical is not None and encoder.query_tower == "full":
            # The same towers without their trigram sketch: the BERT columns, renormalised.
            t0 = time.perf_counter()
            bert_dev = bert_only_ranked(encoder.info.dim, xq_dev, xb, dev_q)
            add(BERT_ONLY, score(bert_dev, ds.item_ids, ds.dev, ds.gains, ds.recall_grade),
                time.perf_counter() - t0, fingerprint=encoder.fingerprint)  # fmt: skip
        # Fusion: chosen on the held-out train slice, then applied once to dev.
        t0 = time.perf_counter()
        tried = []
        if tune_q:
            dense_tune = dense_ranked(query_vectors(encoder, tune_q), xb, tune_q)
            for params in FUSION_GRID:
                rep = score(fused(dense_tune, lex_tune, params), ds.item_ids, ds.tune, ds.gains,
                            ds.recall_grade)  # fmt: skip
                tried.append((rep.metrics["ndcg@10"].mean, rep.metrics["recall@100"].mean, params))
            tune_dense = score(dense_tune, ds.item_ids, ds.tune, ds.gains, ds.recall_grade)
            tune_lex = score(lex_tune, ds.item_ids, ds.tune, ds.gains, ds.recall_grade)
            best = max(tried, key=lambda t: (t[0], t[1]))[2]
            source = f"{ds.name} train hold-out ({len(tune_q)} queries)"
        else:
            best, source = FusionParams(), "engine default (no tuning slice)"
        chosen[label] = {
            "params": fusion_dict(best),
            "name": fusion_name(best),
            "chosen_on": source,
            "tuning": [
                {"fusion": fusion_name(p), "ndcg@10": round(a, 4), "recall@100": round(b, 4)}
                for a, b, p in tried
            ],
        }
        if tried:
            chosen[label]["tuning_single_channels"] = {
                "dense": round(tune_dense.metrics["ndcg@10"].mean, 4),
                "lexical": round(tune_lex.metrics["ndcg@10"].mean, 4),
            }
        report = score(fused(dense_dev, lex_dev, best), ds.item_ids, ds.dev, ds.gains,
                       ds.recall_grade)  # fmt: skip
        add(f"hybrid {label}", report, time.perf_counter() - t0, fusion=fusion_dict(best),
            fusion_name=fusion_name(best), fusion_chosen_on=source)  # fmt: skip
    return rows, chosen


# ---------------------------------------------------------------------------------------------
# Recommendation (Scientific)


def run_recommend(models: Mapping[str, Encoder], cache_dir: Path) -> list[dict[str, Any]]:
    folder = require_shared_data("scientific")
    catalog = read_catalog(folder / "products.jsonl.gz")
    train = read_interactions(folder / "interactions_train.jsonl.gz")
    dev = read_interactions(folder / "interactions_dev.jsonl.gz")
    ks = DATASET_PRESETS["scientific"].ks
    rows = []

    def add(method: str, report: EvalReport, seconds: float, **extra: Any) -> None:
        rows.append(result_row("scientific", method, report, seconds, "recall@10", **extra))

    # Popularity: one ranking for everyone, by train interaction count (ties: catalog order).
    t0 = time.perf_counter()
    counts = Counter(i for history in train.histories.values() for i in history)
    pop = np.array([counts.get(i, 0) for i in catalog.item_ids], dtype=np.float32)
    order = np.lexsort((np.arange(len(pop)), -pop))
    # Strictly decreasing scores in that order, so the inner-product ranking reproduces it.
    xb_pop = np.zeros((len(pop), 1), dtype=np.float32)
    xb_pop[order, 0] = np.linspace(1.0, 0.0, len(pop), dtype=np.float32)
    report = evaluate_recommendation(
        xb_pop, catalog, train, dev, ks=ks,
        user_vectors=lambda xb, histories: np.ones((len(histories), 1), dtype=np.float32),
    )  # fmt: skip
    add("popularity", report, time.perf_counter() - t0)
    for label, encoder in models.items():
        t0 = time.perf_counter()
        report = evaluate_recommendation(encoder, catalog, train, dev, ks=ks, cache_dir=cache_dir)
        add(label, report, time.perf_counter() - t0, fingerprint=encoder.fingerprint,
            history_decay=encoder.history_decay)  # fmt: skip
    tuned = models.get("fine-tuned")
    if "zero-shot" in models and tuned is not None and tuned.history_decay != 1.0:
        # What the fine-tuned user tower alone brings: zero-shot item vectors, pooled with the
        # decay the training run fitted on its held-out users.
        t0 = time.perf_counter()
        report = evaluate_recommendation(
            models["zero-shot"], catalog, train, dev, ks=ks, cache_dir=cache_dir,
            history_decay=tuned.history_decay,
        )  # fmt: skip
        add(ZERO_SHOT_DECAYED, report, time.perf_counter() - t0,
            history_decay=tuned.history_decay)  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# Output


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Grouped bars: NDCG@10 and Recall@100 (Recall@10 for Scientific) per dataset and method,
    with standard-error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, (title, metric_of) in zip(
        axes,
        (
            ("NDCG@10", lambda ds: "ndcg@10"),
            ("Recall@100 (Scientific: Recall@10)",
             lambda ds: "recall@10" if ds == "scientific" else "recall@100"),
        ),
        strict=True,
    ):  # fmt: skip
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            xs, ys, es = [], [], []
            for i, ds in enumerate(datasets):
                for r in rows:
                    if r["dataset"] == ds and r["method"] == method:
                        m = r["metrics"][metric_of(ds)]
                        xs.append(i + (j - (len(methods) - 1) / 2) * width)
                        ys.append(m["mean"])
                        es.append(m["stderr"] if np.isfinite(m["stderr"]) else 0.0)
            ax.bar(xs, ys, width, yerr=es, capsize=2, label=method)
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle("Dev-split quality (full catalog, mean ± standard error)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    print(f"\n{'dataset':11} {'method':18} {'n':>5} {'NDCG@10':>16} {'R@10':>7} {'R@100':>7}")
    for r in rows:
        m = r["metrics"]
        r100 = m.get("recall@100", {}).get("mean", float("nan"))
        print(
            f"{r['dataset']:11} {r['method']:18} {r['n_queries']:>5} "
            f"{m['ndcg@10']['mean']:8.4f} ± {m['ndcg@10']['stderr']:.4f} "
            f"{m['recall@10']['mean']:7.4f} {r100:7.4f}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_quality",
        description=(
            "Dev-split quality of BM25 (bm25s), Aisle's lexical channel, zero-shot MiniLM, the "
            "fine-tuned towers and their hybrids (fusion chosen on the train hold-out), plus "
            "popularity on Scientific. Reads ../shared/data."
        ),
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="S",
                        help="S: one ~12 min training run for all datasets (train_quick.toml); "
                        "M: ~1 h, a search model (train_search.toml) and a recommendation model "
                        "(train_recommend.toml). Default: S")  # fmt: skip
    parser.add_argument("--model", action="append", default=[], metavar="[DATASET=]DIR",
                        help="fine-tuned model dir for every dataset, or DATASET=DIR for one; "
                        "repeatable; a dataset given a model is not trained")  # fmt: skip
    parser.add_argument("--train-config", type=Path, action="append", default=[],
                        metavar="FILE", help="training config (repeatable; default: the "
                        "preset's); each dataset uses the model of the config that lists it, "
                        "whose hold-out slice also chooses the fusion")  # fmt: skip
    parser.add_argument(
        "--no-fine-tuned",
        action="store_true",
        help="zero-shot, lexical and popularity rows only (no training)",
    )
    parser.add_argument(
        "--datasets",
        default="homedepot,esci,scientific",
        help="comma-separated subset (default: all three)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out"),
        help="results dir: quality.jsonl, quality.png, models/ (bench-out)",
    )
    parser.add_argument("--cache-dir", type=Path,
                        help="item-vector cache (default: OUT/cache/vectors)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(datasets) - {*SEARCH_DATASETS, "scientific"})
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; known: homedepot, esci, scientific")
    require_shared_data("")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache_dir = args.cache_dir or args.out / "cache" / "vectors"
    paths = [p.resolve() for p in (args.train_config or PRESETS[args.preset].train_configs)]
    configs = configs_by_dataset(paths)
    given = parse_model_args(args.model, datasets)
    missing = [d for d in datasets if d not in configs and d not in given]
    if missing and not args.no_fine_tuned:
        raise SystemExit(
            f"no training config lists {missing} and no --model DATASET=DIR is given for them"
        )

    t_start = time.perf_counter()
    zero_shot = load_encoder(default_model_dir())
    model_dirs: dict[str, Path] = {}
    if not args.no_fine_tuned:
        for name in datasets:  # train each needed config once, in dataset order
            model_dirs[name] = given.get(name) or trained_model(args.out, configs[name][0])
    unique_dirs = dict.fromkeys(model_dirs.values())
    loaded = {str(d): load_encoder(d, query_tower="full") for d in unique_dirs}
    fast = {str(d): fast_encoder(d) for d in unique_dirs}

    def models_for(name: str) -> dict[str, Encoder]:
        models = {"zero-shot": zero_shot}
        if name in model_dirs:
            models["fine-tuned"] = loaded[str(model_dirs[name])]
            tower = fast[str(model_dirs[name])]
            if tower is not None and name in SEARCH_DATASETS:
                models[tower[0]] = tower[1]
        return models

    config = {
        "preset": args.preset,
        "datasets": datasets,
        "depth": DEPTH,
        "shared_data": str(SHARED_DATA),
        "models": {d: str(m) for d, m in model_dirs.items()},
        "train_configs": {d: str(configs[d][0]) for d in datasets if d in configs},
        "fingerprints": {"zero-shot": zero_shot.fingerprint}
        | {f"fine-tuned {d}": loaded[str(m)].fingerprint for d, m in model_dirs.items()},
        "fast_query_towers": {
            d: fast[str(m)][0] for d, m in model_dirs.items() if fast[str(m)] is not None
        },
    }
    print(json.dumps(config, indent=1), flush=True)
    rows: list[dict[str, Any]] = []
    fusion: dict[str, Any] = {}
    for name in datasets:
        if name == "scientific":
            rows += run_recommend(models_for(name), cache_dir)
        else:
            train_config = configs[name][1] if name in configs else None
            ds_rows, chosen = run_search(
                load_search_set(name, train_config), models_for(name), cache_dir
            )
            rows += ds_rows
            fusion[name] = chosen
    print_table(rows)
    record = {
        "bench": "quality",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(
            ["python", "-m", "benchmarks.bench_quality", *(argv or sys.argv[1:])]
        ),
        "config": config,
        "machine": machine("bm25s", "transformers"),
        "results": {"rows": rows, "fusion": fusion},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    append_jsonl(args.out / "quality.jsonl", record)
    plot(rows, args.out / "quality.png")
    print(f"\nwrote {args.out / 'quality.jsonl'} and {args.out / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
