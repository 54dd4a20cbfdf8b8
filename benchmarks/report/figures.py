"""The report's figures: a part's context, the benchmark's own PNG or one drawn, shared plots."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.report.format import Record, fmt, parse_time


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


def _run_window(record: Record) -> tuple[datetime, datetime] | None:
    """(start, end) of the run that wrote ``record``, with a margin, where the record says."""
    machine_time = parse_time((record.get("machine") or {}).get("time"))
    end = parse_time(record.get("time"))
    wall = record.get("wall_s")
    start = machine_time or (end - timedelta(seconds=wall) if end and wall else None)
    if start is None:
        return None
    margin = timedelta(minutes=5)
    return start - timedelta(seconds=5), (end + margin if end else datetime.max.replace(tzinfo=UTC))


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG at ``path`` (its dir created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


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


def draw_pair(
    labels: Sequence[str], values: Sequence[float], ylabel: str, title: str, path: Path
) -> None:
    """Two bars side by side, each labelled with its value."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(labels, values, color=["tab:blue", "tab:orange"][: len(values)])
    ax.bar_label(bars, labels=[fmt(float(v)) for v in values])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
