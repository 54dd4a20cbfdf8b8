"""What the report's parts share: record and metric types, cells, tables, times, metric entries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

Record = Mapping[str, Any]
# Headline metrics: name -> {"value": float, "better": "higher" | "lower"}.
Metrics = dict[str, dict[str, Any]]


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


def parse_time(text: Any) -> datetime | None:
    """An ISO time stamp as an aware datetime (UTC when it has no zone), or None."""
    try:
        stamp = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def record_time(record: Record) -> datetime | None:
    """When the run ended (``time``), else when it started (``machine.time``)."""
    return parse_time(record.get("time") or (record.get("machine") or {}).get("time"))


def config_line(config: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    """A record's scalar settings as one "Config: ..." line, ``skip`` left out."""
    parts = [f"{k} `{v}`" for k, v in config.items() if k not in skip and not isinstance(v, dict)]
    return "Config: " + ", ".join(parts) + "." if parts else ""


def _metric(value: Any, better: str, **extra: Any) -> dict[str, Any] | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return {"value": value, "better": better, **extra}


def put_metric(out: Metrics, name: str, value: Any, better: str, **extra: Any) -> None:
    """Add a headline metric to ``out`` when ``value`` is a finite number."""
    metric = _metric(value, better, **extra)
    if metric is not None:
        out[name] = metric
