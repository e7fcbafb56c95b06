"""The circuit breaker's states, on a fake clock."""

from compaction_service.breaker import CircuitBreaker, State


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_k_failures_probes_after_backoff_and_closes_when_healthy() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, backoff_s=10, clock=clock)
    b.record_failure()
    b.record_failure()
    b.record_success()  # not consecutive any more
    b.record_failure()
    b.record_failure()
    assert b.allows_remote()
    b.record_failure()
    assert b.state is State.OPEN and not b.allows_remote()
    clock.now = 9.9
    assert not b.begin_probe()
    clock.now = 10.0
    assert b.begin_probe() and b.state is State.HALF_OPEN
    assert not b.begin_probe()  # one probe at a time
    assert not b.allows_remote()
    b.probe_result(True)
    assert b.state is State.CLOSED and b.allows_remote()


def test_unhealthy_probe_doubles_the_backoff_up_to_the_maximum() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, backoff_s=10, max_backoff_s=25, clock=clock)
    b.record_failure()
    clock.now = 10
    assert b.begin_probe()
    b.probe_result(False)  # back-off 20
    clock.now = 29.9
    assert not b.begin_probe()
    clock.now = 30
    assert b.begin_probe()
    b.probe_result(False)  # back-off 25 (capped)
    clock.now = 55
    assert b.begin_probe()
    b.probe_result(True)
    b.record_failure()  # back-off reset to 10
    clock.now = 65
    assert b.begin_probe()
