"""The learning loop on Home Depot: simulated shoppers → rounds → dev NDCG@10 per round.

Start from the zero-shot model (the packaged all-MiniLM-L6-v2) with no labels used for training;
serve it on 127.0.0.1; then K times: simulated shoppers (``engine.learning.simulator``) search
Home Depot *train* queries and click and buy by the hidden grades, and a learning round
(``engine.learning.round``) learns from what they did, gates and, if the challenger wins,
publishes and reloads. After each round the served model is scored on Home Depot *dev* queries
(never in the traffic) with NDCG@10 over the benchmark's catalog. Two loops run from the same
start with the same traffic seed: with inverse-propensity weighting of the feedback and
without it; the zero-shot model is the reference line (``--label-trained DIR`` adds a model
trained on the labels as a second one). A third reference, the loop's ceiling, fine-tunes the
zero-shot model with the loop's own recipe (rounds x steps, batch, learning rate) on the traffic
queries' judgments themselves: what the loop would learn if every shopper's click were the truth,
from the same queries (``--no-ceiling`` skips it). Every round's challenger (and the ceiling)
carries the trigram sketch that the label-trained recipe appends to its towers (``--lexical-dim
N``, 256 by default as in the house's training configs; 0 = none), its weight fitted on
held-out queries of the logs (``--lexical-fit``, by default ``shown``: reordering the lists shown
for a fixed tenth of the query texts); a fourth reference, the zero-shot towers with the
sketch the IPS loop ended with, separates what the sketch gives from what the fine-tuning on
clicks adds.

The catalog of a preset is a subset of the 54,667 Home Depot items, so it embeds in minutes on
a CPU: every item judged for the preset's dev, traffic and gate queries, plus random
distractors. The gate's judged set is a slice of train queries outside the traffic.

Appends one JSON line to ``OUT/loop.jsonl`` and draws ``OUT/loop.png``.

``python -m benchmarks.bench_loop [--preset S|M|L] [--rounds K] [--sessions N] [--steps N]
[--traffic-queries N] [--threads N] [--seed S] [--replicates N] [--out DIR]
[--label-trained DIR] [--explore-share P] [--gate judged|ips|both] [--min-ips-gain X]
[--click-noise P] [--skip-negatives N] [--lexical-dim N] [--lexical-holdout F]
[--lexical-fit window|all|shown] [--no-ceiling]``
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import append_jsonl, machine, require_shared_data
from engine.learning.simulator import ShopperModel

log = logging.getLogger("bench_loop")

# The loop's fine-tuning lengths (tokens), shared by its rounds and the ceiling reference.
QUERY_TOKENS = 16
ITEM_TOKENS = 48


@dataclass(frozen=True)
class Preset:
    """Sizes of one run."""

    dev_queries: int
    traffic_queries: int
    gate_queries: int
    distractors: int
    rounds: int
    sessions: int  # simulated searches per round
    max_steps: int  # fine-tuning steps per round
    batch_size: int
    lr: float
    threads: int | None


@dataclass(frozen=True)
class LoopOptions:
    """What a run varies besides its sizes (all in its JSON line's config)."""

    min_ips_gain: float = 0.0  # the gate's threshold on held-back IPS-DCG@10
    # the server's --explore-share: a fifth of the searches swap adjacent hits, so the rounds'
    # propensities are identifiable (docs/learning.md §2)
    explore_share: float = 0.2
    gate: str = "judged"  # the round's gate policy
    click_noise: float = ShopperModel().noise  # the shoppers' click rate on irrelevant hits
    ceiling: bool = True  # train the ceiling reference (the traffic queries' judgments)
    skip_negatives: int = 0  # per pair, skip-above items as extra negatives (ceiling: grade 0)
    # the challengers' trigram sketch (0 = none), its weight fitted per round; 256 as the house's
    # training configs (benchmarks/configs/train_*.toml), the label-trained reference among them
    lexical_dim: int = 256
    lexical_holdout: float = 0.1  # share of the queries held out to fit its weight (and ceiling's)
    # the rounds' --lexical-fit: the sketch's weight fitted by reordering the lists shown for a
    # fixed tenth of the query texts (the estimator propensities make unbiased; §6)
    lexical_fit: str = "shown"

    def __post_init__(self) -> None:
        ShopperModel(noise=self.click_noise)  # validates 0 <= noise < 1 before any work
        from engine.learning.round import TrainSettings

        # validates both the round's way
        TrainSettings(
            skip_negatives=self.skip_negatives,
            lexical_dim=self.lexical_dim,
            lexical_holdout=self.lexical_holdout,
            lexical_fit=self.lexical_fit,
        )


PRESETS = {
    # S: what fits a 2-core machine shared with other work in about 20 minutes; 3,000 searches
    # a round (about 10 per traffic query, for the sketch's fit) take under a minute
    "S": Preset(200, 300, 100, 500, 2, 3000, 50, 32, 5e-5, 2),
    "M": Preset(1179, 3000, 500, 20000, 5, 6000, 300, 64, 3e-5, None),
    "L": Preset(1179, 8000, 256, 54667, 8, 20000, 1000, 128, 3e-5, None),
}


def _read_jsonl(path: Path) -> list[dict]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _judgments(rows: list[dict]) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    queries: dict[str, str] = {}
    judged: dict[str, dict[str, int]] = {}
    for r in rows:
        queries[r["query_id"]] = r["query"]
        judged.setdefault(r["query_id"], {})[r["item_id"]] = int(r["grade"])
    return queries, judged


def _write_labels(path: Path, queries, judged, ids) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for q in ids:
            for item, grade in judged[q].items():
                f.write(
                    json.dumps(
                        {"query_id": q, "query": queries[q], "item_id": item, "grade": grade}
                    )
                    + "\n"
                )


def make_subset(data: Path, work: Path, preset: Preset, seed: int) -> dict[str, Any]:
    """Write ``work/homedepot/products.jsonl``, ``dev.jsonl``, ``gate.jsonl``; return the
    traffic queries and judgments and the sizes."""
    rng = np.random.default_rng(seed)
    dev_q, dev_j = _judgments(_read_jsonl(data / "labels_dev.jsonl.gz"))
    train_q, train_j = _judgments(_read_jsonl(data / "labels_train.jsonl.gz"))
    # queries with at least one top-grade item: the others teach the shoppers nothing
    dev_ids = sorted(q for q in dev_j if 2 in dev_j[q].values())
    train_ids = sorted(q for q in train_j if 2 in train_j[q].values())
    dev_ids = [dev_ids[i] for i in rng.permutation(len(dev_ids))[: preset.dev_queries]]
    picked = rng.permutation(len(train_ids))
    traffic = [train_ids[i] for i in picked[: preset.traffic_queries]]
    gate = [
        train_ids[i]
        for i in picked[preset.traffic_queries : preset.traffic_queries + preset.gate_queries]
    ]
    products = {p["item_id"]: p for p in _read_jsonl(data / "products.jsonl.gz")}
    needed = {i for q in dev_ids for i in dev_j[q]} | {
        i for q in traffic + gate for i in train_j[q]
    }
    others = sorted(set(products) - needed)
    extra = [others[i] for i in rng.permutation(len(others))[: preset.distractors]]
    items = sorted(needed | set(extra), key=lambda i: (len(i), i))
    folder = work / "homedepot"  # the dir name tells the evaluation the dataset's convention
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "products.jsonl", "w", encoding="utf-8") as f:
        for i in items:
            f.write(json.dumps(products[i]) + "\n")
    _write_labels(folder / "dev.jsonl", dev_q, dev_j, dev_ids)
    _write_labels(folder / "gate.jsonl", train_q, train_j, gate)
    _write_labels(folder / "traffic.jsonl", train_q, train_j, traffic)
    return {
        "catalog": folder / "products.jsonl",
        "dev": folder / "dev.jsonl",
        "gate": folder / "gate.jsonl",
        "traffic_labels": folder / "traffic.jsonl",
        "traffic_queries": {q: train_q[q] for q in traffic},
        "traffic_judgments": {q: train_j[q] for q in traffic},
        "sizes": {
            "items": len(items),
            "dev_queries": len(dev_ids),
            "traffic_queries": len(traffic),
            "gate_queries": len(gate),
        },
    }


def dev_ndcg(model: Path, catalog, dev_labels, cache: Path) -> tuple[float, float, dict]:
    """(NDCG@10 mean, stderr, per-query values) of ``model`` on the dev labels, with its full
    query tower (a reference model dir may also hold a fast one; bench_quality rows those)."""
    from trainer.encoder.load import load_encoder
    from trainer.evaluation.search import evaluate_search

    report = evaluate_search(
        load_encoder(model, query_tower="full"), catalog, dev_labels, gains="grade",
        recall_grade=2, ks=(10,), cache_dir=cache,
    )  # fmt: skip
    m = report.metrics["ndcg@10"]
    per_query = {q: v["ndcg@10"] for q, v in report.per_query.items() if "ndcg@10" in v}
    return m.mean, m.stderr, per_query


def run_loop(
    name: str,
    weighting: bool,
    subset: dict[str, Any],
    zero_shot: Path,
    preset: Preset,
    work: Path,
    cache: Path,
    seed: int,
    options: LoopOptions,
) -> dict[str, Any]:
    """One loop: serve the zero-shot model, then ``preset.rounds`` rounds of traffic + learning."""
    from engine.learning.gate import GateThresholds
    from engine.learning.round import RoundConfig, TrainSettings, champion_after, run_round
    from engine.learning.simulator import TrafficConfig, simulate
    from engine.server import ServerConfig, create_server
    from indexer.build.config import BuildConfig
    from indexer.build.local import build_index
    from trainer.data.catalog import read_catalog
    from trainer.data.labels import read_labels

    catalog = read_catalog(subset["catalog"])
    dev = read_labels(subset["dev"])
    root = work / name / "index"
    shutil.rmtree(work / name, ignore_errors=True)
    vectors = cache / "zero-shot.npy"
    if not vectors.exists():  # the zero-shot vectors once for both loops (from the dev eval)
        from trainer.encoder.load import load_encoder
        from trainer.evaluation.vector_cache import catalog_vectors

        xb, _ = catalog_vectors(load_encoder(zero_shot), catalog, cache_dir=cache)
        np.save(vectors, xb)
    build_index(
        BuildConfig(
            catalog=subset["catalog"], out=root, model=zero_shot, target_recall=None,
            lexical=False, item_vectors=vectors,
        )
    )  # fmt: skip
    server = create_server(
        ServerConfig(index=root, port=0, workers=4, explore_share=options.explore_share)
    )
    address = f"127.0.0.1:{server.port}"
    config = RoundConfig(
        index=root,
        model=zero_shot,
        out=work / name / "models",
        judged=subset["gate"],
        judged_dataset="homedepot",
        server=address,
        settle_s=0.0,  # each round starts after server.service.impressions.flush()
        thresholds=GateThresholds(min_ips_gain=options.min_ips_gain, gate=options.gate),
        propensity_weighting=weighting,
        train=TrainSettings(
            max_steps=preset.max_steps, batch_size=preset.batch_size, lr=preset.lr,
            max_query_length=QUERY_TOKENS, max_item_length=ITEM_TOKENS,
            num_threads=preset.threads, skip_negatives=options.skip_negatives,
            lexical_dim=options.lexical_dim, lexical_holdout=options.lexical_holdout,
            lexical_fit=options.lexical_fit, export_onnx=False, seed=seed,
        ),
        vector_cache=cache,
    )  # fmt: skip
    rounds = []
    try:
        for r in range(1, preset.rounds + 1):
            t0 = time.perf_counter()
            traffic = simulate(
                address,
                TrafficConfig(
                    queries=subset["traffic_queries"],
                    judgments=subset["traffic_judgments"],
                    sessions=preset.sessions,
                    shoppers=200,
                    seed=seed,
                    first_session=(r - 1) * preset.sessions,
                    model=ShopperModel(noise=options.click_noise),
                ),
            )
            server.service.impressions.flush()
            t1 = time.perf_counter()
            result = run_round(config)
            t2 = time.perf_counter()
            config = champion_after(result, config)
            mean, stderr, per_query = dev_ndcg(config.model, catalog, dev, cache)
            record = result.record
            rounds.append(
                {
                    "round": r,
                    "outcome": result.outcome,
                    "version": result.version,
                    "dev_ndcg@10": mean,
                    "dev_ndcg@10_stderr": stderr,
                    "gate": {
                        "champion": (record.get("champion") or {}).get("metrics"),
                        "challenger": (record.get("challenger") or {}).get("metrics"),
                        "deltas": record["decision"]["deltas"],
                    },
                    "counts": {
                        k: record["counts"].get(k)
                        for k in (
                            "impressions",
                            "events_attributed",
                            "train_positives",
                            "train_negatives",
                            "held_back_clicks",
                            "propensity",
                            "propensity_identifiable",
                            "explored_impressions",
                        )
                    },  # fmt: skip
                    "traffic": traffic.to_dict(),
                    "seconds": {
                        "traffic": round(t1 - t0, 1),
                        "round": round(t2 - t1, 1),
                        "dev_eval": round(time.perf_counter() - t2, 1),
                    },
                    "_per_query": per_query,
                }
            )
            log.info(
                "%s round %d: %s, dev NDCG@10 %.4f ± %.4f (%.0f s)",
                name, r, result.outcome, mean, stderr, time.perf_counter() - t0,
            )  # fmt: skip
    finally:
        server.stop(0)
    return {"propensity_weighting": weighting, "rounds": rounds, "model": str(config.model)}


def train_ceiling(
    subset: dict[str, Any],
    zero_shot: Path,
    preset: Preset,
    work: Path,
    seed: int,
    skip_negatives: int = 0,
    lexical_dim: int = 0,
    lexical_holdout: float = 0.1,
) -> Path:
    """The loop's recipe (all rounds' steps in one run) on the traffic queries' judgments;
    ``skip_negatives`` per pair from their grade-0 items, as the loop draws its skips; a
    ``lexical_dim`` sketch with its weight fitted on the ``lexical_holdout`` share of the traffic
    queries held out, as a round fits it on held-out queries of its window."""
    from trainer.training.config import DatasetSpec, TrainConfig
    from trainer.training.run import train

    out = work / "ceiling"
    shutil.rmtree(out, ignore_errors=True)
    labels = DatasetSpec(catalog=subset["catalog"], train=subset["traffic_labels"], name="labels")
    train(
        TrainConfig(
            datasets=(labels,),
            out=out, base_model=zero_shot, batch_size=preset.batch_size,
            max_steps=preset.rounds * preset.max_steps, lr=preset.lr, warmup_steps=0,
            hard_negatives=skip_negatives, mine=False,
            max_query_length=QUERY_TOKENS, max_item_length=ITEM_TOKENS, checkpoint_every=0,
            checkpoint_dir=work / "ceiling-checkpoints", seed=seed, num_threads=preset.threads,
            export_onnx=False, progress=False, fast_query_tower="none",
            lexical_dim=lexical_dim, holdout_fraction=lexical_holdout if lexical_dim else 0.0,
        )
    )  # fmt: skip
    shutil.rmtree(work / "ceiling-checkpoints", ignore_errors=True)
    return out


def with_sketch(towers: Path, sketched: Path, out: Path) -> Path | None:
    """A model dir at ``out``: the towers of ``towers`` with the trigram sketch (settings and
    IDF table) of ``sketched``; None when ``sketched`` has no sketch."""
    from trainer.encoder.model_dir import read_model_info, write_model_info
    from trainer.encoder.trigram import LEXICAL_FILE

    lexical = read_model_info(sketched).lexical
    if lexical is None:
        return None
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(towers, out)
    write_model_info(out, replace(read_model_info(towers), lexical=lexical, fingerprint=""))
    shutil.copy2(sketched / LEXICAL_FILE, out / LEXICAL_FILE)
    return out


def replicate_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Across runs of different seeds (each its own subset, traffic and training draws): the
    mean of each run's last-round IPS − unweighted dev NDCG@10 and its standard error over the
    runs. A run's paired standard error counts its dev queries only; what a second run of the
    same setting draws differently (which lists are explored, the training's randomness, the
    gate's decisions) shows only across runs."""

    def across(values: list[float]) -> dict[str, Any]:
        v = np.array(values, dtype=np.float64)
        stderr = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
        return {"mean": float(v.mean()), "stderr": stderr, "n": len(v), "per_seed": values}

    def last(record: dict[str, Any], name: str) -> float:
        return record["results"][name]["rounds"][-1]["dev_ndcg@10"]

    return {
        "seeds": [r["config"]["seed"] for r in records],
        "ips_minus_no_ips": across([last(r, "ips") - last(r, "no_ips") for r in records]),
        **{
            f"{name}_gain_over_zero_shot": across(
                [last(r, name) - r["results"]["zero_shot"]["dev_ndcg@10"] for r in records]
            )
            for name in ("ips", "no_ips")
        },
    }


def paired_difference(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Mean and standard error of a - b over the queries both have."""
    common = sorted(set(a) & set(b))
    d = np.array([a[q] - b[q] for q in common])
    if len(d) < 2:
        return {"mean": float("nan"), "stderr": float("nan"), "n": len(d)}
    return {
        "mean": float(d.mean()),
        "stderr": float(d.std(ddof=1) / np.sqrt(len(d))),
        "n": len(d),
    }


def run(
    preset_name: str,
    out: Path,
    overrides: dict[str, int],
    seed: int,
    label_trained: Path | None,
    options: LoopOptions,
):
    from trainer.data.catalog import read_catalog
    from trainer.data.labels import read_labels
    from trainer.encoder.model_dir import default_model_dir

    preset = replace(PRESETS[preset_name], **overrides)
    data = require_shared_data("homedepot")
    work = out / "loop-work"
    cache = work / "vector-cache"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subset = make_subset(data, work, preset, seed)
    (cache / "zero-shot.npy").unlink(missing_ok=True)  # the served vectors of this subset's items
    config = {
        "preset": preset_name,
        **asdict(preset),
        "overridden": sorted(overrides),  # the preset's sizes changed on the command line
        "seed": seed,
        **asdict(options),
        **subset["sizes"],
    }
    print(json.dumps({"config": config, "machine": machine()}), flush=True)
    zero_shot = default_model_dir()
    catalog, dev = read_catalog(subset["catalog"]), read_labels(subset["dev"])
    zero_mean, zero_se, zero_pq = dev_ndcg(zero_shot, catalog, dev, cache)
    results: dict[str, Any] = {
        "zero_shot": {"dev_ndcg@10": zero_mean, "dev_ndcg@10_stderr": zero_se}
    }
    if label_trained is not None:
        mean, se, _ = dev_ndcg(label_trained, catalog, dev, cache)
        results["label_trained"] = {"model": str(label_trained), "dev_ndcg@10": mean,
                                    "dev_ndcg@10_stderr": se}  # fmt: skip
    if options.ceiling:
        model = train_ceiling(
            subset, zero_shot, preset, work, seed,
            options.skip_negatives, options.lexical_dim, options.lexical_holdout,
        )  # fmt: skip
        mean, se, ceiling_pq = dev_ndcg(model, catalog, dev, cache)
        results["ceiling"] = {"model": str(model), "dev_ndcg@10": mean, "dev_ndcg@10_stderr": se}
    for name, weighting in (("ips", True), ("no_ips", False)):
        results[name] = run_loop(
            name, weighting, subset, zero_shot, preset, work, cache, seed, options
        )
    last = {n: results[n]["rounds"][-1].pop("_per_query") for n in ("ips", "no_ips")}
    sketched = with_sketch(zero_shot, Path(results["ips"]["model"]), work / "zero-shot-sketch")
    if sketched is not None:  # what the IPS loop's final sketch gives the zero-shot towers alone
        mean, se, sketch_pq = dev_ndcg(sketched, catalog, dev, cache)
        results["zero_shot_sketch"] = {"model": str(sketched), "dev_ndcg@10": mean,
                                       "dev_ndcg@10_stderr": se}  # fmt: skip
        results["ips_minus_zero_shot_sketch_last_round"] = paired_difference(last["ips"], sketch_pq)
    for n in ("ips", "no_ips"):
        for row in results[n]["rounds"]:
            row.pop("_per_query", None)
    results["ips_minus_no_ips_last_round"] = paired_difference(last["ips"], last["no_ips"])
    results["ips_minus_zero_shot_last_round"] = paired_difference(last["ips"], zero_pq)
    for n in ("ips", "no_ips"):
        final = results[n]["rounds"][-1]["dev_ndcg@10"]
        results[n]["gain_over_zero_shot"] = final - zero_mean
        for ref in ("ceiling", "label_trained"):  # the share of the zero-shot -> ref gap closed
            if ref in results and results[ref]["dev_ndcg@10"] > zero_mean:
                gap = results[ref]["dev_ndcg@10"] - zero_mean
                results[n][f"gap_closed_vs_{ref}"] = (final - zero_mean) / gap
    if options.ceiling:
        results["ips_minus_ceiling_last_round"] = paired_difference(last["ips"], ceiling_pq)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    record = {
        "bench": "loop",
        "config": config,
        "machine": machine("matplotlib"),
        "results": results,
    }
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_loop",
        description="Learning loop on Home Depot: dev NDCG@10 per round, IPS vs unweighted.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="S")
    parser.add_argument("--rounds", type=int, help="override the preset's number of rounds")
    parser.add_argument(
        "--sessions", type=int, help="override the preset's simulated searches per round"
    )
    parser.add_argument(
        "--steps", type=int, help="override the preset's fine-tuning steps per round"
    )
    parser.add_argument(
        "--traffic-queries",
        type=int,
        help="override the preset's Home Depot train queries "
        "the shoppers search (each brings its judged items into the catalog)",
    )
    parser.add_argument(
        "--threads", type=int, help="override the preset's CPU threads for fine-tuning"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="results folder")
    parser.add_argument(
        "--label-trained", type=Path, help="a model trained on the labels: a reference line"
    )
    parser.add_argument(
        "--min-ips-gain",
        type=float,
        default=0.0,
        help="the gate's threshold on held-back IPS-DCG@10 (negative: a tolerated loss)",
    )
    parser.add_argument(
        "--explore-share",
        type=float,
        default=LoopOptions.explore_share,
        help="the served loop's aisle-serve --explore-share: share of searches with adjacent "
        "hits swapped, so position bias is identifiable from one ranker (default "
        f"{LoopOptions.explore_share}; 0: off)",
    )
    parser.add_argument(
        "--gate",
        choices=("judged", "ips", "both"),
        default="judged",
        help="the round's gate policy, as aisle-learn round --gate (default judged)",
    )
    parser.add_argument(
        "--click-noise",
        type=float,
        default=ShopperModel().noise,
        help="the simulated shoppers' click probability on an examined irrelevant hit "
        f"(default {ShopperModel().noise}; 0 = they click relevant hits only)",
    )
    parser.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the ceiling reference (the loop's recipe trained on the traffic "
        "queries' judgments)",
    )
    parser.add_argument(
        "--skip-negatives",
        type=int,
        default=0,
        metavar="N",
        help="as aisle-learn round --skip-negatives: per engaged pair, N skip-above items as "
        "negatives (the ceiling: N grade-0 items); default 0",
    )
    parser.add_argument(
        "--lexical-dim",
        type=int,
        default=LoopOptions.lexical_dim,
        metavar="N",
        help="as aisle-learn round --lexical-dim: every challenger (and the ceiling) appends an "
        "N-dim trigram sketch, its weight fitted on held-out queries; adds the reference "
        f"'zero-shot towers + the IPS loop's sketch' (default {LoopOptions.lexical_dim}, as "
        "the house's training configs; 0: none)",
    )
    parser.add_argument(
        "--lexical-holdout",
        type=float,
        default=LoopOptions.lexical_holdout,
        metavar="F",
        help="as aisle-learn round --lexical-holdout: share of each round's queries (and of the "
        f"ceiling's traffic queries) held out to fit the sketch's weight (default "
        f"{LoopOptions.lexical_holdout})",
    )
    parser.add_argument(
        "--lexical-fit",
        choices=("window", "all", "shown"),
        default=LoopOptions.lexical_fit,
        help="as aisle-learn round --lexical-fit: fit the sketch's weight on this window's logs, "
        "on a fixed set of queries' logs from every round so far, or on those reordering their "
        f"shown lists (default {LoopOptions.lexical_fit})",
    )
    parser.add_argument(
        "--replicates",
        type=int,
        default=1,
        metavar="N",
        help="run seeds SEED..SEED+N-1 one after another; the last record adds the mean IPS - "
        "unweighted difference and its standard error across the runs (default 1)",
    )
    args = parser.parse_args(argv)
    if args.replicates < 1:
        parser.error(f"--replicates must be >= 1, got {args.replicates}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {
        name: value
        for name, value in (
            ("rounds", args.rounds),
            ("sessions", args.sessions),
            ("max_steps", args.steps),
            ("traffic_queries", args.traffic_queries),
            ("threads", args.threads),
        )
        if value is not None
    }
    options = LoopOptions(
        min_ips_gain=args.min_ips_gain,
        explore_share=args.explore_share,
        gate=args.gate,
        click_noise=args.click_noise,
        ceiling=not args.no_ceiling,
        skip_negatives=args.skip_negatives,
        lexical_dim=args.lexical_dim,
        lexical_holdout=args.lexical_holdout,
        lexical_fit=args.lexical_fit,
    )
    from benchmarks.report.loop import draw_loop

    records: list[dict[str, Any]] = []
    for seed in range(args.seed, args.seed + args.replicates):
        record = run(args.preset, args.out, overrides, seed, args.label_trained, options)
        records.append(record)
        if args.replicates > 1 and len(records) == args.replicates:
            record["results"]["replicates"] = replicate_summary(records)
        plot = args.out / ("loop.png" if args.replicates == 1 else f"loop-seed{seed}.png")
        record["plot"] = str(plot)
        draw_loop(record, plot)
        append_jsonl(args.out / "loop.jsonl", record)  # each run as it ends
        r = record["results"]
        print(
            json.dumps(
                {
                    "seed": seed,
                    "zero_shot": r["zero_shot"]["dev_ndcg@10"],
                    "ips": [row["dev_ndcg@10"] for row in r["ips"]["rounds"]],
                    "no_ips": [row["dev_ndcg@10"] for row in r["no_ips"]["rounds"]],
                    "ips_minus_no_ips": r["ips_minus_no_ips_last_round"],
                    "replicates": r.get("replicates"),
                    "wall_s": r["wall_s"],
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
