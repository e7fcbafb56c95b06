"""`streamlet cluster`: a job manager and N task managers as child processes, for development.

Without a configured token one is generated and printed (with the job manager's URL and a
dashboard URL that carries it), so that `streamlet submit/list/...` in another shell can use it;
a configured one (`STREAMLET_CLUSTER_TOKEN`, `cluster.token`) is used and never printed. The line
`cluster ready: ...` is printed once every task manager registered.

The children are supervised, as a cluster of separately started processes would be by its
operator. A task manager that dies is logged (which one, its pid and how it ended) and replaced:
the job manager fails its jobs over as for any lost task manager, and the replacement registers
and takes slots. If more than `MAX_TASK_MANAGER_DEATHS` task managers die within
`DEATH_WINDOW_S`, replacing them only repeats the failure: the cluster stops with exit status 1.
The job manager's death is logged and stops the cluster with exit status 1 rather than restarting
it: it owns the REST port and the HA metadata, and what kills a local job manager (the port taken,
a bad configuration, memory) usually kills the next one too; `streamlet cluster` started again
recovers the jobs from the HA metadata. SIGINT or SIGTERM stops the children (SIGTERM, then
SIGKILL after a grace period) and exits with 0; if this process is SIGKILLed, each child notices
within a second and exits (`--parent-pid`, see `statebackend.lifeline`).
"""

import asyncio
import collections
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass

from streamlet.cluster.client import ClusterError, JobManagerClient
from streamlet.cluster.commands import configure_logging
from streamlet.config import Configuration

log = logging.getLogger("streamlet.cluster.local")
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
MAX_TASK_MANAGER_DEATHS = 5
DEATH_WINDOW_S = 60.0
TOKEN_VARIABLE = "STREAMLET_CLUSTER_TOKEN"


@dataclass
class _Child:
    name: str  # "job manager", "task manager 3"
    process: asyncio.subprocess.Process
    exited: "asyncio.Task[int]"


def _how_it_ended(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


class _LocalCluster:
    def __init__(self, env: dict[str, str], port: int, slots: int | None) -> None:
        self.env = env
        self.port = port
        self.slot_args = [] if slots is None else ["--slots", str(slots)]
        self.children: list[_Child] = []
        self.task_managers_started = 0
        self._deaths: collections.deque[float] = collections.deque()

    async def _start(self, name: str, args: list[str]) -> _Child:
        # --parent-pid: the child ends itself if this process is SIGKILLed (statebackend.lifeline).
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamlet.cli", *args, "--parent-pid", str(os.getpid()),
            env=self.env,
        )
        child = _Child(name, process, asyncio.create_task(process.wait()))
        self.children.append(child)
        log.info("started the %s (pid %d)", name, process.pid)
        return child

    async def start_job_manager(self) -> _Child:
        return await self._start("job manager", ["jobmanager", "--port", str(self.port)])

    async def start_task_manager(self) -> _Child:
        self.task_managers_started += 1
        name = f"task manager {self.task_managers_started}"
        return await self._start(name, ["taskmanager", *self.slot_args])

    async def supervise(
        self, job_manager: _Child, stopping: "asyncio.Task[bool]", ready: "asyncio.Task[None]"
    ) -> int:
        """Replace dying task managers until `stopping` completes (0), or the job manager or too
        many task managers die, or the cluster is not `ready` in time (1)."""
        while True:
            waits = {stopping, *(child.exited for child in self.children)}
            if not ready.done():
                waits.add(ready)
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                return 0
            if ready in done and ready.exception() is not None:
                log.error("%s: stopping the cluster", ready.exception())
                return 1
            for child in [c for c in self.children if c.exited in done]:
                self.children.remove(child)
                pid, how = child.process.pid, _how_it_ended(child.exited.result())
                ended = f"the {child.name} (pid {pid}) {how}"
                if child is job_manager:
                    log.error("%s: stopping the cluster", ended)
                    return 1
                if self._too_many_deaths():
                    log.error(
                        "%s; %d task managers died within %.0f s: not replacing them, "
                        "stopping the cluster",
                        ended,
                        len(self._deaths),
                        DEATH_WINDOW_S,
                    )
                    return 1
                log.warning("%s: starting a replacement (its jobs fail over)", ended)
                await self.start_task_manager()

    def _too_many_deaths(self) -> bool:
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths[0] < now - DEATH_WINDOW_S:
            self._deaths.popleft()
        return len(self._deaths) > MAX_TASK_MANAGER_DEATHS

    async def stop(self) -> None:
        for child in self.children:
            if child.process.returncode is None:
                child.process.terminate()
        waits = [child.exited for child in self.children]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), STOP_GRACE_S)
        except TimeoutError:
            for child in self.children:
                if child.process.returncode is None:
                    child.process.kill()
            await asyncio.gather(*waits)


async def _wait_ready(url: str, token: str, task_managers: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with JobManagerClient(url, token, timeout_s=2) as client:
        while True:
            try:
                if len(await client.task_managers()) >= task_managers:
                    return
            except ClusterError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the cluster at {url} was not ready within {READY_TIMEOUT_S:.0f} s"
                )
            await asyncio.sleep(0.2)


async def _announce(url: str, token: str, generated: bool, task_managers: int) -> None:
    """Print where the cluster is once it is ready, and the token only if it was generated."""
    await _wait_ready(url, token, task_managers)
    print(f"cluster ready: {url} with {task_managers} task managers", flush=True)
    print(f"export STREAMLET_CLUSTER_JOBMANAGER={url}", flush=True)
    if generated:
        print(f"export {TOKEN_VARIABLE}={token}", flush=True)
        print(f"dashboard: {url}/dashboard/#token={token}", flush=True)
        return
    source = TOKEN_VARIABLE if os.environ.get(TOKEN_VARIABLE) == token else "cluster.token"
    print(f"the token from {source} is used (not printed)", flush=True)
    print(f"dashboard: {url}/dashboard/ (it asks for the token)", flush=True)


async def _run(config: Configuration, port: int, task_managers: int, slots: int | None) -> int:
    host = config.get("cluster.bind-host")
    url = f"http://{host}:{port}"
    generated = not config.get("cluster.token")
    token = secrets.token_urlsafe(24) if generated else config.get("cluster.token")
    env = {
        **os.environ,
        TOKEN_VARIABLE: token,
        "STREAMLET_CLUSTER_JOBMANAGER": url,
        "STREAMLET_CLUSTER_DIR": config.get("cluster.dir"),
    }
    cluster = _LocalCluster(env, port, slots)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopping = asyncio.create_task(stop.wait())
    try:
        job_manager = await cluster.start_job_manager()
        for _ in range(task_managers):
            await cluster.start_task_manager()
        ready = asyncio.create_task(_announce(url, token, generated, task_managers))
        try:
            return await cluster.supervise(job_manager, stopping, ready)
        finally:
            ready.cancel()
    finally:
        stopping.cancel()
        await cluster.stop()


def cluster(config: Configuration, port: int, task_managers: int, slots: int | None) -> int:
    configure_logging()
    return asyncio.run(_run(config, port, task_managers, slots))
