"""Local execution: turn a job's plan into subtasks, channels and a checkpoint coordinator, and run
them as asyncio tasks in this process, restarting from the latest checkpoint on failure.

A run restores the checkpoint or savepoint at `restore_from` (`streamlet run -s URL`), else the
job's latest checkpoint (with `checkpoint.restore`), at the parallelism the job has now: state is
shared out among the new subtasks (`streamlet.checkpoint.restored_states`) before anything runs,
so bad input (a missing path, another job's checkpoint, an incompatible state) fails the run before
it starts, and is not retried. A restart restores the latest checkpoint the failed attempt
completed (or what that attempt restored).

Each chain of the plan runs as `parallelism` subtasks. An edge between chains becomes channels:
one per subtask pair for a forward edge, all-to-all otherwise, each a bounded queue. The job ends
when every source is exhausted (a final checkpoint is taken after the sources' last watermark, so
a rerun finds nothing left to do) or when `stop` is set (a final checkpoint at the sources' current
position, without draining windows, so a rerun continues where this one stopped). A
`JobControl` (`streamlet.savepoints`) asks the running job for savepoints, and stops it with a
savepoint as its final round (one that fails leaves the job running).
"""

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statebackend import StateError
from streamlet.channels import Channel, ChannelSink, InputGate
from streamlet.checkpoint import (
    CheckpointCoordinator,
    CheckpointStorage,
    read_metadata,
    restored_states,
)
from streamlet.compaction import backend_config
from streamlet.config import Configuration
from streamlet.errors import JobDefinitionError, SavepointError, StreamletError
from streamlet.graph import Chain, Node, NodeKind, Plan
from streamlet.metrics import JobMetrics
from streamlet.operators import Operator, OperatorContext
from streamlet.outputs import ChainedOutput, DiscardingOutput, FanOut, Output, RecordWriter
from streamlet.partitioners import ForwardPartitioner
from streamlet.restart import FixedDelayRestart
from streamlet.savepoints import JobControl
from streamlet.task import CheckpointListener, OperatorSubtask, SourceSubtask, Subtask

if TYPE_CHECKING:
    from streamlet.api import Job

log = logging.getLogger("streamlet.executor")


@dataclass
class JobResult:
    job_name: str
    records_in: int
    records_out: int
    checkpoints: int
    restarts: int
    restored_checkpoint: int | None
    seconds: float


async def execute_job(
    job: "Job",
    config: Configuration | Mapping[str, Any] | None = None,
    *,
    parallelism: int | None = None,
    stop: asyncio.Event | None = None,
    metrics: JobMetrics | None = None,
    restore_from: str | None = None,
    allow_non_restored_state: bool | None = None,
    control: JobControl | None = None,
) -> JobResult:
    """Run `job` until its sources end or it is stopped, restarting per the restart strategy.

    It stops when `stop` is set (or `control.stop`; `control` also takes savepoints and stops
    with one). `restore_from`: the URL of a checkpoint or savepoint to start from (None: the
    job's latest checkpoint, if `checkpoint.restore`); `allow_non_restored_state` (None: the
    configuration's `checkpoint.allow-non-restored-state`) lets it hold state of operators the
    job no longer has.
    """
    if not isinstance(config, Configuration):
        config = Configuration(config)
    metrics = metrics or JobMetrics()
    control = control or JobControl(stop)
    strategy = FixedDelayRestart(config.get("restart.attempts"), config.get("restart.delay"))
    started = time.monotonic()
    attempts: list[Execution] = []
    try:
        while True:
            execution = Execution(
                job,
                config,
                parallelism,
                metrics,
                control,
                restore_from=restore_from,
                allow_non_restored_state=allow_non_restored_state,
            )
            attempts.append(execution)
            try:
                await execution.run()
                break
            except Exception as error:
                if not execution.started and isinstance(error, StreamletError | StateError):
                    raise  # bad input (see `Execution.started`): a restart cannot fix it
                delay = strategy.next_delay_ms()
                if delay is None:
                    raise
                restore_from = execution.restart_point or restore_from
                log.warning(
                    "job %s failed (%s); restart %d of %d in %d ms from the latest checkpoint",
                    job.name,
                    error,
                    strategy.used,
                    strategy.attempts,
                    delay,
                )
                await asyncio.sleep(delay / 1000)
    finally:
        control.end()
    return JobResult(
        job.name,
        metrics.records_in,
        metrics.records_out,
        metrics.checkpoints,
        strategy.used,
        attempts[0].restored_id,
        time.monotonic() - started,
    )


def plan_job(job: "Job", parallelism: int, max_parallelism: int) -> Plan:
    """The job's plan at `parallelism`; `JobDefinitionError` if a chain is above
    `max_parallelism` (`parallelism.max`)."""
    plan = job.graph.plan(parallelism)
    for chain in plan.chains:
        if chain.parallelism > max_parallelism:
            raise JobDefinitionError(
                f"'{chain.name}' has parallelism {chain.parallelism}, above parallelism.max "
                f"({max_parallelism})"
            )
    return plan


def plan_operators(plan: Plan) -> dict[str, tuple[Node, int]]:
    """Each operator of the plan by uid, with its node and parallelism (what `restored_states`
    matches a checkpoint's operators against)."""
    return {
        node.operator_uid: (node, chain.parallelism)
        for chain in plan.chains
        for node in chain.nodes
    }


class Execution:
    """One attempt at running the job.

    A cluster runs one job over several task managers by subclassing it
    (`streamlet.cluster.distributed`): `is_local` says which subtasks this process runs,
    `channel` connects a pair of subtasks (a bounded queue here, TCP between task managers),
    `restore_point` picks the checkpoint to restore (one for all processes), `listener` is where
    subtasks acknowledge checkpoints, `run_subtasks` runs them. Its operators' state backends get
    `backend_config`, made once per attempt by `streamlet.compaction.backend_config` (which wires
    remote compaction: every way of running a job comes through here).
    """

    def __init__(
        self,
        job: "Job",
        config: Configuration,
        parallelism: int | None,
        metrics: JobMetrics,
        control: JobControl,
        *,
        restore_from: str | None = None,
        allow_non_restored_state: bool | None = None,
    ) -> None:
        self.job = job
        self.config = config
        self.metrics = metrics
        self.control = control
        self.max_parallelism = config.get("parallelism.max")
        self.plan: Plan = plan_job(
            job, parallelism or config.get("parallelism.default"), self.max_parallelism
        )
        self.batch_size = config.get("pipeline.batch-size")
        self.backend_config = backend_config(config)  # remote compaction wired here
        self.restore_from = restore_from
        self.allow_non_restored_state = (
            config.get("checkpoint.allow-non-restored-state")
            if allow_non_restored_state is None
            else allow_non_restored_state
        )
        self.restored_id: int | None = None
        # Set once the restore is planned: a runtime or state error before is bad input.
        self.started = False
        self.coordinator: CheckpointCoordinator | None = None

    async def run(self) -> None:
        storage = CheckpointStorage(
            self.config.get("checkpoint.dir"), self.job.name, self.config.get("dfs.storage-options")
        )
        operators = plan_operators(self.plan)
        ids = await asyncio.to_thread(storage.checkpoint_ids)
        restored: dict[str, dict[int, Any]] = {}
        metadata = await self.restore_point(storage)
        if metadata is not None:
            restored = await asyncio.to_thread(
                restored_states,
                metadata,
                operators,
                self.max_parallelism,
                self.config.get("state.backend"),
                self.allow_non_restored_state,
            )
            self.restored_id = metadata["checkpoint_id"]
            log.info("restoring checkpoint %d of job %s", self.restored_id, self.job.name)
        self.started = True
        coordinator = CheckpointCoordinator(
            storage,
            self.job.name,
            {uid: parallelism for uid, (_, parallelism) in operators.items()},
            self.max_parallelism,
            first_id=max(ids[0] if ids else 0, self.restored_id or 0) + 1,
            retained=self.config.get("checkpoint.retained"),
            metrics=self.metrics,
        )
        self.coordinator = coordinator
        subtasks, sources = self._build(restored, self.listener(coordinator))
        await self.run_subtasks(coordinator, subtasks, sources)

    @property
    def restart_point(self) -> str | None:
        """The URL of the latest checkpoint this attempt completed (None: it completed none)."""
        if self.coordinator is None or self.coordinator.completed_id is None:
            return None
        return self.coordinator.storage.url_of(self.coordinator.completed_id)

    async def restore_point(self, storage: CheckpointStorage) -> dict[str, Any] | None:
        """The metadata of the checkpoint to restore: the one at `restore_from`, else the
        latest complete one (if `checkpoint.restore`), else none."""
        if self.restore_from is not None:
            return await asyncio.to_thread(
                read_metadata, self.restore_from, self.config.get("dfs.storage-options")
            )
        if not self.config.get("checkpoint.restore"):
            return None
        return await asyncio.to_thread(storage.latest)

    def is_local(self, index: int) -> bool:
        """Whether this process runs the subtasks with `index` (the slot they share)."""
        return True

    def channel(
        self, edge_index: int, upstream: int, downstream: int, capacity: int
    ) -> tuple[ChannelSink | None, Channel | None]:
        """Where subtask `upstream` writes to subtask `downstream` over edge `edge_index`, and
        where the latter reads it from (None for a side this process does not run)."""
        channel = Channel(capacity)
        return channel, channel

    def listener(self, coordinator: CheckpointCoordinator) -> CheckpointListener:
        return coordinator

    async def run_subtasks(
        self,
        coordinator: CheckpointCoordinator,
        subtasks: list[Subtask],
        sources: list[SourceSubtask],
    ) -> None:
        """Run the subtasks and the checkpoints until the job ends; the first failure is raised."""
        coordinator.attach(subtasks, sources)
        try:
            async with asyncio.TaskGroup() as group:
                for subtask in subtasks:
                    group.create_task(subtask.run(), name=subtask.name)
                group.create_task(self._control(coordinator, sources), name="checkpoints")
        except* Exception as failure:
            raise failure.exceptions[0] from None

    async def _control(self, coordinator: CheckpointCoordinator, sources: list[Any]) -> None:
        """Checkpoints and savepoints until the job's final round completed, then the end."""
        self.control.attach(coordinator)
        try:
            while not await self._until_final_round(coordinator):
                pass
        finally:
            self.control.detach(coordinator)
        for source in sources:
            source.release()

    async def _until_final_round(self, coordinator: CheckpointCoordinator) -> bool:
        """Periodic checkpoints until the sources finish or the job is stopped, then the final
        round: a checkpoint, or the savepoint of a stop request. False if that savepoint failed
        (the job goes on)."""
        control = self.control
        finish = asyncio.Event()
        interval = self.config.get("checkpoint.interval")
        periodic = (
            asyncio.create_task(coordinator.run_periodically(interval, finish))
            if interval > 0
            else None
        )
        waiters = [
            asyncio.create_task(coordinator.sources_finished.wait()),
            asyncio.create_task(control.stop.wait()),
            asyncio.create_task(control.stop_requested.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finish.set()
            if periodic is not None:
                await periodic
            request = control.stop_request
            if request is None:
                await coordinator.checkpoint(final=True)
                return True
            try:
                path = await coordinator.savepoint(
                    request.url, request.format, final=True, name=request.name
                )
            except SavepointError as e:
                log.warning("job %s goes on: %s", self.job.name, e)
                control.stopped(e)
                return False
            control.stopped(path)
            return True
        finally:
            for task in [*waiters, *([periodic] if periodic else [])]:
                task.cancel()

    def _build(
        self, restored: dict[str, dict[int, Any]], listener: CheckpointListener
    ) -> tuple[list[Subtask], list[SourceSubtask]]:
        plan = self.plan
        capacity = self.config.get("pipeline.channel-capacity")
        # channels[(edge index, upstream subtask)] -> channels to the downstream subtasks
        gates = {chain.id: [InputGate() for _ in range(chain.parallelism)] for chain in plan.chains}
        writers: dict[tuple[int, int], list[tuple[str | None, RecordWriter]]] = {}
        for edge_index, edge in enumerate(plan.edges):
            up, down = edge.upstream, edge.downstream
            for u in range(up.parallelism):
                forward = isinstance(edge.partitioner, ForwardPartitioner)
                targets = [u] if forward else range(down.parallelism)
                channels = []
                for d in targets:
                    output, channel = self.channel(edge_index, u, d, capacity)
                    if channel is not None:
                        gates[down.id][d].add(channel, edge.input_index)
                    if output is not None:
                        channels.append(output)
                if not self.is_local(u):
                    continue
                partitioner = edge.partitioner.copy()
                partitioner.bind(len(channels), u, self.max_parallelism)
                writer = RecordWriter(channels, partitioner, self.batch_size, up.nodes[-1].name)
                writers.setdefault((up.id, u), []).append((edge.tag, writer))
        subtasks: list[Subtask] = []
        sources: list[SourceSubtask] = []
        for chain in plan.chains:
            for index in range(chain.parallelism):
                if not self.is_local(index):
                    continue
                chain_writers = writers.get((chain.id, index), [])
                operators, head = self._operators(chain, index, chain_writers)
                name = f"{chain.name} ({index + 1}/{chain.parallelism})"
                state = {uid: by_index.get(index) for uid, by_index in restored.items()}
                common = dict(
                    name=name,
                    index=index,
                    parallelism=chain.parallelism,
                    operators=operators,
                    writers=[w for _, w in chain_writers],
                    restored={uid: s for uid, s in state.items() if s is not None},
                    listener=listener,
                    metrics=self.metrics,
                )
                if chain.head.kind is NodeKind.SOURCE:
                    source = chain.head
                    subtask: Subtask = SourceSubtask(
                        uid=source.operator_uid,
                        source_name=source.name,
                        reader=source.source.create_reader(  # type: ignore[union-attr]
                            self._context(chain, source.operator_uid, source.name, index).runtime
                        ),
                        head=head,
                        watermarks=source.watermarks,
                        batch_size=self.batch_size,
                        **common,
                    )
                    sources.append(subtask)
                else:
                    subtask = OperatorSubtask(gate=gates[chain.id][index], **common)
                subtasks.append(subtask)
        return subtasks, sources

    def _operators(
        self, chain: Chain, index: int, chain_writers: list[tuple[str | None, RecordWriter]]
    ) -> tuple[list[tuple[str, Operator]], Output]:
        """The chain's operators wired to each other and to the writers; and the chain's input."""
        main = [w for tag, w in chain_writers if tag is None]
        tail_output: Output = (
            DiscardingOutput() if not main else main[0] if len(main) == 1 else FanOut(list(main))
        )
        for tag in {tag for tag, _ in chain_writers if tag is not None}:
            tagged = [w for t, w in chain_writers if t == tag]
            tail_output.side[tag] = tagged[0] if len(tagged) == 1 else FanOut(list(tagged))
        operator_nodes = [node for node in chain.nodes if node.kind is not NodeKind.SOURCE]
        operators: list[tuple[str, Operator]] = []
        output = tail_output
        for node in reversed(operator_nodes):
            operator = node.create_operator()  # type: ignore[misc]
            operator.setup(self._context(chain, node.operator_uid, node.name, index), output)
            operators.insert(0, (node.operator_uid, operator))
            output = ChainedOutput(operator)
        return operators, output

    def _context(self, chain: Chain, uid: str, name: str, index: int) -> OperatorContext:
        return OperatorContext(
            job_name=self.job.name,
            operator_name=name,
            uid=uid,
            subtask_index=index,
            parallelism=chain.parallelism,
            max_parallelism=self.max_parallelism,
            backend_config=self.backend_config,
            metrics=self.metrics,
            config=self.config,
        )
