"""The aisle-serve and aisle-search command lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from engine.cli import search as cli_search
from engine.cli import serve as cli_serve


def test_search_cli_prints_a_table(server, title_catalog, capsys) -> None:
    _, records = title_catalog
    code = cli_search.main(["--addr", f"127.0.0.1:{server.port}", "--k", "3", records[5]["title"]])
    out = capsys.readouterr().out
    assert code == 0
    first_row = out.splitlines()[1].split()
    assert first_row[0] == "1" and first_row[2] == records[5]["item_id"]
    assert records[5]["title"] in out
    assert "3 hits" in out


def test_search_cli_json(server, capsys) -> None:
    code = cli_search.main(["--addr", f"127.0.0.1:{server.port}", "--k", "2", "--json", "sofa"])
    response = json.loads(capsys.readouterr().out)
    assert code == 0 and len(response["hits"]) == 2
    assert "title" in response["hits"][0]["fields"]


def test_search_cli_reports_errors(server, capsys) -> None:
    code = cli_search.main(["--addr", f"127.0.0.1:{server.port}", "--k", "0", "sofa"])
    assert code == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_serve_cli_refuses_a_missing_index(tmp_path, capsys) -> None:
    assert cli_serve.main(["--index", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "aisle-index build" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_cli_runs_until_sigterm(index_root, tmp_path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli.serve",
            "--index",
            str(index_root),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--http-port",
            "0",
            "--http-port-file",
            str(tmp_path / "http-port"),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        port = int(port_file.read_text())
        assert cli_search.main(["--addr", f"127.0.0.1:{port}", "--k", "2", "sofa"]) == 0
        http_port = int((tmp_path / "http-port").read_text())
        import httpx

        assert httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert f"127.0.0.1:{port}" in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line["logger"] == "aisle.access" and line["method"] == "Search" for line in lines)


def test_serve_cli_refuses_a_port_in_use(server, index_root, capsys) -> None:
    """A second aisle-serve on a port in use exits with a clear error instead of sharing the
    port through SO_REUSEPORT (issue #20, item 16)."""
    argv = ["--index", str(index_root), "--host", "127.0.0.1", "--port", str(server.port)]
    assert cli_serve.main(argv) == 2
    error = capsys.readouterr().err
    assert f"could not bind 127.0.0.1:{server.port}" in error and "in use" in error


def test_serve_cli_refuses_a_catalog_file_before_listening(tmp_path, capsys) -> None:
    catalog = tmp_path / "products.jsonl"
    catalog.write_text('{"item_id": "A", "title": "red sofa"}\n')
    assert cli_serve.main(["--index", str(catalog), "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert "is a file (a catalog?)" in captured.err
    assert f"aisle-index build --catalog {catalog} --out ./index" in captured.err
    assert "serving on" not in captured.err and "listening on" not in captured.err


def test_serve_cli_refuses_a_directory_without_an_index(tmp_path, capsys) -> None:
    assert cli_serve.main(["--index", str(tmp_path), "--port", "0"]) == 2
    assert "no index in it" in capsys.readouterr().err
