"""Stateless and keyed transformations, union, partitioning, parallelism and chaining."""

from collections import Counter
from pathlib import Path

import pytest

from streamlet import AggregateFunction, Job
from streamlet.connectors import CollectionSource, DataGeneratorSource
from streamlet.errors import JobDefinitionError
from streamlet.executor import execute_job
from tests.runtime.support import CollectSink, local_config


async def test_map_filter_flat_map_in_order_with_parallelism_one(tmp_path: Path) -> None:
    job = Job("stateless")
    sink = CollectSink()
    (
        job.source(CollectionSource(["a b", "", "c d e"]))
        .flat_map(str.split)
        .map(str.upper)
        .filter(lambda w: w != "D")
        .sink(sink)
    )
    result = await execute_job(job, local_config(tmp_path))
    assert sink.values == ["A", "B", "C", "E"]
    assert (result.records_in, result.records_out) == (3, 4)


@pytest.mark.parametrize("parallelism", [1, 3])
async def test_keyed_reduce_counts_every_key_exactly(tmp_path: Path, parallelism: int) -> None:
    words = [f"k{i % 37}" for i in range(5000)]
    job = Job("reduce")
    sink = CollectSink()
    (
        job.source(CollectionSource(words))
        .map(lambda w: (w, 1))
        .key_by(lambda pair: pair[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]))
        .set_parallelism(parallelism + 1)
        .sink(sink)
    )
    await execute_job(job, local_config(tmp_path), parallelism=parallelism)
    final: dict[str, int] = {}
    for word, count in sink.values:
        final[word] = max(count, final.get(word, 0))
    assert final == dict(Counter(words))
    assert len(sink.values) == len(words)


class Average(AggregateFunction):
    def create_accumulator(self):
        return [0, 0]

    def add(self, value, accumulator):
        return [accumulator[0] + value[1], accumulator[1] + 1]

    def get_result(self, accumulator):
        return accumulator[0] / accumulator[1]


async def test_keyed_rolling_aggregate(tmp_path: Path) -> None:
    job = Job("aggregate")
    sink = CollectSink()
    data = [("a", 1), ("b", 10), ("a", 3), ("a", 5)]
    job.source(CollectionSource(data)).key_by(lambda r: r[0]).aggregate(Average()).sink(sink)
    await execute_job(job, local_config(tmp_path))
    assert sink.values == [1.0, 10.0, 2.0, 3.0]


async def test_union_merges_streams_with_different_parallelism(tmp_path: Path) -> None:
    job = Job("union")
    sink = CollectSink()
    first = job.source(CollectionSource(range(100)), name="first")
    second = job.source(CollectionSource(range(100, 150)), name="second").set_parallelism(3)
    third = job.source(CollectionSource(range(150, 160)), name="third")
    first.union(second, third).map(lambda x: x * 2).sink(sink)
    await execute_job(job, local_config(tmp_path), parallelism=2)
    assert sorted(sink.values) == [x * 2 for x in range(160)]


async def test_broadcast_sends_every_record_to_every_subtask(tmp_path: Path) -> None:
    job = Job("broadcast")
    sink = CollectSink()
    job.source(CollectionSource(range(10))).broadcast().map(lambda x: x).set_parallelism(3).sink(
        sink
    )
    await execute_job(job, local_config(tmp_path))
    assert sorted(sink.values) == sorted(list(range(10)) * 3)


async def test_rebalance_spreads_records_round_robin(tmp_path: Path) -> None:
    job = Job("rebalance")
    seen: list[tuple[int, int]] = []

    class Tagging(CollectSink):
        def create_writer(self, context):
            writer = super().create_writer(context)
            writer.write = lambda value, ts: seen.append((context.subtask_index, value))
            return writer

    job.source(CollectionSource(range(12))).rebalance().map(lambda x: x).set_parallelism(
        3
    ).forward().sink(Tagging()).set_parallelism(3)
    await execute_job(job, local_config(tmp_path))
    per_subtask = Counter(subtask for subtask, _ in seen)
    assert per_subtask == {0: 4, 1: 4, 2: 4}


def test_chaining_groups_forward_operators_of_equal_parallelism() -> None:
    job = Job("chains")
    stream = (
        job.source(CollectionSource([1]), name="src").map(abs, name="m1").filter(bool, name="f")
    )
    stream.key_by(abs).reduce(max, name="r").map(str, name="m2").sink(CollectSink(), name="out")
    plan = job.graph.plan(2)
    assert [chain.name for chain in plan.chains] == ["src -> m1 -> f", "r -> m2 -> out"]
    assert [edge.partitioner.name for edge in plan.edges] == ["hash"]


def test_a_stream_with_two_consumers_ends_its_chain() -> None:
    job = Job("fan-out")
    stream = job.source(CollectionSource([1]), name="src").map(abs, name="m")
    stream.sink(CollectSink(), name="a")
    stream.sink(CollectSink(), name="b")
    names = [chain.name for chain in job.graph.plan(1).chains]
    assert names == ["src -> m", "a", "b"]


def test_graph_errors_are_explained() -> None:
    job = Job("bad")
    stream = job.source(CollectionSource([1]))
    with pytest.raises(JobDefinitionError, match="no sink"):
        job.graph.plan(1)
    with pytest.raises(JobDefinitionError, match="union"):
        stream.union(stream).set_parallelism(2)
    stream.forward().map(abs).set_parallelism(2).sink(CollectSink())
    with pytest.raises(JobDefinitionError, match="needs equal parallelism"):
        job.graph.plan(1)


async def test_data_generator_gives_the_same_records_for_the_same_seed(tmp_path: Path) -> None:
    def generate(index, rng):
        return (index, rng.random())

    runs = []
    for attempt in range(2):
        job = Job(f"gen-{attempt}")
        sink = CollectSink()
        job.source(DataGeneratorSource(generate, rate=2000, count=300, seed=5)).sink(sink)
        await execute_job(job, local_config(tmp_path), parallelism=2)
        runs.append(sorted(sink.values))
    assert runs[0] == runs[1]
    assert [index for index, _ in runs[0]] == list(range(300))
