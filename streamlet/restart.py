"""Restart strategies: what happens when a running job fails.

`FixedDelayRestart(attempts, delay_ms)` restarts the job from its latest completed checkpoint up to
`attempts` times, waiting `delay_ms` before each; `attempts=0` means a failure is final. Set it with
`restart.attempts` and `restart.delay`.

>>> strategy = FixedDelayRestart(attempts=2, delay_ms=10)
>>> strategy.next_delay_ms(), strategy.next_delay_ms(), strategy.next_delay_ms()
(10, 10, None)
"""

from dataclasses import dataclass, field


@dataclass
class FixedDelayRestart:
    attempts: int
    delay_ms: int
    used: int = field(default=0, init=False)

    def next_delay_ms(self) -> int | None:
        """The wait before the next restart, or None once the attempts are used up."""
        if self.used >= self.attempts:
            return None
        self.used += 1
        return self.delay_ms
