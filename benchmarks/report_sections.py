"""The report's part for each benchmark: markdown tables, figures and headline metrics from its
JSON line (the record a ``bench_*.py`` appends)."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

Record = Mapping[str, Any]
# Headline metrics: name -> {"value": float, "better": "higher" | "lower"}.
Metrics = dict[str, dict[str, Any]]


# ----------------------------------------------------------------------------- helpers


def fmt(value: Any) -> str:
    """A table cell: ints with thousands separators, floats to four significant digits (whole
    numbers from 1,000 up)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells go through ``fmt``."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_name(record: Record) -> str | None:
    """The benchmark a record is from: ``bench``, or ``benchmark`` (bench_latency's key)."""
    return record.get("bench") or record.get("benchmark")


def _parse_time(text: Any) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def record_time(record: Record) -> datetime | None:
    """When the run ended (``time``), else when it started (``machine.time``)."""
    return _parse_time(record.get("time") or (record.get("machine") or {}).get("time"))


def _run_window(record: Record) -> tuple[datetime, datetime] | None:
    """(start, end) of the run that wrote ``record``, with a margin, where the record says."""
    machine_time = _parse_time((record.get("machine") or {}).get("time"))
    end = _parse_time(record.get("time"))
    wall = record.get("wall_s")
    start = machine_time or (end - timedelta(seconds=wall) if end and wall else None)
    if start is None:
        return None
    margin = timedelta(minutes=5)
    return start - timedelta(seconds=5), (end + margin if end else datetime.max.replace(tzinfo=UTC))


def _config_line(config: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    parts = [f"{k} `{v}`" for k, v in config.items() if k not in skip and not isinstance(v, dict)]
    return "Config: " + ", ".join(parts) + "." if parts else ""


def _metric(value: Any, better: str, **extra: Any) -> dict[str, Any] | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return {"value": value, "better": better, **extra}


def _put(out: Metrics, name: str, value: Any, better: str, **extra: Any) -> None:
    metric = _metric(value, better, **extra)
    if metric is not None:
        out[name] = metric


# ----------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    """A PNG in the report's figures folder; ``drawn`` False means the benchmark drew it."""

    path: Path
    caption: str
    drawn: bool


@dataclass(frozen=True)
class Context:
    """What a section renders from."""

    record: Record
    figures_dir: Path  # where this report's PNGs go
    out_dir: Path  # the benchmarks' results folder (their own PNGs)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def own_or_drawn(
    ctx: Context,
    name: str,
    own: Sequence[str | Path | None],
    draw: Callable[[Path], None],
    caption: str,
) -> Figure:
    """The benchmark's own PNG (the first of ``own`` written during the record's run, copied to
    ``figures_dir/name.png``), else ``draw(path)`` from the record."""
    path = ctx.figures_dir / f"{name}.png"
    window = _run_window(ctx.record)
    for candidate in own:
        if candidate is None or window is None:
            continue
        candidate = Path(candidate)
        if not candidate.is_file():
            continue
        written = datetime.fromtimestamp(candidate.stat().st_mtime, UTC)
        if window[0] <= written <= window[1]:  # older or newer: another run's picture
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(candidate, path)
            return Figure(path, caption, drawn=False)
    draw(path)
    return Figure(path, caption, drawn=True)


# ----------------------------------------------------------------------------- quality


def _metric_order(name: str) -> tuple[int, int]:
    kind, _, k = name.partition("@")
    order = {"ndcg": 0, "recall": 1, "mrr": 2}.get(kind, 3)
    return order, int(k) if k.isdigit() else 0


def _metric_label(name: str) -> str:
    kind, _, k = name.partition("@")
    return {"ndcg": "NDCG", "recall": "Recall", "mrr": "MRR"}.get(kind, kind) + (
        f"@{k}" if k else ""
    )


def _mean_se(m: Mapping[str, Any] | None) -> str:
    if not m:
        return "—"
    se = m.get("stderr")
    if isinstance(se, int | float) and math.isfinite(se):
        return f"{m['mean']:.4f} ± {se:.4f}"
    return f"{m['mean']:.4f}"


def _recall_for_plot(metrics: Mapping[str, Any]) -> str | None:
    recalls = sorted((n for n in metrics if n.startswith("recall@")), key=_metric_order)
    return "recall@100" if "recall@100" in recalls else (recalls[-1] if recalls else None)


def draw_quality(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Grouped bars per dataset x method, NDCG@10 and Recall@100 (the deepest recall a dataset
    has otherwise), with standard-error bars."""
    plt = _pyplot()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(len(methods), 1)
    for ax, which in zip(axes, ("ndcg", "recall"), strict=True):
        for j, method in enumerate(methods):
            xs, ys, es = [], [], []
            for i, ds in enumerate(datasets):
                for r in rows:
                    if r["dataset"] != ds or r["method"] != method:
                        continue
                    name = "ndcg@10" if which == "ndcg" else _recall_for_plot(r["metrics"])
                    m = r["metrics"].get(name or "")
                    if m is None:
                        continue
                    se = m.get("stderr")
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    ys.append(m["mean"])
                    es.append(se if isinstance(se, int | float) and math.isfinite(se) else 0.0)
            if xs:
                ax.bar(xs, ys, width, yerr=es, capsize=2, label=method)
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_title("NDCG@10" if which == "ndcg" else "Recall@100 (else the deepest recall)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle("Dev-split quality, mean ± standard error")
    _save(fig, path)


def quality_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    results = ctx.record.get("results") or {}
    rows = results.get("rows") or []
    config = ctx.record.get("config") or {}
    blocks = [_config_line(config, skip=("fingerprints",))]
    for key, label in (("models", "Fine-tuned model"), ("train_configs", "Training config")):
        per_dataset = config.get(key)
        if isinstance(per_dataset, dict) and per_dataset:
            listed = ", ".join(f"{ds} `{value}`" for ds, value in per_dataset.items())
            blocks.append(f"{label} per dataset: {listed}.")
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == ds]
        names = sorted({n for r in mine for n in r["metrics"]}, key=_metric_order)
        split = mine[0].get("split", "dev")
        header = ["method", "queries", *(_metric_label(n) for n in names)]
        table = md_table(
            header,
            [
                [r["method"], r.get("n_queries"), *(_mean_se(r["metrics"].get(n)) for n in names)]
                for r in mine
            ],
        )
        blocks.append(f"**{ds}** ({split} split, mean ± standard error over queries)\n\n{table}")
    fusion_rows = [
        [ds, model, chosen.get("name"), chosen.get("chosen_on")]
        for ds, per_model in (results.get("fusion") or {}).items()
        for model, chosen in per_model.items()
    ]
    if fusion_rows:
        blocks.append(
            "Fusion used by the hybrid rows\n\n"
            + md_table(["dataset", "model", "fusion", "chosen on"], fusion_rows)
        )
    figures = []
    if rows:
        figures.append(
            own_or_drawn(
                ctx,
                "quality",
                [ctx.record.get("plot"), ctx.out_dir / "quality.png"],
                lambda path: draw_quality(rows, path),
                "NDCG@10 and Recall@100 per dataset and method, with standard-error bars",
            )
        )
    return blocks, figures


def quality_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    for r in (record.get("results") or {}).get("rows") or []:
        for name, m in r["metrics"].items():
            if name == "ndcg@10" or name.startswith("recall@"):
                _put(
                    out,
                    f"quality/{r['dataset']}/{r['method']}/{name}",
                    m.get("mean"),
                    "higher",
                    stderr=m.get("stderr"),
                )
    return out


# ----------------------------------------------------------------------------- ann


def _setting(row: Mapping[str, Any] | None) -> str:
    if not row:
        return "—"
    return next((f"{k}={row[k]}" for k in ("efSearch", "nprobe") if k in row), "—")


def draw_ann(results: Mapping[str, Any], path: Path, k: int) -> None:
    """Recall@k vs queries/s (log) per index type and effort, batched and single-query."""
    plt = _pyplot()
    rows = results["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, mode in zip(axes, ("batched", "single"), strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            one = len(mine) == 1
            ax.plot(
                [r["recall"] for r in mine],
                [r[f"qps_{mode}"] for r in mine],
                "*" if one else ".-",
                label=method,
                markersize=12 if one else 6,
            )
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{k}")
        ax.set_ylabel("queries / s")
        ax.set_title(f"{mode}: {results.get('n_items', 0):,} vectors")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    _save(fig, path)


def ann_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    config = ctx.record.get("config") or {}
    results = ctx.record.get("results") or {}
    k = config.get("k", 10)
    blocks = [
        _config_line(config)
        + f" {fmt(results.get('n_items'))} vectors ({fmt(results.get('n_real'))} real), "
        f"{fmt(results.get('n_queries'))} queries, dim {results.get('dim')}, "
        f"nlist {results.get('nlist')}."
    ]
    summary = results.get("summary") or {}
    builds = results.get("build_s") or {}
    memory = results.get("bytes_per_million_items") or {}
    rows = []
    for method, entry in summary.items():
        base = method.split(" + ")[0]  # "IVF..,PQ.. + exact re-score" is built as IVF..,PQ..
        mb = memory.get(method, memory.get(base))
        if entry is None:
            best = max(
                (r["recall"] for r in results.get("rows", []) if r["method"] == method),
                default=None,
            )
            rows.append(
                [
                    method,
                    f"not reached (best {fmt(best)})",
                    *[None] * 7,
                    builds.get(base),
                    mb / 1e6 if mb else None,
                ]
            )
            continue
        b, s = entry.get("batched") or {}, entry.get("single") or {}
        rows.append(
            [
                method,
                _setting(b),
                b.get("recall"),
                b.get("qps"),
                b.get("x_exact"),
                _setting(s),
                s.get("recall"),
                s.get("qps"),
                s.get("x_exact"),
                builds.get(base),
                mb / 1e6 if mb else None,
            ]
        )
    blocks.append(
        f"Fastest setting of each index reaching recall@{k} ≥ 0.95 (hnswlib is the peer)\n\n"
        + md_table(
            [
                "index",
                "batched: setting",
                f"recall@{k}",
                "QPS",
                "× exact",
                "single query: setting",
                f"recall@{k}",
                "QPS",
                "× exact",
                "build s",
                "MB / M items",
            ],
            rows,
        )
    )
    tuning = [
        [index, source, _setting(t), t.get("tuning_recall"), t.get("recall_on_measured_queries")]
        for index, by_source in (results.get("tuning") or {}).items()
        for source, t in by_source.items()
    ]
    if tuning:
        blocks.append(
            "Effort `indexer.tune` picks for recall 0.95, and what it gives on the measured "
            "queries\n\n"
            + md_table(["index", "tuned on", "effort", "tuning recall", "measured recall"], tuning)
        )
    sweep = [
        [r["method"], _setting(r), r["recall"], r["qps_batched"], r["qps_single"], r["p50_us"]]
        for r in results.get("rows") or []
    ]
    if sweep:
        blocks.append(
            "<details><summary>Every setting measured</summary>\n\n"
            + md_table(
                ["index", "setting", f"recall@{k}", "QPS batched", "QPS single", "p50 µs"], sweep
            )
            + "\n\n</details>"
        )
    figures = []
    if results.get("rows"):
        preset = config.get("preset", "S")
        figures.append(
            own_or_drawn(
                ctx,
                "ann",
                [ctx.record.get("plot"), ctx.out_dir / f"ann_{preset}.png"],
                lambda path: draw_ann(results, path, k),
                f"Recall@{k} vs queries/s per index type, with the hnswlib peer",
            )
        )
    return blocks, figures


def ann_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    results = record.get("results") or {}
    for method, entry in (results.get("summary") or {}).items():
        for mode in ("batched", "single"):
            best = (entry or {}).get(mode) or {}
            _put(out, f"ann/{method}/qps_{mode}@recall0.95", best.get("qps"), "higher")
    for method, seconds in (results.get("build_s") or {}).items():
        _put(out, f"ann/{method}/build_s", seconds, "lower")
    return out


# ----------------------------------------------------------------------------- latency


def _stages(level: Mapping[str, Any]) -> list[Any]:
    stages = level.get("stages_p50_ms") or {}
    return [stages.get(s) for s in ("encode_ms", "search_ms", "rerank_ms")]


def draw_latency(record: Record, path: Path) -> None:
    """p50/p95/p99 per concurrency (bars, log scale) and the in-process floor's p50 (line)."""
    plt = _pyplot()
    served = record.get("served") or []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.25
    for j, q in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        xs = [i + (j - 1) * width for i in range(len(served))]
        ax.bar(xs, [level[q] for level in served], width, label=q.replace("_ms", ""))
    floor = (record.get("floor") or {}).get("p50_ms")
    if floor:
        ax.axhline(floor, color="grey", linestyle="--", label="in-process floor p50")
    ax.set_xticks(range(len(served)), [f"concurrency {level['concurrency']}" for level in served])
    ax.set_yscale("log")
    ax.set_ylabel("latency through gRPC (ms, log scale)")
    ax.set_title(f"Served latency, {record.get('n_items', 0):,} items, k={record.get('k')}")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend()
    _save(fig, path)


_LATENCY_HEADER = [
    "load",
    "concurrency",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "mean ms",
    "QPS",
    "errors",
    "encode p50",
    "search p50",
    "re-rank p50",
]


def _latency_rows(r: Record) -> list[list[Any]]:
    """One table row per load level of a bench_latency record."""
    rows = []

    def add(label: str, c: Any, level: Mapping[str, Any]) -> None:
        rows.append(
            [
                label,
                c,
                level.get("p50_ms"),
                level.get("p95_ms"),
                level.get("p99_ms"),
                level.get("mean_ms"),
                level.get("qps"),
                level.get("errors"),
                *_stages(level),
            ]
        )

    for level in r.get("served") or []:
        add("served, dense, cache off", level["concurrency"], level)
    for level in r.get("hybrid") or []:
        add("served, hybrid, cache off", level["concurrency"], level)
    if r.get("cache_on_concurrency_8"):
        cached = r["cache_on_concurrency_8"]
        add(f"served, cache on (hit rate {fmt(cached.get('hit_rate'))})", 8, cached)
    if r.get("soak"):
        add(f"soak, {fmt(r['soak'].get('minutes'))} min", 32, r["soak"])
    if r.get("floor"):
        floor = r["floor"]
        if floor.get("paired_served"):
            add("served, interleaved with the floor", 1, floor["paired_served"])
        add("in-process floor (no gRPC)", 1, floor)
    return rows


def _latency_blocks(r: Record) -> list[str]:
    blocks = [
        _config_line(r.get("config") or {}) + f" {fmt(r.get('n_items'))} items.",
        md_table(_LATENCY_HEADER, _latency_rows(r)),
        f"**Served p50 / in-process floor p50 at concurrency 1: "
        f"{fmt(r.get('served_over_floor_p50'))}** (1.0 = gRPC and the server add nothing)"
        + (
            f"; the floor interleaved with the same queries served ({r['floor']['method']}); "
            f"the separate concurrency-1 level over the floor: "
            f"{fmt(r.get('served_c1_over_floor_p50'))}."
            if (r.get("floor") or {}).get("method")
            else "."
        ),
    ]
    cost = r.get("hybrid_cost_ms")
    if cost:
        blocks.append(
            f"Cost of the second (lexical) channel, hybrid minus dense at concurrency 1: "
            f"p50 {fmt(cost.get('p50'))} ms, p99 {fmt(cost.get('p99'))} ms."
        )
    rss = (r.get("soak") or {}).get("rss_mb_first_last_max")
    if rss:
        blocks.append(
            f"Server RSS during the soak, MB first / last / max: {' / '.join(map(fmt, rss))}."
        )
    return blocks


def _other_scale(ctx: Context) -> Record | None:
    """The newest latency line at the other scale (grown 1M index vs the real catalog), if any:
    both are reported, the newest line alone would hide one."""
    path = ctx.out_dir / "latency.jsonl"
    grown = bool((ctx.record.get("config") or {}).get("grow"))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            other = json.loads(line)
        except ValueError:
            continue
        if isinstance(other, dict) and bool((other.get("config") or {}).get("grow")) != grown:
            return other
    return None


def latency_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    r = ctx.record
    blocks = _latency_blocks(r)
    other = _other_scale(ctx)
    if other is not None:
        preset = (other.get("config") or {}).get("preset")
        blocks.append(
            f"**Also: the newest run at the other scale** (`python -m benchmarks.bench_latency "
            f"--preset {preset}`, written {other.get('time', '?')}):"
        )
        blocks += _latency_blocks(other)
    figures = []
    if r.get("served"):
        figures.append(
            own_or_drawn(
                ctx,
                "latency",
                [r.get("plot"), ctx.out_dir / "latency.png"],
                lambda path: draw_latency(r, path),
                "Served latency distribution per concurrency, with the in-process floor",
            )
        )
    return blocks, figures


def latency_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    for level in record.get("served") or []:
        c = level.get("concurrency")
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            _put(out, f"latency/c{c}/{q}", level.get(q), "lower")
        _put(out, f"latency/c{c}/qps", level.get("qps"), "higher")
        _put(out, f"latency/c{c}/errors", level.get("errors"), "lower")
    _put(out, "latency/floor/p50_ms", (record.get("floor") or {}).get("p50_ms"), "lower")
    _put(out, "latency/served_over_floor_p50", record.get("served_over_floor_p50"), "lower")
    cached = record.get("cache_on_concurrency_8") or {}
    _put(out, "latency/cache_on_c8/p50_ms", cached.get("p50_ms"), "lower")
    soak = record.get("soak") or {}
    _put(out, "latency/soak/p99_ms", soak.get("p99_ms"), "lower")
    _put(out, "latency/soak/errors", soak.get("errors"), "lower")
    return out


# ----------------------------------------------------------------------------- train, reindex


def draw_pair(
    labels: Sequence[str], values: Sequence[float], ylabel: str, title: str, path: Path
) -> None:
    """Two bars side by side, each labelled with its value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(labels, values, color=["tab:blue", "tab:orange"][: len(values)])
    ax.bar_label(bars, labels=[fmt(float(v)) for v in values])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _scalars(mapping: Mapping[str, Any], prefix: str = "") -> list[list[Any]]:
    """(key, value) rows of a results dict, nested dicts flattened as a/b, lists shown whole."""
    rows: list[list[Any]] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            rows += _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, list):
            rows.append([f"{prefix}{key}", ", ".join(fmt(v) for v in value)])
        else:
            rows.append([f"{prefix}{key}", value])
    return rows


TRAIN_COLUMNS = {  # bench_train's per-side keys, in the order and words the table shows them
    "pairs_per_s": "pairs/s",
    "compute_pairs_per_s": "compute-only pairs/s",
    "step_s_mean": "step s (mean)",
    "step_s_median": "step s (median)",
    "setup_s": "set-up s",
    "padded_query_len_mean": "padded query len",
    "padded_item_len_mean": "padded item len",
    "padded_tokens_per_pair": "padded tokens / pair",
}


def train_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    config = ctx.record.get("config") or {}
    results = ctx.record.get("results") or {}
    aisle, st = results.get("aisle_pairs_per_s"), results.get("st_pairs_per_s")
    blocks = [
        _config_line(config),
        f"**Aisle {fmt(aisle)} pairs/s vs sentence-transformers {fmt(st)} pairs/s: ratio "
        f"{fmt(results.get('ratio'))}** ({results.get('precision', '?')}, "
        f"{results.get('device', '?')}, {fmt(results.get('threads'))} threads; "
        "> 1 = Aisle faster).",
    ]
    for row in results.get("rows") or []:
        sides = {s: row[s] for s in ("aisle", "st") if isinstance(row.get(s), Mapping)}
        keys = list(dict.fromkeys([*TRAIN_COLUMNS, *(k for side in sides.values() for k in side)]))
        keys = [
            k
            for k in keys
            if any(k in side and not isinstance(side[k], Mapping | list) for side in sides.values())
        ]
        blocks.append(
            f"{row.get('precision', '?')}: ratio {fmt(row.get('ratio'))}, compute-only ratio "
            f"{fmt(row.get('compute_ratio'))}\n\n"
            + md_table(
                ["side", *(TRAIN_COLUMNS.get(k, k) for k in keys)],
                [[name, *(side.get(k) for k in keys)] for name, side in sides.items()],
            )
        )
    settings = {k: v for k, v in results.items() if k.endswith("_settings")}
    if settings:
        blocks.append(
            "<details><summary>Settings of each side</summary>\n\n"
            + md_table(["setting", "value"], _scalars(settings))
            + "\n\n</details>"
        )
    figures = []
    if isinstance(aisle, int | float) and isinstance(st, int | float):
        ratio = results.get("ratio")
        title = "Training throughput" + (f" (ratio {fmt(ratio)})" if ratio is not None else "")
        figures.append(
            own_or_drawn(
                ctx,
                "train",
                [ctx.record.get("plot")],
                lambda path: draw_pair(
                    ["Aisle", "sentence-transformers"],
                    [aisle, st],
                    "training pairs / s",
                    title,
                    path,
                ),
                "Training pairs/s, Aisle vs sentence-transformers, same model and batch",
            )
        )
    return blocks, figures


def train_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    results = record.get("results") or {}
    _put(out, "train/aisle_pairs_per_s", results.get("aisle_pairs_per_s"), "higher")
    _put(out, "train/st_pairs_per_s", results.get("st_pairs_per_s"), "higher")
    _put(out, "train/ratio", results.get("ratio"), "higher")
    for row in results.get("rows") or []:
        if row.get("precision") != results.get("precision"):
            _put(out, f"train/{row.get('precision')}/ratio", row.get("ratio"), "higher")
    return out


def reindex_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    config = ctx.record.get("config") or {}
    r = ctx.record.get("results") or {}
    rows = [
        ["single machine (`aisle-index`)", r.get("local_s"), r.get("local_items_per_s")],
        [
            f"Spark `{config.get('master', '?')}`, job",
            r.get("spark_job_s"),
            r.get("spark_items_per_s"),
        ],
        ["Spark session start", r.get("spark_session_start_s"), None],
    ]
    before = (ctx.record.get("machine") or {}).get("load_avg")
    after = r.get("load_avg_after")
    blocks = [
        _config_line(config) + f" {fmt(r.get('n_items'))} items.",
        md_table(["path", "seconds", "items / s"], rows),
        f"**Spark overhead (Spark job s / local s, > 1 = Spark slower): "
        f"{fmt(r.get('spark_overhead_ratio'))}**; with the session start: "
        f"{fmt(r.get('spark_overhead_ratio_with_session'))}.",
    ]
    if before or after:
        load = [", ".join(fmt(round(x, 2)) for x in v) if v else "—" for v in (before, after)]
        blocks.append(f"Load average (1/5/15 min) before: {load[0]}; after: {load[1]}.")
    figures = []
    local, spark = r.get("local_items_per_s"), r.get("spark_items_per_s")
    if isinstance(local, int | float) and isinstance(spark, int | float):
        figures.append(
            own_or_drawn(
                ctx,
                "reindex",
                [ctx.record.get("plot")],
                lambda path: draw_pair(
                    ["single machine", "Spark"],
                    [local, spark],
                    "items / s",
                    "Batch reindex throughput",
                    path,
                ),
                "Reindex items/s, single machine vs the Spark job",
            )
        )
    return blocks, figures


def reindex_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    r = record.get("results") or {}
    _put(out, "reindex/local_items_per_s", r.get("local_items_per_s"), "higher")
    _put(out, "reindex/spark_items_per_s", r.get("spark_items_per_s"), "higher")
    _put(out, "reindex/spark_overhead_ratio", r.get("spark_overhead_ratio"), "lower")
    return out


# ----------------------------------------------------------------------------- rerank


def rerank_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    r = ctx.record.get("results") or {}
    blocks = [_config_line(ctx.record.get("config") or {})]
    for key, value in r.items():
        match = re.fullmatch(r"kernels_(\d+)", key)
        if match and isinstance(value, Mapping):
            blocks.append(
                f"numba kernels vs vectorised NumPy, {int(match[1]):,} candidates\n\n"
                + md_table(
                    ["kernel", "numba p50 µs", "NumPy p50 µs", "speed-up"],
                    [
                        [k, v.get("numba_p50_us"), v.get("numpy_p50_us"), v.get("speedup")]
                        for k, v in value.items()
                    ],
                )
            )
        match = re.fullmatch(r"rerank_(\d+)", key)
        if match and isinstance(value, Mapping):
            blocks.append(
                f"`rerank` of {int(match[1]):,} candidates\n\n"
                + md_table(
                    ["variant", "p50 µs", "p99 µs"],
                    [[k, v.get("p50_us"), v.get("p99_us")] for k, v in value.items()],
                )
            )
    selective = r.get("selective_filter")
    if isinstance(selective, Mapping):
        blocks.append(
            f"Selective filter ({fmt(selective.get('selectivity'))} of the catalog, "
            f"{fmt(selective.get('matching_rows'))} rows)\n\n"
            + md_table(
                ["step", "p50 µs", "p99 µs"],
                [
                    [k, v.get("p50_us"), v.get("p99_us")]
                    for k, v in selective.items()
                    if isinstance(v, Mapping)
                ],
            )
        )
    compact = r.get("compact_vectors")
    if isinstance(compact, Mapping):
        blocks.append(
            "Compact vector copies: memory and recall@10 against float32\n\n"
            + md_table(
                [
                    "copy",
                    "bytes / vector",
                    "total MiB",
                    "recall@10 (candidates)",
                    "recall@10 (whole catalog)",
                ],
                [
                    [
                        k,
                        v.get("bytes_per_vector"),
                        v.get("total_mib"),
                        v.get("recall10_rerank_candidates"),
                        v.get("recall10_whole_catalog"),
                    ]
                    for k, v in compact.items()
                ],
            )
        )
    return blocks, []


def rerank_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    r = record.get("results") or {}
    for key, value in r.items():
        if key.startswith("kernels_") and isinstance(value, Mapping):
            for name, v in value.items():
                _put(out, f"rerank/{key}/{name}/numba_p50_us", v.get("numba_p50_us"), "lower")
        if key.startswith("rerank_") and isinstance(value, Mapping):
            for name, v in value.items():
                _put(out, f"rerank/{key}/{name}/p50_us", v.get("p50_us"), "lower")
    for name, v in (r.get("compact_vectors") or {}).items():
        _put(
            out,
            f"rerank/compact/{name}/recall10_whole_catalog",
            v.get("recall10_whole_catalog"),
            "higher",
        )
    return out


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Part:
    """How the report shows one benchmark."""

    title: str
    render: Callable[[Context], tuple[list[str], list[Figure]]]
    metrics: Callable[[Record], Metrics]


PARTS: dict[str, Part] = {
    "quality": Part("Retrieval quality", quality_section, quality_metrics),
    "ann": Part("Recall vs queries/s per index type", ann_section, ann_metrics),
    "latency": Part("Served latency", latency_section, latency_metrics),
    "train": Part("Training throughput", train_section, train_metrics),
    "reindex": Part("Batch reindex throughput", reindex_section, reindex_metrics),
    "rerank": Part("Re-ranking kernels", rerank_section, rerank_metrics),
}
