"""The connector interfaces: a `Source` splits its input among subtasks, a `Sink` writes records.

A source creates one `SourceReader` per subtask. A reader hands out batches of values, reports its
position (what a checkpoint records, JSON-serializable) and resumes from a restored one. A sink
creates one `SinkWriter` per subtask; a writer takes records synchronously, may do asynchronous work
after each batch (`drain`), makes its output durable on a checkpoint (`snapshot`) and may commit on
`notify_checkpoint_complete` (that is how a sink becomes exactly-once).

On every restore, `Source.redistribute` and `Sink.redistribute` turn the old subtasks' positions
(or writer states) into those of the new subtasks: the same ones at the same parallelism, and for
a restore with another parallelism (a rescale) whatever keeps every record read once (sources move
their splits or partitions with their positions) and every pending commit done once (sinks hand
each old writer's state to one new writer). The defaults refuse to rescale a source whose readers
keep positions, and a sink whose writers keep state.
"""

from typing import Any

from streamlet.errors import CheckpointError
from streamlet.functions import RuntimeContext


class SourceReader:
    """Reads one subtask's share of a source."""

    async def open(self, position: Any | None) -> None:
        """Start reading, from `position` when restoring a checkpoint."""

    async def read_batch(self, max_records: int) -> list[Any]:
        """Up to `max_records` values; may wait briefly (well under a second) for data."""
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """True once a bounded input is exhausted."""
        return False

    @property
    def has_input(self) -> bool:
        """False when this subtask was assigned nothing to read (it is idle for watermarks)."""
        return True

    def position(self) -> Any:
        """Where the reader is: restoring it continues right after the last value returned."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class Source:
    """A description of an input; creates a reader per subtask."""

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        raise NotImplementedError

    def redistribute(self, positions: list[Any], parallelism: int) -> list[Any]:
        """The positions `parallelism` new readers open with, from those of the old readers (one
        per old subtask, in order) in the restored checkpoint.

        Called on every restore. The default keeps each position with its subtask; at another
        parallelism it accepts only readers without positions (every position None: each new
        reader starts afresh), and a source that can move its input between subtasks overrides it.
        """
        if len(positions) == parallelism:
            return list(positions)
        if any(position is not None for position in positions):
            raise CheckpointError(
                f"{type(self).__name__} cannot be restored with another parallelism "
                f"({len(positions)} -> {parallelism}): it does not redistribute its positions"
            )
        return [None] * parallelism


class SinkWriter:
    """Writes one subtask's records."""

    async def open(self, state: Any | None) -> None:
        """Start writing; `state` is what `snapshot` returned for the restored checkpoint."""

    def write(self, value: Any, timestamp: int | None) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        """Called after each input batch: finish asynchronous writes if the writer has any."""

    async def snapshot(self, checkpoint_id: int) -> Any:
        """Make everything written so far durable (or pending for commit); return state to keep."""
        return None

    async def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Checkpoint `checkpoint_id` is complete: commit what it covers."""

    async def close(self) -> None:
        pass


class Sink:
    """A description of an output; creates a writer per subtask."""

    def create_writer(self, context: RuntimeContext) -> SinkWriter:
        raise NotImplementedError

    def redistribute(self, states: list[Any], parallelism: int) -> list[Any]:
        """The states `parallelism` new writers open with, from those the old writers' `snapshot`
        returned (one per old subtask, in order) in the restored checkpoint.

        Called on every restore. The default keeps each state with its subtask; at another
        parallelism it accepts only writers that keep no state (every state None): a sink with
        pending commits overrides it, so that each is committed exactly once.
        """
        if len(states) == parallelism:
            return list(states)
        if any(state is not None for state in states):
            raise CheckpointError(
                f"{type(self).__name__} cannot be restored with another parallelism "
                f"({len(states)} -> {parallelism}): its writers keep state and it does not "
                "redistribute it"
            )
        return [None] * parallelism
