"""The compaction service job, with compactions that wait for the test (`tests.cluster.gated`)."""

from compaction_service.job import JOB_NAME, CompactionServiceSource
from streamlet import Job
from streamlet.connectors import BlackholeSink
from tests.cluster.gated import gated_compaction

job = Job(JOB_NAME)
job.source(CompactionServiceSource(gated_compaction), name="compaction-service").sink(
    BlackholeSink(), name="discard"
)
