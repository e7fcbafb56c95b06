"""Job metrics: the counters behind the progress line and the job summary.

Sources count the records they read, sinks the records they write, the coordinator the completed
checkpoints. Compactions come from the state backends: a backend's store that has a `metrics()`
method returning `compactions_local` and `compactions_remote` counts is included.
"""

from dataclasses import dataclass, field

from statebackend import KeyedStateBackend


@dataclass
class JobMetrics:
    """Counters the progress line reads."""

    records_in: int = 0
    records_out: int = 0
    checkpoints: int = 0
    backends: list[KeyedStateBackend] = field(default_factory=list)

    def compactions(self) -> tuple[int, int]:
        """(local, remote) compactions of the backends whose stores report them via `metrics()`."""
        local = remote = 0
        for backend in self.backends:
            metrics = getattr(backend.store, "metrics", None)
            if metrics is not None:
                values = metrics()
                local += int(values.get("compactions_local", 0))
                remote += int(values.get("compactions_remote", 0))
        return local, remote
