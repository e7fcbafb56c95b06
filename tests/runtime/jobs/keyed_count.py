"""A test job: generated words counted per key, every updated count written once to a FileSink.

Configured by environment variables: KEYED_COUNT_OUTPUT (the sink's directory), KEYED_COUNT_RECORDS,
KEYED_COUNT_RATE (records per second), KEYED_COUNT_POISON (a record index whose word makes the
counting operator raise; -1 for none), KEYED_COUNT_HOLD_AT (records per source subtask after
which the source holds until the run is stopped or killed: such a run cannot end by itself) and
KEYED_COUNT_ASYNC (set: the count is an asynchronous process function, `AsyncCount`).

Loaded as a job module, its arguments (after `--`) override some of them per job (the processes of
a cluster share one environment): `--output DIR`, `--hold-at N`, and `--release-file PATH` (with
`--hold-at`: the source holds only until that file exists).
"""

import argparse
import asyncio
import os
import random
import sys

from statebackend import ValueStateDescriptor
from streamlet import Job, KeyedProcessFunction
from streamlet.connectors import DataGeneratorSource, FileSink, Source

WORDS = [f"w{i}" for i in range(50)]
RECORDS = int(os.environ.get("KEYED_COUNT_RECORDS", "20000"))
RATE = float(os.environ.get("KEYED_COUNT_RATE", "4000"))
POISON = int(os.environ.get("KEYED_COUNT_POISON", "-1"))
_parser = argparse.ArgumentParser(prog="keyed_count")
_parser.add_argument("--output", default=os.environ.get("KEYED_COUNT_OUTPUT"))
_parser.add_argument("--hold-at", default=os.environ.get("KEYED_COUNT_HOLD_AT"))
_parser.add_argument("--release-file")
ARGS = _parser.parse_args(sys.argv[1:] if __name__ == "__streamlet_job__" else [])
HOLD_AT = ARGS.hold_at


def word(index: int, rng: random.Random) -> str:
    return "poison" if index == POISON else rng.choice(WORDS)


class Count(KeyedProcessFunction):
    COUNT = ValueStateDescriptor("count", default=0)

    def process_element(self, value, ctx):
        if value == "poison":
            raise ValueError("cannot count poison")
        count = ctx.state(self.COUNT)
        count.update(count.value() + 1)
        yield f"{ctx.key} {count.value()}"


class AsyncCount(KeyedProcessFunction):
    """`Count` as an asynchronous process function: each record awaits between reading its key's
    count and updating it (as a call to another service would), so records of other keys run
    meanwhile (docs/runtime.md)."""

    COUNT = Count.COUNT

    async def process_element(self, value, ctx):
        if value == "poison":
            raise ValueError("cannot count poison")
        count = ctx.state(self.COUNT)
        current = count.value()
        await asyncio.sleep(0.001 * (len(value) % 3))
        count.update(current + 1)
        return [f"{ctx.key} {current + 1}"]


WORDS_SOURCE = DataGeneratorSource(word, rate=RATE, count=RECORDS, seed=3)
source: Source = WORDS_SOURCE
if HOLD_AT is not None:  # imported only then: the cluster tests submit this file on its own
    from tests.runtime.support import HeldSource, never

    release_file = ARGS.release_file
    released = never if release_file is None else lambda: os.path.exists(release_file)
    source = HeldSource(WORDS_SOURCE, int(HOLD_AT), released)
job = Job("keyed-count")
(
    job.source(source, name="words")
    .key_by(lambda w: w)
    .process(AsyncCount() if os.environ.get("KEYED_COUNT_ASYNC") else Count(), name="count")
    .sink(FileSink(ARGS.output or "keyed-count-output"), name="files")
)
