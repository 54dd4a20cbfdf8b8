"""`aisle-search`: query a running Aisle server and print the hits."""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc
from google.protobuf.json_format import MessageToDict


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="aisle-search",
        description="Send a text query to an Aisle server and print the top-k hits.",
        epilog='example: aisle-search --addr 127.0.0.1:50051 --k 5 "red velvet sofa"',
    )
    parser.add_argument("query", help="the query text")
    parser.add_argument("--addr", default="127.0.0.1:50051", help="server HOST:PORT")
    parser.add_argument("--k", type=int, default=10, help="number of hits, 1..1000 (default 10)")
    parser.add_argument("--page-token", default="", help="next_page_token of a previous answer")
    parser.add_argument("--json", action="store_true", help="print the whole response as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    return parser.parse_args(argv)


def format_table(response, elapsed_ms: float) -> str:
    lines = [f"{'rank':>4}  {'score':>7}  {'item_id':<14}  title"]
    for rank, hit in enumerate(response.hits, 1):
        title = hit.fields["title"] if "title" in hit.fields else ""
        lines.append(f"{rank:>4}  {hit.score:7.4f}  {hit.item_id:<14}  {title[:90]}")
    t = response.timings
    lines.append(
        f"{len(response.hits)} hits from index v{response.index.version} "
        f"({response.index.item_count} items) in {elapsed_ms:.1f} ms round trip; server: "
        f"encode {t.encode_ms:.1f} ms, search {t.search_ms:.1f} ms, total {t.total_ms:.1f} ms"
    )
    if response.next_page_token:
        lines.append(f"next page: --page-token {response.next_page_token}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from engine.client import AisleClient

    with AisleClient(args.addr, timeout_s=args.timeout) as client:
        try:
            started = time.perf_counter()
            response = client.search(
                args.query,
                args.k,
                include_fields=True,
                page_token=args.page_token,
                field_names=[] if args.json else ["title"],
            )
            elapsed_ms = (time.perf_counter() - started) * 1e3
        except grpc.RpcError as error:
            print(f"aisle-search: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(MessageToDict(response), indent=2))
    else:
        print(format_table(response, elapsed_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
