"""`make demo`: synthetic catalog → index → server on 127.0.0.1 → a few queries → shutdown."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trainer.logs import configure_logging

log = logging.getLogger("aisle.demo")

DEMO_QUERIES = (
    "red velvet sofa",
    "comfy couch for the living room",
    "noise cancelling headphones",
    "cast iron skillet",
    "running shoes for men",
    "cordless drill",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m engine.demo",
        description="End-to-end demo on a synthetic catalog with the packaged all-MiniLM-L6-v2.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="work dir (reused)")
    parser.add_argument("--items", type=int, default=2000, help="synthetic catalog size")
    parser.add_argument("--shards", type=int, default=2, help="index shards")
    parser.add_argument("--k", type=int, default=5, help="hits per query")
    return parser.parse_args(argv)


def _wait_for_port(port_file: Path, server: subprocess.Popen, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if server.poll() is not None:
            raise RuntimeError(f"aisle-serve exited with code {server.returncode}")
        time.sleep(0.1)
    raise TimeoutError(f"aisle-serve did not come up within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()  # faiss.loader's INFO noise demoted
    from engine.cli.search import format_table
    from engine.client import AisleClient
    from indexer.build.config import BuildConfig
    from indexer.build.local import build_index
    from trainer.data.synthetic import write_synthetic_dataset
    from trainer.encoder.model_dir import default_model_dir

    args.out.mkdir(parents=True, exist_ok=True)
    data = write_synthetic_dataset(args.out / "data", n_items=args.items, n_queries=50, seed=0)
    catalog = data["products"]
    log.info("catalog: %s", catalog)
    model = args.out / "model"
    if not model.exists():
        # The packaged all-MiniLM-L6-v2 plus its query tower exported to ONNX: the server then
        # encodes queries with ONNX Runtime (about 3x faster than torch at batch 1 on a CPU).
        log.info("loading torch for the ONNX export of the packaged model's query tower…")
        try:
            from trainer.encoder.onnx_export import export_query_tower

            export_query_tower(default_model_dir(), model)
        except ImportError as error:  # onnx/onnxscript are the `train` extra
            log.warning("no ONNX export (%s): serving with the torch encoder", error)
            model = default_model_dir()
    started = time.perf_counter()
    version_dir = build_index(
        BuildConfig(catalog=catalog, out=args.out / "index", model=model, shards=args.shards)
    )
    log.info("built %s in %.1f s", version_dir, time.perf_counter() - started)

    port_file = args.out / "server.port"
    port_file.unlink(missing_ok=True)
    log.info("starting aisle-serve on a free port; it loads the model and the index first…")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli.serve",
            "--index",
            str(args.out / "index"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--workers",
            "4",
            "--no-access-log",  # the demo prints each answer itself
        ],
    )
    try:
        port = _wait_for_port(port_file, server, timeout_s=120)
        address = f"127.0.0.1:{port}"
        with AisleClient(address) as client:
            client.wait_until_serving(timeout_s=60)
            client.search("warm up", 1)
            latencies = []
            for query in DEMO_QUERIES:
                t0 = time.perf_counter()
                response = client.search(query, args.k, include_fields=True, field_names=["title"])
                elapsed = (time.perf_counter() - t0) * 1e3
                latencies.append(elapsed)
                print(f'\nquery: "{query}"')
                print(format_table(response, elapsed))
            repeats = []
            for _ in range(3):  # the same queries again: answered from the query cache
                for query in DEMO_QUERIES:
                    t0 = time.perf_counter()
                    client.search(query, args.k)
                    repeats.append((time.perf_counter() - t0) * 1e3)
        print(
            f"\nsearch latency through gRPC (k={args.k}, {args.items} items, hybrid mode): first "
            f"sight of each query p50 {statistics.median(latencies):.1f} ms (max "
            f"{max(latencies):.1f} ms, {len(latencies)} queries); repeats from the query cache "
            f"p50 {statistics.median(repeats):.1f} ms ({len(repeats)} requests)"
        )
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)  # only the server this demo started
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
