"""aisle-search's commands and flags against a real server, and its error messages."""

from __future__ import annotations

import json
import socket

import pytest

from engine.cli import search as cli_search
from engine.server import ServerConfig, TlsConfig, create_server
from tests.engine.api.test_robustness import make_certificates

TOKEN = "s" * 20


def _addr(server) -> list[str]:
    return ["--addr", f"127.0.0.1:{server.port}"]


def test_plain_query_and_search_command_agree(server, title_catalog, capsys):
    _, records = title_catalog
    query = records[7]["title"]
    assert cli_search.main([*_addr(server), "--k", "3", query]) == 0
    plain = capsys.readouterr().out
    assert cli_search.main(["search", *_addr(server), "--k", "3", query]) == 0
    assert capsys.readouterr().out.splitlines()[:4] == plain.splitlines()[:4]
    assert plain.splitlines()[1].split()[2] == records[7]["item_id"]


def test_mode_fields_facets_and_filter(server, title_catalog, capsys):
    _, records = title_catalog
    excluded = records[0]["item_id"]
    argv = [
        *_addr(server),
        "--mode",
        "lexical",
        "--fields",
        "item_id,title",
        "--facets",
        "category",
        "--filter",
        f"exclude={excluded}",
        "--json",
        records[0]["title"],
    ]
    assert cli_search.main(argv) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["mode"] == "SEARCH_MODE_LEXICAL"
    assert excluded not in [h["item_id"] for h in response["hits"]]
    assert set(response["hits"][0]["fields"]) == {"item_id", "title"}
    assert [f["field"] for f in response["facets"]] == ["category"]


def test_similar_recommend_status(server, title_catalog, capsys):
    _, records = title_catalog
    item = records[4]["item_id"]
    assert cli_search.main(["similar", *_addr(server), "--k", "4", item]) == 0
    out = capsys.readouterr().out
    assert "4 hits" in out and f" {item} " not in out
    # options may come before the command
    assert cli_search.main([*_addr(server), "recommend", "--history", item, "--k", "2"]) == 0
    assert "2 hits" in capsys.readouterr().out
    assert cli_search.main([*_addr(server), "status"]) == 0
    status = capsys.readouterr().out
    assert f"{len(records)} items in 2 shards" in status and "shard 1:" in status


def test_recommend_without_input_is_a_usage_error(server, capsys):
    assert cli_search.main(["recommend", *_addr(server)]) == 2
    assert "--user or --history" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("brand=Acme|Globex", {"brands": ["Acme", "Globex"]}),
        ("price=..50,in_stock=true", {"price": {"max": 50.0}, "in_stock": True}),
        ("category=Home/,price=10..", {"category_prefix": "Home/", "price": {"min": 10.0}}),
        ('{"price": {"min": 1}}', {"price": {"min": 1}}),
    ],
)
def test_filter_forms(text, expected):
    assert cli_search.parse_filter(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour=red", "unknown key 'colour'"),
        ("price=50", "MIN..MAX"),
        ("in_stock=maybe", "true or false"),
        ("{nope", "not valid JSON"),
        ("brand", "KEY=VALUE"),
    ],
)
def test_bad_filters_are_usage_errors(server, capsys, text, message):
    assert cli_search.main([*_addr(server), "--filter", text, "sofa"]) == 2
    assert message in capsys.readouterr().err


def test_connection_refused_says_start_the_server(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli_search.main(["--addr", f"127.0.0.1:{port}", "--timeout", "3", "sofa"]) == 1
    err = capsys.readouterr().err
    assert "is aisle-serve running there?" in err and "Connection refused" not in err


def test_tls_and_token_flags(index_root, tmp_path, capsys):
    ca, cert, key = make_certificates(tmp_path)
    server = create_server(
        ServerConfig(
            index=index_root,
            port=0,
            tls=TlsConfig(cert, key),
            admin_token=TOKEN,
            protect_reads=True,
        )
    )
    try:
        base = [*_addr(server), "--timeout", "5"]
        assert cli_search.main([*base, "sofa"]) == 1
        assert "--tls-ca" in capsys.readouterr().err  # was grpc's bare "Socket closed"
        tls = [*base, "--tls-ca", str(ca), "--tls-server-name", "localhost"]
        assert cli_search.main([*tls, "sofa"]) == 1
        assert "--token" in capsys.readouterr().err
        assert cli_search.main([*tls, "--token", TOKEN, "--k", "2", "sofa"]) == 0
        assert "2 hits" in capsys.readouterr().out
        assert cli_search.main([*tls, "--token", TOKEN, "status"]) == 0
    finally:
        server.stop(0)


def test_missing_tls_ca_file(capsys, tmp_path):
    assert cli_search.main(["--tls-ca", str(tmp_path / "nope.pem"), "sofa"]) == 2
    assert "--tls-ca" in capsys.readouterr().err
