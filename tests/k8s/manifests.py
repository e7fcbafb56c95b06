"""k8s/ read the way Kubernetes reads it, and its containers launched as local processes.

`Manifests.load(root)` follows `kustomization.yaml` (its resources and components) and returns the
objects `kubectl apply -k` would create; `components=` adds optional components (as a user adds
them to `components:`), e.g. `OPTIONAL_COMPONENTS`. `LocalPods` turns a workload's container
into a local process with exactly what the manifests give it:

- command and args, with Kubernetes' `$(VAR)` expansion;
- the environment: `value`, `valueFrom` (ConfigMap and Secret keys, `status.podIP`,
  `metadata.name`/`namespace`) and `envFrom` (ConfigMaps, Secrets); nothing is inherited from the
  test's own environment but PATH (the virtualenv, standing in for the image), PYTHONPATH (this
  checkout) and the locale;
- mounted ConfigMaps and Secrets written as files, and emptyDirs as directories, under a
  per-pod temporary root: an absolute mount path in an argument or an environment value becomes
  the matching local path (`/etc/streamlet/streamlet.yaml` -> `<pod root>/etc/streamlet/...`).

The pod network is mapped to loopback (`LoopbackNetwork`): every container port of a launched
workload gets a free 127.0.0.1 port; a Service reference `NAME[.NAMESPACE[.svc...]]:PORT` in a
ConfigMap file, an environment value or an argument becomes `127.0.0.1:<the local port of the
container port the Service targets>`; `0.0.0.0` (listen on the pod's interfaces) becomes
`127.0.0.1`; `status.podIP` is `127.0.0.1`; and `--port N` in a container's arguments, for N one
of its container ports, becomes the local port. Services in front of third-party images that
tests do not launch (the demo's S3 store) are mapped to local stand-ins (`substitutes`).

What Kubernetes would refuse (a missing ConfigMap, Secret or key, a probe on an undeclared port) is
a `LaunchError` here. So is a `STREAMLET_*` variable that names no configuration key: the runtime
ignores unknown environment variables (it rejects unknown keys in files and `-D` only), so without
this check a misspelt variable would silently change nothing.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamlet.config import OPTIONS
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import REPO_ROOT, ManagedProcess, ProcessRunner

K8S_DIR = REPO_ROOT / "k8s"
IMAGE = "streamlet"
"""Our own containers' image name in the manifests (kustomize's `images:` sets the real one)."""
IMAGE_WORKDIR = "/home/streamlet"
"""The Dockerfile's final WORKDIR: the containers' working directory."""
KNOWN_ENV_VARS = {option.env_var for option in OPTIONS}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
OPTIONAL_COMPONENTS = ("components/autoscaling",)
"""Components k8s/ ships that its kustomization leaves out (docs/kubernetes.md)."""


class LaunchError(RuntimeError):
    """The manifests give a container something Kubernetes (or this launcher) cannot run."""


# -- reading the kustomization ------------------------------------------------------------------


def _read_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@dataclass
class Manifests:
    """The objects of a kustomization, and the files they came from."""

    root: Path
    kustomization: dict[str, Any]
    objects: list[dict[str, Any]]
    files: list[Path]

    @classmethod
    def load(cls, root: Path = K8S_DIR, components: tuple[str, ...] = ()) -> Manifests:
        kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
        kustomization["components"] = [*kustomization.get("components", []), *components]
        objects: list[dict[str, Any]] = []
        files: list[Path] = []
        cls._collect(root, kustomization, objects, files)
        namespace = kustomization.get("namespace")
        if namespace:
            for obj in objects:
                if obj["kind"] != "Namespace":
                    obj["metadata"]["namespace"] = namespace
        return cls(root, kustomization, objects, files)

    @classmethod
    def _collect(
        cls,
        base: Path,
        kustomization: Mapping[str, Any],
        objects: list[dict[str, Any]],
        files: list[Path],
    ) -> None:
        for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
            path = (base / entry).resolve()
            if path.is_dir():
                cls._collect(path, yaml.safe_load((path / "kustomization.yaml").read_text()),
                             objects, files)  # fmt: skip
            else:
                files.append(path)
                objects.extend(_read_yaml_documents(path))

    @property
    def namespace(self) -> str:
        return str(self.kustomization.get("namespace", "default"))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        raise LaunchError(f"no {kind} named {name!r} in the manifests")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def workloads(self) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] in WORKLOAD_KINDS]

    def workload(self, name: str) -> dict[str, Any]:
        for obj in self.workloads():
            if obj["metadata"]["name"] == name:
                return obj
        raise LaunchError(f"no workload named {name!r} in the manifests")

    def config_data(self, name: str) -> dict[str, str]:
        return dict(self.get("ConfigMap", name).get("data", {}))

    def secret_data(self, name: str) -> dict[str, str]:
        secret = self.get("Secret", name)
        data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        data.update(secret.get("stringData", {}))
        return data


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Mapping[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"].get("labels", {}))


def container_port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as the container port number."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    if isinstance(port, int):
        return port
    raise LaunchError(f"container {container['name']!r} declares no port named {port!r}")


# -- the pod network on loopback ----------------------------------------------------------------


@dataclass
class LoopbackNetwork:
    """Container ports and Services of the manifests mapped to free 127.0.0.1 ports."""

    manifests: Manifests
    container_ports: dict[tuple[str, int], int] = field(default_factory=dict)
    services: dict[tuple[str, int], int] = field(default_factory=dict)

    @classmethod
    def build(
        cls, manifests: Manifests, launched: list[str], substitutes: Mapping[str, int]
    ) -> LoopbackNetwork:
        """Ports for the workloads named in `launched`; `substitutes` maps other Services' names
        (in front of images tests do not run) to a local port."""
        network = cls(manifests)
        for name in launched:
            for container in pod_spec(manifests.workload(name))["containers"]:
                for declared in container.get("ports", []):
                    network.container_ports[(name, int(declared["containerPort"]))] = free_port()
        for service in manifests.of_kind("Service"):
            service_name = service["metadata"]["name"]
            for port in service["spec"]["ports"]:
                key = (service_name, int(port["port"]))
                if service_name in substitutes:
                    network.services[key] = substitutes[service_name]
                    continue
                target = network._target(service, port.get("targetPort", port["port"]), launched)
                if target is not None:
                    network.services[key] = target
        return network

    def _target(
        self, service: Mapping[str, Any], target: int | str, launched: list[str]
    ) -> int | None:
        selector = service["spec"].get("selector", {})
        for name in launched:
            workload = self.manifests.workload(name)
            labels = pod_labels(workload)
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                for container in pod_spec(workload)["containers"]:
                    try:
                        number = container_port(container, target)
                    except LaunchError:
                        continue
                    if (name, number) in self.container_ports:
                        return self.container_ports[(name, number)]
                raise LaunchError(
                    f"Service {service['metadata']['name']!r} targets port {target!r}, which "
                    f"no container of {name!r} declares"
                )
        return None

    def service_names(self) -> list[str]:
        return sorted({obj["metadata"]["name"] for obj in self.manifests.of_kind("Service")})

    def rewrite(self, text: str) -> str:
        """Service references to their local ports; `0.0.0.0` to 127.0.0.1."""
        namespace = re.escape(self.manifests.namespace)
        names = "|".join(re.escape(name) for name in self.service_names())
        pattern = re.compile(
            rf"(?<![\w.-])({names})(?:\.{namespace}(?:\.svc(?:\.cluster\.local)?)?)?:(\d+)\b"
        )

        def local(match: re.Match[str]) -> str:
            key = (match.group(1), int(match.group(2)))
            if key not in self.services:
                raise LaunchError(
                    f"{match.group(0)!r}: Service {key[0]!r} has no port {key[1]} "
                    "(or nothing behind it is launched)"
                )
            return f"{LOOPBACK}:{self.services[key]}"

        return pattern.sub(local, text).replace("0.0.0.0", LOOPBACK)


# -- containers as local processes --------------------------------------------------------------


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, text)


@dataclass
class PodProcess:
    """One launched container: its process, the manifest it came from, and the local ports."""

    workload: str
    container: dict[str, Any]
    process: ManagedProcess
    network: LoopbackNetwork
    env: dict[str, str]

    def local_port(self, port: int | str) -> int:
        number = container_port(self.container, port)
        try:
            return self.network.container_ports[(self.workload, number)]
        except KeyError:
            raise LaunchError(f"{self.workload} declares no container port {number}") from None

    def probe(self, kind: str = "readinessProbe", timeout: float = 3.0) -> bool:
        """Run the container's probe once (as the kubelet would); True if it passes."""
        spec = self.container.get(kind)
        if spec is None:
            raise LaunchError(f"{self.workload}/{self.container['name']} has no {kind}")
        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                url = f"http://{LOOPBACK}:{self.local_port(get['port'])}{get.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return 200 <= response.status < 400
            if "grpc" in spec:
                target = f"{LOOPBACK}:{self.local_port(spec['grpc']['port'])}"
                with grpc.insecure_channel(target) as channel:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=spec["grpc"].get("service", "")),
                        timeout=timeout,
                    )
                return answer.status == health_pb2.HealthCheckResponse.SERVING
            if "tcpSocket" in spec:
                port = self.local_port(spec["tcpSocket"]["port"])
                with socket.create_connection((LOOPBACK, port), timeout=timeout):
                    return True
        except LaunchError:
            raise
        except Exception:
            return False
        raise LaunchError(f"unsupported {kind} {spec}")

    def wait_probe(self, kind: str = "readinessProbe", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.probe(kind):
            if not self.process.running:
                raise LaunchError(self.process.describe(f"exited before its {kind} passed"))
            if time.monotonic() > deadline:
                raise LaunchError(self.process.describe(f"{kind} did not pass in {timeout}s"))
            time.sleep(0.1)


class LocalPods:
    """Launches the manifests' containers with `runner`, one pod root per launch under `root`."""

    def __init__(
        self,
        manifests: Manifests,
        network: LoopbackNetwork,
        runner: ProcessRunner,
        root: Path,
    ) -> None:
        self.manifests = manifests
        self.network = network
        self.runner = runner
        self.root = root
        self._launches = 0

    def launch(self, workload_name: str, container_name: str | None = None) -> PodProcess:
        workload = self.manifests.workload(workload_name)
        spec = pod_spec(workload)
        containers = spec["containers"]
        container = next((c for c in containers if container_name in (None, c["name"])), None)
        if container is None:
            raise LaunchError(f"{workload_name} has no container {container_name!r}")
        if container["image"] != IMAGE:
            raise LaunchError(f"{workload_name} runs {container['image']!r}, not our image")
        self._launches += 1
        pod_name = f"{workload_name}-{self._launches}"
        pod_root = self.root / pod_name
        mounts = self._mount(spec, container, pod_root)
        env = self._environment(container, pod_name, mounts)
        argv = [
            self._localise(expand(part, env), mounts)
            for part in [*container.get("command", []), *container.get("args", [])]
        ]
        if not argv:
            raise LaunchError(
                f"{workload_name}: no command (the image's entrypoint is not run here)"
            )
        argv = self._map_listen_ports(workload_name, container, argv)
        workdir = pod_root / container.get("workingDir", IMAGE_WORKDIR).lstrip("/")
        workdir.mkdir(parents=True, exist_ok=True)
        process = self.runner.start(
            argv, name=pod_name, env=image_environment(env, workdir), cwd=workdir
        )
        return PodProcess(workload_name, container, process, self.network, env)

    # -- what the kubelet would do --

    def _mount(
        self, spec: Mapping[str, Any], container: Mapping[str, Any], pod_root: Path
    ) -> dict[str, Path]:
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None:
                raise LaunchError(f"volumeMount {mount['name']!r} names no volume of the pod")
            local = pod_root / mount["mountPath"].lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                files = self.manifests.config_data(volume["configMap"]["name"])
            elif "secret" in volume:
                files = self.manifests.secret_data(volume["secret"]["secretName"])
            elif "emptyDir" in volume:
                files = {}
            else:
                raise LaunchError(f"unsupported volume {volume}")
            for item in ("configMap", "secret"):
                if item in volume and "items" in volume[item]:
                    files = {i["path"]: files[i["key"]] for i in volume[item]["items"]}
            for name, content in files.items():
                (local / name).write_text(self.network.rewrite(content))
            mounts[mount["mountPath"]] = local
        return mounts

    def _environment(
        self, container: Mapping[str, Any], pod_name: str, mounts: Mapping[str, Path]
    ) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.manifests.config_data(source["configMapRef"]["name"]))
            elif "secretRef" in source:
                env.update(self.manifests.secret_data(source["secretRef"]["name"]))
        for var in container.get("env", []):
            env[var["name"]] = self._value(var, env, pod_name)
        for name in env:
            if name.startswith("STREAMLET_") and name not in KNOWN_ENV_VARS:
                raise LaunchError(
                    f"{name} names no configuration key (the runtime would ignore it silently)"
                )
        return {
            name: self._localise(self.network.rewrite(value), mounts) for name, value in env.items()
        }

    def _value(self, var: Mapping[str, Any], env: Mapping[str, str], pod_name: str) -> str:
        if "value" in var:
            return expand(str(var["value"]), env)
        source = var.get("valueFrom", {})
        try:
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                return self.manifests.config_data(ref["name"])[ref["key"]]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                return self.manifests.secret_data(ref["name"])[ref["key"]]
        except KeyError as e:
            raise LaunchError(f"{var['name']}: the referenced object has no key {e}") from None
        if "fieldRef" in source:
            fields = {
                "status.podIP": LOOPBACK,
                "metadata.name": pod_name,
                "metadata.namespace": self.manifests.namespace,
            }
            path = source["fieldRef"]["fieldPath"]
            if path not in fields:
                raise LaunchError(f"{var['name']}: unsupported fieldRef {path}")
            return fields[path]
        raise LaunchError(f"{var['name']}: unsupported value {var}")

    @staticmethod
    def _localise(value: str, mounts: Mapping[str, Path]) -> str:
        """An absolute path at or below a mount path, as the mount's local directory."""
        for mount_path, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(local) + value[len(mount_path.rstrip("/")) :]
        return value

    def _map_listen_ports(
        self, workload: str, container: Mapping[str, Any], argv: list[str]
    ) -> list[str]:
        declared = {int(p["containerPort"]) for p in container.get("ports", [])}
        mapped = list(argv)
        for i in range(1, len(mapped)):
            if mapped[i - 1] == "--port" and mapped[i].isdigit() and int(mapped[i]) in declared:
                mapped[i] = str(self.network.container_ports[(workload, int(mapped[i]))])
        return mapped


def image_environment(env: Mapping[str, str], home: Path) -> dict[str, str | None]:
    """Overrides that leave a child process exactly `env` plus what stands in for the image: the
    virtualenv's PATH, this checkout on PYTHONPATH, HOME and the locale (None unsets a variable
    inherited from the test)."""
    image_env: dict[str, str | None] = {name: None for name in os.environ}
    image_env.update(
        {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
            "PYTHONPATH": str(REPO_ROOT),
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
    )
    image_env.update(env)
    return image_env


def mutated_copy(
    destination: Path, edits: Mapping[str, tuple[str, str]], source: Path = K8S_DIR
) -> Path:
    """A copy of k8s/ at `destination` with, per file, one occurrence of `old` replaced by `new`."""
    shutil.copytree(source, destination)
    for relative, (old, new) in edits.items():
        path = destination / relative
        text = path.read_text()
        if old not in text:
            raise AssertionError(f"{relative} does not contain {old!r}")
        path.write_text(text.replace(old, new, 1))
    return destination


def documents(root: Path = K8S_DIR) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every YAML document of every manifest file below `root` (kustomizations excluded)."""
    for path in sorted(root.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _read_yaml_documents(path):
            yield path, doc
