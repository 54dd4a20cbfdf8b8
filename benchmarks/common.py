"""What every benchmark shares: the machine description and appending a JSON line of results."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def machine(*packages: str) -> dict[str, Any]:
    """CPU model, cores, load, Python and the versions of `packages` (distribution names)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("numpy", "faiss-cpu", "torch", "onnxruntime", "grpcio", *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews speed
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (the benchmark's results) to `path`, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def require_shared_data(name: str) -> Path:
    """../shared/data/<name>, or SystemExit with a message saying it is not there."""
    path = SHARED_DATA / name
    if not path.is_dir():
        raise SystemExit(
            f"{path} is not there: this benchmark reads the shared datasets from ../shared/data "
            "beside the project checkout"
        )
    return path
