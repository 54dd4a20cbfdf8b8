"""deploy/compose.yaml and deploy/prometheus.yml agree with each other and with the image."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def flags(command: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in command if a.startswith("--"))


def test_prometheus_scrapes_the_servers_metrics_port():
    compose, prometheus = load("compose.yaml"), load("prometheus.yml")
    server = flags(compose["services"]["server"]["command"])
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for s in job["static_configs"]
        for t in s["targets"]
    ]
    assert targets == [f"server:{server['--metrics-port']}"]
    assert server["--metrics-host"] == "0.0.0.0"
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert (
        "--config.file=/etc/prometheus/prometheus.yml"
        in compose["services"]["prometheus"]["command"]
    )


def test_the_server_serves_what_the_indexer_builds_read_only():
    services = load("compose.yaml")["services"]
    server = flags(services["server"]["command"])
    script = services["indexer"]["command"][0]
    assert f"--out {server['--index']} " in script
    # The manifest names the model by its path in the indexer; the server sees the same path.
    assert "--model /index/model" in script and "--out /index/model" in script
    assert "index:/index:ro" in services["server"]["volumes"]
    assert "index:/index" in services["indexer"]["volumes"]
    depends = services["server"]["depends_on"]["indexer"]["condition"]
    assert depends == "service_completed_successfully"
    # What the server writes goes to the image's writable volume, not the read-only index.
    assert server["--events-dir"].startswith("/var/lib/aisle/")
    assert any(v.endswith(":/var/lib/aisle") for v in services["server"]["volumes"])
    for name in ("indexer", "server"):
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"]
        assert "/tmp" in services[name]["tmpfs"]


def test_the_servers_health_check_is_the_images():
    server = load("compose.yaml")["services"]["server"]
    test = server["healthcheck"]["test"]
    port = flags(server["command"])["--port"]
    assert test == ["CMD", "python", "/opt/aisle/healthcheck.py", f"127.0.0.1:{port}"]
    assert server["ports"] == [f"${{AISLE_PORT:-50051}}:{port}"]


def test_the_server_pseudonymises_user_ids_with_a_file_secret():
    compose = load("compose.yaml")
    server = compose["services"]["server"]
    (name,) = server["secrets"]
    assert flags(server["command"])["--user-keys-file"] == f"/run/secrets/{name}"
    source = compose["secrets"][name]["file"]
    assert source == "${AISLE_USER_KEYS_PATH:-./user-keys}"
    # The default file next to compose.yaml is never committed nor copied into an image.
    ignored = (DEPLOY.parent / ".gitignore").read_text().splitlines()
    assert "/deploy/user-keys" in ignored
    assert "!deploy/user-keys" not in (DEPLOY.parent / ".containerignore").read_text()
    docs = (DEPLOY.parent / "docs" / "deploy.md").read_text()
    assert "deploy/user-keys" in docs and "create secret generic aisle-user-keys" in docs
