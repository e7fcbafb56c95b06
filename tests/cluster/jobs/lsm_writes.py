"""A test job that writes state fast until cancelled: random keys, 100-byte values, discarded.

With small lsm memtables (set by the test through `state.options`) it flushes and compacts all
the time, so it keeps a compaction service busy.
"""

from statebackend import ValueStateDescriptor
from streamlet import Job, KeyedProcessFunction
from streamlet.connectors import BlackholeSink, DataGeneratorSource


class Latest(KeyedProcessFunction):
    VALUE = ValueStateDescriptor("value")

    def process_element(self, value, ctx):
        ctx.state(self.VALUE).update(value[1])
        return ()


job = Job("lsm-writes")
(
    job.source(
        DataGeneratorSource(lambda i, rng: (rng.randrange(20_000), rng.randbytes(100)), rate=4000),
        name="writes",
    )
    .key_by(lambda pair: pair[0])
    .process(Latest(), name="latest")
    .sink(BlackholeSink(), name="discard")
)
