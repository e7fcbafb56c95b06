"""Subtasks: one asyncio task runs one parallel instance of a chain of operators.

A `SourceSubtask` reads batches from its `SourceReader`, assigns timestamps and watermarks, and
pushes each batch through its chain in one call; it starts checkpoints when the coordinator asks
(recording the reader's position and emitting a barrier). An `OperatorSubtask` reads batches from
its input gate (bounded channels), hands each run of records (`Records`) to the head of its chain
in one call (`Operator.process_batch`; a keyed head operator's batches through its
`AsyncStateAccess`, which awaits the state they need off the event loop first:
`streamlet.async_state`; an `async def` process function's batches are awaited, each to its
end: `streamlet.async_process`), fires processing-time timers, and snapshots its operators once
barriers are aligned. Both flush their outputs into the downstream channels after every batch, so
a slow consumer slows its producers (backpressure).

When checkpoints fall out of retention, subtask i of p releases the state that old subtasks j
with j % p == i left in them, so that each is released once also after a rescale.

A savepoint is a checkpoint round whose barrier carries a `SavepointTarget`: each operator writes
its `savepoint` instead of its `snapshot`. A subtask whose operator fails to write one declines the
round (the savepoint fails, the job goes on). After a final round the sources wait: released, the
job ends; resumed (a final savepoint failed), they read on.
"""

import asyncio
import time
from typing import Any, Protocol

from streamlet.channels import InputGate
from streamlet.connectors.base import SourceReader
from streamlet.elements import (
    END_OF_INPUT,
    MAX_TIMESTAMP,
    Barrier,
    Element,
    EndOfInput,
    IdleStatus,
    Records,
    SavepointTarget,
    Watermark,
)
from streamlet.errors import OperatorError, StreamletError, describe_record
from streamlet.metrics import JobMetrics
from streamlet.operators import Operator
from streamlet.outputs import Output, RecordWriter
from streamlet.timers import processing_time_ms
from streamlet.watermarks import WatermarkStrategy

SubtaskStates = dict[str, Any]
"""What one subtask contributes to a checkpoint: state per operator uid."""


class CheckpointListener(Protocol):
    def acknowledge(
        self, checkpoint_id: int, subtask: "Subtask", states: SubtaskStates
    ) -> None: ...

    def decline(self, checkpoint_id: int, subtask: "Subtask", reason: str) -> None: ...

    def source_finished(self, subtask: "SourceSubtask") -> None: ...


class Subtask:
    """What both kinds of subtask share: operators, writers, checkpoints, shutdown."""

    def __init__(
        self,
        name: str,
        index: int,
        parallelism: int,
        operators: list[tuple[str, Operator]],
        writers: list[RecordWriter],
        restored: dict[str, Any],
        listener: CheckpointListener,
        metrics: JobMetrics,
    ) -> None:
        self.name = name
        self.index = index
        self.parallelism = parallelism
        self.operators = operators
        self.writers = writers
        self.restored = restored
        self.listener = listener
        self.metrics = metrics

    async def _open_operators(self) -> None:
        for uid, operator in self.operators:
            await operator.open(self.restored.get(uid))

    async def _close_operators(self) -> None:
        for _, operator in self.operators:
            await operator.close()

    def _broadcast(self, element: Element) -> None:
        for writer in self.writers:
            writer.broadcast(element)

    async def _after_batch(self) -> None:
        for _, operator in self.operators:
            await operator.drain()
        for writer in self.writers:
            await writer.flush()

    async def _checkpoint(
        self, checkpoint_id: int, extra: SubtaskStates, savepoint: SavepointTarget | None
    ) -> None:
        self._broadcast(Barrier(checkpoint_id, savepoint))
        await self._after_batch()
        states = dict(extra)
        for uid, operator in self.operators:
            if savepoint is None:
                states[uid] = await operator.snapshot(checkpoint_id)
                continue
            try:
                states[uid] = await operator.savepoint(checkpoint_id, savepoint)
            except Exception as e:  # the savepoint fails, not the job
                reason = f"operator '{operator.name}' of {self.name}: {type(e).__name__}: {e}"
                self.listener.decline(checkpoint_id, self, reason)
                return
        self.listener.acknowledge(checkpoint_id, self, states)

    async def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        for _, operator in self.operators:
            await operator.notify_checkpoint_complete(checkpoint_id)

    async def release_checkpoints(self, dropped: list[dict], kept: list[dict]) -> None:
        """Let each operator release its share of the state in the `dropped` checkpoints'
        metadata: that of the old subtasks j with j % parallelism == index, so that each old
        subtask's state is released exactly once whatever the parallelism it was taken with. What
        any subtask keeps in the `kept` checkpoints stays."""
        for uid, operator in self.operators:
            await operator.release_checkpoints(
                self._states_in(uid, dropped, mine=True), self._states_in(uid, kept, mine=False)
            )

    def _states_in(self, uid: str, checkpoints: list[dict], mine: bool) -> list[Any]:
        """The states of operator `uid` in `checkpoints`: this subtask's share, or all."""
        states = []
        for metadata in checkpoints:
            subtasks = metadata["operators"].get(uid, {}).get("subtasks", [])
            for old_index, state in enumerate(subtasks):
                if state is not None and (not mine or old_index % self.parallelism == self.index):
                    states.append(state)
        return states

    async def _end(self) -> None:
        self._broadcast(END_OF_INPUT)
        await self._after_batch()


class SourceSubtask(Subtask):
    def __init__(
        self,
        *args: Any,
        uid: str,
        source_name: str,
        reader: SourceReader,
        head: Output,
        watermarks: WatermarkStrategy | None,
        batch_size: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.uid = uid
        self.source_name = source_name
        self.reader = reader
        self.head = head
        self.generator = None if watermarks is None else watermarks.create_generator()
        self.idle_timeout_ms = None if watermarks is None else watermarks.idle_timeout_ms
        self.batch_size = batch_size
        self._request: tuple[int, bool, SavepointTarget | None] | None = None
        self._wake = asyncio.Event()
        self._release = asyncio.Event()
        self._resume = asyncio.Event()
        self._idle = False

    def trigger_checkpoint(
        self, checkpoint_id: int, final: bool, savepoint: SavepointTarget | None = None
    ) -> None:
        """Take checkpoint (or savepoint) `checkpoint_id` between two batches; after a final one,
        stop reading until released or resumed."""
        self._request = (checkpoint_id, final, savepoint)
        self._wake.set()

    def release(self) -> None:
        """The final checkpoint is complete: send end-of-input downstream and finish."""
        self._release.set()

    def resume(self) -> None:
        """The final checkpoint (a savepoint) failed: read on."""
        self._resume.set()

    async def run(self) -> None:
        try:
            await self._open_operators()
            restored = self.restored.get(self.uid)
            await self.reader.open(None if restored is None else restored["position"])
            await self._read_until_final_checkpoint()
            await self._end()
        finally:
            await self.reader.close()
            await self._close_operators()

    async def _released(self) -> bool:
        """After a final checkpoint: True once released, False if resumed instead."""
        waiters = [
            asyncio.create_task(self._release.wait()),
            asyncio.create_task(self._resume.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._release.is_set():
            return True
        self._resume.clear()
        return False

    async def _read_until_final_checkpoint(self) -> None:
        if not self.reader.has_input:
            self._set_idle(True)
        last_record = time.monotonic()
        watermark = None
        reported_finished = False
        while True:
            if self._request is not None:
                checkpoint_id, final, savepoint = self._request
                self._request = None
                position = {"position": self.reader.position()}
                await self._checkpoint(checkpoint_id, {self.uid: position}, savepoint)
                if final and await self._released():
                    return
                continue
            if self.reader.finished:
                if not reported_finished:
                    reported_finished = True
                    self._set_idle(False)  # so that consumers take the final watermark
                    self.head.watermark_everywhere(Watermark(MAX_TIMESTAMP))
                    await self._after_batch()
                    self.listener.source_finished(self)
                self._wake.clear()
                if self._request is None:
                    await self._wake.wait()
                continue
            values = await self.reader.read_batch(self.batch_size)
            if values:
                last_record = time.monotonic()
                self._set_idle(False)
                self._emit(values)
                watermark = self._emit_watermark(watermark)
            elif (
                self.idle_timeout_ms is not None
                and (time.monotonic() - last_record) * 1000 >= self.idle_timeout_ms
            ):
                self._set_idle(True)
            await self._after_batch()

    def _set_idle(self, idle: bool) -> None:
        if idle != self._idle:
            self._idle = idle
            self._broadcast(IdleStatus(idle))

    def _emit(self, values: list[Any]) -> None:
        """Hand a batch read from the source to the chain, with the timestamps it assigns."""
        self.metrics.records_in += len(values)
        generator = self.generator
        if generator is None:
            self.head.collect_batch(values, None)
            return
        on_event = generator.on_event
        timestamps: list[int | None] = []
        try:
            for value in values:
                timestamps.append(on_event(value))
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.source_name, describe_record(value), e) from e
        self.head.collect_batch(values, timestamps)

    def _emit_watermark(self, last: int | None) -> int | None:
        if self.generator is None:
            return last
        current = self.generator.current_watermark()
        if last is None or current > last:
            self.head.watermark_everywhere(Watermark(current))
            return current
        return last


class OperatorSubtask(Subtask):
    def __init__(self, *args: Any, gate: InputGate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate

    async def run(self) -> None:
        try:
            await self._open_operators()
            await self._process_until_end()
            await self._end()
        finally:
            await self._close_operators()

    async def _process_until_end(self) -> None:
        gate = self.gate
        head = self.operators[0][1]
        process_batch = head.process_batch  # names a failing record itself
        async_process_batch = head.async_process_batch()  # an async def process function's
        async_state = head.async_state()
        while True:
            got = await gate.next_batch(self._timer_timeout())
            self._fire_processing_timers()
            if got is None:
                await self._after_batch()
                continue
            batch, channel = got
            input_index = gate.input_index(channel)
            ended = False
            for element in batch:
                if type(element) is Records:
                    if async_state is not None:
                        await async_state.run(
                            element.values,
                            element.timestamps,
                            input_index,
                            async_process_batch or process_batch,
                        )
                    elif async_process_batch is None:
                        process_batch(element.values, element.timestamps, input_index)
                    else:
                        await async_process_batch(
                            element.values, element.timestamps, input_index
                        )
                else:
                    for event in gate.handle(channel, element):
                        ended = await self._on_event(event) or ended
            await self._after_batch()
            if ended:
                return

    async def _on_event(self, event: Element) -> bool:
        """Handle what the gate reports; True at the end of all inputs."""
        if type(event) is Watermark:
            self.operators[0][1].process_watermark(event)
        elif type(event) is Barrier:
            await self._checkpoint(event.checkpoint_id, {}, event.savepoint)
        elif type(event) is IdleStatus:
            self._broadcast(event)
        elif isinstance(event, EndOfInput):
            return True
        return False

    def _timer_timeout(self) -> float | None:
        due = [t for _, op in self.operators if (t := op.next_processing_timer()) is not None]
        if not due:
            return None
        return max(0.0, (min(due) - processing_time_ms()) / 1000)

    def _fire_processing_timers(self) -> None:
        now = processing_time_ms()
        for _, operator in self.operators:
            due = operator.next_processing_timer()
            if due is not None and due <= now:
                operator.on_processing_time(now)
