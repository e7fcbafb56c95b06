"""A sink that prints each record on standard output: strings as they are, other values as
`repr`, prefixed by `prefix>` and, with several subtasks, the subtask number. At-least-once: after
a restore, records since the last checkpoint are printed again.

>>> from streamlet import Job
>>> from streamlet.connectors import CollectionSource, PrintSink
>>> job = Job("doc-print")
>>> _ = job.source(CollectionSource(["x"])).sink(PrintSink(prefix="out"))
>>> _ = job.execute({"checkpoint.dir": "memory://doc-print"})
out> x
"""

import sys
from typing import Any

from streamlet.connectors.base import Sink, SinkWriter
from streamlet.functions import RuntimeContext


class PrintSink(Sink):
    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix

    def create_writer(self, context: RuntimeContext) -> SinkWriter:
        label = self.prefix
        if context.parallelism > 1:
            label = f"{label or ''}{'' if label is None else ' '}{context.subtask_index + 1}"
        return _PrintWriter(label)


class _PrintWriter(SinkWriter):
    def __init__(self, label: str | None) -> None:
        self._label = label

    def write(self, value: Any, timestamp: int | None) -> None:
        text = value if isinstance(value, str) else repr(value)
        print(text if self._label is None else f"{self._label}> {text}", file=sys.stdout)
