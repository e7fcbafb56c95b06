"""streamlet: a stream processor with pluggable keyed state.

A job module builds a `Job` (sources, transformations, sinks) and runs with `streamlet run
job.py`, or in-process with `job.execute()`. See `streamlet.api` for the stream API,
`streamlet.connectors` for sources and sinks, and `streamlet.config` for every configuration key.
"""

from statebackend import (
    AggregatingStateDescriptor,
    ListStateDescriptor,
    MapStateDescriptor,
    ReducingStateDescriptor,
    TtlConfig,
    ValueStateDescriptor,
)
from streamlet.api import DataStream, Job, KeyedStream, WindowedStream
from streamlet.config import Configuration
from streamlet.executor import JobResult
from streamlet.functions import AggregateFunction, KeyedProcessFunction, OutputTag, RuntimeContext
from streamlet.watermarks import WatermarkStrategy
from streamlet.windows import (
    EventTimeSessionWindows,
    SlidingEventTimeWindows,
    TimeWindow,
    TumblingEventTimeWindows,
)

__all__ = [
    "AggregateFunction",
    "AggregatingStateDescriptor",
    "Configuration",
    "DataStream",
    "EventTimeSessionWindows",
    "Job",
    "JobResult",
    "KeyedProcessFunction",
    "KeyedStream",
    "ListStateDescriptor",
    "MapStateDescriptor",
    "OutputTag",
    "ReducingStateDescriptor",
    "RuntimeContext",
    "SlidingEventTimeWindows",
    "TimeWindow",
    "TtlConfig",
    "TumblingEventTimeWindows",
    "ValueStateDescriptor",
    "WatermarkStrategy",
    "WindowedStream",
]
