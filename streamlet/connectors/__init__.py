"""Connectors: sources and sinks.

Delivery guarantees after a restore from a checkpoint (state is always exactly-once):

- `FileSink`: exactly-once (part files are committed when a checkpoint completes).
- `KafkaSink`: at-least-once (flushed on every checkpoint; Tansu has no transactions).
- `PrintSink`: at-least-once (records since the last checkpoint are printed again).
- `BlackholeSink`: discards records.

Sources (`CollectionSource`, `DataGeneratorSource`, `FileSource`, `KafkaSource`) keep their
position in checkpoints and resume exactly after it.
"""

from streamlet.connectors.base import Sink, SinkWriter, Source, SourceReader
from streamlet.connectors.blackhole import BlackholeSink
from streamlet.connectors.collection import CollectionSource
from streamlet.connectors.datagen import DataGeneratorSource
from streamlet.connectors.files import FileSink, FileSource
from streamlet.connectors.kafka import KafkaSink, KafkaSource
from streamlet.connectors.print import PrintSink

__all__ = [
    "BlackholeSink",
    "CollectionSource",
    "DataGeneratorSource",
    "FileSink",
    "FileSource",
    "KafkaSink",
    "KafkaSource",
    "PrintSink",
    "Sink",
    "SinkWriter",
    "Source",
    "SourceReader",
]
