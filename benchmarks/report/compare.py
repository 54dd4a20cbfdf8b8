"""``--compare``: this report's headline metrics against an older run's, better or worse."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.report.format import Metrics, bench_name, fmt
from benchmarks.report.results import Loaded
from benchmarks.report.sections import PARTS


def old_metrics(
    old: Sequence[Mapping[str, Any]], current: Mapping[str, Loaded]
) -> tuple[Metrics, str | None, dict[str, Any]]:
    """The older run in ``old`` (lines of a summary.jsonl or of one benchmark's jsonl): its
    metrics, that benchmark's name (None for a summary) and each benchmark's preset. A
    benchmark file's newest line that is the one this report shows is passed over: the line
    before it is the older run."""
    if not old:
        return {}, None, {}
    last = old[-1]
    name = bench_name(last)
    if name is None and "metrics" in last:
        presets = {n: s.get("preset") for n, s in (last.get("sources") or {}).items()}
        return dict(last["metrics"]), None, presets
    if name not in PARTS:
        raise ValueError(f"cannot tell which benchmark wrote these lines (bench={name!r})")
    lines = [{k: v for k, v in r.items() if k != "_line"} for r in old if bench_name(r) == name]
    if name in current and lines and lines[-1] == current[name].record:
        lines = lines[:-1]
    if not lines:
        return {}, name, {}
    return (
        PARTS[name].metrics(lines[-1]),
        name,
        {name: (lines[-1].get("config") or {}).get("preset")},
    )


def comparison(
    old: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    current: Mapping[str, Loaded],
    tolerance: float,
    label: str,
) -> str:
    """The --compare printout: this report's ``summary`` against the older run in ``old``."""
    before, name, old_presets = old_metrics(old, current)
    new = summary["metrics"]
    if name is not None:
        new = {k: v for k, v in new.items() if k.startswith(f"{name}/")}
    notes = []
    for bench, preset in old_presets.items():
        now = (summary.get("sources") or {}).get(bench, {}).get("preset")
        if preset and now and preset != now:
            notes.append(
                f"note: {bench} ran at preset {preset} then and {now} now: "
                "different sizes, so its numbers are not like for like"
            )
    return "\n".join([*notes, format_comparison(before, new, tolerance, label)])


def compare(old: Metrics, new: Metrics, tolerance: float = 0.02) -> list[list[Any]]:
    """Rows (metric, old, new, change %, verdict) for metrics in both; the verdict is "same"
    within ``tolerance`` (relative), else "better" or "worse" by the metric's direction."""
    rows = []
    for name in [n for n in new if n in old]:
        a, b = float(old[name]["value"]), float(new[name]["value"])
        higher = new[name].get("better", old[name].get("better")) == "higher"
        change = (b - a) / abs(a) if a else (0.0 if b == a else float("inf"))
        if abs(b - a) <= tolerance * abs(a) or b == a:
            verdict = "same"
        else:
            verdict = "better" if (b > a) == higher else "worse"
        rows.append([name, a, b, change * 100, verdict])
    return rows


def format_comparison(old: Metrics, new: Metrics, tolerance: float, label: str) -> str:
    rows = compare(old, new, tolerance)
    widths = [max([len("metric"), *(len(r[0]) for r in rows)]), 12, 12, 9, 7]
    lines = [f"Compared with {label} (tolerance {tolerance:.0%}):", ""]
    header = ("metric", "old", "new", "change %", "verdict")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for name, a, b, change, verdict in rows:
        cells = (name, fmt(a), fmt(b), f"{change:+.1f}", verdict)
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    counts = {v: sum(r[4] == v for r in rows) for v in ("better", "worse", "same")}
    lines.append("")
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(rows)} metrics")
    only_old, only_new = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    if only_old:
        lines.append(f"only in the old run ({len(only_old)}): {', '.join(only_old)}")
    if only_new:
        lines.append(f"only in the new run ({len(only_new)}): {', '.join(only_new)}")
    return "\n".join(lines)
