"""Restoring from a checkpoint or savepoint URL (`restore_from`, `streamlet run -s`): operators are
matched by uid, a new operator starts empty, bad input is a clear error before the job starts,
with nothing written (and no restart), and a restart restores the checkpoint given until the
failed attempt completed a newer one."""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from statebackend import ListStateDescriptor, StateTypeConflictError, ValueStateDescriptor
from streamlet import Job, KeyedProcessFunction
from streamlet.checkpoint import CheckpointStorage
from streamlet.connectors import CollectionSource, SinkWriter, Source, SourceReader
from streamlet.errors import CheckpointError, JobDefinitionError
from streamlet.executor import execute_job
from streamlet.functions import RuntimeContext
from streamlet.metrics import JobMetrics
from tests.runtime.support import CollectSink, HeldSource, local_config
from tests.runtime.test_checkpoints import counting_job, expected, final_counts
from tests.runtime.test_rescale import run_held

WORDS = [f"w{i % 7}" for i in range(70)]  # 10 of each of 7 words


class CountValue(KeyedProcessFunction):
    COUNT = ValueStateDescriptor("count", default=0)

    def process_element(self, value, ctx):
        count = ctx.state(self.COUNT)
        count.update(count.value() + 1)
        yield (ctx.key, count.value())


class CountList(KeyedProcessFunction):
    """The same state name as `CountValue`'s, as a list (an instance attribute): incompatible."""

    def __init__(self) -> None:
        self.seen = ListStateDescriptor("count")

    def process_element(self, value, ctx):
        ctx.state(self.seen).add(value)
        yield (ctx.key, len(ctx.state(self.seen).get()))


def word_job(counters: dict[str, KeyedProcessFunction], words: list[str] = WORDS) -> Job:
    """`words` counted by each counter (its uid: its function), each into a `CollectSink`
    (`job.sinks[uid]`)."""
    job = Job("words")
    job.sinks = {}  # type: ignore[attr-defined]
    stream = job.source(CollectionSource(words), name="words").uid("source")
    for uid, function in counters.items():
        sink = job.sinks[uid] = CollectSink()  # type: ignore[attr-defined]
        stream.key_by(lambda w: w).process(function, name=uid).uid(uid).sink(sink, name=f"{uid}>")
    return job


async def finished_run(tmp_path: Path) -> tuple[dict[str, Any], str]:
    """A finished run of the word job with counters a and b: its configuration and the URL of
    its checkpoint."""
    config = local_config(tmp_path)
    await execute_job(word_job({"a": CountValue(), "b": CountValue()}), config)
    storage = CheckpointStorage(config["checkpoint.dir"], "words", {})
    return config, storage.url_of(storage.checkpoint_ids()[0])


def tree(root: Path) -> dict[str, bytes]:
    """Every file below `root` with its contents."""
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def refused(
    tmp_path: Path, job: Job, config: dict[str, Any], error: type[Exception], match: str, **kw: Any
) -> None:
    """Running `job` raises `error` matching `match` at once (restarts are allowed, but a restart
    cannot fix bad input) and writes nothing."""
    before = tree(tmp_path)
    restarts: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = restarts.append  # type: ignore[method-assign]
    logging.getLogger("streamlet.executor").addHandler(handler)
    try:
        with pytest.raises(error, match=match):
            await execute_job(job, {**config, "restart.attempts": 3, "restart.delay": 0}, **kw)
    finally:
        logging.getLogger("streamlet.executor").removeHandler(handler)
    assert [r.getMessage() for r in restarts if "restart" in r.getMessage()] == []
    assert tree(tmp_path) == before


async def test_a_path_that_does_not_exist(tmp_path: Path) -> None:
    config = local_config(tmp_path)
    job = word_job({"a": CountValue()})
    missing = (tmp_path / "nowhere" / "chk-3").as_uri()
    message = "no checkpoint or savepoint at .*nowhere/chk-3: the path does not exist"
    await refused(tmp_path, job, config, CheckpointError, message, restore_from=missing)
    (tmp_path / "empty").mkdir()
    message = "empty holds no _metadata file: it is not a complete checkpoint or savepoint"
    empty = str(tmp_path / "empty")
    await refused(tmp_path, job, config, CheckpointError, message, restore_from=empty)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": 1, "job": "words", "checkp', "is damaged: it is not JSON"),
        (b'{"format": 7}', r"is not checkpoint metadata of format 1 \(found 7\)"),
        (
            b'{"format": 1, "job": "words", "checkpoint_id": 1, "max_parallelism": 128, '
            b'"operators": {"a": {"parallelism": 2, "subtasks": [null]}}}',
            "is damaged: operator 'a' does not list the state of its 2 subtasks",
        ),
    ],
)
async def test_a_damaged_metadata_file(tmp_path: Path, content: bytes, message: str) -> None:
    config, url = await finished_run(tmp_path)
    (Path(url.removeprefix("file://")) / "_metadata").write_bytes(content)
    job = word_job({"a": CountValue(), "b": CountValue()})
    await refused(tmp_path, job, config, CheckpointError, message, restore_from=url)
    # Nor is it the latest complete checkpoint for a plain restore.
    assert CheckpointStorage(config["checkpoint.dir"], "words", {}).latest() is None


async def test_the_metadata_of_another_jobs_graph(tmp_path: Path) -> None:
    config, url = await finished_run(tmp_path)
    other = Job("other")
    other.source(CollectionSource(WORDS), name="other-words").sink(CollectSink())
    message = (
        r"checkpoint 1 of job 'words' has no operator of this job: is it the checkpoint of "
        r"another job\? \(its operators: 3-a, 5-b, a, b, source; this job's: 1-other-words, "
        r"2-sink\)"
    )
    await refused(
        tmp_path, other, config, CheckpointError, message, restore_from=url,
        allow_non_restored_state=True,
    )  # fmt: skip


async def test_an_incompatible_state_descriptor_under_the_same_name(tmp_path: Path) -> None:
    config, url = await finished_run(tmp_path)
    job = word_job({"a": CountList(), "b": CountValue()})
    message = "operator 'a': state 'count' is a value state; it cannot be used as a list state"
    await refused(tmp_path, job, config, StateTypeConflictError, message, restore_from=url)
    # Also on a plain restore of the latest checkpoint.
    await refused(tmp_path, job, config, StateTypeConflictError, message)


async def test_a_parallelism_above_the_maximum(tmp_path: Path) -> None:
    config, url = await finished_run(tmp_path)
    job = word_job({"a": CountValue(), "b": CountValue()})
    await refused(
        tmp_path, job, {**config, "parallelism.max": 4}, JobDefinitionError,
        r"has parallelism 5, above parallelism.max \(4\)", parallelism=5, restore_from=url,
    )  # fmt: skip
    await refused(
        tmp_path, job, {**config, "parallelism.max": 64}, CheckpointError,
        "was taken with parallelism.max 128, not 64", restore_from=url,
    )  # fmt: skip


def counts(sink: CollectSink) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for key, count in sink.values:
        found.setdefault(key, []).append(count)
    return {key: sorted(values) for key, values in found.items()}


@pytest.mark.parametrize("allow", ["argument", "configuration"])
async def test_state_of_a_removed_operator_needs_allowing_and_a_new_one_starts_empty(
    tmp_path: Path, allow: str
) -> None:
    config, url = await finished_run(tmp_path)
    # b is gone, c is new; the source reads 70 more words after the 70 of the first run.
    job = word_job({"a": CountValue(), "c": CountValue()}, WORDS + WORDS)
    message = (
        r"has state for operators this job no longer has \(b\); to start without it, allow "
        r"non-restored state \(--allow-non-restored-state, or "
        r"checkpoint.allow-non-restored-state: true\)"
    )
    await refused(tmp_path, job, config, CheckpointError, message, restore_from=url)
    if allow == "argument":
        result = await execute_job(job, config, restore_from=url, allow_non_restored_state=True)
    else:
        run_config = {**config, "checkpoint.allow-non-restored-state": "true"}
        result = await execute_job(job, run_config, restore_from=url)
    assert result.restored_checkpoint == 1 and result.records_in == 70
    sinks = job.sinks  # type: ignore[attr-defined]
    assert counts(sinks["a"]) == {word: list(range(11, 21)) for word in set(WORDS)}
    assert counts(sinks["c"]) == {word: list(range(1, 11)) for word in set(WORDS)}


async def test_restore_from_wins_over_the_latest_checkpoint_and_checkpoint_restore_off(
    tmp_path: Path,
) -> None:
    count = 500
    config = local_config(tmp_path)
    for _ in range(2):  # checkpoint 1 (after 500 records), then 2 (nothing left to read)
        await execute_job(counting_job("older", CollectSink(), count), config)
    storage = CheckpointStorage(config["checkpoint.dir"], "older", {})
    assert storage.checkpoint_ids() == [2, 1]
    result = await execute_job(
        counting_job("older", CollectSink(), count),
        {**config, "checkpoint.restore": False},
        parallelism=3,
        restore_from=storage.url_of(1) + "/_metadata",
    )
    assert result.restored_checkpoint == 1 and result.records_in == 0
    assert storage.checkpoint_ids()[0] == 3  # ids go on after the newest


class Failing(Source):
    """`source`, whose readers raise at a read when the first of `conditions` holds (which is
    then dropped)."""

    def __init__(self, source: Source, conditions: list[Callable[[], bool]]) -> None:
        self.source = source
        self.conditions = conditions

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        reader = self.source.create_reader(context)
        original = reader.read_batch

        async def read_batch(max_records: int) -> list[Any]:
            if self.conditions and self.conditions[0]():
                self.conditions.pop(0)
                raise RuntimeError("transient")
            return await original(max_records)

        reader.read_batch = read_batch  # type: ignore[method-assign]
        return reader

    def redistribute(self, positions: list[Any], parallelism: int) -> list[Any]:
        return self.source.redistribute(positions, parallelism)


async def test_a_restart_restores_the_checkpoint_given_until_a_newer_one_completed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    count = 4000
    config = local_config(tmp_path)

    def held(source: Source) -> HeldSource:
        return HeldSource(source, limit=1000)

    await run_held(counting_job("flaky", CollectSink(), count, held=held), config, 1, 1000)
    await run_held(counting_job("flaky", CollectSink(), count, held=held), config, 1, 1000)
    storage = CheckpointStorage(config["checkpoint.dir"], "flaky", {})
    assert storage.checkpoint_ids() == [2, 1]
    caplog.set_level(logging.INFO, logger="streamlet.executor")
    metrics = JobMetrics()
    # The first attempt fails before any checkpoint: the second restores checkpoint 1 again.
    # The second fails after a checkpoint of its own: the third restores that one.
    conditions = [lambda: True, lambda: metrics.checkpoints > 0]
    sink = CollectSink()

    def failing(source: Source) -> Source:
        return Failing(HeldSource(source, limit=500, release=lambda: not conditions), conditions)

    result = await execute_job(
        counting_job("flaky", sink, count, held=failing),
        {**config, "restart.attempts": 2, "restart.delay": 0, "checkpoint.interval": "20ms"},
        parallelism=2,
        metrics=metrics,
        restore_from=storage.url_of(1),
    )
    assert result.restarts == 2 and not conditions
    restored = [
        int(r.getMessage().split()[2]) for r in caplog.records if "restoring" in r.getMessage()
    ]
    assert restored[:2] == [1, 1] and restored[2] > 2, restored
    assert final_counts(sink) == dict(expected(count))


class Numbers(Source):
    """Subtask i of p emits i, i+p, ... below 10; its position is how many it emitted, unless
    `positions` is off (then a restored reader starts afresh, as without a checkpoint)."""

    def __init__(self, positions: bool) -> None:
        self.positions = positions

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        numbers = list(range(context.subtask_index, 10, context.parallelism))
        return _NumbersReader(numbers, self.positions)


class _NumbersReader(SourceReader):
    def __init__(self, numbers: list[int], positions: bool) -> None:
        self.numbers, self.positions, self.emitted = numbers, positions, 0

    async def open(self, position: Any | None) -> None:
        self.emitted = position or 0

    async def read_batch(self, max_records: int) -> list[Any]:
        batch = self.numbers[self.emitted : self.emitted + max_records]
        self.emitted += len(batch)
        return batch

    @property
    def finished(self) -> bool:
        return self.emitted >= len(self.numbers)

    def position(self) -> int | None:
        return self.emitted if self.positions else None


class Remembering(CollectSink):
    """A sink whose writers keep state in checkpoints, without saying how to redistribute it."""

    def create_writer(self, context: RuntimeContext) -> SinkWriter:
        writer = super().create_writer(context)
        writer.snapshot = lambda checkpoint_id: _value(checkpoint_id)  # type: ignore[method-assign]
        return writer


async def _value(checkpoint_id: int) -> int:
    return checkpoint_id


@pytest.mark.parametrize(
    ("positions", "sink", "message"),
    [
        (True, CollectSink, r"operator 'numbers' \(uid '1-numbers'\): Numbers "),
        (False, Remembering, r"operator 'out' \(uid '2-out'\): Remembering "),
        (False, CollectSink, None),
    ],
)
async def test_connectors_of_ones_own_rescale_only_without_positions_or_state(
    tmp_path: Path, positions: bool, sink: type[CollectSink], message: str | None
) -> None:
    config = local_config(tmp_path)

    def job() -> Job:
        job = Job("own")
        job.source(Numbers(positions), name="numbers").sink(sink(), name="out")
        return job

    await execute_job(job(), config, parallelism=2)
    if message is None:  # readers without positions start afresh; a sink without state is fine
        result = await execute_job(job(), config, parallelism=3)
        assert result.restored_checkpoint == 1 and result.records_in == 10
    else:
        message += r"cannot be restored with another parallelism \(2 -> 3\)"
        await refused(tmp_path, job(), config, CheckpointError, message, parallelism=3)
