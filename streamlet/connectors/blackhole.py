"""A sink that discards every record (for benchmarks and tests of throughput).

>>> from streamlet import Job
>>> from streamlet.connectors import BlackholeSink, CollectionSource
>>> job = Job("doc-blackhole")
>>> _ = job.source(CollectionSource(range(100))).sink(BlackholeSink())
>>> job.execute({"checkpoint.dir": "memory://doc-blackhole"}).records_out
100
"""

from typing import Any

from streamlet.connectors.base import Sink, SinkWriter
from streamlet.functions import RuntimeContext


class BlackholeSink(Sink):
    def create_writer(self, context: RuntimeContext) -> SinkWriter:
        return _BlackholeWriter()


class _BlackholeWriter(SinkWriter):
    def write(self, value: Any, timestamp: int | None) -> None:
        pass
