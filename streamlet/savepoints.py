"""Savepoints asked for from outside a running job, and their disposal.

`JobControl` is how a job running in this process is asked for savepoints and stopped (by the task
manager that runs it, or by a program that runs `execute_job`):

- `savepoint(url, format)` takes a savepoint while the job runs and returns its directory;
- `stop_with_savepoint(url, format)` makes a savepoint the job's final round: once it completed,
  the sinks commit and the job ends; if it fails, the job goes on and the call raises;
- `stop` (an event) ends the job after a plain final checkpoint.

Each attempt of the job attaches its checkpoint coordinator while it runs (`attach`/`detach`), so a
savepoint asked for while a restarted job restores waits for it; `end()` (the job is over) fails
whatever still waits. Every failure is a `SavepointError` that says why.

`dispose(url, config)` deletes a savepoint (`streamlet savepoint --dispose URL`): each state backend
lets go of what the savepoint references outside its directory
(`statebackend.registry.dispose_savepoint`), then the directory is deleted.
"""

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statebackend import BackendConfig
from statebackend.registry import dispose_savepoint
from streamlet.checkpoint import delete_directory, read_metadata, snapshot_directory
from streamlet.errors import SavepointError

if TYPE_CHECKING:
    from streamlet.checkpoint import CheckpointCoordinator
    from streamlet.config import Configuration


@dataclass
class StopRequest:
    """A stop with a savepoint: where it goes (None: the default directory, ending in `name`)."""

    url: str | None
    format: str
    name: str | None
    result: "asyncio.Future[str]"


class JobControl:
    def __init__(self, stop: asyncio.Event | None = None) -> None:
        self.stop = stop or asyncio.Event()
        self.stop_request: StopRequest | None = None
        self.stop_requested = asyncio.Event()  # set while `stop_request` waits for its round
        self.final_savepoint: str | None = None  # the directory of the savepoint it stopped with
        self._coordinator: CheckpointCoordinator | None = None
        self._changed = asyncio.Event()
        self._ended = False

    def attach(self, coordinator: "CheckpointCoordinator") -> None:
        self._coordinator = coordinator
        self._changed.set()

    def detach(self, coordinator: "CheckpointCoordinator") -> None:
        if self._coordinator is coordinator:
            self._coordinator = None

    def end(self) -> None:
        """The job is over: whatever waits for it fails."""
        self._ended = True
        self._coordinator = None
        self._changed.set()
        if self.stop_request is not None:
            self.stopped(SavepointError("the job ended before its final savepoint was taken"))

    async def savepoint(self, url: str | None, format: str, name: str | None = None) -> str:
        """Take a savepoint (see `CheckpointCoordinator.savepoint`); return its directory."""
        while self._coordinator is None:
            if self._ended or self.stop.is_set() or self.stop_request is not None:
                raise SavepointError("the job is not running: it takes no savepoint")
            self._changed.clear()
            await self._changed.wait()
        return await self._coordinator.savepoint(url, format, name=name)

    async def stop_with_savepoint(
        self, url: str | None, format: str, name: str | None = None
    ) -> str:
        """Stop the job with a savepoint as its final round; return the savepoint's directory."""
        if self._ended or self.stop.is_set():
            raise SavepointError("the job is not running: it takes no savepoint")
        if self.stop_request is not None:
            raise SavepointError("the job is already stopping with a savepoint")
        result: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.stop_request = StopRequest(url, format, name, result)
        self.stop_requested.set()
        return await result

    def stopped(self, outcome: str | SavepointError) -> None:
        """The final round of the stop request ended: with the savepoint's directory, or with the
        error that made it fail (the job goes on, and may be stopped again)."""
        request, self.stop_request = self.stop_request, None
        self.stop_requested.clear()
        if not isinstance(outcome, SavepointError):
            self.final_savepoint = outcome
        if request is None or request.result.done():
            return
        if isinstance(outcome, SavepointError):
            request.result.set_exception(outcome)
        else:
            request.result.set_result(outcome)


def keyed_handles(metadata: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The state handles of the keyed operators' subtasks in checkpoint or savepoint metadata."""
    for operator in metadata["operators"].values():
        for state in operator["subtasks"]:
            if isinstance(state, dict) and isinstance(state.get("backend"), dict):
                yield state["backend"]


def dispose(url: str, config: "Configuration") -> str:
    """Delete the savepoint at `url` (its directory or `_metadata`); return its directory.

    A checkpoint is refused (its job's retention deletes it), as is anything without metadata.
    """
    options = config.get("dfs.storage-options")
    metadata = read_metadata(url, options)
    if metadata.get("kind") != "savepoint":
        raise SavepointError(
            f"{url} is checkpoint {metadata['checkpoint_id']} of job {metadata['job']!r}, not a "
            "savepoint: a job's checkpoints are deleted by its retention (checkpoint.retained)"
        )
    for handle in keyed_handles(metadata):
        backend = BackendConfig(
            name=str(handle.get("backend")),
            checkpoint_dir=config.get("state.dir"),
            local_dir=config.get("state.local-dir"),
            storage_options=options,
            options=config.backend_config().options,
        )
        dispose_savepoint(backend, handle)
    directory = snapshot_directory(url)
    delete_directory(directory, options)
    return directory
