"""What a task manager's and the job manager's `/metrics` export, scraped from real processes: the
compaction debt of a running job's LSM database (labelled by job, operator and subtask), a
compaction service's queue, workers and autoscaling gauge (equal to its formula), all in a
Prometheus exposition that parses, with label names that follow Prometheus' conventions, and every
metric described in docs/metrics.md."""

import re
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.harness import Cluster, fetch
from tests.support.ports import free_port

JOBS = Path(__file__).parent / "jobs"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Prometheus sets these on every scraped series itself; a target must not use them.
RESERVED_LABELS = {"job", "instance"}


def scrape(url: str) -> dict[str, Metric]:
    status, text = fetch("GET", url)
    assert status == 200, text
    return {family.name: family for family in text_string_to_metric_families(text)}


def series(family: Metric, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
    """A family's samples named `<family><suffix>`: sorted labels -> value."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if s.name == family.name + suffix
    }


def check_conventions(families: dict[str, Metric]) -> None:
    for family in families.values():
        assert METRIC_NAME.fullmatch(family.name), family.name
        for sample in family.samples:
            for label in sample.labels:
                assert LABEL_NAME.fullmatch(label) and not label.startswith("__"), label
                assert label not in RESERVED_LABELS, f"{sample.name} has the label {label!r}"
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name


def documented(family: Metric, docs: str) -> bool:
    name = family.name + ("_total" if family.type == "counter" else "")
    if name.startswith("streamlet_taskmanager_job_"):  # documented as the job manager's
        return "`streamlet_taskmanager_job_*_total`" in docs and documented_as(
            name.replace("streamlet_taskmanager_job_", "streamlet_job_"), docs
        )
    return documented_as(name, docs)


def documented_as(name: str, docs: str) -> bool:
    return f"| `{name}` |" in docs


def test_task_manager_exports_debt_and_service_load_as_documented(cluster: Cluster) -> None:
    cluster.start_taskmanager(slots=2)
    port = free_port()
    cluster.submit(
        "compaction_service",
        "-D", f"compaction.service.port={port}",
        "-D", "compaction.service.workers=1",
        "-D", "checkpoint.interval=0",
    )  # fmt: skip
    writer = cluster.submit(
        str(JOBS / "lsm_writes.py"),
        "-D", "state.backend=lsm",
        "-D", 'state.options={"lsm.memtable_bytes": 65536, "lsm.l0_compaction_trigger": 2}',
        "-D", "checkpoint.interval=0",
    )  # fmt: skip
    cluster.wait_job(
        writer, lambda j: j["metrics"].get("compactions_local", 0) >= 1, timeout=90
    )  # the database has flushed and compacted
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    tm = scrape(managers["task_managers"][0]["metrics_url"])
    jm = scrape(cluster.url + "/metrics")

    database = {"job_id": writer, "job_name": "lsm-writes", "subtask": "0"}
    l0_files = series(tm["streamlet_lsm_l0_files"])
    pending = series(tm["streamlet_lsm_pending_compaction_bytes"])
    assert len(l0_files) == 1 and set(pending) == set(l0_files)  # one database
    (db_labels,) = l0_files
    labels = dict(db_labels)
    assert re.fullmatch(r"\d+-latest", labels.pop("operator"))  # the keyed operator's uid
    assert labels == database
    assert 0 <= l0_files[db_labels] < 1000 and pending[db_labels] >= 0
    stalls = series(tm["streamlet_lsm_write_stalls"], "_total")
    seconds = series(tm["streamlet_lsm_write_stall_seconds"], "_total")
    kinds = {(dict(k)["kind"], dict(k)["cause"]) for k in stalls}
    assert kinds == {("slowdown", "l0_files"), ("stop", "l0_files"), ("stop", "memtables")}
    assert set(seconds) == set(stalls)
    assert all(value >= 0 for value in [*stalls.values(), *seconds.values()])

    endpoint = (("endpoint", f"127.0.0.1:{port}"),)

    def service(name: str) -> float:
        return series(tm["streamlet_compaction_service_" + name])[endpoint]

    assert service("workers") == 1
    assert service("load") == (service("workers_busy") + service("queued")) / service("workers")
    assert series(tm["streamlet_compaction_service_task_wait_seconds"], "_count")[endpoint] >= 0

    docs = DOCS.read_text()
    for families in (tm, jm):
        check_conventions(families)
        undocumented = [
            name
            for name, family in families.items()
            if name.startswith("streamlet_") and not documented(family, docs)
        ]
        assert undocumented == []
    assert "streamlet_compaction_client_fallbacks" in tm  # compaction_service.metrics is loaded
    assert cluster.cli("cancel", writer).returncode == 0
