"""Utility cost of DP-SGD: NDCG@10 of the query tower fine-tuned on shopper-style pairs at
several ε against the same fine-tuning without DP (and the base model untuned).

Shopper data: the learning loop's simulator is not available on this branch, so ESCI's Exact
judgments stand in for clicks: every (train query, exact item) pair is one example, as if each
came from a different shopper (the guarantee is per example). The catalog is every item judged
for the train and dev queries; item vectors come from the base model's item tower and stay
frozen (trainer.training.dpsgd). Dev queries are ranked over that catalog by exact dot product;
gains 2^grade - 1. ESCI here is small (100 train, 20 dev queries): read the dev NDCG with its
standard error.

    python -m benchmarks.bench_dp_utility

``--source loop`` measures it on the learning loop's simulated traffic instead
(``benchmarks.dp_loop``): a Home Depot subset served on 127.0.0.1, the simulator's shoppers
searching train queries, ``aisle-learn dataset`` on their logs, ``aisle-train --dp-epsilon`` at
each ε, dev NDCG@10 (dev queries never in the traffic) with standard errors, one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import append_jsonl, machine, require_shared_data
from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import default_model_dir
from trainer.encoder.torch_tower import load_hf_model
from trainer.evaluation.metrics import ndcg_at_k
from trainer.text import item_text, query_text
from trainer.training.dpsgd import DPSGDConfig, dp_finetune, encode_queries


def _jsonl(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _judgments(path: Path) -> dict[str, tuple[str, dict[str, int]]]:
    out: dict[str, tuple[str, dict[str, int]]] = {}
    for r in _jsonl(path):
        out.setdefault(r["query_id"], (r["query"], {}))[1][r["item_id"]] = int(r["grade"])
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--source=loop" in argv or any(
        a == "--source" and b == "loop" for a, b in zip(argv, argv[1:], strict=False)
    ):  # the loop mode has its own flags (benchmarks.dp_loop)
        from benchmarks.dp_loop import main as loop_main

        rest = [a for a in argv if a != "--source=loop"]
        if "--source" in rest:
            k = rest.index("--source")
            rest = rest[:k] + rest[k + 2 :]
        return loop_main(rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-queries", type=int, default=100)
    parser.add_argument("--dev-queries", type=int, default=20)
    parser.add_argument(
        "--epsilons", default="none,8,4,1", help="comma list of ε; 'none': fine-tuned without DP"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--trainable-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=16, help="query tokens (ESCI: short)")
    parser.add_argument(
        "--base", action=argparse.BooleanOptionalAction, default=True, help="also the base model"
    )
    parser.add_argument(
        "--item-cache", type=Path, help="item vectors (.npy) to reuse across runs of this setup"
    )
    parser.add_argument(
        "--item-max-length", type=int, default=48, help="item tokens embedded (default 48)"
    )
    parser.add_argument(
        "--embed-part",
        metavar="I/N",
        help="only embed part I of N of the items into ITEM_CACHE.partI.npy and exit (run the "
        "parts in parallel; a later run joins them)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out/dp_utility.jsonl"))
    parser.add_argument(
        "--source",
        choices=("esci", "loop"),
        default="esci",
        help="esci: ESCI exact judgments as clicks (below); loop: the learning loop's simulated "
        "traffic on Home Depot with its own flags (python -m benchmarks.dp_loop --help)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = require_shared_data("esci")
    rng = random.Random(args.seed)
    train = _judgments(data / "labels_train.jsonl.gz")
    dev = _judgments(data / "labels_dev.jsonl.gz")
    train_ids = [q for q in sorted(train) if any(g == 3 for g in train[q][1].values())]
    dev_ids = [q for q in sorted(dev) if any(g > 0 for g in dev[q][1].values())]
    train_ids = rng.sample(train_ids, min(args.train_queries, len(train_ids)))
    dev_ids = rng.sample(dev_ids, min(args.dev_queries, len(dev_ids)))
    # The catalog: the training targets (exact items) and everything judged for dev queries.
    wanted = {i for q in train_ids for i, g in train[q][1].items() if g == 3}
    wanted |= {i for q in dev_ids for i in dev[q][1]}
    products = {
        r["item_id"]: r for r in _jsonl(data / "products.jsonl.gz") if r["item_id"] in wanted
    }
    item_ids = sorted(products)
    row = {item: n for n, item in enumerate(item_ids)}
    texts = [item_text(products[i]) for i in item_ids]
    if args.embed_part:
        part, n_parts = (int(x) for x in args.embed_part.split("/"))
        bounds = np.linspace(0, len(texts), n_parts + 1).astype(int)
        encoder = load_encoder(default_model_dir(), backend="torch")
        chunk = texts[bounds[part] : bounds[part + 1]]
        vectors = encoder.encode_items(chunk, max_length=args.item_max_length)
        np.save(args.item_cache.with_suffix(f".part{part}.npy"), vectors)
        return 0
    cache = args.item_cache
    parts = list(cache.parent.glob(cache.stem + ".part*.npy")) if cache is not None else []
    if cache is not None and not cache.exists() and parts:
        parts.sort(key=lambda p: int(p.suffixes[-2][5:]))
        np.save(cache, np.concatenate([np.load(p) for p in parts]))
    if args.item_cache is not None and args.item_cache.exists():
        items = np.load(args.item_cache)
    else:
        encoder = load_encoder(default_model_dir(), backend="torch")
        items = encoder.encode_items(texts, max_length=args.item_max_length)  # (n, dim)
        if args.item_cache is not None:
            np.save(args.item_cache, items)
    if len(items) != len(item_ids):
        raise SystemExit(f"{args.item_cache} holds {len(items)} vectors, not {len(item_ids)}")
    queries, targets = [], []
    for q in train_ids:
        text, judged = train[q]
        for item in sorted(i for i, g in judged.items() if g == 3 and i in row):
            queries.append(query_text(text))
            targets.append(row[item])
    dev_texts = [query_text(dev[q][0]) for q in dev_ids]
    print(
        f"{len(queries)} training pairs, {len(dev_ids)} dev queries, {len(item_ids)} items",
        flush=True,
    )

    def ndcg(model, tokenizer, config) -> tuple[float, float]:
        xq = encode_queries(model, tokenizer, dev_texts, config)
        top = np.argsort(-(xq @ items.T), axis=1)[:, :10]
        scores = []
        for n, q in enumerate(dev_ids):
            gains = {i: 2.0**g - 1 for i, g in dev[q][1].items()}
            value = ndcg_at_k([item_ids[j] for j in top[n]], gains, 10)
            if value is not None:
                scores.append(value)
        return float(np.mean(scores)), float(np.std(scores, ddof=1) / np.sqrt(len(scores)))

    settings: list[float | None | str] = ["base"] if args.base else []
    for e in filter(None, (e.strip() for e in args.epsilons.split(","))):
        settings.append(None if e == "none" else float(e))
    for setting in settings:
        t = time.perf_counter()
        tokenizer, model = load_hf_model(default_model_dir())
        config = DPSGDConfig(
            epsilon=None if setting == "base" else setting,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            trainable_layers=args.trainable_layers,
            max_length=args.max_length,
        )
        report = None
        if setting != "base":
            report = dp_finetune(
                model, tokenizer, queries, np.array(targets), items, config, seed=args.seed
            )
        value, stderr = ndcg(model, tokenizer, config)
        record = {
            "bench": "dp_utility",
            "setting": "base (no fine-tuning)"
            if setting == "base"
            else ("no DP" if setting is None else f"epsilon={setting}"),
            "ndcg@10": round(value, 4),
            "ndcg@10_stderr": round(stderr, 4),
            "dpsgd": report.to_json() if report else None,
            "train_pairs": len(queries),
            "dev_queries": len(dev_ids),
            "items": len(item_ids),
            "config": {
                k: getattr(config, k)
                for k in (
                    "epochs",
                    "batch_size",
                    "lr",
                    "trainable_layers",
                    "max_grad_norm",
                    "delta",
                    "max_length",
                )
            },
            "seconds": round(time.perf_counter() - t, 1),
            "machine": machine("opacus", "transformers"),
        }
        print(
            json.dumps({k: record[k] for k in ("setting", "ndcg@10", "seconds")}), record["dpsgd"]
        )
        append_jsonl(args.out, record)
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
