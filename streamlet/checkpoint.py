"""Checkpoints: the coordinator that triggers them and the metadata they leave on the DFS.

The `CheckpointCoordinator` asks every source subtask to take checkpoint n between two batches
(each records its reader's position and emits barrier n); barriers flow with the records, every
subtask snapshots its operators once barrier n arrived on all its inputs and acknowledges. When all
subtasks acknowledged, the metadata (each source's position and each operator's state handle, per
subtask) is written to `<checkpoint.dir>/<job>/chk-<n>/_metadata` (JSON) — a checkpoint is complete
exactly when that file exists and parses. Subtasks are then notified (sinks commit), and all but the
newest `checkpoint.retained` checkpoints are deleted. One checkpoint is in flight at a time.

`CheckpointStorage.latest()` finds the newest complete checkpoint, skipping any whose metadata is
missing or torn (a process killed while writing it).
"""

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import fsspec

from streamlet.errors import CheckpointError

if TYPE_CHECKING:
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

    def write(self, metadata: dict[str, Any]) -> str:
        path = f"{self.path(metadata['checkpoint_id'])}/{METADATA_FILE}"
        self.fs.makedirs(self.path(metadata["checkpoint_id"]), exist_ok=True)
        self.fs.pipe_file(path, json.dumps(metadata).encode())
        return path

    def read(self, checkpoint_id: int) -> dict[str, Any] | None:
        """The metadata of a complete checkpoint, or None if it is missing or unreadable."""
        try:
            data = json.loads(self.fs.cat_file(f"{self.path(checkpoint_id)}/{METADATA_FILE}"))
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
            return None
        return data

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

def restored_states(metadata: Mapping[str, Any], parallelism: Mapping[str, int]) -> dict:
    """`{uid: {subtask index: state}}` from checkpoint metadata, checking the parallelism."""
    states: dict[str, dict[int, Any]] = {}
    for uid, operator in metadata["operators"].items():
        if uid not in parallelism:
            raise CheckpointError(
                f"checkpoint {metadata['checkpoint_id']} has state for operator {uid!r}, which "
                f"the job no longer has (operators: {', '.join(sorted(parallelism))})"
            )
        if operator["parallelism"] != parallelism[uid]:
            raise CheckpointError(
                f"checkpoint {metadata['checkpoint_id']} ran operator {uid!r} with parallelism "
                f"{operator['parallelism']}, not {parallelism[uid]}: rescaling a restore is not "
                "supported; run with the same parallelism"
            )
        states[uid] = dict(enumerate(operator["subtasks"]))
    return states


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
        self.sources_finished = asyncio.Event()
        self._finished: set[int] = set()
        self._lock = asyncio.Lock()
        self._pending: set[int] = set()
        self._states: dict[str, dict[int, Any]] = {}
        self._acknowledged: asyncio.Future[None] | None = None
        self._checkpoint_id = 0

    def attach(self, subtasks: list["Subtask"], sources: list["SourceSubtask"]) -> None:
        """The subtasks to checkpoint (all of them) and the source subtasks among them."""
        self.subtasks = subtasks
        self.sources = sources

    async def checkpoint(self, final: bool = False) -> int:
        """Take one checkpoint and wait until it is complete; return its id."""
        async with self._lock:
            checkpoint_id = self.next_id
            self.next_id += 1
            started = time.monotonic()
            self._checkpoint_id = checkpoint_id
            self._pending = {id(subtask) for subtask in self.subtasks}
            self._states = {uid: {} for uid in self.parallelism}
            self._acknowledged = asyncio.get_running_loop().create_future()
            for source in self.sources:
                source.trigger_checkpoint(checkpoint_id, final)
            await self._acknowledged
            metadata = {
                "format": METADATA_FORMAT,
                "job": self.job_name,
                "checkpoint_id": checkpoint_id,
                "timestamp_ms": time.time_ns() // 1_000_000,
                "max_parallelism": self.max_parallelism,
                "operators": {
                    uid: {
                        "parallelism": self.parallelism[uid],
                        "subtasks": [by_index[i] for i in range(self.parallelism[uid])],
                    }
                    for uid, by_index in self._states.items()
                },
            }
            path = await asyncio.to_thread(self.storage.write, metadata)
            self.metrics.checkpoints += 1
            self.metrics.last_checkpoint_id = checkpoint_id
            log.info(
                "checkpoint %d completed in %.0f ms%s: %s",
                checkpoint_id,
                (time.monotonic() - started) * 1000,
                " (final)" if final else "",
                path,
            )
            for subtask in self.subtasks:
                await subtask.notify_checkpoint_complete(checkpoint_id)
            await self._apply_retention()
            return checkpoint_id

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
        if checkpoint_id != self._checkpoint_id or self._acknowledged is None:
            raise CheckpointError(f"unexpected acknowledgement of checkpoint {checkpoint_id}")
        for uid, state in states.items():
            self._states[uid][subtask.index] = state
        self._pending.discard(id(subtask))
        if not self._pending and not self._acknowledged.done():
            self._acknowledged.set_result(None)

    def source_finished(self, subtask: "SourceSubtask") -> None:
        self._finished.add(id(subtask))
        if len(self._finished) == len(self.sources):
            self.sources_finished.set()
