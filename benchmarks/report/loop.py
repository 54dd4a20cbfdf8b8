"""The report's part for bench_loop: dev NDCG@10 per learning round, IPS-weighted vs not."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.report.figures import Context, Figure, own_or_drawn, pyplot, save_figure
from benchmarks.report.format import Metrics, Record, config_line, fmt, md_table, put_metric

LOOPS = (("ips", "loop, IPS-weighted"), ("no_ips", "loop, unweighted"))
# Reference lines of the plot: results key, colour, line style, legend label.
REFERENCES = (
    ("label_trained", "green", ":", "label-trained"),
    ("zero_shot_sketch", "orange", ":", "zero-shot towers + the IPS loop's trigram sketch"),
    ("ceiling", "purple", "-.", "ceiling: the loop's recipe on the traffic queries' labels"),
)


def draw_loop(record: Record, path: Path) -> None:
    """Dev NDCG@10 (± standard error) per round for both loops, zero-shot as a dashed line."""
    r = record.get("results") or {}
    zero = (r.get("zero_shot") or {}).get("dev_ndcg@10")
    zero_se = (r.get("zero_shot") or {}).get("dev_ndcg@10_stderr") or 0.0
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, label in LOOPS:
        rounds = (r.get(name) or {}).get("rounds") or []
        x = [0] + [row["round"] for row in rounds]
        y = [zero] + [row["dev_ndcg@10"] for row in rounds]
        e = [zero_se] + [row.get("dev_ndcg@10_stderr") or 0.0 for row in rounds]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
    if zero is not None:
        ax.axhline(zero, color="gray", linestyle="--", label="zero-shot")
    for key, color, style, label in REFERENCES:
        ref = r.get(key)
        if isinstance(ref, Mapping):
            ax.axhline(ref["dev_ndcg@10"], color=color, linestyle=style, label=label)
    ax.set_xlabel("round (0 = zero-shot start)")
    ax.set_ylabel("Home Depot dev NDCG@10")
    config = record.get("config") or {}
    explore = f", explore share {config['explore_share']}" if config.get("explore_share") else ""
    ax.set_title(f"Learning loop, preset {config.get('preset', '?')}{explore}")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def loop_section(ctx: Context) -> tuple[list[str], list[Figure]]:
    r = ctx.record.get("results") or {}
    zero = r.get("zero_shot") or {}
    diff = r.get("ips_minus_no_ips_last_round") or {}
    blocks = [
        config_line(ctx.record.get("config") or {}),
        f"**Zero-shot {fmt(zero.get('dev_ndcg@10'))}; after the last round: IPS-weighted "
        f"{fmt(_last(r, 'ips'))}, unweighted {fmt(_last(r, 'no_ips'))}; IPS - unweighted "
        f"{fmt(diff.get('mean'))} ± {fmt(diff.get('stderr'))} (paired over dev queries).**",
    ]
    replicates = r.get("replicates") or {}
    if replicates:
        diff = replicates["ips_minus_no_ips"]
        gains = [replicates[f"{name}_gain_over_zero_shot"]["mean"] for name, _ in LOOPS]
        blocks.append(
            f"Across {diff['n']} runs (seeds {', '.join(map(str, replicates['seeds']))}, each "
            f"its own subset and traffic): IPS - unweighted {fmt(diff['mean'])} ± "
            f"{fmt(diff['stderr'])} (standard error over the runs); mean gain over zero-shot: "
            f"IPS-weighted {fmt(gains[0])}, unweighted {fmt(gains[1])}."
        )
    ceiling = r.get("ceiling") or {}
    if ceiling:
        closed = (r.get("ips") or {}).get("gap_closed_vs_ceiling")
        blocks.append(
            f"Ceiling (the loop's recipe trained on the traffic queries' own judgments): "
            f"{fmt(ceiling.get('dev_ndcg@10'))} ± {fmt(ceiling.get('dev_ndcg@10_stderr'))}; "
            f"the IPS-weighted loop closed {fmt(closed)} of the zero-shot → ceiling gap."
        )
    sketch = r.get("zero_shot_sketch") or {}
    if sketch:
        diff = r.get("ips_minus_zero_shot_sketch_last_round") or {}
        blocks.append(
            f"Zero-shot towers with the trigram sketch the IPS-weighted loop ended with: "
            f"{fmt(sketch.get('dev_ndcg@10'))} ± {fmt(sketch.get('dev_ndcg@10_stderr'))}; "
            f"what fine-tuning on the clicks adds beyond the sketch (IPS loop − it, paired): "
            f"{fmt(diff.get('mean'))} ± {fmt(diff.get('stderr'))}."
        )
    rows: list[list[Any]] = []
    n = max((len((r.get(name) or {}).get("rounds") or []) for name, _ in LOOPS), default=0)
    for i in range(n):
        row: list[Any] = [i + 1]
        for name, _ in LOOPS:
            rounds = (r.get(name) or {}).get("rounds") or []
            if i < len(rounds):
                row += [
                    f"{fmt(rounds[i]['dev_ndcg@10'])} ± {fmt(rounds[i].get('dev_ndcg@10_stderr'))}",
                    rounds[i].get("outcome"),
                ]
            else:
                row += [None, None]
        rows.append(row)
    blocks.append(
        md_table(["round", "IPS dev NDCG@10", "IPS gate", "unweighted dev NDCG@10", "gate"], rows)
    )
    figures = [
        own_or_drawn(
            ctx,
            "loop",
            [ctx.record.get("plot")],
            lambda path: draw_loop(ctx.record, path),
            "Home Depot dev NDCG@10 per learning round (dev queries never in the traffic)",
        )
    ]
    return blocks, figures


def _last(results: Mapping[str, Any], name: str) -> Any:
    rounds = (results.get(name) or {}).get("rounds") or []
    return rounds[-1].get("dev_ndcg@10") if rounds else None


def loop_metrics(record: Record) -> Metrics:
    out: Metrics = {}
    r = record.get("results") or {}
    put_metric(
        out, "loop/zero_shot_dev_ndcg@10", (r.get("zero_shot") or {}).get("dev_ndcg@10"), "higher"
    )
    put_metric(out, "loop/ips_dev_ndcg@10", _last(r, "ips"), "higher")
    put_metric(out, "loop/no_ips_dev_ndcg@10", _last(r, "no_ips"), "higher")
    ceiling = (r.get("ceiling") or {}).get("dev_ndcg@10")
    put_metric(out, "loop/ceiling_dev_ndcg@10", ceiling, "higher")
    sketch = (r.get("zero_shot_sketch") or {}).get("dev_ndcg@10")
    put_metric(out, "loop/zero_shot_sketch_dev_ndcg@10", sketch, "higher")
    across = ((r.get("replicates") or {}).get("ips_minus_no_ips") or {}).get("mean")
    put_metric(out, "loop/ips_minus_no_ips_across_seeds", across, "higher")
    put_metric(
        out,
        "loop/ips_minus_no_ips",
        (r.get("ips_minus_no_ips_last_round") or {}).get("mean"),
        "higher",
    )
    return out
