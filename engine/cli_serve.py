"""`aisle-serve`: serve an index over gRPC."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from indexer.manifest import IndexFormatError

EPILOG = """examples:
  aisle-serve --index ./index                 # serve what ./index/CURRENT names, on 127.0.0.1:50051
  aisle-serve --index ./index --port 0 --port-file /tmp/port   # any free port, written to a file
  AISLE_ADMIN_TOKEN=... aisle-serve --index ./index --host 0.0.0.0

The server refuses an index whose files fail their checksums, or a --model that is not the model the
index was built with. Health (grpc.health.v1) says SERVING once model and index are loaded.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="aisle-serve",
        description="Serve an Aisle index over gRPC (Retrieval, IndexAdmin, Events, health).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--index",
        required=True,
        type=Path,
        help="index root built by `aisle-index build` (serves the version CURRENT names), "
        "or one version dir (ROOT/versions/N)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model dir to encode queries with (default: the model the index manifest names; "
        "it must be the model the index was built with)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once SERVING")
    parser.add_argument("--workers", type=int, default=8, help="request threads (default 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/FAISS compute threads (default: all cores)",
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the token IndexAdmin calls must send (else env AISLE_ADMIN_TOKEN; "
        "without either, admin methods are open)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from engine.server import ServerConfig, create_server

    token = os.environ.get("AISLE_ADMIN_TOKEN")
    if args.admin_token_file is not None:
        token = args.admin_token_file.read_text().strip()
    if args.threads is not None:
        _set_threads(args.threads)
    try:
        config = ServerConfig(
            index=args.index,
            model=args.model,
            host=args.host,
            port=args.port,
            workers=args.workers,
            admin_token=token or None,
        )
        server = create_server(config)
    except (IndexFormatError, ValueError, OSError) as error:
        print(f"aisle-serve: {error}", file=sys.stderr)
        return 2
    if args.port_file is not None:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{server.port}\n")
        os.replace(tmp, args.port_file)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: draining and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.stop()
    return 0


def _set_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
