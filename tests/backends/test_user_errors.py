"""A job that stores a value its state cannot serialize: the failure names the state once and
points at the user's line, not at the state backend's code."""

from pathlib import Path
from typing import Any

import pytest

from statebackend import ValueStateDescriptor
from streamlet import Job, KeyedProcessFunction
from streamlet.connectors import BlackholeSink, DataGeneratorSource
from streamlet.errors import OperatorError
from streamlet.executor import execute_job
from tests.runtime.support import local_config


class RememberSomethingOdd(KeyedProcessFunction):
    LAST = ValueStateDescriptor("last_seen")

    def process_element(self, value: Any, ctx: Any) -> None:
        ctx.state(self.LAST).update(object())  # msgpack cannot store this
        return None


USER_LINE = RememberSomethingOdd.process_element.__code__.co_firstlineno + 1


async def test_a_job_storing_an_unserializable_value_reports_the_state_and_the_users_line(
    tmp_path: Path,
) -> None:
    job = Job("odd-state")
    (
        job.source(DataGeneratorSource(lambda i, rng: f"k{i}", count=10), name="keys")
        .key_by(lambda key: key)
        .process(RememberSomethingOdd(), name="remember")
        .sink(BlackholeSink())
    )
    with pytest.raises(OperatorError) as raised:
        await execute_job(job, local_config(tmp_path, **{"restart.attempts": 0}))
    message = str(raised.value)
    assert f"operator 'remember' failed at {__file__}:{USER_LINE} on record" in message
    assert raised.value.location == f"{__file__}:{USER_LINE}"
    assert "SerializationError: state 'last_seen': cannot serialize the value: type object" in (
        message
    )
    assert message.count("last_seen") == 1 and message.count("cannot serialize") == 1
    assert message.count("is not supported") == 1
