"""tests/deploy/kustomize.py: the kustomize features the overlays rely on, on small inputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.kustomize import render, strategic_merge

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("overlay", ["base", "overlays/small", "overlays/large"])
def test_the_renderer_agrees_with_kubectl_kustomize(overlay):
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, check=True
    ).stdout
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out) if o}
    mine = {(o["kind"], o["metadata"]["name"]): o for o in render(K8S / overlay)}
    assert mine == theirs


def test_strategic_merge_merges_containers_by_name_and_replaces_scalar_lists():
    base = {"containers": [{"name": "a", "args": ["x", "y"], "env": [{"name": "E", "value": "1"}]}]}
    patch = {"containers": [{"name": "a", "args": ["z"], "env": [{"name": "F", "value": "2"}]}]}
    merged = strategic_merge(base, patch)
    assert merged["containers"][0]["args"] == ["z"]
    assert [e["name"] for e in merged["containers"][0]["env"]] == ["F", "E"]  # kustomize's order
    assert base["containers"][0]["args"] == ["x", "y"]  # inputs are not modified


def test_strategic_merge_patch_replace_drops_the_old_map():
    base = {"readinessProbe": {"grpc": {"port": 1}, "periodSeconds": 5}}
    patch = {"readinessProbe": {"$patch": "replace", "exec": {"command": ["true"]}}}
    assert strategic_merge(base, patch) == {"readinessProbe": {"exec": {"command": ["true"]}}}


def test_render_refuses_kustomize_features_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplicas: []\n")
    with pytest.raises(ValueError, match="replicas"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("patches:\n  - path: p.yaml\n")
    (tmp_path / "p.yaml").write_text("kind: Service\nmetadata: {name: nothing}\n")
    with pytest.raises(ValueError, match="matches no object"):
        render(tmp_path)
