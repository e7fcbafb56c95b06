"""Job metrics: the counters behind the progress line and the job summary.

Sources count the records they read, sinks the records they write, the coordinator the completed
checkpoints (and the id of the latest). Compactions come from the state backends: a backend's store
that has a `metrics()` method returning `compactions_local` and `compactions_remote` counts (and
optionally `compaction_cpu_seconds_local` and `compaction_cpu_seconds_remote`) is included.
"""

from dataclasses import dataclass, field

from statebackend import KeyedStateBackend


@dataclass
class JobMetrics:
    """Counters the progress line reads."""

    records_in: int = 0
    records_out: int = 0
    checkpoints: int = 0
    last_checkpoint_id: int | None = None
    backends: list[KeyedStateBackend] = field(default_factory=list)
    # What closed backends' stores reported last, so totals survive the end of an attempt.
    retired: dict[str, float] = field(default_factory=dict)

    def retire(self, backend: KeyedStateBackend) -> None:
        """Stop watching `backend` (it is closing), keeping what its store reported."""
        self.backends.remove(backend)
        for key, value in _store_metrics(backend).items():
            self.retired[key] = self.retired.get(key, 0.0) + value

    def compactions(self) -> tuple[int, int]:
        """(local, remote) compactions of the backends whose stores report them via `metrics()`."""
        local, remote = self._backend_sums("compactions_local", "compactions_remote")
        return int(local), int(remote)

    def compaction_cpu_seconds(self) -> tuple[float, float]:
        """(local, remote) CPU seconds spent on the backends' compactions, as their stores report
        them (`compaction_cpu_seconds_local`, `compaction_cpu_seconds_remote`): the remote ones
        are the CPU time moved off the job."""
        return self._backend_sums("compaction_cpu_seconds_local", "compaction_cpu_seconds_remote")

    def _backend_sums(self, *keys: str) -> tuple[float, ...]:
        sums = {key: self.retired.get(key, 0.0) for key in keys}
        for backend in self.backends:
            values = _store_metrics(backend)
            for key in keys:
                sums[key] += values.get(key, 0.0)
        return tuple(sums[key] for key in keys)


def _store_metrics(backend: KeyedStateBackend) -> dict[str, float]:
    """What the backend's store reports through `metrics()`, if it has one."""
    metrics = getattr(backend.store, "metrics", None)
    if metrics is None:
        return {}
    return {key: float(value or 0) for key, value in metrics().items()}
