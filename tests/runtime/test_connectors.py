"""Connectors in one process: file source positions, file sink commits, print output."""

import asyncio
from pathlib import Path

from streamlet import Job, KeyedProcessFunction, WatermarkStrategy
from streamlet.connectors import (
    CollectionSource,
    FileSink,
    FileSource,
    PrintSink,
    Source,
    SourceReader,
)
from streamlet.executor import execute_job
from streamlet.functions import RuntimeContext
from tests.runtime.support import CollectSink, local_config, progress_or_end


def context(index: int = 0, parallelism: int = 1) -> RuntimeContext:
    return RuntimeContext("test", "source", index, parallelism)


async def test_file_source_resumes_from_a_position(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a1\na2\na3\n")
    (tmp_path / "in" / "b.txt").write_text("b1\nb2\n")
    (tmp_path / "in" / ".hidden").write_text("never\n")
    reader = FileSource(str(tmp_path / "in")).create_reader(context())
    a, b = str(tmp_path / "in" / "a.txt"), str(tmp_path / "in" / "b.txt")
    await reader.open([[a, 2], [b, 0]])
    lines = await reader.read_batch(2)
    assert reader.position() == [[b, 0]]  # a.txt is done
    while not reader.finished:
        lines += await reader.read_batch(2)
    assert lines == ["a3", "b1", "b2"]
    assert reader.position() == []


async def test_file_source_spreads_files_over_subtasks(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(f"{name}\n")
    readers = [FileSource(str(tmp_path / "*.txt")).create_reader(context(i, 2)) for i in range(2)]
    seen = []
    for reader in readers:
        await reader.open(None)
        while not reader.finished:
            seen.append(await reader.read_batch(10))
    assert [batch for batch in seen if batch] == [["a"], ["c"], ["b"]]


async def test_file_sink_commits_on_checkpoints_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for run in range(2):
        job = Job(f"file-sink-{run}")
        job.source(CollectionSource([f"{run}-{i}" for i in range(5)])).sink(FileSink(str(out)))
        await execute_job(job, local_config(tmp_path), parallelism=2)
    committed = sorted(p.name for p in out.iterdir())
    assert committed == ["part-0-000000", "part-0-000001", "part-1-000000", "part-1-000001"]
    lines = sorted(line for p in out.iterdir() for line in p.read_text().splitlines())
    assert lines == sorted([f"{run}-{i}" for run in range(2) for i in range(5)])


async def test_print_sink_labels_subtasks(tmp_path: Path, capsys) -> None:
    job = Job("print")
    job.source(CollectionSource(["a", ("b", 1)])).sink(PrintSink(prefix="p"))
    await execute_job(job, local_config(tmp_path))
    assert capsys.readouterr().out.splitlines() == ["p> a", "p> ('b', 1)"]


async def test_idle_source_with_idleness_does_not_stall_event_time(tmp_path: Path) -> None:
    class Silent(SourceReader):
        async def read_batch(self, max_records):
            await asyncio.sleep(0.01)
            return []

        def position(self):
            return None

    class SilentSource(Source):
        def create_reader(self, context):
            return Silent()

    class Fire(KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.timers.register_event_time_timer(ctx.timestamp)

        def on_timer(self, timestamp, ctx):
            yield (ctx.key, timestamp)

    by_value = WatermarkStrategy.monotonous_timestamps(lambda v: v[1])
    job = Job("idleness")
    sink = CollectSink()
    data = job.source(CollectionSource([("a", 5), ("b", 7)]), "data", by_value)
    silent = job.source(SilentSource(), "silent", by_value.with_idleness(30))
    data.union(silent).key_by(lambda v: v[0]).process(Fire()).sink(sink)
    stop = asyncio.Event()
    run = asyncio.create_task(execute_job(job, local_config(tmp_path), stop=stop))
    # Fires only once the silent source is marked idle (the silent source never ends the job).
    await progress_or_end(lambda: len(sink.values) >= 2, run)
    stop.set()
    await run
    assert sorted(sink.values) == [("a", 5), ("b", 7)]
