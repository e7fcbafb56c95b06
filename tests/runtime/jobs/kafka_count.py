"""A test job: words from a Kafka topic counted per key, every updated count written once to a
FileSink. Environment: KAFKA_COUNT_SERVERS, KAFKA_COUNT_TOPIC, KAFKA_COUNT_OUTPUT, and
KAFKA_COUNT_BOUNDED=1 to stop at the end offsets found at start."""

import os

from streamlet import Job
from streamlet.connectors import FileSink, KafkaSource
from tests.runtime.jobs.keyed_count import Count

job = Job("kafka-count")
(
    job.source(
        KafkaSource(
            os.environ["KAFKA_COUNT_TOPIC"],
            os.environ["KAFKA_COUNT_SERVERS"],
            bounded=os.environ.get("KAFKA_COUNT_BOUNDED") == "1",
        ),
        name="words",
    )
    .key_by(lambda w: w)
    .process(Count(), name="count")
    .sink(FileSink(os.environ["KAFKA_COUNT_OUTPUT"]), name="files")
)
