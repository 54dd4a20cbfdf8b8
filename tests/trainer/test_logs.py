"""--log-level / --log-format json, the noise demoted, and the access line per API call."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from trainer.logs import configure_logging


@pytest.fixture()
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("faiss.loader").setLevel(logging.NOTSET)


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stderr


def test_json_lines_with_extra_fields():
    err = _run(
        "import logging; from trainer.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "logging.getLogger('x').info('hello %s', 'you', extra={'k': 5})\n"
        "logging.getLogger('x').debug('hidden')\n"
    )
    lines = [json.loads(line) for line in err.splitlines()]
    assert len(lines) == 1
    assert lines[0]["message"] == "hello you" and lines[0]["k"] == 5
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "x"


def test_faiss_loader_lines_are_debug_only():
    code = "from trainer.logs import configure_logging; configure_logging({!r})\nimport faiss\n"
    assert "faiss.loader" not in _run(code.format("info"))
    assert "faiss.loader" in _run(code.format("debug"))


def test_bad_level_is_refused(restore_logging):
    with pytest.raises(ValueError, match="log level must be one of"):
        configure_logging("loud")


def test_access_line_per_grpc_and_http_call(index_root, caplog):
    import httpx

    from engine.client import AisleClient
    from engine.server import ServerConfig, create_server

    server = create_server(ServerConfig(index=index_root, port=0, http_port=0, workers=2))
    try:
        with caplog.at_level(logging.INFO, logger="aisle.access"):
            with AisleClient(f"127.0.0.1:{server.port}") as client:
                client.search("sofa", 3, mode="lexical")
            httpx.post(
                f"http://127.0.0.1:{server.http_port}/v1/similar", json={"item_id": "x", "k": 2}
            )
    finally:
        server.stop(0)
    lines = [r for r in caplog.records if r.name == "aisle.access"]
    assert [(r.method, r.code, r.k, r.mode) for r in lines] == [
        ("Search", "OK", 3, "SEARCH_MODE_LEXICAL"),
        ("SimilarItems", "NOT_FOUND", 2, None),
    ]
    assert all(r.ms >= 0 for r in lines)
