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
    parser.add_argument("--workers", type=int, default=16, help="request threads (default 16)")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=64,
        help="requests handled at once; more are refused with RESOURCE_EXHAUSTED (default 64)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        help="requests/s per client (metadata x-aisle-client, else peer address); 0 = off",
    )
    parser.add_argument("--rate-burst", type=int, default=0, help="rate-limit bucket size")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on http://HOST:PORT/metrics (0 = a free port; off if unset)",
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM): enables TLS")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="CA (PEM) that client certificates must chain to (mTLS)"
    )
    parser.add_argument(
        "--events-dir",
        type=Path,
        help="where Events.Record appends its durable log (default: ROOT/events for an index "
        "root; a bare version dir has none unless given)",
    )
    parser.add_argument(
        "--protect-reads",
        action="store_true",
        help="Retrieval and Events need the admin token too (default: only IndexAdmin does)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="most query texts per encoder call (default 32)"
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=0.0,
        help="extra wait for more queries once one is queued (default 0: batch only under load)",
    )
    parser.add_argument(
        "--cache-size",
        type=int,
        default=10_000,
        help="query embeddings cached (LRU); 0 disables the cache (default 10000)",
    )
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
    from engine.server import ServerConfig, TlsConfig, create_server
    from engine.service import EncodingConfig

    token = os.environ.get("AISLE_ADMIN_TOKEN")
    if args.admin_token_file is not None:
        token = args.admin_token_file.read_text().strip()
    if args.threads is not None:
        _set_threads(args.threads)
    try:
        if (args.tls_cert is None) != (args.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        tls = (
            TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
            if args.tls_cert is not None
            else None
        )
        config = ServerConfig(
            index=args.index,
            model=args.model,
            host=args.host,
            port=args.port,
            workers=args.workers,
            admin_token=token or None,
            protect_reads=args.protect_reads,
            max_in_flight=args.max_in_flight,
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            tls=tls,
            events_dir=args.events_dir,
            encoding=EncodingConfig(
                max_batch=args.batch_size,
                window_ms=args.batch_window_ms,
                cache_size=args.cache_size,
            ),
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
