"""The Kubernetes manifests' command lines work: the small overlay's shard servers and router,
started here as processes with exactly their rendered args (only addresses, ports and paths
mapped to this machine), serve a search, answer the health check and take a Reload with the
admin token from the Secret's file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from engine.client import AisleClient
from tests.deploy.kustomize import pod_specs, render

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
TOKEN = "test-admin-token-0123456789"


def rendered_args(objects, kind: str, name: str) -> list[str]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    (container,) = pod_specs(obj)[0]["containers"]
    return list(container["args"])


def localize(args: list[str], env: dict[str, str], paths: dict[str, str], port_file: Path):
    """Expand $(VAR) as the kubelet does, bind to 127.0.0.1 on free ports (written to
    `port_file`), and map the pod's paths to local ones. Any other flag passes unchanged."""
    out = []
    for a in args:
        for var, value in env.items():
            a = a.replace(f"$({var})", value)
        flag, _, value = a.partition("=")
        if flag == "--host" or flag == "--metrics-host":
            a = f"{flag}=127.0.0.1"
        elif flag in ("--port", "--metrics-port"):
            a = f"{flag}=0"
        else:
            for pod_path, local in paths.items():
                if value.startswith(pod_path):
                    a = f"{flag}={local}{value[len(pod_path) :]}"
        out.append(a)
    assert "$(" not in " ".join(out), f"unexpanded variable in {out}"
    return [*out, f"--port-file={port_file}"]


def wait_for_port(port_file: Path, process: subprocess.Popen, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        assert process.poll() is None, f"server exited with {process.returncode}"
        time.sleep(0.2)
    raise TimeoutError(f"no port in {port_file} after {timeout_s} s")


@pytest.mark.slow
def test_small_overlay_command_lines_serve_search_health_and_reload(index_root, tmp_path):
    objects = render(ROOT / "deploy" / "k8s" / "overlays" / "small")
    cluster = next(o for o in objects if o["metadata"]["name"] == "aisle-cluster")["data"]
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    keys_dir = tmp_path / "user-keys-secret"
    keys_dir.mkdir()
    (keys_dir / "user-keys").write_text("k1:test-user-key-0123456789abcdef\n")
    paths = {
        "/index": str(index_root),
        "/etc/aisle/user-keys": str(keys_dir),
        "/etc/aisle/admin": str(tmp_path),
        "/events": str(tmp_path / "events"),
    }
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    env = {**os.environ, **env}
    processes: list[subprocess.Popen] = []

    def start(name: str, args: list[str], variables: dict[str, str]) -> int:
        port_file = tmp_path / f"{name}.port"
        argv = localize(args, variables, paths, port_file)
        log = open(tmp_path / f"{name}.log", "w")  # closed when the process ends
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "engine.cli.serve", *argv],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return wait_for_port(port_file, processes[-1])

    try:
        # Shard replicas first: the router needs their addresses.
        addrs = cluster["shard-addrs"].strip()
        shard_count = int(cluster["shards"])
        for group in addrs.split(";"):
            for address in group.split(","):
                pod, statefulset = address.split(":")[0].split(".")
                args = rendered_args(objects, "StatefulSet", statefulset)
                port = start(pod, args, {"SHARDS": str(shard_count)})
                addrs = addrs.replace(address, f"127.0.0.1:{port}")
        router_args = rendered_args(objects, "Deployment", "aisle-router")
        port = start("router", router_args, {"SHARD_ADDRS": addrs, "POD_NAME": "router-0"})
        address = f"127.0.0.1:{port}"

        health = subprocess.run(
            [sys.executable, str(HEALTHCHECK), address], env=env, capture_output=True, text=True
        )
        assert health.returncode == 0, health.stderr
        assert "SERVING" in health.stdout

        with AisleClient(address) as client:
            response = client.search("lamp", 5)
            assert len(response.hits) == 5
            assert not response.partial
            with pytest.raises(grpc.RpcError) as error:
                client.reload()
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with AisleClient(address, admin_token=TOKEN) as admin:
            reply = admin.reload()  # the router reloads every shard replica, then itself
            assert reply.index.version == reply.previous_version == 1
            assert len(admin.search("lamp", 5).hits) == 5
        assert (tmp_path / "events" / "router-0").is_dir()  # --events-dir=/events/$(POD_NAME)
        # The router read the Secret's user keys: it does not warn that ids are kept raw.
        assert "no user keys" not in (tmp_path / "router.log").read_text()
    finally:
        for process in processes:  # SIGTERM: each drains and exits 0
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=30))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
    assert codes == [0] * len(processes)
