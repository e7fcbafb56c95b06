"""Checkpoints: the coordinator that triggers them and the metadata they leave on the DFS.

The `CheckpointCoordinator` asks every source subtask to take checkpoint n between two batches
(each records its reader's position and emits barrier n); barriers flow with the records, every
subtask snapshots its operators once barrier n arrived on all its inputs and acknowledges. When all
subtasks acknowledged, the metadata (each source's position and each operator's state handle, per
subtask) is written to `<checkpoint.dir>/<job>/chk-<n>/_metadata` (JSON) — a checkpoint is complete
exactly when that file exists and parses. Subtasks are then notified (sinks commit), and all but the
newest `checkpoint.retained` checkpoints are deleted. One checkpoint is in flight at a time.

A savepoint (`CheckpointCoordinator.savepoint`) is a round like the others whose barrier carries
its directory and format: its metadata (`"kind": "savepoint"`, `"savepoint_format"`) goes to
`<directory>/_metadata` only, with every file reference inside the directory written relative to
it (`statebackend.dfs.relativize`), so the directory can be moved. It is not part of the job's
checkpoints: no retention releases it. An intermediate savepoint commits nothing (sinks commit at
the next checkpoint); a final one (stop with a savepoint) ends the job like a final checkpoint.
When an operator fails to write its part, the round is declined: the directory is deleted, the
sources of a final round read on, and `SavepointError` says why; the job goes on.

`CheckpointStorage.latest()` finds the newest complete checkpoint, skipping any whose metadata is
missing or torn (a process killed while writing it). `read_metadata(url)` reads the checkpoint or
savepoint a run is started from (`streamlet run -s URL`), resolving relative file references
against its directory, and `restored_states` matches its operators to the job's by uid and shares
each operator's state out among the job's subtasks, at the checkpoint's parallelism or another one
(a rescale).
"""

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import fsspec

from statebackend import dfs
from statebackend.backend import SAVEPOINT_FORMATS
from streamlet.elements import SavepointTarget
from streamlet.errors import CheckpointError, SavepointError
from streamlet.operators import RestoreTarget

if TYPE_CHECKING:
    from streamlet.graph import Node
    from streamlet.metrics import JobMetrics
    from streamlet.task import SourceSubtask, Subtask, SubtaskStates

METADATA_FORMAT = 1
METADATA_FILE = "_metadata"
log = logging.getLogger("streamlet.checkpoint")


class CheckpointStorage:
    """The checkpoint directories of one job on the DFS."""

    def __init__(self, url: str, job_name: str, storage_options: Mapping[str, Any]) -> None:
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = f"{root.rstrip('/')}/{job_name}"
        self.url = f"{url.rstrip('/')}/{job_name}"
        self.job_name = job_name
        self.checkpoint_dir = url.rstrip("/")
        self.storage_options = storage_options

    def savepoint_url(self, checkpoint_id: int, name: str | None = None) -> str:
        """Where a savepoint goes when the user names no directory:
        `<checkpoint.dir>/savepoints/<job>/savepoint-<id>-<name, else random>`."""
        suffix = name or uuid.uuid4().hex[:8]
        return f"{self._savepoints_url}/savepoint-{checkpoint_id}-{suffix}"

    def savepoints_named(self, name: str) -> list[str]:
        """The URLs of the default savepoint directories that end in `name` (`savepoint_url`)."""
        fs, root = fsspec.core.url_to_fs(self._savepoints_url, **self.storage_options)
        found = fs.glob(f"{root.rstrip('/')}/savepoint-*-{name}")
        names = [str(path).rstrip("/").rsplit("/", 1)[-1] for path in found]
        return [f"{self._savepoints_url}/{found_name}" for found_name in names]

    @property
    def _savepoints_url(self) -> str:
        return f"{self.checkpoint_dir}/savepoints/{self.job_name}"

    def checkpoint_ids(self) -> list[int]:
        """Ids of all checkpoint directories, complete or not, newest first."""
        try:
            entries = self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        ids = []
        for entry in entries:
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("chk-") and name[4:].isdigit():
                ids.append(int(name[4:]))
        return sorted(ids, reverse=True)

    def path(self, checkpoint_id: int) -> str:
        return f"{self.root}/chk-{checkpoint_id}"

    def url_of(self, checkpoint_id: int) -> str:
        """The URL of a checkpoint's directory (what `read_metadata` and `streamlet run -s`
        take)."""
        return f"{self.url}/chk-{checkpoint_id}"

    def write(self, metadata: dict[str, Any]) -> str:
        path = f"{self.path(metadata['checkpoint_id'])}/{METADATA_FILE}"
        self.fs.makedirs(self.path(metadata["checkpoint_id"]), exist_ok=True)
        self.fs.pipe_file(path, json.dumps(metadata).encode())
        return path

    def read(self, checkpoint_id: int) -> dict[str, Any] | None:
        """The metadata of a complete checkpoint, or None if it is missing or unreadable."""
        path = f"{self.path(checkpoint_id)}/{METADATA_FILE}"
        try:
            return parse_metadata(self.fs.cat_file(path), path)
        except (FileNotFoundError, CheckpointError):
            return None

    def latest(self) -> dict[str, Any] | None:
        for checkpoint_id in self.checkpoint_ids():
            metadata = self.read(checkpoint_id)
            if metadata is not None:
                return metadata
        return None

    def retention(self, count: int) -> tuple[list[int], list[dict], list[dict]]:
        """What keeping the newest `count` complete checkpoints means, newest first:
        (ids of the checkpoints to delete, metadata of the complete ones among them, metadata of
        the kept ones). Incomplete checkpoints older than the newest kept one are deleted too.
        """
        dropped_ids: list[int] = []
        dropped: list[dict] = []
        kept: list[dict] = []
        for checkpoint_id in self.checkpoint_ids():
            metadata = self.read(checkpoint_id)
            if len(kept) < count:
                if metadata is not None:
                    kept.append(metadata)
            else:
                dropped_ids.append(checkpoint_id)
                if metadata is not None:
                    dropped.append(metadata)
        return dropped_ids, dropped, kept

    def delete(self, checkpoint_ids: list[int]) -> None:
        for checkpoint_id in checkpoint_ids:
            self.fs.rm(self.path(checkpoint_id), recursive=True)

def parse_metadata(data: bytes, where: str) -> dict[str, Any]:
    """Checkpoint metadata from the bytes of a `_metadata` file, its layout checked;
    `CheckpointError` naming `where` if it is damaged."""
    try:
        metadata = json.loads(data)
    except ValueError as e:
        raise CheckpointError(f"{where} is damaged: it is not JSON ({e})") from e
    if not isinstance(metadata, dict) or metadata.get("format") != METADATA_FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise CheckpointError(
            f"{where} is not checkpoint metadata of format {METADATA_FORMAT} (found {found!r})"
        )
    problem = _layout_problem(metadata)
    if problem is not None:
        raise CheckpointError(f"{where} is damaged: {problem}")
    return metadata


def _layout_problem(metadata: dict[str, Any]) -> str | None:
    for key, kind in (("job", str), ("checkpoint_id", int), ("max_parallelism", int)):
        if not isinstance(metadata.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    operators = metadata.get("operators")
    if not isinstance(operators, dict):
        return "'operators' is missing or not a mapping"
    for uid, operator in operators.items():
        subtasks = operator.get("subtasks") if isinstance(operator, dict) else None
        parallelism = operator.get("parallelism") if isinstance(operator, dict) else None
        if not isinstance(parallelism, int) or parallelism < 1:
            return f"operator {uid!r} has no valid parallelism"
        if not isinstance(subtasks, list) or len(subtasks) != parallelism:
            return f"operator {uid!r} does not list the state of its {parallelism} subtasks"
    return None


def snapshot_directory(url: str) -> str:
    """The directory of a checkpoint or savepoint given by its directory or its `_metadata`."""
    url = url.rstrip("/")
    return url[: -len(METADATA_FILE) - 1] if url.endswith(f"/{METADATA_FILE}") else url


def read_metadata(url: str, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata of the checkpoint or savepoint at `url`: its directory (a retained
    `<checkpoint.dir>/<job>/chk-<n>`, a savepoint) or the `_metadata` file in it.

    This is the one place that reads a snapshot to restore from a URL: relative file references
    (a savepoint's own files) are resolved against the directory, full URLs are used as they are.
    A `CheckpointError` names the URL if nothing is there, if it holds no metadata, or if the
    metadata is damaged.
    """
    directory = snapshot_directory(url)
    try:
        fs, path = fsspec.core.url_to_fs(directory, **storage_options)
        try:
            data = fs.cat_file(f"{path}/{METADATA_FILE}")
        except FileNotFoundError:
            if fs.exists(path):
                raise CheckpointError(
                    f"{url} holds no {METADATA_FILE} file: it is not a complete checkpoint or "
                    "savepoint"
                ) from None
            raise CheckpointError(
                f"no checkpoint or savepoint at {url}: the path does not exist"
            ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the checkpoint or savepoint at {url}: {e}") from e
    return dfs.resolve(parse_metadata(data, f"the metadata of {url}"), directory)


def prepare_savepoint_directory(url: str, storage_options: Mapping[str, Any]) -> None:
    """Check that a savepoint can go to `url`: a directory that does not exist yet, or is empty
    (`SavepointError` otherwise). Nothing is written."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        if not fs.exists(path):
            return
        if not fs.isdir(path):
            raise SavepointError(f"cannot write a savepoint to {url}: it is a file")
        if fs.ls(path, detail=False):
            raise SavepointError(
                f"cannot write a savepoint to {url}: the directory is not empty (a savepoint "
                "goes into a new or empty directory)"
            )
    except (OSError, ValueError) as e:
        raise SavepointError(f"cannot write a savepoint to {url}: {e}") from e


def write_savepoint_metadata(
    url: str, metadata: dict[str, Any], storage_options: Mapping[str, Any]
) -> None:
    """Write a savepoint's metadata, its file references relative to `url`, its directory."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/{METADATA_FILE}", json.dumps(dfs.relativize(metadata, url)).encode())


def delete_directory(url: str, storage_options: Mapping[str, Any]) -> None:
    """Delete a directory and everything in it (one that does not exist is fine)."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def restored_states(
    metadata: Mapping[str, Any],
    operators: Mapping[str, tuple["Node", int]],
    max_parallelism: int,
    backend: str,
    allow_non_restored_state: bool,
) -> dict[str, dict[int, Any]]:
    """`{uid: {subtask index: state}}`: each operator's state in checkpoint `metadata`, shared out
    among the job's subtasks. `operators` maps each uid of the job to its node and parallelism.

    Operators are matched by uid. State of an operator the job no longer has is an error unless
    `allow_non_restored_state` (an operator that kept no state may go); an operator without state
    in the checkpoint starts empty; each operator (or source) redistributes its state among its
    subtasks, at the same parallelism or another. Every problem is a `CheckpointError` (a
    `StateTypeConflictError` for an incompatible keyed state), raised before anything runs.
    """
    kind = "savepoint" if metadata.get("kind") == "savepoint" else "checkpoint"
    name = f"{kind} {metadata['checkpoint_id']} of job {metadata['job']!r}"
    restored = metadata["operators"]
    if metadata["max_parallelism"] != max_parallelism:
        raise CheckpointError(
            f"{name} was taken with parallelism.max {metadata['max_parallelism']}, not "
            f"{max_parallelism}: keyed state is split into that many key groups, keep it"
        )
    if not set(restored) & set(operators):
        raise CheckpointError(
            f"{name} has no operator of this job: is it the checkpoint of another job? (its "
            f"operators: {', '.join(sorted(restored))}; this job's: "
            f"{', '.join(sorted(operators))})"
        )
    dropped = sorted(
        uid
        for uid, operator in restored.items()
        if uid not in operators and any(state is not None for state in operator["subtasks"])
    )
    if dropped and not allow_non_restored_state:
        raise CheckpointError(
            f"{name} has state for operators this job no longer has ({', '.join(dropped)}); "
            "to start without it, allow non-restored state (--allow-non-restored-state, or "
            "checkpoint.allow-non-restored-state: true)"
        )
    if dropped:
        log.warning("%s: the state of %s is not restored", name, ", ".join(dropped))
    states: dict[str, dict[int, Any]] = {}
    for uid, operator in restored.items():
        if uid not in operators:
            continue
        node, parallelism = operators[uid]
        target = RestoreTarget(parallelism, max_parallelism, backend)
        try:
            shares = _redistribute(node, operator["subtasks"], target)
        except CheckpointError as e:
            raise CheckpointError(f"{name}: operator {node.name!r} (uid {uid!r}): {e}") from e
        states[uid] = dict(enumerate(shares))
    return states


def _redistribute(node: "Node", states: list[Any], target: RestoreTarget) -> list[Any]:
    if node.source is not None:
        if not all(isinstance(state, dict) and "position" in state for state in states):
            raise CheckpointError("its state is not the position of a source")
        positions = [state["position"] for state in states]
        shares = [
            {"position": position}
            for position in node.source.redistribute(positions, target.parallelism)
        ]
    else:
        shares = node.create_operator().redistribute(states, target)  # type: ignore[misc]
    if len(shares) != target.parallelism:
        raise CheckpointError(
            f"redistributing gave {len(shares)} states for {target.parallelism} subtasks"
        )
    return shares


class CheckpointCoordinator:
    def __init__(
        self,
        storage: CheckpointStorage,
        job_name: str,
        parallelism: Mapping[str, int],
        max_parallelism: int,
        first_id: int,
        retained: int,
        metrics: "JobMetrics",
    ) -> None:
        self.storage = storage
        self.job_name = job_name
        self.subtasks: list[Subtask] = []
        self.sources: list[SourceSubtask] = []
        self.parallelism = dict(parallelism)
        self.max_parallelism = max_parallelism
        self.retained = retained
        self.metrics = metrics
        self.next_id = first_id
        self.completed_id: int | None = None  # the latest checkpoint this coordinator completed
        self.sources_finished = asyncio.Event()
        self._finished: set[int] = set()
        self._lock = asyncio.Lock()
        self._pending: set[int] = set()
        self._states: dict[str, dict[int, Any]] = {}
        self._declined: list[str] = []
        self._acknowledged: asyncio.Future[None] | None = None
        self._checkpoint_id = 0
        self._ended = False  # a final round completed: no round follows

    def attach(self, subtasks: list["Subtask"], sources: list["SourceSubtask"]) -> None:
        """The subtasks to checkpoint (all of them) and the source subtasks among them."""
        self.subtasks = subtasks
        self.sources = sources

    async def checkpoint(self, final: bool = False) -> int:
        """Take one checkpoint and wait until it is complete; return its id."""
        async with self._lock:
            checkpoint_id = self._next_round()
            started = time.monotonic()
            states = await self._round(checkpoint_id, final, None)
            metadata = self._metadata(checkpoint_id, states, kind="checkpoint")
            path = await asyncio.to_thread(self.storage.write, metadata)
            self.completed_id = checkpoint_id
            self.metrics.checkpoints += 1
            self.metrics.last_checkpoint_id = checkpoint_id
            log.info(
                "checkpoint %d completed in %.0f ms%s: %s",
                checkpoint_id,
                (time.monotonic() - started) * 1000,
                " (final)" if final else "",
                path,
            )
            await self._complete(checkpoint_id, final)
            await self._apply_retention()
            return checkpoint_id

    async def savepoint(
        self, url: str | None, format: str, final: bool = False, name: str | None = None
    ) -> str:
        """Take a savepoint into the directory `url` (None: `CheckpointStorage.savepoint_url`,
        ending in `name` if given) in `format`, and return its directory once its `_metadata` is
        written. A final savepoint ends the job (sinks commit); an intermediate one commits
        nothing. A savepoint that cannot be taken raises `SavepointError`, leaves nothing in the
        directory, and (final or not) the job goes on."""
        if format not in SAVEPOINT_FORMATS:
            raise SavepointError(
                f"unknown savepoint format {format!r}: use {' or '.join(SAVEPOINT_FORMATS)}"
            )
        options = self.storage.storage_options
        async with self._lock:
            checkpoint_id = self._next_round()
            started = time.monotonic()
            directory = (url or self.storage.savepoint_url(checkpoint_id, name)).rstrip("/")
            await asyncio.to_thread(prepare_savepoint_directory, directory, options)
            try:
                states = await self._round(checkpoint_id, final, SavepointTarget(directory, format))
                metadata = self._metadata(
                    checkpoint_id, states, kind="savepoint", savepoint_format=format
                )
                await asyncio.to_thread(write_savepoint_metadata, directory, metadata, options)
            except Exception as e:
                await asyncio.to_thread(delete_directory, directory, options)
                if final:
                    for source in self.sources:
                        source.resume()
                if isinstance(e, SavepointError):
                    raise
                raise SavepointError(
                    f"savepoint {checkpoint_id} of job {self.job_name} failed: {e}"
                ) from e
            log.info(
                "savepoint %d (%s) completed in %.0f ms%s: %s",
                checkpoint_id,
                format,
                (time.monotonic() - started) * 1000,
                " (final)" if final else "",
                directory,
            )
            if final:
                await self._complete(checkpoint_id, final)
            return directory

    def _next_round(self) -> int:
        if self._ended:
            raise SavepointError(f"job {self.job_name} is ending: it takes no more savepoints")
        checkpoint_id = self.next_id
        self.next_id += 1
        return checkpoint_id

    async def _round(
        self, checkpoint_id: int, final: bool, savepoint: SavepointTarget | None
    ) -> dict[str, dict[int, Any]]:
        """Trigger the sources and wait until every subtask acknowledged (or declined)."""
        self._checkpoint_id = checkpoint_id
        self._pending = {id(subtask) for subtask in self.subtasks}
        self._states = {uid: {} for uid in self.parallelism}
        self._declined = []
        self._acknowledged = asyncio.get_running_loop().create_future()
        for source in self.sources:
            source.trigger_checkpoint(checkpoint_id, final, savepoint)
        await self._acknowledged
        if self._declined:
            raise SavepointError(
                f"savepoint {checkpoint_id} of job {self.job_name} failed: {self._declined[0]}"
            )
        return self._states

    def _metadata(
        self, checkpoint_id: int, states: dict[str, dict[int, Any]], **extra: Any
    ) -> dict[str, Any]:
        return {
            "format": METADATA_FORMAT,
            "job": self.job_name,
            "checkpoint_id": checkpoint_id,
            "timestamp_ms": time.time_ns() // 1_000_000,
            "max_parallelism": self.max_parallelism,
            **extra,
            "operators": {
                uid: {
                    "parallelism": self.parallelism[uid],
                    "subtasks": [by_index[i] for i in range(self.parallelism[uid])],
                }
                for uid, by_index in states.items()
            },
        }

    async def _complete(self, checkpoint_id: int, final: bool) -> None:
        """Tell every subtask that round `checkpoint_id` is complete (sinks commit)."""
        if final:
            self._ended = True
        for subtask in self.subtasks:
            await subtask.notify_checkpoint_complete(checkpoint_id)

    async def _apply_retention(self) -> None:
        """Release the state of checkpoints beyond the retained count, then delete them."""
        dropped_ids, dropped, kept = await asyncio.to_thread(
            self.storage.retention, self.retained
        )
        if not dropped_ids:
            return
        for subtask in self.subtasks:
            await subtask.release_checkpoints(dropped, kept)
        await asyncio.to_thread(self.storage.delete, dropped_ids)

    async def run_periodically(self, interval_ms: int, stop: asyncio.Event) -> None:
        """Checkpoint every `interval_ms` until `stop` is set (finishing a checkpoint in flight)."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), interval_ms / 1000)
                return
            except TimeoutError:
                await self.checkpoint()

    def acknowledge(self, checkpoint_id: int, subtask: "Subtask", states: "SubtaskStates") -> None:
        self._check_round(checkpoint_id)
        for uid, state in states.items():
            self._states[uid][subtask.index] = state
        self._responded(subtask)

    def decline(self, checkpoint_id: int, subtask: "Subtask", reason: str) -> None:
        """A subtask could not write its part of savepoint `checkpoint_id`."""
        self._check_round(checkpoint_id)
        self._declined.append(reason)
        self._responded(subtask)

    def _check_round(self, checkpoint_id: int) -> None:
        if checkpoint_id != self._checkpoint_id or self._acknowledged is None:
            raise CheckpointError(f"unexpected acknowledgement of checkpoint {checkpoint_id}")

    def _responded(self, subtask: "Subtask") -> None:
        self._pending.discard(id(subtask))
        if not self._pending and self._acknowledged is not None and not self._acknowledged.done():
            self._acknowledged.set_result(None)

    def source_finished(self, subtask: "SourceSubtask") -> None:
        self._finished.add(id(subtask))
        if len(self._finished) == len(self.sources):
            self.sources_finished.set()
