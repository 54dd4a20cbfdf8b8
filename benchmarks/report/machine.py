"""The report's Machine section: this machine, where each result was measured, versions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.report.format import fmt, md_table
from benchmarks.report.results import REPORT_ORDER, Loaded


def describe_machine() -> dict[str, Any]:
    """This machine: CPU, cores, library versions and GPUs (torch CUDA, FAISS)."""
    from benchmarks.common import machine

    info = machine(
        "numba",
        "hnswlib",
        "bm25s",
        "sentence-transformers",
        "transformers",
        "pyspark",
        "matplotlib",
    )
    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        import faiss

        info["faiss_gpus"] = faiss.get_num_gpus()
    except (ImportError, AttributeError):
        info["faiss_gpus"] = None
    info["gpus"] = gpus
    return info


_NOT_LIBRARIES = {"cpu", "platform", "python", "time", "device", "threads"}


def _gpu_text(machine: Mapping[str, Any]) -> str:
    if "gpus" in machine:
        return ", ".join(machine["gpus"]) or "none"
    found = [f"{k} {fmt(v)}" for k, v in machine.items() if "gpu" in k.lower() or k == "cuda"]
    return "; ".join(found) or "—"


def machine_section(records: Mapping[str, Loaded], current: Mapping[str, Any] | None) -> str:
    blocks = ["## Machine"]
    if current:
        blocks.append(
            f"This report was made on: {current.get('cpu')}, {current.get('cores')} cores, "
            f"GPU: {_gpu_text(current)} (FAISS GPUs: {fmt(current.get('faiss_gpus'))}), "
            f"Python {current.get('python')}, {current.get('platform')}."
        )
    rows, versions = [], {}
    for name in REPORT_ORDER:
        if name not in records:
            continue
        m = records[name].record.get("machine") or {}
        load = m.get("load_avg_1m", (m.get("load_avg") or [None])[0])
        rows.append(
            [
                name,
                m.get("time") or records[name].record.get("time"),
                m.get("cpu"),
                m.get("cores"),
                load,
                _gpu_text(m),
                m.get("python"),
            ]
        )
        found = dict(m.get("versions") or {})
        found.update({k: v for k, v in m.items() if isinstance(v, str) and k not in _NOT_LIBRARIES})
        for library, version in found.items():
            versions.setdefault(library, {}).setdefault(version or "not installed", []).append(name)
    for library, version in ((current or {}).get("versions") or {}).items():
        if version is not None:
            versions.setdefault(library, {}).setdefault(version, []).append("this report")
    if rows:
        blocks.append(
            "Where each result was measured (the load average is other work on the machine, "
            "which skews speed)\n\n"
            + md_table(
                ["benchmark", "started", "CPU", "cores", "load (1 min)", "GPU", "Python"], rows
            )
        )
    if versions:
        blocks.append(
            "Library versions\n\n"
            + md_table(
                ["library", "version", "seen by"],
                [
                    [lib, v, ", ".join(seen)]
                    for lib in sorted(versions)
                    for v, seen in versions[lib].items()
                ],
            )
        )
    return "\n\n".join(blocks)
