"""deploy/k8s: the overlays render, validate against the Kubernetes schemas offline, and hang
together (probes, resources, security context, Services and selectors, the shard layout)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.kustomize import pod_specs, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/small", "overlays/large"]
# Native gRPC probes are GA since 1.27; validate against the newest schemas too.
K8S_VERSIONS = ["1.30.0", "1.35.0"]
# Secrets an operator creates from their own files (docs/deploy.md says how), never committed.
EXTERNAL_SECRETS = {"aisle-tls", "aisle-user-keys"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "CronJob"}
SERVING_KINDS = {"Deployment", "StatefulSet"}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    return obj


def arg(container: dict[str, Any], flag: str) -> str | None:
    """The value of `--flag=value` in a container's args, else None."""
    for a in container.get("args", []):
        if a.startswith(f"{flag}="):
            return a.split("=", 1)[1]
    return None


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> list[dict[str, Any]]:
    return render(K8S / request.param)


def validator():
    """kubernetes-validate (the dev extra): only the schema checks need it."""
    return pytest.importorskip(
        "kubernetes_validate", reason="the dev extra (kubernetes-validate) is not installed"
    )


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    kubernetes_validate = validator()
    for version in K8S_VERSIONS:
        for obj in rendered:
            # strict: unknown fields (a typo, a field in the wrong place) are errors too.
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_a_broken_object():
    # The check above is only worth something if the offline schemas catch mistakes.
    kubernetes_validate = validator()
    deployment = named(render(K8S / "overlays/small"), "Deployment", "aisle-router")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[0], strict=True)


def test_pods_run_as_non_root_with_a_read_only_root_and_no_capabilities(rendered):
    workloads = [o for o in rendered if o["kind"] in WORKLOAD_KINDS]
    assert {o["kind"] for o in workloads} == WORKLOAD_KINDS
    for obj in workloads:
        for pod in pod_specs(obj):
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True, obj["metadata"]["name"]
            assert context["runAsUser"] > 0
            assert context["seccompProfile"]["type"] == "RuntimeDefault"
            for container in pod["containers"]:
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, container["name"]
                assert security["allowPrivilegeEscalation"] is False
                assert security["capabilities"]["drop"] == ["ALL"]
                assert "add" not in security["capabilities"]
                # The one writable place numba's cache and scratch files need.
                assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity)


def test_every_container_requests_cpu_and_memory_and_caps_memory(rendered):
    for obj in rendered:
        for pod in pod_specs(obj):
            for container in pod["containers"]:
                resources = container["resources"]
                assert {"cpu", "memory"} <= set(resources["requests"]), obj["metadata"]["name"]
                limit = _bytes(resources["limits"]["memory"])
                assert limit >= _bytes(resources["requests"]["memory"])


def test_serving_pods_have_grpc_health_probes_on_their_serving_port(rendered):
    for obj in rendered:
        if obj["kind"] not in SERVING_KINDS:
            continue
        (container,) = pod_specs(obj)[0]["containers"]
        port = int(arg(container, "--port"))
        assert {"name": "grpc", "containerPort": port} in container["ports"]
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[probe_name]
            if "grpc" in probe:  # native gRPC probe (plaintext)
                assert probe["grpc"]["port"] == port, (obj["metadata"]["name"], probe_name)
                assert arg(container, "--tls-cert") is None, "native gRPC probes cannot do TLS"
            else:  # TLS: the image's health check, over TLS, on the same port
                command = probe["exec"]["command"]
                assert command[:2] == ["python", "/opt/aisle/healthcheck.py"]
                assert command[2] == f"127.0.0.1:{port}"
                assert arg(container, "--tls-cert") is not None
                assert any(c.startswith("--tls-ca=") for c in command)
        # A restart must not come before the pod could have loaded (startup covers loading).
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_every_service_selects_a_workload_and_its_ports(rendered):
    pods = [
        (o, o["spec"]["template"]["metadata"]["labels"], pod_specs(o)[0])
        for o in rendered
        if o["kind"] in SERVING_KINDS
    ]
    for service in by_kind(rendered, "Service"):
        selector = service["spec"]["selector"]
        matches = [(o, pod) for o, labels, pod in pods if selects(selector, labels)]
        assert matches, f"Service {service['metadata']['name']} selects no workload"
        for _, pod in matches:
            port_names = {p["name"] for c in pod["containers"] for p in c["ports"]}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in port_names


def test_statefulsets_have_a_headless_service_and_workload_selectors_match_templates(rendered):
    services = {s["metadata"]["name"]: s for s in by_kind(rendered, "Service")}
    for obj in rendered:
        if obj["kind"] not in SERVING_KINDS:
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert selects(obj["spec"]["selector"]["matchLabels"], labels)
        if obj["kind"] == "StatefulSet":
            service = services[obj["spec"]["serviceName"]]
            assert service["spec"]["clusterIP"] == "None"
            assert selects(service["spec"]["selector"], labels)


def test_hpa_pdb_and_network_policies_point_at_workloads(rendered):
    workloads = {(o["kind"], o["metadata"]["name"]): o for o in rendered}
    for hpa in by_kind(rendered, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in workloads
        assert hpa["spec"]["minReplicas"] >= 2  # one router can be drained at a time
    templates = [
        o["spec"]["template"]["metadata"]["labels"] for o in rendered if o["kind"] in SERVING_KINDS
    ]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        covered = 0
        for policy in by_kind(rendered, kind):
            selector = (
                policy["spec"]["selector"]
                if kind == "PodDisruptionBudget"
                else (policy["spec"]["podSelector"])
            )["matchLabels"]
            hits = [labels for labels in templates if selects(selector, labels)]
            assert hits, f"{kind} {policy['metadata']['name']} selects nothing"
            covered += len(hits)
        assert covered >= len(templates), f"a serving workload has no {kind}"


def test_the_shard_layout_agrees_with_the_routers_addresses(rendered):
    cluster = named(rendered, "ConfigMap", "aisle-cluster")["data"]
    n_shards = int(cluster["shards"])
    shards = sorted(
        by_kind(rendered, "StatefulSet"),
        key=lambda o: int(o["metadata"]["labels"]["aisle.dev/shard"]),
    )
    assert len(shards) == n_shards
    addrs = cluster["shard-addrs"].strip().split(";")
    assert len(addrs) == n_shards
    for i, (statefulset, group) in enumerate(zip(shards, addrs, strict=True)):
        name = statefulset["metadata"]["name"]
        assert name == f"aisle-shard-{i}"
        (container,) = pod_specs(statefulset)[0]["containers"]
        assert arg(container, "--shard") == f"{i}/$(SHARDS)"
        port = arg(container, "--port")
        replicas = statefulset["spec"]["replicas"]
        assert replicas >= 2, "one replica per shard cannot be drained without failing requests"
        expected = [
            f"{name}-{r}.{statefulset['spec']['serviceName']}:{port}" for r in range(replicas)
        ]
        assert group.split(",") == expected
    router = named(rendered, "Deployment", "aisle-router")
    (container,) = pod_specs(router)[0]["containers"]
    assert arg(container, "--shard-addrs") == "$(SHARD_ADDRS)"
    env = {e["name"]: e for e in container["env"]}
    assert env["SHARD_ADDRS"]["valueFrom"]["configMapKeyRef"]["name"] == "aisle-cluster"


def test_every_referenced_object_is_rendered_or_documented(rendered):
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for obj in rendered:
        for pod in pod_specs(obj):
            account = pod.get("serviceAccountName")
            assert account is None or ("ServiceAccount", account) in names
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    secret = volume["secret"]["secretName"]
                    if secret in EXTERNAL_SECRETS:
                        assert f"create secret generic {secret}" in docs
                    else:
                        assert ("Secret", secret) in names
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in names
            for container in pod["containers"]:
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("configMapKeyRef")
                    if ref:
                        config = named(rendered, "ConfigMap", ref["name"])
                        assert ref["key"] in config["data"]


def test_index_volume_is_read_only_for_servers(rendered):
    for obj in rendered:
        if obj["kind"] not in SERVING_KINDS:
            continue
        pod = pod_specs(obj)[0]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "index"]
        assert volume["persistentVolumeClaim"]["readOnly"] is True
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "index"]
        assert mount["readOnly"] is True and arg(pod["containers"][0], "--index") == "/index"


def test_images_are_rewritten_and_the_reindex_job_submits_its_own_image(rendered):
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "aisle"
        for pod in pod_specs(obj):
            for container in pod["containers"]:
                assert re.fullmatch(r"localhost/aisle(-spark)?:latest", container["image"])
    cron = named(rendered, "CronJob", "aisle-reindex")
    (container,) = pod_specs(cron)[0]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SPARK_IMAGE"]["value"] == container["image"]
    script = container["args"][0]
    assert "--master k8s://https://kubernetes.default.svc" in script
    assert '--shards "$SHARDS"' in script and ".reload()" in script
    # The Reload step is Python in a heredoc: at least it must compile.
    python = script.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    assert "AisleClient(" in python
    compile(python, "reindex.yaml: Reload step", "exec")
    assert env["SHARDS"]["valueFrom"]["configMapKeyRef"]["key"] == "shards"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_overlays_differ_where_they_should():
    small, large = render(K8S / "overlays/small"), render(K8S / "overlays/large")
    assert len(by_kind(small, "StatefulSet")) == 2 and len(by_kind(large, "StatefulSet")) == 4
    assert {o["metadata"].get("namespace") for o in small} == {"aisle"}
    for statefulset in by_kind(large, "StatefulSet"):
        assert statefulset["spec"]["replicas"] == 3
    binding = named(large, "RoleBinding", "aisle-spark")
    assert binding["subjects"][0]["namespace"] == "aisle"


def test_the_reindex_job_reloads_every_router_and_speaks_their_tls(rendered):
    cron = named(rendered, "CronJob", "aisle-reindex")
    pod = pod_specs(cron)[0]
    script = pod["containers"][0]["args"][0]
    assert 'getaddrinfo("aisle-router-pods", 50051' in script
    pods_service = named(rendered, "Service", "aisle-router-pods")
    assert pods_service["spec"]["clusterIP"] == "None"
    router = named(rendered, "Deployment", "aisle-router")
    assert selects(
        pods_service["spec"]["selector"], router["spec"]["template"]["metadata"]["labels"]
    )
    (container,) = pod_specs(router)[0]["containers"]
    tls_cert = arg(container, "--tls-cert")
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    if tls_cert is None:
        assert "/etc/aisle/tls" not in mounts
        return
    # The job trusts the CA of the Secret the router's certificate comes from.
    router_mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    tls_dir = str(Path(tls_cert).parent)
    router_secret = {v["name"]: v for v in pod_specs(router)[0]["volumes"]}[router_mounts[tls_dir]]
    job_secret = {v["name"]: v for v in pod["volumes"]}[mounts["/etc/aisle/tls"]]
    assert job_secret["secret"]["secretName"] == router_secret["secret"]["secretName"]


def test_the_router_pseudonymises_user_ids_with_keys_from_a_secret_and_shards_get_none(rendered):
    router = named(rendered, "Deployment", "aisle-router")
    pod = pod_specs(router)[0]
    (container,) = pod["containers"]
    keys_file = arg(container, "--user-keys-file")
    assert keys_file is not None, "the router must pseudonymise user ids (docs/privacy.md)"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(Path(keys_file).parent)]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    assert volume["secret"]["secretName"] == "aisle-user-keys"
    assert Path(keys_file).name == "user-keys"  # the key docs/deploy.md creates it under
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
    secrets = {s["metadata"]["name"] for s in by_kind(rendered, "Secret")}
    assert "aisle-user-keys" not in secrets, "the operator's keys, never a committed placeholder"
    for statefulset in by_kind(rendered, "StatefulSet"):  # shards never see user ids
        for c in pod_specs(statefulset)[0]["containers"]:
            assert arg(c, "--user-keys-file") is None
