"""A test job that runs until cancelled: generated numbers, summed per key, discarded."""

from statebackend import ValueStateDescriptor
from streamlet import Job, KeyedProcessFunction
from streamlet.connectors import BlackholeSink, DataGeneratorSource


class Sum(KeyedProcessFunction):
    TOTAL = ValueStateDescriptor("total", default=0)

    def process_element(self, value, ctx):
        total = ctx.state(self.TOTAL)
        total.update(total.value() + value)
        yield total.value()


job = Job("endless")
(
    job.source(DataGeneratorSource(lambda i, rng: i % 7, rate=500), name="numbers")
    .key_by(lambda n: n)
    .process(Sum(), name="sum")
    .sink(BlackholeSink(), name="discard")
)
