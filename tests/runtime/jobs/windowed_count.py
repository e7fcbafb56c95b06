"""A test job: generated words with event times, counted per key in tumbling event-time windows,
and a keyed event-time timer per key and second that fires two seconds after the second began;
both written once to a FileSink (`<output>/windows`, `<output>/timers`).

Record i is `(word, i * 10)` (event time in ms, ascending within each source split). Configured by
environment variables: WINDOWED_COUNT_OUTPUT (the sink's directory), WINDOWED_COUNT_RECORDS,
WINDOWED_COUNT_RATE (records per second) and WINDOWED_COUNT_HOLD_AT (records per source subtask
after which the source holds until the run is stopped or killed).
"""

import os
import random

from streamlet import (
    Job,
    KeyedProcessFunction,
    TimeWindow,
    TumblingEventTimeWindows,
    WatermarkStrategy,
)
from streamlet.connectors import DataGeneratorSource, FileSink, Source

WORDS = [f"w{i}" for i in range(10)]
RECORDS = int(os.environ.get("WINDOWED_COUNT_RECORDS", "12000"))
RATE = float(os.environ.get("WINDOWED_COUNT_RATE", "4000"))
HOLD_AT = os.environ.get("WINDOWED_COUNT_HOLD_AT")
WINDOW_MS = 1000
TIMER_DELAY_MS = 2000


def event(index: int, rng: random.Random) -> tuple[str, int]:
    return rng.choice(WORDS), index * 10


def count(key: str, window: TimeWindow, elements: list) -> list[str]:
    return [f"window {key} {window.end} {len(elements)}"]


class Remind(KeyedProcessFunction):
    """A timer per key and second of event time, firing two seconds after that second began."""

    def process_element(self, value, ctx):
        second = ctx.timestamp // WINDOW_MS * WINDOW_MS
        ctx.timers.register_event_time_timer(second + TIMER_DELAY_MS)
        return ()

    def on_timer(self, timestamp, ctx):
        yield f"timer {ctx.key} {timestamp}"


EVENTS = DataGeneratorSource(event, rate=RATE, count=RECORDS, seed=5)
source: Source = EVENTS
if HOLD_AT is not None:
    from tests.runtime.support import HeldSource

    source = HeldSource(EVENTS, int(HOLD_AT))
job = Job("windowed-count")
events = job.source(
    source, name="events", watermarks=WatermarkStrategy.monotonous_timestamps(lambda e: e[1])
)
output = os.environ.get("WINDOWED_COUNT_OUTPUT", "windowed-count-output")
keyed = events.key_by(lambda e: e[0])
(
    keyed.window(TumblingEventTimeWindows(WINDOW_MS))
    .process(count, name="count")
    .uid("count")
    .sink(FileSink(f"{output}/windows"), name="windows")
    .uid("windows")
)
(
    keyed.process(Remind(), name="remind")
    .uid("remind")
    .sink(FileSink(f"{output}/timers"), name="timers")
    .uid("timers")
)
