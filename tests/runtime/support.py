"""Helpers for runtime tests: a sink that collects into a list, and a configuration on tmp_path."""

from pathlib import Path
from typing import Any

from streamlet.connectors import Sink, SinkWriter
from streamlet.functions import RuntimeContext


class CollectSink(Sink):
    """Appends every value (or `(value, timestamp)` with `timestamps=True`) to `self.values`."""

    def __init__(self, timestamps: bool = False) -> None:
        self.values: list[Any] = []
        self.timestamps = timestamps

    def create_writer(self, context: RuntimeContext) -> SinkWriter:
        return _CollectWriter(self)


class _CollectWriter(SinkWriter):
    def __init__(self, sink: CollectSink) -> None:
        self._sink = sink

    def write(self, value: Any, timestamp: int | None) -> None:
        self._sink.values.append((value, timestamp) if self._sink.timestamps else value)


def local_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Checkpoints and state under `tmp_path`; keys given with `_` for `.` and `-` as usual."""
    config = {
        "checkpoint.dir": (tmp_path / "checkpoints").as_uri(),
        "state.dir": (tmp_path / "state").as_uri(),
        "state.local-dir": str(tmp_path / "local"),
        "checkpoint.interval": 0,
    }
    config.update(overrides)
    return config
