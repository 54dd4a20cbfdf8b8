"""`aisle-search`: query a running Aisle server (search, similar items, recommend, status)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

COMMANDS = ("search", "similar", "recommend", "status")
# Options followed by a value: the word after one of these is not the command or the query.
VALUE_OPTIONS = {
    "--addr", "--timeout", "--token", "--tls-ca", "--tls-server-name", "--k", "--filter",
    "--fields", "--page-token", "--mode", "--facets", "--user", "--history",
}  # fmt: skip
MODES = ("dense", "lexical", "hybrid", "ranked")
EPILOG = """examples:
  aisle-search "red velvet sofa"                          # search (the command name is optional)
  aisle-search --k 5 --mode lexical --fields title,brand,price "cordless drill"
  aisle-search --filter 'brand=Acme|Globex,price=..50,in_stock=true' "sofa"
  aisle-search --filter '{"category_prefix": "Home/", "price": {"min": 10}}' "lamp"
  aisle-search --mode ranked --explain "running shoes"    # the ranker's per-feature reasons
  aisle-search similar SKU0042
  aisle-search recommend --history SKU0001,SKU0002        # or --user u123
  aisle-search status
  aisle-search --addr host:50051 --tls-ca ca.pem --token "$AISLE_ADMIN_TOKEN" status

A query that is itself a command name: aisle-search search status.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--addr", default="127.0.0.1:50051", help="server HOST:PORT")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    parser.add_argument(
        "--token",
        default=os.environ.get("AISLE_ADMIN_TOKEN"),
        help="the server's token, sent as 'authorization: Bearer' (status needs it when the "
        "server has one; every call does under --protect-reads; default $AISLE_ADMIN_TOKEN)",
    )
    parser.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) of a TLS server")
    parser.add_argument(
        "--tls-server-name", help="the host name the server's certificate is for (default: --addr)"
    )
    parser.add_argument("--json", action="store_true", help="print the whole response as JSON")


def _results(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=10, help="number of hits, 1..1000 (default 10)")
    parser.add_argument(
        "--filter",
        default=None,
        help='JSON of a Filter ({"brands": [...], "price": {"max": 50}, ...}) or the short '
        "form 'brand=A|B,category=Home/,price=10..50,in_stock=true,exclude=ID|ID'",
    )
    parser.add_argument(
        "--fields",
        default="title",
        help="item fields to print, comma-separated (default title; 'all' for every field)",
    )
    parser.add_argument("--page-token", default="", help="next_page_token of a previous answer")


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aisle-search",
        description="Query a running Aisle server and print the hits: search (default), "
        "similar ITEM_ID, recommend, status.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{search,similar,recommend,status}")
    search = commands.add_parser("search", help="search for a text query (the default command)")
    search.add_argument("query", help="the query text")
    _common(search)
    _results(search)
    search.add_argument(
        "--mode", choices=MODES, help="retrieval mode (default: the server's, hybrid)"
    )
    search.add_argument(
        "--explain",
        action="store_true",
        help="show the ranker's per-feature contributions (with --mode ranked, when the index "
        "has a ranker)",
    )
    search.add_argument("--facets", default="", help="facet counts to show: category,brand")
    search.add_argument("--user", default="", help="user id, for personalized results")
    similar = commands.add_parser("similar", help="items similar to one item")
    similar.add_argument("item_id", help="the item id")
    _common(similar)
    _results(similar)
    recommend = commands.add_parser("recommend", help="recommendations for a user or a history")
    _common(recommend)
    _results(recommend)
    recommend.add_argument("--user", default="", help="user id (its recorded events)")
    recommend.add_argument("--history", default="", help="item ids, comma-separated")
    status = commands.add_parser("status", help="the served index version, shards and server")
    _common(status)
    return parser


def _with_command(argv: list[str]) -> list[str]:
    """The command first: `aisle-search [options] QUERY` is `aisle-search search [options]
    QUERY`, and options may come before the command (`--addr H:P status`)."""
    if not argv or argv[0] in ("-h", "--help"):
        return argv
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in VALUE_OPTIONS
        elif arg in COMMANDS:
            return [arg, *argv[:i], *argv[i + 1 :]]
        else:
            break
    return ["search", *argv]


def parse_filter(text: str | None) -> dict[str, Any] | None:
    """A Filter's dict form from JSON or the short form of --filter; ValueError if neither."""
    if not text:
        return None
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as error:
            raise ValueError(f"--filter is not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise ValueError("--filter JSON must be an object")
        return value
    result: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ValueError(f"--filter: {part!r} is not KEY=VALUE (brand, category, price, ...)")
        if key in ("brand", "brands"):
            result["brands"] = value.split("|")
        elif key in ("category", "category_prefix"):
            result["category_prefix"] = value
        elif key == "price":
            low, dots, high = value.partition("..")
            if not dots:
                raise ValueError("--filter: price is MIN..MAX (either side may be empty)")
            try:
                result["price"] = {
                    **({"min": float(low)} if low else {}),
                    **({"max": float(high)} if high else {}),
                }
            except ValueError:
                raise ValueError(f"--filter: price {value!r} is not MIN..MAX numbers") from None
        elif key == "in_stock":
            if value.lower() not in ("true", "false"):
                raise ValueError("--filter: in_stock is true or false")
            result["in_stock"] = value.lower() == "true"
        elif key in ("exclude", "exclude_item_ids"):
            result["exclude_item_ids"] = value.split("|")
        else:
            raise ValueError(
                f"--filter: unknown key {key!r}; use brand, category, price, in_stock, exclude "
                "(or a JSON Filter for attribute ranges)"
            )
    return result


def _field_names(args: argparse.Namespace) -> list[str]:
    if args.fields == "all":
        return []
    return [name.strip() for name in args.fields.split(",") if name.strip()]


def format_table(response, elapsed_ms: float, fields: list[str] | tuple = ("title",)) -> str:
    """Hits as a table (rank, score, item_id, then `fields`), then the timings line."""
    fields = list(fields) or sorted(
        {name for hit in response.hits for name in hit.fields if name != "item_id"}
    )
    lines = [f"{'rank':>4}  {'score':>7}  {'item_id':<14}  " + "  ".join(fields)]
    for rank, hit in enumerate(response.hits, 1):
        values = []
        for name in fields:
            value = hit.fields[name] if name in hit.fields else ""
            values.append(f"{value:g}" if isinstance(value, float) else str(value))
        text = "  ".join(values)
        lines.append(f"{rank:>4}  {hit.score:7.4f}  {hit.item_id:<14}  {text[:120]}")
        if hit.HasField("explanation"):
            top = sorted(hit.explanation.features, key=lambda f: -abs(f.contribution))[:5]
            reasons = ", ".join(f"{f.name} {f.contribution:+.3f}" for f in top)
            lines.append(f"{'':>4}  ranker {hit.explanation.ranker_score:.4f}: {reasons}")
    t = response.timings
    stages = f"encode {t.encode_ms:.1f} ms, search {t.search_ms:.1f} ms"
    if t.rerank_ms:
        stages += f", rerank {t.rerank_ms:.1f} ms"
    if t.rank_ms:
        stages += f", rank {t.rank_ms:.1f} ms"
    lines.append(
        f"{len(response.hits)} hits from index v{response.index.version} "
        f"({response.index.item_count} items) in {elapsed_ms:.1f} ms round trip; server: "
        f"{stages}, total {t.total_ms:.1f} ms"
    )
    for facet in getattr(response, "facets", ()):
        values = ", ".join(f"{v.value} ({v.count})" for v in facet.values) or "(none)"
        lines.append(f"facet {facet.field}: {values}")
    if response.next_page_token:
        lines.append(f"next page: --page-token {response.next_page_token}")
    return "\n".join(lines)


def format_status(status) -> str:
    index = status.index
    lines = [
        f"index v{index.version}: {index.item_count} items in {index.shard_count} shards "
        f"({index.factory}), model {index.model_fingerprint[:12]}",
        f"server {status.server_version}, up {status.uptime_s:.0f} s, "
        f"{status.pending_updates} live updates pending",
        f"versions available: {list(status.available_versions)}",
    ]
    for shard in status.shards:
        lines.append(f"  shard {shard.shard}: {shard.item_count} items ({shard.location})")
    return "\n".join(lines)


def _run(args: argparse.Namespace, client) -> Any:
    if args.command == "status":
        return client.status()
    names = _field_names(args)
    common: dict[str, Any] = {
        "filter": parse_filter(args.filter),
        "include_fields": True,
        "page_token": args.page_token,
    }
    if args.command == "similar":
        return client.similar_items(args.item_id, args.k, **common)
    if args.command == "recommend":
        history = [i.strip() for i in args.history.split(",") if i.strip()]
        if not history and not args.user:
            raise ValueError("recommend needs --user or --history")
        return client.recommend(history, args.k, user_id=args.user, **common)
    return client.search(
        args.query,
        args.k,
        mode=args.mode,
        explain=args.explain,
        field_names=names,
        facets=[f.strip() for f in args.facets.split(",") if f.strip()],
        user_id=args.user,
        **common,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = arg_parser()
    args = parser.parse_args(_with_command(argv))
    if args.command is None:
        parser.print_help()
        return 2
    from engine.client import AisleClient, AisleRpcError

    try:
        tls_ca = args.tls_ca.read_bytes() if args.tls_ca is not None else None
    except OSError as error:
        print(f"aisle-search: --tls-ca: {error.strerror}: {args.tls_ca}", file=sys.stderr)
        return 2
    client = AisleClient(
        args.addr,
        timeout_s=args.timeout,
        admin_token=args.token or None,
        tls_ca=tls_ca,
        tls_server_name=args.tls_server_name,
    )
    with client:
        try:
            started = time.perf_counter()
            response = _run(args, client)
            elapsed_ms = (time.perf_counter() - started) * 1e3
        except ValueError as error:
            print(f"aisle-search: {error}", file=sys.stderr)
            return 2
        except AisleRpcError as error:
            print(f"aisle-search: {error}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
    elif args.command == "status":
        print(format_status(response))
    else:
        print(format_table(response, elapsed_ms, _field_names(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
