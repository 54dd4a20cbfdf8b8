"""Render a kustomization offline: the subset of kustomize that deploy/k8s uses, and no more.

The tests must not depend on the kustomize binary (or kubectl, which embeds it), so they render
the overlays with this:
`resources` (files and directories with their own kustomization.yaml), `patches` (strategic
merge patches, optionally with a `target` whose name is a regex), `images`, `namespace` and
`labels` (metadata only). Any other field raises, so an overlay cannot silently use a feature
this renderer would ignore. Where kubectl is installed, tests/deploy/test_kustomize.py checks that
`kubectl kustomize DIR` gives the same objects.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "images",
    "namespace",
    "labels",
}

# Strategic merge: lists of objects under these keys merge item by item on the given key (the
# patchMergeKey of the Kubernetes API); every other list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """Merge `patch` into a copy of `base` the way `kubectl patch --type strategic` does for the
    fields above: maps merge, `$patch: replace` replaces a map, lists merge by MERGE_KEYS."""
    if isinstance(patch, dict) and isinstance(base, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        merged = copy.deepcopy(base)
        for name, value in patch.items():
            merged[name] = (
                strategic_merge(base[name], value, name) if name in base else (copy.deepcopy(value))
            )
        return merged
    if isinstance(patch, list) and isinstance(base, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        merged = copy.deepcopy(base)
        added = []
        for item in patch:
            for i, existing in enumerate(merged):
                if existing.get(merge_key) == item.get(merge_key):
                    merged[i] = strategic_merge(existing, item)
                    break
            else:
                added.append(copy.deepcopy(item))
        return added + merged  # new items first, in patch order, as kustomize 5 puts them
    return copy.deepcopy(patch)


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs of a workload (Deployment, StatefulSet, CronJob's job template); [] else."""
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if "template" in spec and "spec" in spec["template"]:
        return [spec["template"]["spec"]]
    return []


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    unknown = set(target) - {"kind", "name"}
    if unknown:
        raise ValueError(f"patch target fields {sorted(unknown)} are not supported")
    if "kind" in target and obj["kind"] != target["kind"]:
        return False
    return "name" not in target or re.fullmatch(target["name"], obj["metadata"]["name"]) is not None


def render(directory: str | Path) -> list[dict[str, Any]]:
    """The objects a kustomization directory renders to, in resource order."""
    directory = Path(directory)
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        raise ValueError(f"{directory}: kustomization fields {sorted(unsupported)} not supported")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects.extend(render(path) if path.is_dir() else load_documents(path))
    for entry in kustomization.get("patches", []):
        unknown = set(entry) - {"path", "target"}
        if unknown:
            raise ValueError(f"{directory}: patch fields {sorted(unknown)} not supported")
        patch = load_documents(directory / entry["path"])[0]
        target = entry.get("target") or {
            "kind": patch["kind"],
            "name": re.escape(patch["metadata"]["name"]),
        }
        hits = [i for i, obj in enumerate(objects) if _matches(obj, target)]
        if not hits:
            raise ValueError(f"{directory}: patch {entry['path']} matches no object")
        for i in hits:
            name = objects[i]["metadata"]["name"]
            # A patch changes spec and data; the object keeps its own metadata.
            body = {k: v for k, v in patch.items() if k != "metadata"}
            objects[i] = strategic_merge(objects[i], body)
            objects[i]["metadata"]["name"] = name
    for image in kustomization.get("images", []):
        for obj in objects:
            for pod in pod_specs(obj):
                for container in pod.get("containers", []) + pod.get("initContainers", []):
                    name, _, tag = container["image"].partition(":")
                    if name == image["name"]:
                        new_tag = image.get("newTag", tag)
                        container["image"] = image.get("newName", name) + (
                            f":{new_tag}" if new_tag else ""
                        )
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
    for label in kustomization.get("labels", []):
        if set(label) - {"pairs"}:
            raise ValueError(f"{directory}: only labels[].pairs is supported")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    return objects
