"""Remote compaction, wired where the runtime assembles a program.

`backend_config(config)` gives the state backend settings a program runs with: the
configuration's (`Configuration.backend_config`) and, with `compaction.mode: remote`, the
compaction service's client registered as the `remote` compaction mode, and the function that
answers `job:<name>` addresses (backend option `compaction_job_lookup`): inside a task manager,
its copy of the job manager's endpoint directory, refreshed by every heartbeat
(`streamlet.cluster.endpoints.current_lookup()`, set around the jobs it runs); anywhere else
(`streamlet run`, a program calling `execute_job`, `streamlet demo`, the benchmarks) the job
manager at `cluster.jobmanager`, asked over its REST API (with `cluster.token`) from the
resolver's thread.

Every way of running a job builds an `Execution` (`streamlet.executor`, and the cluster's
`DistributedExecution`), which calls this once: the one place the mode is registered; importing
`streamlet.config` registers nothing.
"""

import dataclasses
import functools
from typing import TYPE_CHECKING

from statebackend import BackendConfig
from statebackend.lsm.compactor import register_compaction_mode
from streamlet.config import Configuration

if TYPE_CHECKING:
    from streamlet.cluster.endpoints import JobManagerLookup


def backend_config(config: Configuration) -> BackendConfig:
    """The state backend settings of a program run with `config` (see the module docstring)."""
    settings = config.backend_config()
    if config.get("compaction.mode") != "remote":
        return settings
    from compaction_service.client import remote_compactor
    from streamlet.cluster.endpoints import current_lookup

    register_compaction_mode("remote", remote_compactor)
    lookup = current_lookup() or _job_manager(
        config.get("cluster.jobmanager"), config.get("cluster.token")
    )
    options = {**settings.options, "compaction_job_lookup": lookup.job_endpoints}
    return dataclasses.replace(settings, options=options)


@functools.cache
def _job_manager(url: str, token: str) -> "JobManagerLookup":
    """One lookup per job manager, so that the programs of a process share its resolvers."""
    from streamlet.cluster.endpoints import JobManagerLookup

    return JobManagerLookup(url, token)
