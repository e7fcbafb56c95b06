"""The compaction service job's settings come from the job's configuration."""

from compaction_service.job import service_config
from streamlet.config import Configuration


def test_service_settings_from_the_job_configuration() -> None:
    config = Configuration(
        {
            "compaction.service.port": 50051,
            "compaction.service.workers": 3,
            "compaction.service.allowed-roots": "s3://a, file:///b",
            "compaction.service.token": "secret",
        }
    )
    second = service_config(config, subtask_index=1)
    assert second.port == 50052  # one port per subtask
    assert (second.workers, second.allowed_roots, second.token) == (
        3,
        ("s3://a", "file:///b"),
        "secret",
    )
    assert service_config(Configuration({}), 0).token is None  # no token: none required
