"""The compaction service as a streamlet job: `streamlet submit compaction_service`.

The job's one long-running operator is a source that never emits: when a subtask opens, it starts
a `CompactionServer` on the task manager's event loop (CPU work still runs in the service's
worker processes) and registers `host:port` with the job manager through
`RuntimeContext.register_endpoint`, so `list`/`status` show it and jobs configured with
`compaction.service.address=job:compaction-service` find it. Cancelling the job stops the server.

On every compactor task manager: submitted with `-D placement.per-taskmanager=true` (and
`-D placement.taskmanager-label=compactor` for the task managers started with `--label
compactor`), the job runs one instance on each such task manager, also on those that join later,
and an instance ends with its task manager (streamlet/cluster/instances.py). Each instance binds
`compaction.service.port` itself (0: any free port; an instance is subtask 0, so never port + i)
on its own task manager's interface (`cluster.bind-host` of the task manager, unless the job was
submitted with one), as compactor pods behind a headless Service all bind one port.

Draining: the reader registers `CompactionServer.drain` with `RuntimeContext.on_drain`, so when
its task manager drains (SIGTERM) the service turns NOT_SERVING, refuses new calls with UNAVAILABLE
and finishes the calls it runs within `taskmanager.drain-grace`, while the task manager withdraws
its endpoint from the job manager's directory.

Its configuration (job keys, e.g. `-D compaction.service.port=50051`):
`compaction.service.port` (0: any free port; with parallelism p, subtask i binds port + i),
`compaction.service.workers`, `compaction.service.allowed-roots` (default: `cluster.dir`),
`cluster.bind-host` and `dfs.storage-options` (the service's own DFS access).

While it serves, its totals are Prometheus metrics (`streamlet_compaction_service_*{endpoint=...}`,
see `compaction_service.metrics`) on its task manager's `/metrics`; several services in one task
manager (parallelism > 1, or several compactor jobs) each have their own `endpoint`.
"""

import asyncio
import socket
from typing import Any

from compaction_service.metrics import SERVICE_METRICS
from compaction_service.server import CompactionServer, ServiceConfig
from compaction_service.worker_pool import CompactionFn
from statebackend.lsm.compaction_job import run_compaction
from streamlet import Job, RuntimeContext
from streamlet.config import Configuration
from streamlet.connectors import BlackholeSink
from streamlet.connectors.base import Source, SourceReader

JOB_NAME = "compaction-service"
IDLE_WAIT_S = 0.2


def service_config(
    config: Configuration, subtask_index: int, compaction_fn: CompactionFn = run_compaction
) -> ServiceConfig:
    """The service settings a subtask of the job runs with."""
    roots = [r.strip() for r in config.get("compaction.service.allowed-roots").split(",")]
    port = config.get("compaction.service.port")
    return ServiceConfig(
        allowed_roots=tuple(r for r in roots if r) or (config.get("cluster.dir"),),
        host=config.get("cluster.bind-host"),
        port=port + subtask_index if port else 0,
        workers=config.get("compaction.service.workers"),
        storage_options=config.get("dfs.storage-options"),
        token=config.get("compaction.service.token") or None,
        compaction_fn=compaction_fn,
    )


class _ServingReader(SourceReader):
    def __init__(self, context: RuntimeContext, compaction_fn: CompactionFn) -> None:
        self.context = context
        self.compaction_fn = compaction_fn
        self.server: CompactionServer | None = None

    async def open(self, position: Any | None) -> None:
        config = service_config(
            self.context.config or Configuration(), self.context.subtask_index, self.compaction_fn
        )
        self.server = CompactionServer(config)
        port = await self.server.start()
        host = socket.gethostname() if config.host in ("0.0.0.0", "::") else config.host
        SERVICE_METRICS.add(self.server, f"{host}:{port}")
        self.context.on_drain(self.server.drain)
        self.context.register_endpoint(f"{host}:{port}")

    async def read_batch(self, max_records: int) -> list[Any]:
        await asyncio.sleep(IDLE_WAIT_S)
        return []

    def position(self) -> None:
        return None

    async def close(self) -> None:
        if self.server is not None:
            SERVICE_METRICS.remove(self.server)
            await self.server.stop()


class CompactionServiceSource(Source):
    """Serves compactions while the job runs; emits nothing. `compaction_fn` runs in the workers
    (another one than `run_compaction` only in tests)."""

    def __init__(self, compaction_fn: CompactionFn = run_compaction) -> None:
        self.compaction_fn = compaction_fn

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        return _ServingReader(context, self.compaction_fn)


job = Job(JOB_NAME)
job.source(CompactionServiceSource(), name="compaction-service").sink(
    BlackholeSink(), name="discard"
)
