"""The learned ranking stage on the shared dev splits: ranked vs hybrid vs each channel, and
what the stage costs.

Needs an index version of the dataset's catalog (``aisle-index build``; the towers are the
version's own). Steps, timed: candidates and features of the train queries (the dense top N and
the lexical top N, N = 100, as the server takes them), ``lambdarank`` training with early
stopping on a held-out slice of the train queries, then the dev queries scored four ways over
the same candidates:

* ``ranked``: the ranker's order (what mode RANKED serves).
* ``hybrid``: the two lists fused as the server fuses them by default
  (``engine.search.types.DEFAULT_FUSION``, ``engine.search.fusion.fuse``).
* ``dense`` / ``lexical``: one channel's list alone.

NDCG@10 and Recall@100 with the dataset's convention (``trainer.evaluation.presets``), mean and
standard error over queries, and ranked - hybrid paired over queries. Speed: per dev query, the
ranking stage (features + LightGBM, ``engine.search.ranked.RankingStage.rank``) against the
fusion it replaces, p50/p95 over the queries, one thread; the candidate count is reported (up to
2N = 200).

Appends one JSON line to ``OUT/rank.jsonl`` and writes the ranker to ``OUT/ranker-<dataset>.json``
(attach it with ``aisle-rank attach --index ROOT --ranker FILE``).

``python -m benchmarks.bench_rank --dataset esci --index ROOT [--out bench-out]``
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import append_jsonl, machine, require_shared_data
from engine.search.fusion import fuse
from engine.search.ranked import RankingStage
from engine.search.types import DEFAULT_FUSION
from indexer.ranking.features import Candidates
from indexer.ranking.spec import FEATURES
from indexer.ranking.training import (
    QuerySet,
    RankerConfig,
    prepare_queries,
    rankings_metrics,
    train_ranker,
    version_source,
)
from indexer.storage.layout import resolve_version_dir
from indexer.version import IndexVersion
from trainer.data.labels import read_labels
from trainer.encoder.load import load_encoder
from trainer.evaluation.metrics import ndcg_at_k, resolve_gains, summarize
from trainer.evaluation.presets import dataset_preset
from trainer.text import query_text

_DENSE, _LEXICAL = FEATURES.index("dense_score"), FEATURES.index("lexical_score")


def hybrid_order(X: np.ndarray, c: Candidates) -> np.ndarray:
    """Positions of the candidates in the server's default fusion of the two lists."""
    absent = c.depth + 1
    in_dense, in_lexical = c.dense_rank < absent, c.lexical_rank < absent
    positions = np.arange(len(c.rows))
    _, rows = fuse(
        (X[in_dense, _DENSE], c.rows[in_dense]),
        (X[in_lexical, _LEXICAL], c.rows[in_lexical]),
        DEFAULT_FUSION,
    )
    where = {int(r): int(p) for r, p in zip(c.rows, positions, strict=True)}
    return np.asarray([where[int(r)] for r in rows], dtype=np.int64)


def paired_difference(
    qs: QuerySet, a: list[np.ndarray], b: list[np.ndarray], gains: dict[int, float]
) -> dict[str, float]:
    """Mean and standard error over queries of NDCG@10(order a) - NDCG@10(order b): the two
    orders are of the same candidates, so the per-query pairing removes the query noise."""
    diffs = []
    for qid, cand, oa, ob in zip(qs.query_ids, qs.candidates, a, b, strict=True):
        item_gain = {i: gains.get(g, 0.0) for i, g in qs.judgments[qid].items()}
        va = ndcg_at_k([str(qs.item_ids[r]) for r in cand.rows[oa]], item_gain, 10)
        vb = ndcg_at_k([str(qs.item_ids[r]) for r in cand.rows[ob]], item_gain, 10)
        if va is not None and vb is not None:
            diffs.append(va - vb)
    return summarize(diffs).__dict__


def stage_timings(stage: RankingStage, source: Any, qs: QuerySet, texts: list[str], xq: np.ndarray):
    """(rank ms, fuse ms, candidate counts) per query, one thread."""
    rank_ms, fuse_ms, sizes = [], [], []
    for i, c in enumerate(qs.candidates):
        absent = c.depth + 1
        dense_rows = c.rows[np.argsort(c.dense_rank, kind="stable")][
            : int((c.dense_rank < absent).sum())
        ]
        lexical_rows = c.rows[np.argsort(c.lexical_rank, kind="stable")][
            : int((c.lexical_rank < absent).sum())
        ]
        ranked = stage.rank(
            columns=source.columns, vectors=source.vectors, lexical=source.lexical,
            lexical_state=None, text=texts[i], xq=xq[i],
            dense_rows=dense_rows, lexical_rows=lexical_rows,
        )  # fmt: skip
        rank_ms.append(ranked.rank_ms)
        t = time.perf_counter()
        hybrid_order(qs.features[i], c)
        fuse_ms.append((time.perf_counter() - t) * 1e3)
        sizes.append(len(c.rows))
    return np.asarray(rank_ms), np.asarray(fuse_ms), np.asarray(sizes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=["esci", "homedepot"])
    parser.add_argument("--index", required=True, type=Path, help="index root of its catalog")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--threads", type=int, default=2, help="LightGBM training threads")
    parser.add_argument("--max-train-queries", type=int, default=0,
                        help="train on the first N train queries (0: all)")  # fmt: skip
    args = parser.parse_args(argv)
    data = require_shared_data(args.dataset)
    preset = dataset_preset(args.dataset)
    t_start = time.perf_counter()
    version_dir = resolve_version_dir(args.index)
    version = IndexVersion.open(version_dir)
    encoder = load_encoder(version.manifest.model_path)
    source = version_source(version, encoder)
    train = read_labels(data / "labels_train.jsonl.gz")
    if args.max_train_queries:
        keep = list(train.queries)[: args.max_train_queries]
        train = type(train)({q: train.queries[q] for q in keep},
                            {q: train.judgments[q] for q in keep}, train.path)  # fmt: skip
    dev = read_labels(data / "labels_dev.jsonl.gz")
    t = time.perf_counter()
    qs_train = prepare_queries(version, source, encoder, train, show_progress=True)
    features_s = time.perf_counter() - t
    config = RankerConfig(gains=preset.gains, threads=args.threads)
    t = time.perf_counter()
    ranker = train_ranker(
        qs_train, config, model_fingerprint=encoder.fingerprint, fields=source.fields.fields
    )
    train_s = time.perf_counter() - t
    args.out.mkdir(parents=True, exist_ok=True)
    ranker.save(args.out / f"ranker-{args.dataset}.json")
    qs_dev = prepare_queries(version, source, encoder, dev, show_progress=True)
    orders = {
        "ranked": [
            ranker.order(X, c.rows)[0]
            for X, c in zip(qs_dev.features, qs_dev.candidates, strict=True)
        ],
        "hybrid": [
            hybrid_order(X, c) for X, c in zip(qs_dev.features, qs_dev.candidates, strict=True)
        ],
        "dense": [np.argsort(c.dense_rank, kind="stable") for c in qs_dev.candidates],
        "lexical": [np.argsort(c.lexical_rank, kind="stable") for c in qs_dev.candidates],
    }
    metrics = rankings_metrics(
        qs_dev, orders, resolve_gains(preset.gains), ks=(10,), recall_grade=preset.recall_grade
    )
    gains = resolve_gains(preset.gains)
    metrics["ranked_minus_hybrid"] = paired_difference(
        qs_dev, orders["ranked"], orders["hybrid"], gains
    )
    texts = [dev.queries[q] for q in qs_dev.query_ids]
    xq = encoder.encode_queries([query_text(x) for x in texts])
    stage = RankingStage(ranker, source.fields, source.sketch_dim)
    rank_ms, fuse_ms, sizes = stage_timings(stage, source, qs_dev, texts, xq)
    gain = np.asarray(ranker.booster.feature_importance("gain"))
    results = {
        "metrics": metrics,
        "training": ranker.training,
        "train_features_s": round(features_s, 1),
        "train_s": round(train_s, 1),
        "rank_stage_ms": {
            "p50": float(np.percentile(rank_ms, 50)),
            "p95": float(np.percentile(rank_ms, 95)),
            "fuse_p50": float(np.percentile(fuse_ms, 50)),
            "candidates_p50": float(np.percentile(sizes, 50)),
            "candidates_max": int(sizes.max()),
        },  # fmt: skip
        "feature_gain": {
            n: round(float(g), 1)
            for n, g in sorted(zip(FEATURES, gain, strict=True), key=lambda p: -p[1])
        },
    }
    record = {
        "bench": "rank",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks.bench_rank", *(argv or sys.argv[1:])]),
        "config": {
            "dataset": args.dataset,
            "index": str(version_dir),
            "model": version.manifest.model_path,
            "model_fingerprint": encoder.fingerprint,
            "train_queries": len(train.queries),
            "dev_queries": len(dev.queries),
            "ranker": config.__dict__,
        },  # fmt: skip
        "machine": machine("lightgbm"),
        "results": results,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    append_jsonl(args.out / "rank.jsonl", record)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
