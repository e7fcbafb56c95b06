"""The manifests' commands and configuration, launched as local processes, compact remotely.

The job-manager, task-manager and bucket-creation containers of k8s/ run as local processes with
the command, environment and mounted configuration the Deployments, ConfigMaps and Secrets give
them (`tests.k8s.manifests`: Service names on loopback, free ports, the demo's S3 store replaced by
a moto server). Then k8s/scripts/submit_compaction_example.sh, the submit steps of
run_compaction_example.sh, runs against the two job managers with its own defaults (the
compaction address through the same Service-to-loopback mapping): it submits the compaction
service once, in the per-task-manager mode, and the compactor pod (labelled by its Deployment)
runs it by itself. The compaction service's log and the job's status show remote compactions,
and the compactor pod's /metrics the gauge the HorizontalPodAutoscaler of the autoscaling
component targets. One replica of each Deployment is launched: the
replicas are identical, and on one host they could not share the compaction service's port.

Mutations of the manifests (a command, a configuration key, an environment variable, a Secret
reference) must stop the launch: the runtime rejects unknown configuration keys and commands, and
the launcher rejects what Kubernetes would not start.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.cluster.harness import fetch
from tests.k8s.manifests import (
    K8S_DIR,
    OPTIONAL_COMPONENTS,
    LaunchError,
    LocalPods,
    LoopbackNetwork,
    Manifests,
    image_environment,
    mutated_copy,
)
from tests.support.ports import free_port
from tests.support.processes import ProcessRunner
from tests.support.s3_server import S3Server

SUBMIT_SCRIPT = K8S_DIR / "scripts" / "submit_compaction_example.sh"
CLUSTER_PODS = [
    "compactor-jobmanager",
    "compactor-taskmanager",
    "streamlet-jobmanager",
    "streamlet-taskmanager",
]
BUCKET_JOB = "streamlet-s3-create-bucket"
REGISTERED = re.compile(r"task manager \w+ registered with")


def _script_default(name: str) -> str:
    """The default the submit script gives a setting (`NAME=${NAME:-default}`)."""
    match = re.search(rf"^{name}=\$\{{{name}:-([^}}]*)\}}$", SUBMIT_SCRIPT.read_text(), re.M)
    assert match, f"{SUBMIT_SCRIPT.name} has no default for {name}"
    return match.group(1)


def _pods(
    manifests: Manifests, process_runner: ProcessRunner, tmp_path: Path, s3_port: int
) -> LocalPods:
    network = LoopbackNetwork.build(
        manifests, [*CLUSTER_PODS, BUCKET_JOB], substitutes={"streamlet-s3": s3_port}
    )
    return LocalPods(manifests, network, process_runner, tmp_path / "pods")


def test_the_manifests_run_the_remote_compaction_example(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    manifests = Manifests.load()
    with S3Server(log_dir=tmp_path / "s3") as s3:
        pods = _pods(manifests, process_runner, tmp_path, s3.port)
        bucket = pods.launch(BUCKET_JOB)
        assert bucket.process.wait(timeout=60) == 0, bucket.process.describe("failed")

        jobmanagers = {name: pods.launch(name) for name in CLUSTER_PODS if "jobmanager" in name}
        for pod in jobmanagers.values():
            pod.wait_probe("readinessProbe")
            assert pod.probe("livenessProbe")
        compactor_tm = pods.launch("compactor-taskmanager")
        streamlet_tm = pods.launch("streamlet-taskmanager")
        for pod in (compactor_tm, streamlet_tm):
            pod.process.wait_for_output(REGISTERED, timeout=30)
            assert pod.probe("livenessProbe")
        streamlet_tm.wait_probe("readinessProbe")
        # Not ready (so not behind the headless Service) until a compaction service runs in it.
        assert not compactor_tm.probe("readinessProbe")

        network = pods.network
        tokens = {
            name: manifests.secret_data(f"{name}-cluster-token")["token"]
            for name in ("compactor", "streamlet")
        }
        # The script's port is the compactor pods' container port (a mismatch is a KeyError).
        script_port = int(_script_default("COMPACTION_PORT"))
        compaction_port = network.container_ports[("compactor-taskmanager", script_port)]
        settings = {
            "COMPACTOR_JOBMANAGER": f"http://{network.rewrite('compactor-jobmanager:8081')}",
            "COMPACTOR_TOKEN": tokens["compactor"],
            "STREAMLET_JOBMANAGER": f"http://{network.rewrite('streamlet-jobmanager:8081')}",
            "STREAMLET_TOKEN": tokens["streamlet"],
            "COMPACTION_PORT": str(compaction_port),
            "COMPACTION_ADDRESS": network.rewrite(_script_default("COMPACTION_ADDRESS")),
            "COMPACTION_WORKERS": "1",
            "WAIT_SECONDS": "90",
        }
        image_env = image_environment({}, tmp_path)
        script_env = {k: v for k, v in image_env.items() if v is not None} | settings
        submitted = subprocess.run(
            ["bash", str(SUBMIT_SCRIPT)],
            env=script_env,
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )
        output = submitted.stdout + submitted.stderr
        logs = "\n".join(p.process.describe("log") for p in (compactor_tm, streamlet_tm))
        assert submitted.returncode == 0, output + logs

        serving = re.search(r"compactor job (\w+) serving at (\S+)", output)
        assert serving and serving.group(2) == f"127.0.0.1:{compaction_port}", output
        example = re.search(r"example job (\w+): (\d+) remote compactions", output)
        assert example and int(example.group(2)) > 0, output
        assert compactor_tm.probe("readinessProbe")  # now listed behind streamlet-compaction

        compactor_tm.process.wait_for_output(
            "perform compaction on compaction-service side", timeout=10
        )
        hpa = Manifests.load(components=OPTIONAL_COMPONENTS).get(
            "HorizontalPodAutoscaler", "compactor-taskmanager"
        )
        gauge = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        metrics_url = f"http://127.0.0.1:{compactor_tm.local_port('health')}/metrics"
        status, metrics = fetch("GET", metrics_url, token=tokens["compactor"])
        assert status == 200 and re.search(rf"^{gauge}\{{endpoint=", metrics, re.M), metrics
        streamlet_tm.process.wait_for_output("invokeCompactionService", timeout=10)
        status = subprocess.run(
            [
                "streamlet",
                "status",
                example.group(1),
                "--jobmanager",
                settings["STREAMLET_JOBMANAGER"],
            ],
            env={**script_env, "STREAMLET_CLUSTER_TOKEN": tokens["streamlet"]},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        job = json.loads(status.stdout)
        assert job["name"] == "paper-job"
        assert job["metrics"]["compactions_remote"] > 0
        assert job["config"]["state.backend"] == "lsm"  # from the streamlet ConfigMap
        assert job["config"]["compaction.mode"] == "remote"


MUTATIONS = {
    "a misspelt configuration key": (
        "configmaps/config_compactor.yaml",
        ("taskmanager.slots: 1", "taskmanager.slot: 1"),
        "compactor-taskmanager",
        "unknown configuration key 'taskmanager.slot'",
    ),
    "a misspelt nested configuration key": (
        "configmaps/config_streamlet.yaml",
        ("    dfs.storage-options:", "    dfs.storage-option:"),
        "streamlet-jobmanager",
        "unknown configuration key",
    ),
    "a misspelt command": (
        "services/svc-compactor/jobmanager-session.yaml",
        ('args: ["jobmanager",', 'args: ["jobmanger",'),
        "compactor-jobmanager",
        "invalid choice: 'jobmanger'",
    ),
    "a misspelt executable": (
        "services/svc-streamlet/taskmanager-session.yaml",
        ('command: ["streamlet"]', 'command: ["streamlit"]'),
        "streamlet-taskmanager",
        "No such file or directory",
    ),
    "a misspelt environment variable": (
        "services/svc-streamlet/taskmanager-session.yaml",
        ("- name: STREAMLET_CLUSTER_BIND_HOST", "- name: STREAMLET_CLUSTER_BIND_HOTS"),
        "streamlet-taskmanager",
        "STREAMLET_CLUSTER_BIND_HOTS names no configuration key",
    ),
    "a missing token": (
        "services/svc-streamlet/jobmanager-session.yaml",
        ("- name: STREAMLET_CLUSTER_TOKEN", "- name: CLUSTER_TOKEN"),
        "streamlet-jobmanager",
        "token",
    ),
    "a misspelt Secret key": (
        "services/svc-compactor/taskmanager-session.yaml",
        ("key: token", "key: tokn"),
        "compactor-taskmanager",
        "no key 'tokn'",
    ),
    "a misspelt config file path": (
        "services/svc-compactor/taskmanager-session.yaml",
        ("/etc/streamlet/streamlet.yaml", "/etc/streamlet/streamlet.yml"),
        "compactor-taskmanager",
        "cannot read configuration file",
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_broken_manifest_fails_the_launch(
    mutation: str, process_runner: ProcessRunner, tmp_path: Path
) -> None:
    relative, edit, workload, error = MUTATIONS[mutation]
    manifests = Manifests.load(mutated_copy(tmp_path / "k8s", {relative: edit}))
    pods = _pods(manifests, process_runner, tmp_path, free_port())
    try:
        pod = pods.launch(workload)
    except (LaunchError, OSError) as e:
        assert error in str(e)
        return
    assert pod.process.wait(timeout=30) != 0, pod.process.describe("did not fail")
    assert error in pod.process.output(), pod.process.describe(f"did not say {error!r}")
