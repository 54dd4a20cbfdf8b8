"""Container health check: exit 0 when the server's grpc.health.v1 answers SERVING, else 1."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("addr", nargs="?", default="127.0.0.1:50051", help="server HOST:PORT")
    parser.add_argument("--service", default="", help="service name ('' = the whole server)")
    parser.add_argument("--tls-ca", help="CA (PEM) of a TLS server; plaintext if unset")
    parser.add_argument("--tls-server-name", help="name the certificate was issued for")
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline in seconds")
    args = parser.parse_args(argv)
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(f.read())
        name = args.tls_server_name
        options = [("grpc.ssl_target_name_override", name)] if name else []
        channel = grpc.secure_channel(args.addr, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.addr)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"{args.addr}: {error.code().name} {error.details() or ''}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.addr}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    raise SystemExit(main())
