"""A test job: every record a new key whose state is a 100-byte value, so an lsm backend with small
memtables flushes (and compacts) by volume, not by timing. Environment: DISTINCT_KEYS_RECORDS."""

import os

from statebackend import ValueStateDescriptor
from streamlet import Job, KeyedProcessFunction
from streamlet.connectors import BlackholeSink, DataGeneratorSource

RECORDS = int(os.environ.get("DISTINCT_KEYS_RECORDS", "5000"))


class Remember(KeyedProcessFunction):
    VALUE = ValueStateDescriptor("value")

    def process_element(self, value, ctx):
        ctx.state(self.VALUE).update(value * 25)
        yield value


job = Job("distinct-keys")
(
    job.source(DataGeneratorSource(lambda i, rng: f"k{i:07d}", count=RECORDS), name="keys")
    .key_by(lambda key: key)
    .process(Remember(), name="remember")
    .sink(BlackholeSink(), name="discard")
)
