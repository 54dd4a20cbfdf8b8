"""The utility cost of DP-SGD on the learning loop's simulated traffic (``python -m
benchmarks.bench_dp_utility --source loop``).

1. A Home Depot subset (``benchmarks.bench_loop.make_subset``: every item judged for the dev and
   traffic queries, plus random distractors) is indexed with the zero-shot model (the packaged
   all-MiniLM-L6-v2) and served on 127.0.0.1 with user keys (pseudonyms, as in production).
2. The simulator's shoppers (``engine.learning.simulator``) search Home Depot *train* queries
   and click, add to cart and buy by the hidden grades.
3. ``aisle-learn dataset`` turns the logs into per-(query, item) pairs; every engaged pair is one
   training example (grade 2, weight 1; the DP unit is the example).
4. ``aisle-train`` fine-tunes from the zero-shot model on those examples: with ``--dp-epsilon``
   at each ε (DP-SGD, the query tower against the frozen item tower), and without DP (the usual
   in-batch loss with logQ, both towers: what one would train without privacy).
5. Each model is scored on Home Depot *dev* queries (never in the traffic) over the subset:
   NDCG@10 ± standard error, and each setting's paired difference to the no-DP model.

One JSON line (``bench: dp_utility_loop``) is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_loop import Preset, dev_ndcg, make_subset, paired_difference
from benchmarks.common import append_jsonl, machine, require_shared_data

log = logging.getLogger("dp_loop")
KEYS = "bench:dp-utility-loop-key-0123456789"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_dp_utility --source loop", description=__doc__)
    p.add_argument("--dev-queries", type=int, default=150)
    p.add_argument("--traffic-queries", type=int, default=250)
    p.add_argument("--distractors", type=int, default=300)
    p.add_argument("--sessions", type=int, default=2000, help="simulated searches")
    p.add_argument("--shoppers", type=int, default=500)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument(
        "--dp-lr",
        type=float,
        help="learning rate of the DP-SGD runs (default: --lr); DP-SGD's "
        "clipped, noised steps usually want a larger one",
    )
    p.add_argument("--dp-delta", type=float, default=1e-5)
    p.add_argument("--dp-max-grad-norm", type=float, default=1.0)
    p.add_argument("--dp-trainable-layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epsilons", default="none,8,4,1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("bench-out/dp-loop-work"))
    p.add_argument("--out", type=Path, default=Path("bench-out/dp_utility.jsonl"))
    return p


def _served_traffic(subset: dict[str, Any], zero_shot: Path, work: Path, cache: Path, args):
    """Index the subset, serve it with user keys, run the simulator; returns the index root."""
    from engine.api.privacy import PrivacyConfig
    from engine.learning.simulator import ShopperModel, TrafficConfig, simulate
    from engine.server import ServerConfig, create_server
    from indexer.build.config import BuildConfig
    from indexer.build.local import build_index
    from trainer.data.catalog import read_catalog
    from trainer.encoder.load import load_encoder
    from trainer.evaluation.vector_cache import catalog_vectors
    from trainer.privacy.pseudonym import parse_keys

    root = work / "index"
    catalog = read_catalog(subset["catalog"])  # items at 48 tokens, as the training runs do
    xb, _ = catalog_vectors(load_encoder(zero_shot), catalog, max_item_length=48, cache_dir=cache)
    np.save(work / "zero-shot.npy", xb)
    build_index(
        BuildConfig(
            catalog=subset["catalog"], out=root, model=zero_shot, target_recall=None,
            lexical=False, item_vectors=work / "zero-shot.npy",
        )
    )  # fmt: skip
    privacy = PrivacyConfig(pseudonyms=parse_keys(KEYS, "bench"))
    server = create_server(ServerConfig(index=root, port=0, workers=4, privacy=privacy))
    try:
        traffic = simulate(
            f"127.0.0.1:{server.port}",
            TrafficConfig(
                queries=subset["traffic_queries"],
                judgments=subset["traffic_judgments"],
                sessions=args.sessions,
                shoppers=args.shoppers,
                seed=args.seed,
                model=ShopperModel(),
            ),
        )
        server.service.impressions.flush()
    finally:
        server.stop(0)
    return root, traffic.to_dict()


def _examples(root: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    """``aisle-learn dataset`` over the logs; engaged pairs → a labels file (one example each)."""
    from engine.cli.learn import main as learn_main
    from trainer.feedback.dataset import read_dataset

    dataset = work / "dataset"
    if learn_main(["dataset", "--index", str(root), "--out", str(dataset)]) != 0:
        raise SystemExit("aisle-learn dataset failed")
    pairs, _, summary, _ = read_dataset(dataset)
    rows = pairs.to_pylist()
    query_ids: dict[str, str] = {}
    labels = work / "train.jsonl"
    n = 0
    with open(labels, "w", encoding="utf-8") as f:
        for r in rows:
            if r["label"] <= 0:
                continue
            qid = query_ids.setdefault(r["query"], f"q{len(query_ids)}")
            f.write(
                json.dumps({"query_id": qid, "query": r["query"], "item_id": r["item_id"],
                            "grade": 2}) + "\n"
            )  # fmt: skip
            n += 1
    return labels, {"examples": n, "queries": len(query_ids), "pairs_rows": len(rows)}


def _ndcg_with_items(model: Path, xb: np.ndarray, catalog, dev) -> tuple[float, float, dict]:
    """Dev NDCG@10 of ``model``'s query tower against fixed item vectors ``xb`` (DP-SGD models
    keep the zero-shot item tower, whose vectors the index already holds)."""
    from trainer.encoder.load import load_encoder
    from trainer.evaluation.metrics import evaluate_rankings
    from trainer.evaluation.search import exact_search
    from trainer.text import query_text

    encoder = load_encoder(model)
    ids = list(dev.queries)
    xq = np.asarray(encoder.encode_queries([query_text(dev.queries[q]) for q in ids]), np.float32)
    _, top = exact_search(xq, xb, 10)
    items = np.asarray(catalog.item_ids, dtype=object)
    rankings = {q: items[top[i]].tolist() for i, q in enumerate(ids)}
    report = evaluate_rankings(rankings, dev, "grade", 2, (10,), task="search")
    m = report.metrics["ndcg@10"]
    per_query = {q: v["ndcg@10"] for q, v in report.per_query.items() if "ndcg@10" in v}
    return m.mean, m.stderr, per_query


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from trainer.cli import main as train_main
    from trainer.data.catalog import read_catalog
    from trainer.data.labels import read_labels
    from trainer.encoder.model_dir import default_model_dir

    started = time.perf_counter()
    data = require_shared_data("homedepot")
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    cache = work / "vector-cache"
    cache.mkdir(parents=True)
    preset = Preset(
        args.dev_queries, args.traffic_queries, 0, args.distractors, 1, args.sessions,
        args.max_steps, args.batch_size, args.lr, args.threads,
    )  # fmt: skip
    subset = make_subset(data, work, preset, args.seed)
    zero_shot = default_model_dir()
    catalog, dev = read_catalog(subset["catalog"]), read_labels(subset["dev"])
    t0 = time.perf_counter()
    root, traffic = _served_traffic(subset, zero_shot, work, cache, args)
    labels, counts = _examples(root, work)
    t1 = time.perf_counter()
    log.info("traffic and dataset: %s in %.0f s", counts, t1 - t0)
    xb = np.load(work / "zero-shot.npy")
    zero_mean, zero_se, zero_pq = _ndcg_with_items(zero_shot, xb, catalog, dev)
    results: dict[str, Any] = {
        "zero_shot": {"dev_ndcg@10": zero_mean, "dev_ndcg@10_stderr": zero_se}
    }
    per_query: dict[str, dict] = {}
    common = [
        "--catalog", str(subset["catalog"]), "--train", str(labels), "--base-model",
        str(zero_shot), "--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--max-query-length", "16", "--max-item-length", "48",
        "--num-threads", str(args.threads), "--export-onnx", "false", "--no-progress",
        "--seed", str(args.seed), "--checkpoint-every", "0",
    ]  # fmt: skip
    for setting in filter(None, (e.strip() for e in args.epsilons.split(","))):
        out = work / "models" / setting
        flags = [] if setting == "none" else [
            "--dp-epsilon", setting, "--dp-delta", str(args.dp_delta),
            "--dp-max-grad-norm", str(args.dp_max_grad_norm),
            "--dp-trainable-layers", str(args.dp_trainable_layers),
            "--lr", str(args.dp_lr or args.lr),
        ]  # fmt: skip
        t = time.perf_counter()
        if train_main([*common, "--out", str(out), *flags]) != 0:
            raise SystemExit(f"aisle-train failed for {setting}")
        train_s = time.perf_counter() - t
        metrics = json.loads((out / "training_metrics.json").read_text())
        if setting == "none":  # both towers trained: re-encode the items
            mean, se, pq = dev_ndcg(out, catalog, dev, cache)
        else:
            mean, se, pq = _ndcg_with_items(out, xb, catalog, dev)
        per_query[setting] = pq
        results[setting] = {
            "dev_ndcg@10": mean,
            "dev_ndcg@10_stderr": se,
            "privacy": metrics.get("privacy"),
            "train_seconds": round(train_s, 1),
        }
        log.info("%s: dev NDCG@10 %.4f ± %.4f (%.0f s)", setting, mean, se, train_s)
    if "none" in per_query:
        for setting, pq in per_query.items():
            if setting != "none":
                results[setting]["minus_no_dp"] = paired_difference(pq, per_query["none"])
    for setting, pq in per_query.items():
        results[setting]["minus_zero_shot"] = paired_difference(pq, zero_pq)
    record = {
        "bench": "dp_utility_loop",
        "config": {
            **vars(args),
            "work": str(args.work),
            "out": str(args.out),
            "preset": asdict(preset),
            **subset["sizes"],
        },  # fmt: skip
        "traffic": traffic,
        "dataset": counts,
        "results": results,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine("opacus", "transformers"),
    }
    append_jsonl(args.out, record)
    print(json.dumps({k: v for k, v in results.items()}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
