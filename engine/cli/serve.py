"""`aisle-serve`: serve an index over gRPC."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from indexer.storage.manifest import IndexFormatError
from trainer.feedback.engagement import ENGAGEMENT_DAYS
from trainer.logs import add_logging_arguments, configure_logging

EPILOG = """examples:
  aisle-serve --index ./index                 # serve what ./index/CURRENT names, on 127.0.0.1:50051
  aisle-serve --index ./index --port 0 --port-file /tmp/port   # any free port, written to a file
  AISLE_ADMIN_TOKEN=... aisle-serve --index ./index --host 0.0.0.0
  aisle-serve --index ./index --http-port 8080   # + HTTP/JSON on :8080, playground at /ui
  aisle-serve --index ./index --processes 2      # two worker processes on one port (one per core)

scale-out: one server per shard (replicas are just more servers of the same shard), and a router
  aisle-serve --index ./index --shard 0/2 --port 7001      # and 7011 (a replica), 7002 (shard 1)
  aisle-serve --index ./index --router --shard-addrs '127.0.0.1:7001,127.0.0.1:7011;127.0.0.1:7002'

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
        help="model dir to encode queries with; it must be the model the index was built with "
        "(default: the manifest's model path if it exists here, else ROOT/models/<fingerprint>, "
        "$AISLE_MODELS/<fingerprint>, or the packaged base model when it is that model)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once SERVING")
    parser.add_argument(
        "--workers", type=int, default=16, help="request threads per process (default 16)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT; the kernel spreads client "
        "connections across them), under a supervisor that restarts one that dies: one process "
        "is bound by Python's GIL, so give about one per core. Live updates, events and Reload "
        "reach every process (another one serves a write within ~0.1 s); --metrics-port serves "
        "every process's metrics, labelled worker=I; --http-port goes to process 0; not with "
        "--router, --shard or --popularity-epsilon (docs/serving.md, 'Several processes'). "
        "Default 1",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # I/N: set by the supervisor
    parser.add_argument("--siblings-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=64,
        help=(
            "requests accepted at once, running or waiting for one of --workers threads "
            "(health checks included); the next one is refused at once with "
            "RESOURCE_EXHAUSTED (default 64)"
        ),
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        help="requests/s per client (metadata x-aisle-client, else peer address); 0 = off",
    )
    parser.add_argument("--rate-burst", type=int, default=0, help="rate-limit bucket size")
    parser.add_argument(
        "--drain-grace-s",
        type=float,
        default=2.0,
        help=(
            "on SIGTERM, health turns NOT_SERVING and requests are still served this long "
            "before the listener closes, so load balancers can stop routing here (default 2)"
        ),
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=5.0,
        help="then in-flight requests get this long to finish before being cancelled (default 5)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on http://HOST:PORT/metrics (0 = a free port; off if unset)",
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics")
    parser.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="also serve the API as HTTP/JSON on this port (POST /v1/search, /v1/recommend, "
        "/v1/similar, /v1/events; GET /v1/status, /healthz, /readyz, /docs), and the search "
        "playground at /ui; same auth and TLS as gRPC; 0 = a free port; off if unset",
    )
    parser.add_argument(
        "--http-host", default=None, help="address for the HTTP gateway (default: --host)"
    )
    parser.add_argument(
        "--http-port-file", type=Path, help="write the bound HTTP port here once SERVING"
    )
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
        "--impressions",
        choices=("on", "off"),
        default="on",
        help="log what each response showed to EVENTS_DIR/impressions.jsonl, in the "
        "background (asynchronous, bounded, drops counted in aisle_impressions_dropped_total; "
        "docs/learning.md); default on",
    )
    parser.add_argument(
        "--explore-share",
        type=float,
        default=0.0,
        metavar="P",
        help="share of Search responses (0 to 0.5) whose adjacent hits are swapped, drawn from "
        "each request id, so that position bias can be estimated from the logs (the swapped "
        "pairs are marked in the impression log; never with explain or an explicit sort; "
        "counted in aisle_explored_responses_total; docs/learning.md); default 0, off",
    )
    parser.add_argument(
        "--engagement-days",
        type=float,
        default=ENGAGEMENT_DAYS,
        metavar="D",
        help="the ranker's engagement feature counts each item's engaged events (click 1, "
        "add to cart 2, purchase 4) in EVENTS_DIR's last D days, consent and erasure "
        f"respected; train the ranker with the same value (default {ENGAGEMENT_DAYS:g})",
    )
    parser.add_argument(
        "--engagement-refresh-s",
        type=float,
        default=300.0,
        metavar="S",
        help="re-read the event log for the engagement feature every S seconds, in the "
        "background (default 300)",
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
        "--encoder-backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="query encoder: auto = ONNX Runtime when the model dir has the export "
        "(python -m trainer.encoder.onnx_export), else torch",
    )
    parser.add_argument(
        "--query-tower",
        choices=("fast", "full"),
        default="auto",
        help="query tower: fast = the model dir's distilled one (aisle-train distill-query; "
        "refused if missing), full = the model's own; default: fast when the model dir has one",
    )
    parser.add_argument(
        "--encoder-threads",
        type=int,
        default=1,
        help="intra-op threads of the query encoder (default 1: measured faster on 2 cores)",
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
        default=1,
        help="FAISS (and torch, if loaded) threads per call (default 1: requests already run in "
        "parallel on the request threads, and OpenMP inside one query fights them for cores)",
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the token IndexAdmin calls must send (else env AISLE_ADMIN_TOKEN; "
        "without either, admin methods are open)",
    )
    privacy = parser.add_argument_group("privacy (docs/privacy.md)")
    privacy.add_argument(
        "--user-keys-file",
        type=Path,
        help="KEY_ID:SECRET lines (current key first, then the previous one): user ids become "
        "keyed HMAC-SHA256 pseudonyms at the edge (else env AISLE_USER_KEYS_FILE or "
        "AISLE_USER_KEYS; without keys, user ids are stored as given)",
    )
    privacy.add_argument(
        "--scrub-queries",
        default="emails,phones,cards",
        metavar="WHAT",
        help="what to remove from logged query text: a comma list of emails, phones, cards "
        "(Luhn-checked), or none (default: all three)",
    )
    privacy.add_argument(
        "--default-personalization",
        choices=("on", "off"),
        default="on",
        help="for shoppers who never chose: personalised Search/Recommend (default on)",
    )
    privacy.add_argument(
        "--default-use-for-training",
        choices=("on", "off"),
        default="on",
        help="for shoppers who never chose: their behaviour may train models (default on)",
    )
    privacy.add_argument(
        "--retention-days",
        type=float,
        default=None,
        help="at start, drop events and impressions recorded more than this many days ago "
        "(also `aisle-events compact --retention-days`; default: keep)",
    )
    privacy.add_argument(
        "--retention-every",
        type=float,
        default=None,
        metavar="HOURS",
        help="with --retention-days: also compact every HOURS hours while serving (a "
        "background thread, safe beside Events.Record writes; default: at start only)",
    )
    privacy.add_argument(
        "--popularity-epsilon",
        type=float,
        default=None,
        help="rank Recommend's popularity fallback by shoppers' engagement counts (click, "
        "add_to_cart, purchase) with Laplace noise for this ε per release (each start or "
        "Reload is one release; each shopper counts for at most --popularity-items-per-user "
        "items); default: the catalog's popularity signal, no shopper data",
    )
    privacy.add_argument(
        "--popularity-items-per-user",
        type=int,
        default=10,
        help="the per-shopper contribution bound of --popularity-epsilon (default 10)",
    )
    scale = parser.add_argument_group("scale-out")
    scale.add_argument(
        "--shard",
        metavar="I/N",
        help="serve only shard I of the N shards (the internal shard API a router calls)",
    )
    scale.add_argument(
        "--router",
        action="store_true",
        help="serve the public API by fanning out to shard servers (needs --shard-addrs)",
    )
    scale.add_argument(
        "--shard-addrs",
        metavar="ADDRS",
        help="shard servers, in shard order: ';' separates shards, ',' replicas of one shard "
        "(e.g. 'h1:7001,h2:7001;h1:7002')",
    )
    scale.add_argument(
        "--shard-timeout-ms",
        type=float,
        default=500.0,
        help="deadline of one shard call, within the request's own (default 500)",
    )
    scale.add_argument(
        "--hedge-ms",
        type=float,
        default=100.0,
        help="a shard call unanswered this long goes to the shard's next replica too, first "
        "answer wins (default 100; 0: fail over only on an error or the shard timeout)",
    )
    scale.add_argument(
        "--partial-ok",
        dest="partial_ok",
        action="store_true",
        default=True,
        help="a shard with no replica answering leaves it out, flagged (default)",
    )
    scale.add_argument(
        "--no-partial",
        dest="partial_ok",
        action="store_false",
        help="a shard with no replica answering fails the search with UNAVAILABLE",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_logging_arguments(parser)
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="drop the access line logged per API call (logger aisle.access: method, code, ms, "
        "k, mode)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format, args.verbose)
    if args.no_access_log:
        logging.getLogger("aisle.access").setLevel(logging.WARNING)
    if args.processes < 1:
        print("aisle-serve: --processes must be >= 1", file=sys.stderr)
        return 2
    if args.processes > 1 and args.worker is None:
        from engine.cluster.workers import supervise

        return supervise(
            list(sys.argv[1:] if argv is None else argv),
            args.processes,
            args.host,
            args.port,
            port_file=args.port_file,
            http_port_file=args.http_port_file,
            drain_s=args.drain_grace_s + args.drain_timeout_s,
            metrics=None if args.metrics_port is None else (args.metrics_host, args.metrics_port),
        )
    # Measured on the router: two OpenMP threads spun at 100 % between requests (~30 ms CPU
    # per query against ~5 ms passive, same latency), starving other processes on the host; and
    # a single server spinning between requests slows its own request threads the same way.
    # Set before torch / FAISS load their OpenMP runtimes; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # omp_set_num_threads (in _set_threads) only sets the calling thread's team size: each gRPC
    # request thread would still open OpenMP teams of one thread per core. Measured on a 1M-item
    # IVF index on 2 cores: 8 concurrent searches took ~70 ms each that way, ~1 ms with teams of
    # --threads. OMP_NUM_THREADS is the default every thread starts with: set it before FAISS
    # loads its OpenMP runtime.
    if args.threads >= 1:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from engine.api.privacy import PrivacyConfig
    from engine.cluster.config import RouterConfig
    from engine.cluster.shard import ShardSpec
    from engine.privacy.consent import Preferences
    from engine.privacy.scrub import scrubber_of
    from engine.search.siblings import WorkerSpec
    from engine.search.types import EncodingConfig
    from engine.server import ServerConfig, TlsConfig, create_server
    from trainer.privacy.noise import DPConfig
    from trainer.privacy.pseudonym import from_environment

    token = os.environ.get("AISLE_ADMIN_TOKEN")
    if args.admin_token_file is not None:
        token = args.admin_token_file.read_text().strip()
    if args.threads < 1:
        print("aisle-serve: --threads must be >= 1", file=sys.stderr)
        return 2
    _set_threads(args.threads)
    worker = None
    try:
        if args.worker is not None:  # one of --processes N, started by the supervisor
            worker = WorkerSpec.parse(args.worker)
            if args.siblings_dir is None:
                raise ValueError("--worker needs --siblings-dir")
            args.port_file = args.siblings_dir / f"port-{worker.index}"
            if worker.index > 0:
                args.http_port = None  # the HTTP gateway runs in worker 0 only
            args.http_port_file = (
                args.siblings_dir / "http-port" if args.http_port is not None else None
            )
            if args.metrics_port is not None:
                args.metrics_port = 0  # the supervisor serves them all on the port asked for
        if (args.tls_cert is None) != (args.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        tls = (
            TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
            if args.tls_cert is not None
            else None
        )
        if args.router != (args.shard_addrs is not None):
            raise ValueError("--router and --shard-addrs go together")
        router = (
            RouterConfig.parse(
                args.shard_addrs,
                shard_timeout_ms=args.shard_timeout_ms,
                hedge_ms=args.hedge_ms,
                partial_ok=args.partial_ok,
            )
            if args.router
            else None
        )
        privacy = PrivacyConfig(
            pseudonyms=from_environment(keys_file=args.user_keys_file),
            scrubber=scrubber_of(args.scrub_queries),
            default=Preferences(
                personalization=args.default_personalization == "on",
                use_for_training=args.default_use_for_training == "on",
            ),
            retention_days=args.retention_days,
            retention_every_hours=args.retention_every,
            popularity_dp=(
                DPConfig(args.popularity_epsilon, max_items_per_user=args.popularity_items_per_user)
                if args.popularity_epsilon is not None
                else None
            ),
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
            drain_s=args.drain_grace_s,
            grace_s=args.drain_timeout_s,
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            http_port=args.http_port,
            http_host=args.http_host,
            tls=tls,
            events_dir=args.events_dir,
            impressions=args.impressions == "on",
            explore_share=args.explore_share,
            engagement_days=args.engagement_days,
            engagement_refresh_s=args.engagement_refresh_s,
            shard=ShardSpec.parse(args.shard) if args.shard is not None else None,
            router=router,
            privacy=privacy,
            encoding=EncodingConfig(
                max_batch=args.batch_size,
                window_ms=args.batch_window_ms,
                cache_size=args.cache_size,
                backend=args.encoder_backend,
                encoder_threads=args.encoder_threads,
                query_tower=args.query_tower,
            ),
            worker=worker,
            siblings_dir=args.siblings_dir if worker is not None else None,
        )
        server = create_server(config)
    except (IndexFormatError, ValueError, OSError) as error:
        print(f"aisle-serve: {error}", file=sys.stderr)
        return 2
    ports = [(args.http_port_file, server.http_port), (args.port_file, server.port)]
    if worker is not None:  # the port file last: to the supervisor it means "all written"
        ports.insert(0, (args.siblings_dir / f"metrics-port-{worker.index}", server.metrics_port))
    for path, port in ports:
        if path is not None and port is not None:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{port}\n")
            os.replace(tmp, path)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: draining and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if worker is None:
        stop.wait()
    else:
        parent = os.getppid()
        while not stop.wait(1.0):
            if os.getppid() != parent:  # the supervisor is gone (kill -9): do not linger
                logging.getLogger(__name__).warning("supervisor gone: worker stopping")
                break
    server.stop()
    return 0


def _set_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)
    if "torch" in sys.modules:  # never import torch just to configure it (ONNX serving)
        sys.modules["torch"].set_num_threads(n)


if __name__ == "__main__":
    raise SystemExit(main())
