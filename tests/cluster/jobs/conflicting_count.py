"""A test job with the graph of `tests/runtime/jobs/keyed_count.py` (the same operator uids), whose
counting operator declares its state `count` as a list, not a value: restoring keyed-count's
savepoint into it is an incompatible state descriptor."""

from statebackend import ListStateDescriptor
from streamlet import Job, KeyedProcessFunction
from streamlet.connectors import BlackholeSink, DataGeneratorSource


class CountAsList(KeyedProcessFunction):
    COUNT = ListStateDescriptor("count")

    def process_element(self, value, ctx):
        ctx.state(self.COUNT).add(1)
        yield value


job = Job("keyed-count")
(
    job.source(DataGeneratorSource(lambda i, rng: f"w{i % 50}", count=100), name="words")
    .key_by(lambda w: w)
    .process(CountAsList(), name="count")
    .sink(BlackholeSink(), name="files")
)
