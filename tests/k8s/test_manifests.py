"""The Kubernetes manifests in k8s/ are valid and consistent, and the Dockerfile matches them.

Schemas: every object validates, strictly (no unknown field), against the Kubernetes OpenAPI
schemas that the `kubernetes-validate` package bundles (no network), for the newest version it
ships and an older one still in support. Consistency: the kustomization names every manifest file;
every ConfigMap, Secret, volume, port and Service selector a workload or Service refers to exists;
our images are the placeholder `streamlet` that kustomize's `images:` pins; every container has
resource requests and limits; the ConfigMaps' streamlet configuration loads without an unknown key.
The optional autoscaling component (an HPA on the autoscaling gauge, its Prometheus adapter rule,
a PodDisruptionBudget, a NetworkPolicy) fits the compactor task managers, which run in the
per-task-manager mode with a termination grace above their drain grace.
"""

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamlet.cluster.taskmanager import drain_exit_bound_s
from streamlet.config import Configuration
from tests.k8s.manifests import (
    IMAGE,
    K8S_DIR,
    OPTIONAL_COMPONENTS,
    Manifests,
    container_port,
    documents,
    pod_labels,
    pod_spec,
)
from tests.support.processes import REPO_ROOT

KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
MANIFESTS = Manifests.load()
EVERYTHING = Manifests.load(components=OPTIONAL_COMPONENTS)
SUBMIT_SCRIPT = K8S_DIR / "scripts" / "submit_compaction_example.sh"
GAUGE = "streamlet_compaction_service_load"  # docs/metrics.md: the autoscaling gauge


def _name(path: Path, doc: dict[str, Any]) -> str:
    return f"{path.relative_to(K8S_DIR)}:{doc['kind']}/{doc['metadata']['name']}"


ALL_DOCUMENTS = list(documents())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    assert len(ALL_DOCUMENTS) >= 15
    for path, doc in ALL_DOCUMENTS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{_name(path, doc)}: {e.message} at {list(e.path)}") from e


def test_the_schema_check_rejects_an_unknown_field() -> None:
    deployment = yaml.safe_load(
        (K8S_DIR / "services/svc-compactor/taskmanager-session.yaml").read_text()
    )
    pod_spec(deployment)["containers"][0]["comand"] = ["streamlet"]
    with pytest.raises(kubernetes_validate.ValidationError, match="comand"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kustomization_deploys_every_manifest_once() -> None:
    listed = sorted(EVERYTHING.files)
    on_disk = sorted(
        path.resolve() for path in K8S_DIR.rglob("*.yaml") if path.name != "kustomization.yaml"
    )
    assert listed == on_disk
    keys = [(obj["kind"], obj["metadata"]["name"]) for obj in EVERYTHING.objects]
    assert len(keys) == len(set(keys)), keys
    assert MANIFESTS.namespace == "streamlet"
    assert ("Namespace", "streamlet") in keys
    components = MANIFESTS.kustomization["components"]
    assert components == ["components/demo"]
    for component in ("components/demo", *OPTIONAL_COMPONENTS):
        kustomization = yaml.safe_load((K8S_DIR / component / "kustomization.yaml").read_text())
        assert kustomization["kind"] == "Component"


def test_the_two_clusters_have_the_reference_layout() -> None:
    for cluster in ("svc-compactor", "svc-streamlet"):
        for name in ("jobmanager-service", "jobmanager-session", "taskmanager-session"):
            assert (K8S_DIR / "services" / cluster / f"{name}.yaml").is_file()
    for name in ("config_compactor", "config_streamlet"):
        assert (K8S_DIR / "configmaps" / f"{name}.yaml").is_file()


def test_images_are_placeholders_that_the_kustomization_pins() -> None:
    pinned = {image["name"]: image for image in MANIFESTS.kustomization["images"]}
    used = set()
    for workload in MANIFESTS.workloads():
        for container in pod_spec(workload)["containers"]:
            image = container["image"]
            assert ":" not in image and "/" not in image, f"{image}: set it in images: instead"
            used.add(image)
    assert used == set(pinned)
    assert IMAGE in used
    for image in pinned.values():
        assert image.get("newTag") and image["newTag"] != "latest", image


def _references(workload: dict[str, Any]) -> tuple[set[str], set[str]]:
    configs, secrets = set(), set()
    spec = pod_spec(workload)
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            configs.add(volume["configMap"]["name"])
        if "secret" in volume:
            secrets.add(volume["secret"]["secretName"])
    for container in spec["containers"]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                configs.add(source["configMapRef"]["name"])
            if "secretRef" in source:
                secrets.add(source["secretRef"]["name"])
        for var in container.get("env", []):
            ref = var.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                configs.add(ref["configMapKeyRef"]["name"])
                assert ref["configMapKeyRef"]["key"] in MANIFESTS.config_data(
                    ref["configMapKeyRef"]["name"]
                )
            if "secretKeyRef" in ref:
                secrets.add(ref["secretKeyRef"]["name"])
                assert ref["secretKeyRef"]["key"] in MANIFESTS.secret_data(
                    ref["secretKeyRef"]["name"]
                )
    return configs, secrets


def test_every_reference_resolves() -> None:
    for workload in MANIFESTS.workloads():
        configs, secrets = _references(workload)
        for name in configs:
            MANIFESTS.get("ConfigMap", name)
        for name in secrets:
            MANIFESTS.get("Secret", name)
        spec = pod_spec(workload)
        volumes = {volume["name"] for volume in spec.get("volumes", [])}
        selector = workload["spec"].get("selector", {}).get("matchLabels", {})
        labels = pod_labels(workload)
        assert all(labels.get(k) == v for k, v in selector.items()), workload["metadata"]
        for container in spec["containers"]:
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = container.get(kind)
                if probe is None:
                    continue
                for action in ("httpGet", "grpc", "tcpSocket"):
                    if action in probe:
                        port = container_port(container, probe[action]["port"])
                        declared = {p["containerPort"] for p in container.get("ports", [])}
                        assert port in declared, (workload["metadata"]["name"], kind)
    for service in MANIFESTS.of_kind("Service"):
        selector = service["spec"]["selector"]
        targets = [
            w for w in MANIFESTS.workloads()
            if all(pod_labels(w).get(k) == v for k, v in selector.items())
        ]  # fmt: skip
        assert targets, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            for target in targets:
                for container in pod_spec(target)["containers"]:
                    container_port(container, port["targetPort"])


def test_every_container_has_requests_limits_and_a_non_root_user() -> None:
    for workload in MANIFESTS.workloads():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            if container["image"] == IMAGE:
                assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user


def test_the_probes_and_the_headless_compaction_service() -> None:
    for cluster in ("compactor", "streamlet"):
        (jobmanager,) = pod_spec(MANIFESTS.workload(f"{cluster}-jobmanager"))["containers"]
        assert jobmanager["readinessProbe"]["httpGet"]["port"] == "rest"
        assert jobmanager["livenessProbe"]["httpGet"]["port"] == "rest"
    compactors = MANIFESTS.workload("compactor-taskmanager")
    assert compactors["spec"]["replicas"] >= 2
    (compactor,) = pod_spec(compactors)["containers"]
    assert compactor["readinessProbe"]["grpc"]["port"] == 50051
    service = MANIFESTS.get("Service", "streamlet-compaction")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels(compactors).items()
    assert [p["port"] for p in service["spec"]["ports"]] == [50051]


@pytest.mark.parametrize("name", ["compactor-config", "streamlet-config"])
def test_the_streamlet_configuration_files_load(name: str, tmp_path: Path) -> None:
    path = tmp_path / "streamlet.yaml"
    path.write_text(MANIFESTS.config_data(name)["streamlet.yaml"])
    config = Configuration.load(path, environ={})
    assert config.get("cluster.dir").startswith("s3://streamlet/")
    assert config.get("dfs.storage-options")["client_kwargs"]["endpoint_url"] == (
        "http://streamlet-s3:9000"
    )
    path.write_text(path.read_text() + "taskmanager.slot: 3\n")
    with pytest.raises(ValueError, match="unknown configuration key 'taskmanager.slot'"):
        Configuration.load(path, environ={})


def test_the_dockerfile_installs_streamlet_as_a_non_root_user() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    copied = re.findall(r"^COPY (\S+) ", dockerfile, re.M)
    for package in ("streamlet", "statebackend", "compaction_service", "jobs"):
        assert package in copied
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


@pytest.mark.parametrize("script", sorted((K8S_DIR / "scripts").glob("*.sh")))
def test_the_scripts_are_valid_bash(script: Path) -> None:
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


def _selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    return all(pod_labels(workload).get(k) == v for k, v in selector.items())


def test_the_compactors_run_the_per_task_manager_service_with_a_drain_grace() -> None:
    compactors = MANIFESTS.workload("compactor-taskmanager")
    (container,) = pod_spec(compactors)["containers"]
    args = container["args"]
    label = args[args.index("--label") + 1]
    script = SUBMIT_SCRIPT.read_text()
    assert f"COMPACTOR_LABEL=${{COMPACTOR_LABEL:-{label}}}" in script
    assert '-D "placement.per-taskmanager=true"' in script
    assert '-D "placement.taskmanager-label=$COMPACTOR_LABEL"' in script
    config_file = MANIFESTS.config_data("compactor-config")["streamlet.yaml"]
    config = Configuration(yaml.safe_load(config_file))
    assert config.get("taskmanager.drain-grace") >= 30_000  # compactions take time to finish


@pytest.mark.parametrize("cluster", ["compactor", "streamlet"])
def test_a_task_managers_termination_grace_covers_its_drain_and_exit(cluster: str) -> None:
    config_file = MANIFESTS.config_data(f"{cluster}-config")["streamlet.yaml"]
    config = Configuration(yaml.safe_load(config_file))
    task_managers = MANIFESTS.workload(f"{cluster}-taskmanager")
    grace_period_s = pod_spec(task_managers)["terminationGracePeriodSeconds"]
    assert grace_period_s >= drain_exit_bound_s(config)  # the drain and the exit fit in


def test_the_task_managers_carry_scrape_annotations_for_their_metrics_port() -> None:
    for name in ("compactor-taskmanager", "streamlet-taskmanager"):
        workload = MANIFESTS.workload(name)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        (container,) = pod_spec(workload)["containers"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == container_port(container, "health")
        assert "--port" in container["args"]  # the task manager serves /metrics there


def test_the_autoscaler_scales_the_compactors_on_the_gauge_the_adapter_serves() -> None:
    hpa = EVERYTHING.get("HorizontalPodAutoscaler", "compactor-taskmanager")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    workload = EVERYTHING.workload(target["name"])
    assert (target["kind"], target["apiVersion"]) == (workload["kind"], workload["apiVersion"])
    assert workload is EVERYTHING.workload("compactor-taskmanager")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == GAUGE
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "800m"}
    assert "target average value of 0.8" in (REPO_ROOT / "docs" / "metrics.md").read_text()

    adapter = EVERYTHING.config_data("streamlet-prometheus-adapter-rules")
    (rule,) = yaml.safe_load(adapter["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith(f"{GAUGE}{{")
    assert rule["name"]["as"] == GAUGE and re.fullmatch(rule["name"]["matches"], GAUGE)
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]


def test_the_disruption_budget_and_the_network_policy_fit_the_compactors() -> None:
    compactors = EVERYTHING.workload("compactor-taskmanager")
    jobs_task_managers = EVERYTHING.workload("streamlet-taskmanager")
    pdb = EVERYTHING.get("PodDisruptionBudget", "compactor-taskmanager")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], compactors)
    assert pdb["spec"]["maxUnavailable"] == 1

    policy = EVERYTHING.get("NetworkPolicy", "compactor-taskmanager")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], compactors)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (container,) = pod_spec(compactors)["containers"]
    grpc_port = container_port(container, "grpc")

    def admits_grpc(port: dict[str, Any]) -> bool:
        return port["port"] <= grpc_port <= port.get("endPort", port["port"])

    grpc_rules = [
        rule for rule in policy["spec"]["ingress"] if any(admits_grpc(p) for p in rule["ports"])
    ]
    assert len(grpc_rules) == 1  # only the streamlet cluster's task managers reach the service
    (peer,) = grpc_rules[0]["from"]
    assert set(peer) == {"podSelector"}
    assert _selects(peer["podSelector"]["matchLabels"], jobs_task_managers)
    for workload in EVERYTHING.workloads():
        if workload is not jobs_task_managers:
            assert not _selects(peer["podSelector"]["matchLabels"], workload)
    ports = {container_port(container, "health")}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            ports.discard(port["port"])
    assert not ports  # Prometheus reaches /metrics
