"""Checkpoint coordination of a job spread over several task managers.

The deployment that runs slot 0 leads: it runs the job's `CheckpointCoordinator`, in which every
subtask of the other deployments (followers) stands as a `RemoteSubtask` proxy. Each follower
opens one control connection to the leader's exchange server; over it the leader says what every
deployment restores (the URL of a checkpoint or savepoint, or nothing), asks remote sources to
take checkpoint n (a savepoint: with its target) and, at the end, to release (or, after a final
savepoint that failed, to resume), tells remote subtasks that a checkpoint completed or which
checkpoints' state to release, and the followers acknowledge checkpoints with their subtasks'
state (or decline a savepoint, with the reason), report finished sources, and say when all their
subtasks have ended. Barriers themselves flow with the data through the exchange channels.

A control connection that breaks early fails the job's deployment on both sides with `PeerLost`.
"""

import asyncio
import logging
from typing import Any

from streamlet.checkpoint import CheckpointCoordinator
from streamlet.cluster.exchange import (
    ExchangeServer,
    PeerLost,
    connect,
    read_message,
    write_message,
)
from streamlet.elements import SavepointTarget
from streamlet.task import SourceSubtask, Subtask, SubtaskStates

log = logging.getLogger("streamlet.cluster.coordination")
SubtaskKey = tuple[int, int]  # (chain id, subtask index)


class RemoteSubtask:
    """A follower's subtask as the leader's coordinator sees it."""

    def __init__(self, key: SubtaskKey, follower: "_FollowerLink") -> None:
        self.key = key
        self.index = key[1]
        self._follower = follower

    def trigger_checkpoint(
        self, checkpoint_id: int, final: bool, savepoint: SavepointTarget | None = None
    ) -> None:
        self._follower.send(("trigger", self.key, checkpoint_id, final, savepoint))

    def release(self) -> None:
        self._follower.send(("release", self.key))

    def resume(self) -> None:
        self._follower.send(("resume", self.key))

    async def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        self._follower.send(("complete", self.key, checkpoint_id))

    async def release_checkpoints(self, dropped: list[dict], kept: list[dict]) -> None:
        self._follower.send(("release_checkpoints", self.key, dropped, kept))


class _FollowerLink:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.done = asyncio.Event()

    def send(self, message: Any) -> None:
        write_message(self.writer, message)


class Leader:
    """Accepts the followers' control connections for one execution."""

    def __init__(
        self,
        exchange: ExchangeServer,
        execution_id: str,
        remote: dict[int, list[SubtaskKey]],
        remote_sources: set[SubtaskKey],
        restored_url: str | None,
    ) -> None:
        """`remote`: slot -> keys of the subtasks in that slot on other task managers;
        `restored_url`: the checkpoint or savepoint every deployment restores (None: none)."""
        self.exchange = exchange
        self.restored_url = restored_url
        self._attached = asyncio.Event()
        self.execution_id = execution_id
        self.expected = {slot for slot in remote}
        self.keys = remote
        self.remote_sources = remote_sources
        self.proxies: dict[SubtaskKey, RemoteSubtask] = {}
        self.coordinator: CheckpointCoordinator | None = None
        self._links: dict[int, _FollowerLink] = {}
        self._connected = asyncio.Event()
        self._failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        exchange.register_control(execution_id, self._serve)
        if not self.expected:
            self._connected.set()

    def attach(self, coordinator: CheckpointCoordinator) -> None:
        self.coordinator = coordinator
        self._attached.set()

    def subtasks(self) -> tuple[list[RemoteSubtask], list[RemoteSubtask]]:
        """The proxies of every remote subtask, and those of the remote sources."""
        proxies = list(self.proxies.values())
        return proxies, [p for p in proxies if p.key in self.remote_sources]

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_followers_done(self) -> None:
        """Until every follower's subtasks ended; `PeerLost` if a follower went away first."""
        done = asyncio.gather(*(link.done.wait() for link in self._links.values()))
        finished, _ = await asyncio.wait({done, self._failed}, return_when="FIRST_COMPLETED")
        if self._failed in finished:
            done.cancel()
            self._failed.result()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: dict
    ) -> None:
        slots = [int(slot) for slot in hello["slots"]]
        link = _FollowerLink(writer)
        link.send(("restore", self.restored_url))
        for slot in slots:
            self._links[slot] = link
            for key in self.keys.get(slot, []):
                self.proxies[key] = RemoteSubtask(key, link)
        if self.expected <= set(self._links):
            self._connected.set()
        try:
            while not link.done.is_set():
                await self._on_message(await read_message(reader), link)
        except Exception as e:  # a broken connection, or a message it could not carry out
            if not self._failed.done():
                self._failed.set_exception(PeerLost(f"a follower of the job went away: {e!r}"))

    async def _on_message(self, message: tuple, link: _FollowerLink) -> None:
        kind = message[0]
        await self._attached.wait()
        coordinator = self.coordinator
        assert coordinator is not None
        if kind == "ack":
            _, key, checkpoint_id, states = message
            coordinator.acknowledge(checkpoint_id, self.proxies[key], states)  # type: ignore[arg-type]
        elif kind == "decline":
            _, key, checkpoint_id, reason = message
            coordinator.decline(checkpoint_id, self.proxies[key], reason)  # type: ignore[arg-type]
        elif kind == "source_finished":
            coordinator.source_finished(self.proxies[message[1]])  # type: ignore[arg-type]
        elif kind == "done":
            link.done.set()


class Follower:
    """A follower's end of the control connection; the listener of its subtasks."""

    def __init__(self, leader_address: str, execution_id: str, slots: list[int], token: str):
        self.leader_address = leader_address
        self.hello = {"kind": "control", "execution": execution_id, "slots": slots}
        self.token = token
        self.keys: dict[int, SubtaskKey] = {}  # id(subtask) -> key
        self.subtasks: dict[SubtaskKey, Subtask] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None

    def add(self, key: SubtaskKey, subtask: Subtask) -> None:
        self.keys[id(subtask)] = key
        self.subtasks[key] = subtask

    async def connect(self) -> str | None:
        """Connect to the leader; return the URL of the checkpoint or savepoint it restores."""
        self._reader, self._writer = await connect(self.leader_address, self.hello, self.token)
        try:
            kind, restored_url = await read_message(self._reader)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise PeerLost(f"the job's leading task manager went away: {e!r}") from e
        assert kind == "restore"
        return restored_url

    def _send(self, message: Any) -> None:
        assert self._writer is not None
        write_message(self._writer, message)

    def acknowledge(self, checkpoint_id: int, subtask: Subtask, states: SubtaskStates) -> None:
        self._send(("ack", self.keys[id(subtask)], checkpoint_id, states))

    def decline(self, checkpoint_id: int, subtask: Subtask, reason: str) -> None:
        self._send(("decline", self.keys[id(subtask)], checkpoint_id, reason))

    def source_finished(self, subtask: SourceSubtask) -> None:
        self._send(("source_finished", self.keys[id(subtask)]))

    async def serve(self, subtasks_done: asyncio.Event) -> None:
        """Carry out the leader's requests until the local subtasks ended, then say so."""
        assert self._reader is not None and self._writer is not None
        reader = self._reader
        waiting_done = asyncio.create_task(subtasks_done.wait())
        reading: asyncio.Task[Any] | None = None
        try:
            while True:
                reading = asyncio.create_task(read_message(reader))
                finished, _ = await asyncio.wait(
                    {reading, waiting_done}, return_when="FIRST_COMPLETED"
                )
                if reading not in finished:
                    reading.cancel()
                    break
                try:
                    message = reading.result()
                except (asyncio.IncompleteReadError, ConnectionError) as e:
                    raise PeerLost(f"the job's leading task manager went away: {e!r}") from e
                await self._on_message(message)
            self._send(("done",))
            await self._writer.drain()
        finally:
            waiting_done.cancel()
            if reading is not None:
                reading.cancel()  # aborted while reading: no "exception never retrieved" later

    async def _on_message(self, message: tuple) -> None:
        kind, key = message[0], message[1]
        subtask = self.subtasks[key]
        if kind == "trigger":
            subtask.trigger_checkpoint(*message[2:])  # type: ignore[attr-defined]
        elif kind == "release":
            subtask.release()  # type: ignore[attr-defined]
        elif kind == "resume":
            subtask.resume()  # type: ignore[attr-defined]
        elif kind == "complete":
            await subtask.notify_checkpoint_complete(message[2])
        elif kind == "release_checkpoints":
            await subtask.release_checkpoints(message[2], message[3])
