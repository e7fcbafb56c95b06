"""`streamlet cluster`: a job manager and N task managers as child processes, for development.

Without a configured token one is generated and printed (with the job manager's URL), so that
`streamlet submit/list/...` in another shell can use it. SIGINT or SIGTERM stops the children
(SIGTERM, then SIGKILL after a grace period). The line `cluster ready: ...` is printed once every
task manager registered.
"""

import asyncio
import os
import secrets
import signal
import sys
import time

from streamlet.cluster.client import ClusterError, JobManagerClient
from streamlet.config import Configuration

STOP_GRACE_S = 10.0


async def _start(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamlet.cli", *args, env=env
    )


async def _wait_ready(url: str, token: str, task_managers: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with JobManagerClient(url, token, timeout_s=2) as client:
        while True:
            try:
                if len(await client.task_managers()) >= task_managers:
                    return
            except ClusterError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster at {url} was not ready within {timeout_s:.0f} s")
            await asyncio.sleep(0.2)


async def _stop(children: list[asyncio.subprocess.Process]) -> None:
    for child in children:
        if child.returncode is None:
            child.terminate()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in children)), STOP_GRACE_S)
    except TimeoutError:
        for child in children:
            if child.returncode is None:
                child.kill()
        await asyncio.gather(*(c.wait() for c in children))


async def _run(config: Configuration, port: int, task_managers: int, slots: int | None) -> int:
    host = config.get("cluster.bind-host")
    url = f"http://{host}:{port}"
    token = config.get("cluster.token") or secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "STREAMLET_CLUSTER_TOKEN": token,
        "STREAMLET_CLUSTER_JOBMANAGER": url,
        "STREAMLET_CLUSTER_DIR": config.get("cluster.dir"),
    }
    children = [await _start(["jobmanager", "--port", str(port)], env)]
    slot_args = [] if slots is None else ["--slots", str(slots)]
    for _ in range(task_managers):
        children.append(await _start(["taskmanager", *slot_args], env))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await _wait_ready(url, token, task_managers, timeout_s=60)
        print(f"cluster ready: {url} with {task_managers} task managers", flush=True)
        print(f"export STREAMLET_CLUSTER_JOBMANAGER={url}", flush=True)
        print(f"export STREAMLET_CLUSTER_TOKEN={token}", flush=True)
        print(f"dashboard: {url}/dashboard/#token={token}", flush=True)
        exits = [asyncio.create_task(child.wait()) for child in children]
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        return 0 if stop.is_set() else 1
    finally:
        await _stop(children)


def cluster(config: Configuration, port: int, task_managers: int, slots: int | None) -> int:
    return asyncio.run(_run(config, port, task_managers, slots))
