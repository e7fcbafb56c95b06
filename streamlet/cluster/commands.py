"""The cluster's command-line commands (parsed in `streamlet.cli`): `jobmanager`, `taskmanager`,
`submit`, `list`, `status`, `cancel`, `savepoint`, `stop`.

Each takes the loaded `Configuration` (YAML file, environment, `-D`). Client commands print what
the job manager answered and return 1 with `error: ...` on stderr when it refused (a broken
module, a missing token, a savepoint that failed) or could not be reached. `submit` carries the
job module's arguments (after `--`) and the savepoint or checkpoint to start from (`-s`), and,
with `--wait`, polls the job until it ends and returns 0 only if it finished; `list` and `status`
print JSON with `--json`. `savepoint` and `stop` print the savepoint's directory once it
completed; `savepoint --dispose URL` deletes a savepoint (no job manager involved). A local path
given as a savepoint's URL is made absolute (the cluster's processes do not share the client's
working directory).
"""

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from statebackend import StateError
from streamlet.cluster import artifacts
from streamlet.cluster.auth import MissingToken, require_token
from streamlet.cluster.client import ClusterError, JobManagerClient
from streamlet.cluster.ha import HaStore
from streamlet.cluster.jobmanager import JobManager
from streamlet.cluster.model import JobStatus
from streamlet.cluster.rest import create_app
from streamlet.cluster.taskmanager import TaskManager
from streamlet.config import Configuration
from streamlet.errors import JobLoadError, StreamletError
from streamlet.savepoints import dispose

log = logging.getLogger("streamlet.cluster")
WAIT_POLL_S = 0.5
WAIT_UNREACHABLE_S = 60.0  # --wait gives up when the job manager is unreachable this long


def configure_logging() -> None:
    """INFO and above on stderr, with the time (aiohttp's access log only from WARNING)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _until_signalled(
    work: Callable[[], Awaitable[None]], drain: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Run `work()` until SIGTERM or SIGINT. With `drain`, the first signal runs `drain()` before
    `work()` is stopped, and a second signal stops it at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    task = asyncio.create_task(work())
    await _first_of(task, stop.wait())
    if drain is not None and not task.done():
        stop.clear()
        draining = asyncio.create_task(drain())
        await _first_of(task, draining, stop.wait())
        if not draining.done():
            log.warning("stopping without waiting for the drain to end")
        draining.cancel()
        await asyncio.gather(draining, return_exceptions=True)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


async def _first_of(*awaitables: Awaitable[Any]) -> None:
    """Wait until one of `awaitables` is done; cancel the others that this call made tasks of."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task, awaitable in zip(tasks, awaitables, strict=True):
        if task is not awaitable:
            task.cancel()


def jobmanager(config: Configuration, host: str | None, port: int) -> int:
    """Serve the REST API until a signal stops it; logs `job manager listening on URL`."""
    configure_logging()
    try:
        token = require_token(config.get("cluster.token"))
    except MissingToken as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    host = host or config.get("cluster.bind-host")
    ha = HaStore(config.get("cluster.dir"), config.get("dfs.storage-options"))

    async def serve() -> None:
        manager = JobManager(config, ha)
        await manager.recover()
        runner = web.AppRunner(create_app(manager, token), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("job manager listening on http://%s:%d (HA metadata in %s)", host, bound, ha.url)
        try:
            await manager.supervise()
        finally:
            await runner.cleanup()

    asyncio.run(_until_signalled(serve))
    return 0


def taskmanager(
    config: Configuration, slots: int | None, port: int = 0, labels: list[str] | None = None
) -> int:
    """Run a task manager until a signal: the first drains it (see `TaskManager.drain`), a
    second one stops it at once."""
    configure_logging()
    try:
        require_token(config.get("cluster.token"))
        manager = TaskManager(config, slots, port, labels)
    except (MissingToken, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    asyncio.run(_until_signalled(manager.run, manager.drain))
    return 0


def _client_call(config: Configuration, call: Callable[[JobManagerClient], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with JobManagerClient(
            config.get("cluster.jobmanager"), config.get("cluster.token")
        ) as client:
            return await call(client)

    return asyncio.run(run())


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def submit(
    config: Configuration,
    target: str,
    entry: str | None,
    parallelism: int | None,
    defines: dict[str, Any],
    job_args: list[str],
    wait: bool,
    restore_from: str | None = None,
) -> int:
    """Print the new job's id; with `wait`, then its final status (0 only if it finished).
    `restore_from`: a savepoint or retained checkpoint the job starts from."""
    try:
        artifact, data = artifacts.pack(target, entry, job_args)
        Configuration.load(overrides=defines, environ={})  # reject a bad key before uploading
        url = None if restore_from is None else absolute_url(restore_from)
        answer = _client_call(
            config, lambda c: c.submit(artifact, data, parallelism, defines, url)
        )
    except (JobLoadError, ClusterError, ValueError) as e:
        return _fail(str(e))
    print(answer["id"], flush=True)
    return _wait_for_end(config, answer["id"]) if wait else 0


def _wait_for_end(config: Configuration, job_id: str) -> int:
    """Poll the job until it ends; print `ID STATUS` (and the error of a failed job)."""

    async def until_ended(client: JobManagerClient) -> dict[str, Any]:
        reachable = time.monotonic()
        while True:
            try:
                job = await client.job(job_id)
                reachable = time.monotonic()
                if JobStatus(job["status"]).terminal:
                    return job
            except ClusterError as e:  # a restarting job manager is unreachable for a while
                if e.status is not None or time.monotonic() - reachable > WAIT_UNREACHABLE_S:
                    raise
            await asyncio.sleep(WAIT_POLL_S)

    try:
        job = _client_call(config, until_ended)
    except ClusterError as e:
        return _fail(f"waiting for job {job_id}: {e}")
    except KeyboardInterrupt:
        print(f"stopped waiting; job {job_id} goes on", file=sys.stderr)
        return 130
    print(f"{job_id} {job['status']}")
    if job["status"] != JobStatus.FINISHED:
        return _fail(job["error"]) if job.get("error") else 1
    return 0


def list_jobs(config: Configuration, as_json: bool) -> int:
    try:
        jobs = _client_call(config, lambda c: c.jobs())
    except ClusterError as e:
        return _fail(str(e))
    if as_json:
        print(json.dumps(jobs, sort_keys=True))
        return 0
    print(f"{'ID':<16}  {'NAME':<24} {'STATUS':<11} {'P':>2}  {'CHECKPOINT':>10}  ENDPOINTS")
    for job in jobs:
        checkpoint = "-" if job["latest_checkpoint"] is None else str(job["latest_checkpoint"])
        print(
            f"{job['id']:<16}  {job['name']:<24} {job['status']:<11} {job['parallelism']:>2}  "
            f"{checkpoint:>10}  {','.join(job['endpoints']) or '-'}"
        )
    return 0


def status(config: Configuration, job_id: str, as_json: bool) -> int:
    """Print the job's status as JSON: indented, or on one line with `as_json` (`--json`)."""
    try:
        job = _client_call(config, lambda c: c.job(job_id))
    except ClusterError as e:
        return _fail(str(e))
    print(json.dumps(job, sort_keys=True) if as_json else json.dumps(job, indent=2, sort_keys=True))
    return 0


def cancel(config: Configuration, job_id: str) -> int:
    try:
        job = _client_call(config, lambda c: c.cancel(job_id))
    except ClusterError as e:
        return _fail(str(e))
    print(f"{job['id']} {job['status']}")
    return 0


def absolute_url(url: str) -> str:
    """`url` itself if it has a protocol (`s3://...`), else the local path made absolute."""
    return url if "://" in url else "file://" + os.path.abspath(url)


def savepoint(config: Configuration, job_id: str, url: str | None, format: str) -> int:
    """Take a savepoint of a running job; print its directory once it completed."""
    target = None if url is None else absolute_url(url)
    try:
        record = _client_call(config, lambda c: c.savepoint(job_id, target, format))
    except ClusterError as e:
        return _fail(str(e))
    print(record["path"])
    return 0


def stop(config: Configuration, job_id: str, url: str | None, format: str) -> int:
    """Stop a running job with a savepoint as its final checkpoint; print its directory."""
    target = None if url is None else absolute_url(url)
    try:
        record = _client_call(config, lambda c: c.stop(job_id, target, format))
    except ClusterError as e:
        return _fail(str(e))
    print(record["path"])
    return 0


def dispose_savepoint(config: Configuration, url: str) -> int:
    """Delete a savepoint (what its state backends share with it first); print what went."""
    try:
        directory = dispose(absolute_url(url), config)
    except (StreamletError, StateError, OSError) as e:
        return _fail(str(e))
    print(f"disposed of {directory}")
    return 0
