"""Query towers side by side: the full tower and each distilled fast tower of one model.

For every tower (``full`` = the model's own query tower, then each ``--model`` dir's fast tower
from ``aisle-train distill-query``; all dirs must share the model fingerprint):

* **encode**: p50 / p99 µs of one query at a time on one thread (ONNX Runtime intra-op threads
  1, torch threads 1), over Home Depot dev queries, interleaved tower by tower in blocks so load
  from other processes hits every tower alike; both the wall time and the thread's CPU time
  (the cost on one core, which waiting for a core on a loaded machine does not inflate).
* **quality**: Home Depot dev NDCG@10 (gain = grade), dense and hybrid (the dense and lexical top
  100 fused as the engine fuses them, ``engine.search.fusion.fuse``, with its default
  parameters), against a catalog slice: every item judged for a dev query plus random others up
  to ``--items`` (the item vectors are the full item tower's, shared by every tower).
* **served** (``--serve``): ``aisle-serve --model DIR --query-tower fast|full`` on an index built
  with the model, p50 / p99 ms, QPS, errors and the server's encode p50 / p99 at each
  ``--concurrency`` level, dense mode, every tower's server up at once and given the same
  queries per level (``benchmarks.tower_load``), each relative to the full tower (one process).
  With ``--serve-processes N`` every tower is also served by ``aisle-serve --processes N``
  (rows ``<tower> xN``, kept on each tower's line as ``served_processes``).

Appends one JSON line to ``OUT/query_tower.jsonl`` and draws ``OUT/query_tower.png`` (NDCG@10 vs
encode µs). ``python -m benchmarks.bench_query_tower --model DIR [--model DIR ...]``
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_quality import dense_ranked, fused, lexical_ranked, score
from benchmarks.common import append_jsonl, machine, require_shared_data
from benchmarks.load import QueryPool, percentile
from benchmarks.report.query_tower import draw_query_towers
from benchmarks.tower_load import Tower, tower_levels
from engine.search.fusion import FusionParams
from indexer.lexical.index import LexicalIndex
from trainer.data.catalog import catalog_from_records, read_catalog
from trainer.data.labels import read_labels
from trainer.encoder.fast_tower import read_fast_tower_info
from trainer.encoder.load import Encoder, l2_normalize, load_encoder
from trainer.encoder.model_dir import model_fingerprint
from trainer.encoder.onnx_tower import OnnxTower, query_onnx_path
from trainer.evaluation.presets import DATASET_PRESETS
from trainer.text import item_text, query_text

log = logging.getLogger("bench_query_tower")
BLOCK = 50  # queries per tower per round of the interleaved timing


def item_vectors(encoder: Encoder, texts: list[str], cache: Path) -> np.ndarray:
    """The full item tower's vectors of ``texts`` (through the ONNX export when the towers are
    shared: the same graph), cached by fingerprint and count."""
    path = cache / f"items-{encoder.fingerprint[:16]}-{len(texts)}.npy"
    if path.is_file():
        return np.load(path)
    info = encoder.info
    onnx = query_onnx_path(encoder.model_dir, info)
    if info.shared_towers and onnx.is_file() and encoder.lexical is None:
        tower = OnnxTower(onnx, num_threads=None)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), info.dim), dtype=np.float32)
        for start in range(0, len(texts), 64):
            rows = order[start : start + 64]
            out[rows] = tower.encode([texts[r] for r in rows], info.max_item_length)
        out = l2_normalize(out)
    else:
        out = encoder.encode_items(texts, batch_size=64)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def encode_times(encoders: dict[str, Encoder], queries: list[str], n: int) -> dict[str, Any]:
    """Per tower: one query at a time, interleaved in blocks of ``BLOCK``; p50/p99 of the wall
    time and of the calling thread's CPU time (every tower runs on that one thread, so on a
    loaded machine the CPU time is the cost, the wall time adds waiting for a core)."""
    wall: dict[str, list[float]] = {name: [] for name in encoders}
    cpu: dict[str, list[float]] = {name: [] for name in encoders}
    for enc in encoders.values():  # warm-up
        enc.encode_queries(queries[:20])
    for start in range(0, n, BLOCK):
        block = [queries[i % len(queries)] for i in range(start, min(n, start + BLOCK))]
        for name, enc in encoders.items():
            for q in block:
                c, t = time.thread_time_ns(), time.perf_counter_ns()
                enc.encode_queries([q])
                wall[name].append((time.perf_counter_ns() - t) / 1e3)
                cpu[name].append((time.thread_time_ns() - c) / 1e3)
    return {
        name: {
            "encode_p50_us": round(percentile(wall[name], 50), 1),
            "encode_p99_us": round(percentile(wall[name], 99), 1),
            "encode_cpu_p50_us": round(percentile(cpu[name], 50), 1),
            "encode_cpu_p99_us": round(percentile(cpu[name], 99), 1),
            "n": len(wall[name]),
        }
        for name in encoders
    }


def serve_towers(
    index: Path,
    towers: dict[str, Path],
    queries: list[str],
    levels: list[int],
    requests: int,
    processes: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    """Per tower, its served levels: ``aisle-serve --model DIR --query-tower fast|full`` over
    ``index``, every tower up at once and given the same queries per level
    (``benchmarks.tower_load``); with ``processes`` > 1 also each tower served by that many
    processes, under the key ``processes_label(name, processes)``."""
    specs = [
        Tower(name, "full" if name == "full" else "fast", model) for name, model in towers.items()
    ]
    if processes > 1:
        specs += [
            Tower(processes_label(t.label, processes), t.query_tower, t.model, processes)
            for t in list(specs)
        ]
    with tempfile.TemporaryDirectory() as work:
        rows = tower_levels(index, Path(work), specs, QueryPool(queries), levels, requests, 10)
    return {row["tower"]: row["levels"] for row in rows}


def processes_label(tower: str, processes: int) -> str:
    return f"{tower} x{processes}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_query_tower", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", type=Path, action="append", required=True, metavar="DIR")
    p.add_argument("--items", type=int, default=10_000, help="catalog slice (10000; 0 = all)")
    p.add_argument("--encode-queries", type=int, default=500, help="timed per tower (500)")
    p.add_argument("--serve", type=Path, metavar="INDEX", help="also serve this index")
    p.add_argument("--concurrency", default="1,8,32", help="served levels (1,8,32)")
    p.add_argument("--requests", type=int, default=400, help="per served level (400)")
    p.add_argument("--serve-processes", type=int, default=1, metavar="N",
                   help="also serve each tower by aisle-serve --processes N (1: no)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    started = time.time()
    fingerprints = {model_fingerprint(m) for m in args.model}
    if len(fingerprints) != 1:
        raise SystemExit("every --model must be the same model (one fingerprint)")
    encoders: dict[str, Encoder] = {
        "full": load_encoder(args.model[0], query_tower="full", num_threads=1)
    }
    towers: dict[str, Path] = {"full": args.model[0]}
    for m in args.model:
        info = read_fast_tower_info(m)
        if info is None:
            raise SystemExit(f"{m} has no fast query tower")
        # Two dirs with the same variant (e.g. static at two step counts): named by their dir.
        name = info.variant if info.variant not in towers else f"{info.variant} ({m.name})"
        encoders[name] = load_encoder(m, query_tower="fast", num_threads=1)
        towers[name] = m
    import torch

    torch.set_num_threads(1)

    data = require_shared_data("homedepot")
    dev = read_labels(data / "labels_dev.jsonl.gz")
    catalog = read_catalog(data / "products.jsonl.gz")
    judged = {i for items in dev.judgments.values() for i in items}
    rows = [i for i, item in enumerate(catalog.item_ids) if item in judged]
    if args.items and len(rows) < args.items:
        rng = np.random.default_rng(0)
        others = np.setdiff1d(np.arange(len(catalog)), rows)
        rows += rng.choice(others, args.items - len(rows), replace=False).tolist()
    elif not args.items:
        rows = list(range(len(catalog)))
    sliced = catalog_from_records([catalog.record(i) for i in sorted(rows)], "slice")
    texts = [item_text(r) for r in sliced.records()]
    ids = np.asarray(sliced.item_ids, dtype=object)
    xb = item_vectors(encoders["full"], texts, args.out / "cache")
    queries = {q: query_text(t) for q, t in dev.queries.items()}
    lexical = LexicalIndex.build(texts, np.arange(len(texts)), np.zeros(len(texts), np.int64), 1)
    lex = lexical_ranked(lexical, queries)
    preset = DATASET_PRESETS["homedepot"]
    timing = encode_times(encoders, list(queries.values()), args.encode_queries)
    results = []
    for name, enc in encoders.items():
        xq = enc.encode_queries(list(queries.values()))
        dense = dense_ranked(xq, xb, queries)
        d = score(dense, ids, dev, preset.gains, preset.recall_grade)
        h = score(fused(dense, lex, FusionParams()), ids, dev, preset.gains, preset.recall_grade)
        row = {
            "tower": name,
            **timing[name],
            "ndcg@10_dense": round(d.metrics["ndcg@10"].mean, 4),
            "ndcg@10_hybrid": round(h.metrics["ndcg@10"].mean, 4),
            "recall@100_dense": round(d.metrics["recall@100"].mean, 4),
        }
        if name != "full":
            row["distill"] = read_fast_tower_info(towers[name]).metrics
        results.append(row)
        log.info("%s", row)
    if args.serve is not None:
        levels = [int(c) for c in args.concurrency.split(",")]
        served = serve_towers(
            args.serve, towers, list(queries.values()), levels, args.requests,
            args.serve_processes,
        )  # fmt: skip
        for row in results:
            row["served"] = served[row["tower"]]
            if args.serve_processes > 1:
                row["served_processes"] = {
                    "processes": args.serve_processes,
                    "levels": served[processes_label(row["tower"], args.serve_processes)],
                }
    record = {
        "bench": "query_tower",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "items": len(texts),
        "dev_queries": len(queries),
        "results": results,
        "wall_s": round(time.time() - started, 1),
        "load_avg": os.getloadavg(),
        "machine": machine("onnxruntime", "torch"),
        "command": shlex.join(
            [
                "python",
                "-m",
                "benchmarks.bench_query_tower",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    append_jsonl(args.out / "query_tower.jsonl", record)
    draw_query_towers(record, args.out / "query_tower.png")
    for r in results:
        print(
            f"{r['tower']:>12}  encode CPU p50 {r['encode_cpu_p50_us']:8.1f} µs  p99 "
            f"{r['encode_cpu_p99_us']:8.1f} µs  (wall p50 {r['encode_p50_us']:8.1f} µs)  "
            f"NDCG@10 dense {r['ndcg@10_dense']:.4f}  hybrid {r['ndcg@10_hybrid']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
