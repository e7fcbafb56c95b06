"""One deployment's share of a job that spans several task managers.

Slot i holds subtask i of every operator chain (chains with a smaller parallelism leave the last
slots out); the job manager assigns slots to task managers, and each task manager runs a
`DistributedExecution` over its slots. Pairs of subtasks in the same process talk through local
channels, others through the exchange's TCP channels. The deployment with slot 0 leads: it picks
the checkpoint or savepoint every deployment restores (the followers read the metadata at the
URL it names, which may be a savepoint's, rescaled or not), and it runs the checkpoint
coordinator for all of them (`coordination`), so it also takes the job's savepoints. A lost peer
fails the deployment; the job manager then restarts the whole job from its latest checkpoint (a
distributed job does not restart within a deployment).
"""

import asyncio
from typing import Any

from streamlet.api import Job
from streamlet.channels import Channel, ChannelSink
from streamlet.checkpoint import CheckpointCoordinator, CheckpointStorage, read_metadata
from streamlet.cluster.coordination import Follower, Leader, SubtaskKey
from streamlet.cluster.exchange import (
    CONNECT_TIMEOUT_S,
    ExchangeServer,
    PeerLost,
    RemoteInputChannel,
    RemoteOutputChannel,
)
from streamlet.config import Configuration
from streamlet.executor import Execution
from streamlet.graph import NodeKind
from streamlet.metrics import JobMetrics
from streamlet.savepoints import JobControl
from streamlet.task import CheckpointListener, SourceSubtask, Subtask


class DistributedExecution(Execution):
    def __init__(
        self,
        job: Job,
        config: Configuration,
        parallelism: int,
        metrics: JobMetrics,
        control: JobControl,
        *,
        execution_id: str,
        slot_addresses: list[str],
        local_slots: set[int],
        exchange: ExchangeServer,
        token: str,
        restore_from: str | None = None,
    ) -> None:
        super().__init__(job, config, parallelism, metrics, control, restore_from=restore_from)
        self.execution_id = execution_id
        self.slot_addresses = slot_addresses
        self.local_slots = local_slots
        self.exchange = exchange
        self.token = token
        self.leads = 0 in local_slots
        self.leader: Leader | None = None
        self.follower = (
            None
            if self.leads
            else Follower(slot_addresses[0], execution_id, sorted(local_slots), token)
        )

    def _keys(self, local: bool) -> list[SubtaskKey]:
        return [
            (chain.id, index)
            for chain in self.plan.chains
            for index in range(chain.parallelism)
            if self.is_local(index) == local
        ]

    async def restore_point(self, storage: CheckpointStorage) -> dict[str, Any] | None:
        if self.follower is not None:
            restored_url = await self.follower.connect()
            if restored_url is None:
                return None
            options = self.config.get("dfs.storage-options")
            return await asyncio.to_thread(read_metadata, restored_url, options)
        latest = await super().restore_point(storage)
        restored_url = None
        if latest is not None:
            restored_url = self.restore_from or storage.url_of(latest["checkpoint_id"])
        remote: dict[int, list[SubtaskKey]] = {}
        for key in self._keys(local=False):
            remote.setdefault(key[1], []).append(key)
        sources = {
            key
            for key in self._keys(local=False)
            if self.plan.chains[key[0]].head.kind is NodeKind.SOURCE
        }
        self.leader = Leader(
            self.exchange,
            self.execution_id,
            remote,
            sources,
            restored_url,
        )
        return latest

    def is_local(self, index: int) -> bool:
        return index in self.local_slots

    def channel(
        self, edge_index: int, upstream: int, downstream: int, capacity: int
    ) -> tuple[ChannelSink | None, Channel | None]:
        up, down = self.is_local(upstream), self.is_local(downstream)
        if up and down:
            channel = Channel(capacity)
            return channel, channel
        key = (self.execution_id, edge_index, upstream, downstream)
        if up:
            address = self.slot_addresses[downstream]
            return RemoteOutputChannel(address, self.execution_id, key, self.token), None
        if down:
            remote = RemoteInputChannel(capacity)
            self.exchange.register_input(key, remote)
            return None, remote
        return None, None

    def listener(self, coordinator: CheckpointCoordinator) -> CheckpointListener:
        return coordinator if self.follower is None else self.follower

    async def run_subtasks(
        self,
        coordinator: CheckpointCoordinator,
        subtasks: list[Subtask],
        sources: list[SourceSubtask],
    ) -> None:
        try:
            if self.follower is not None:
                await self._follow(self.follower, subtasks)
            else:
                assert self.leader is not None
                await self._lead(self.leader, coordinator, subtasks, sources)
        except* Exception as failure:
            raise _cause(failure) from None
        finally:
            self.exchange.forget(self.execution_id)

    async def _lead(
        self,
        leader: Leader,
        coordinator: CheckpointCoordinator,
        subtasks: list[Subtask],
        sources: list[SourceSubtask],
    ) -> None:
        try:
            await asyncio.wait_for(leader.wait_connected(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise PeerLost("the job's other task managers did not connect") from None
        proxies, source_proxies = leader.subtasks()
        all_sources: list[Any] = [*sources, *source_proxies]
        coordinator.attach([*subtasks, *proxies], all_sources)  # type: ignore[list-item]
        leader.attach(coordinator)
        async with asyncio.TaskGroup() as group:
            for subtask in subtasks:
                group.create_task(subtask.run(), name=subtask.name)
            group.create_task(self._control(coordinator, all_sources), name="checkpoints")
            group.create_task(leader.wait_followers_done(), name="followers")

    async def _follow(self, follower: Follower, subtasks: list[Subtask]) -> None:
        for key, subtask in zip(self._keys(local=True), subtasks, strict=True):
            follower.add(key, subtask)
        done = asyncio.Event()

        async def run_all() -> None:
            async with asyncio.TaskGroup() as group:
                for subtask in subtasks:
                    group.create_task(subtask.run(), name=subtask.name)
            done.set()

        async with asyncio.TaskGroup() as group:
            group.create_task(run_all(), name="subtasks")
            group.create_task(follower.serve(done), name="control")


def _cause(group: BaseExceptionGroup) -> BaseException:
    """The error to report from nested task groups: a lost peer if there is one (the others
    are its consequences), else the first."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = error.exceptions
        else:
            leaves.append(error)
    return next((e for e in leaves if isinstance(e, PeerLost)), leaves[0])
