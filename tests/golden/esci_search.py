"""Golden search results on ESCI: build an index with the CLI, serve it, record 50 queries.

The restructure promised no behaviour change: the same hits and scores, to the bit, in dense,
lexical and hybrid mode, and the same index files for the same build. This script builds an
index of ``../shared/data/esci/products.jsonl.gz`` with ``aisle-index build`` (packaged MiniLM,
2 shards, exact Flat), serves it with ``aisle-serve`` on 127.0.0.1 and records, for the first 50
train queries (by query_id), the top 20 of each mode and 10 items' SimilarItems, plus the
sha256 of every index file but the manifest (which holds build times and paths).

    python -m tests.golden.esci_search --write   # record tests/golden/esci_search.json
    python -m tests.golden.esci_search           # compare with it (exit 1 on a difference)

``tests/test_golden_search.py`` runs the comparison (slow; skipped without the data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "esci"
GOLDEN = Path(__file__).with_suffix(".json")
N_QUERIES = 50
K = 20
MODES = {"dense": 1, "lexical": 2, "hybrid": 3}  # aisle.v1.SearchMode numbers


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def build(root: Path) -> None:
    subprocess.run(
        [
            _bin("aisle-index"),
            "build",
            "--catalog",
            str(DATA / "products.jsonl.gz"),
            "--out",
            str(root),
            "--shards",
            "2",
            # The golden file was recorded with the torch query encoder of the packaged model; a
            # build now also exports the ONNX query tower and serving then uses it, whose floats
            # differ in the 7th digit. Without the export the served path is the recorded one.
            "--no-onnx-export",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def index_files(root: Path) -> dict[str, str]:
    version = (root / "CURRENT").read_text().strip()
    vdir = root / "versions" / version
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(vdir.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }


def queries() -> list[str]:
    rows = [json.loads(line) for line in (DATA / "queries_train.jsonl").read_text().splitlines()]
    rows.sort(key=lambda r: r["query_id"])
    return [r["query"] for r in rows[:N_QUERIES]]


def collect(addr: str) -> dict[str, Any]:
    from engine.client import AisleClient

    out: dict[str, Any] = {"search": {}, "similar": {}}
    with AisleClient(addr, timeout_s=60.0) as client:
        client.wait_until_serving(120.0)
        for mode, number in MODES.items():
            out["search"][mode] = [
                [[h.item_id, h.score] for h in client.search(q, K, mode=number).hits]
                for q in queries()
            ]
        first = [h.item_id for h in client.search(queries()[0], 10, mode=1).hits]
        for item_id in first:
            out["similar"][item_id] = [
                [h.item_id, h.score] for h in client.similar_items(item_id, 10).hits
            ]
    return out


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aisle-golden-") as tmp:
        root = Path(tmp) / "index"
        build(root)
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [
                _bin("aisle-serve"),
                "--index",
                str(root),
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--cache-size",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 180
            while not port_file.exists() or not port_file.read_text().strip():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("aisle-serve did not start")
                time.sleep(0.2)
            results = collect(f"127.0.0.1:{port_file.read_text().strip()}")
        finally:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        results["files"] = index_files(root)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record the golden file")
    args = parser.parse_args(argv)
    results = run()
    if args.write:
        GOLDEN.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        return 0
    golden = json.loads(GOLDEN.read_text())
    same = golden == json.loads(json.dumps(results))
    print("same as the golden file" if same else "DIFFERENT from the golden file")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
