"""Job metrics: the counters behind the progress line and the job summary, and the compaction
debt of each subtask's state database.

Sources count the records they read, sinks the records they write, the coordinator the completed
checkpoints (and the id of the latest). The rest comes from the state backends, watched with the
operator and subtask they serve (`watch`): a backend's store that has a `metrics()` method is
asked at each read, and may report, all optional:
- counters: `compactions_local`, `compactions_remote`, `compaction_cpu_seconds_local`,
  `compaction_cpu_seconds_remote`, and per write stall kind and cause
  `write_stalls/<kind>/<cause>` (how many) and `write_stall_seconds/<kind>/<cause>`;
- gauges (`GAUGES`): `l0_files` and `pending_compaction_bytes`; a store that reports
  `pending_compaction_bytes` is listed by `databases()` (the lsm backend's:
  `statebackend.lsm.debt`).
When a backend closes (`retire`), its counters are kept, so totals survive the end of an attempt;
its gauges go with it. Keyed backends open and close on worker threads (`watch` and `retire` are
called there): the readers iterate copies.
"""

from dataclasses import dataclass, field

from statebackend import KeyedStateBackend

GAUGES = frozenset({"l0_files", "pending_compaction_bytes"})
STALLS = "write_stalls/"
STALL_SECONDS = "write_stall_seconds/"

Stall = tuple[str, str]  # (kind, cause)


@dataclass(frozen=True)
class DatabaseMetrics:
    """The compaction debt one subtask's state store reports."""

    operator: str  # the operator's uid
    subtask: int
    l0_files: float
    pending_compaction_bytes: float
    stalls: dict[Stall, tuple[float, float]]  # (kind, cause) -> (count, seconds)


@dataclass
class JobMetrics:
    """Counters the progress line reads."""

    records_in: int = 0
    records_out: int = 0
    checkpoints: int = 0
    last_checkpoint_id: int | None = None
    # The open backends, with the operator (uid) and subtask each serves.
    backends: dict[KeyedStateBackend, tuple[str, int]] = field(default_factory=dict)
    # What closed backends' stores counted last, so totals survive the end of an attempt.
    retired: dict[str, float] = field(default_factory=dict)

    def watch(self, backend: KeyedStateBackend, operator: str, subtask: int) -> None:
        """Report what `backend`'s store reports, as the state of `operator`'s `subtask`."""
        self.backends[backend] = (operator, subtask)

    def retire(self, backend: KeyedStateBackend) -> None:
        """Stop watching `backend` (it is closing), keeping what its store counted."""
        del self.backends[backend]
        for key, value in _store_metrics(backend).items():
            if key not in GAUGES:
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

    def write_stalls(self) -> tuple[int, float]:
        """(count, seconds) of the write stalls of every backend, of any kind and cause."""
        count = seconds = 0.0
        # Copies: backends are opened and closed (watched, retired) on worker threads.
        for values in [dict(self.retired), *map(_store_metrics, list(self.backends))]:
            for key, value in values.items():
                if key.startswith(STALLS):
                    count += value
                elif key.startswith(STALL_SECONDS):
                    seconds += value
        return int(count), seconds

    def databases(self) -> list[DatabaseMetrics]:
        """The compaction debt of every open backend whose store reports it."""
        found = []
        for backend, (operator, subtask) in list(self.backends.items()):
            values = _store_metrics(backend)
            if "pending_compaction_bytes" not in values:
                continue
            stalls: dict[Stall, tuple[float, float]] = {}
            for key, count in values.items():
                if key.startswith(STALLS):
                    stall = key[len(STALLS) :]
                    kind, _, cause = stall.partition("/")
                    stalls[kind, cause] = (count, values.get(STALL_SECONDS + stall, 0.0))
            found.append(
                DatabaseMetrics(
                    operator,
                    subtask,
                    values.get("l0_files", 0.0),
                    values["pending_compaction_bytes"],
                    stalls,
                )
            )
        return found

    def _backend_sums(self, *keys: str) -> tuple[float, ...]:
        sums = {key: self.retired.get(key, 0.0) for key in keys}
        for backend in list(self.backends):
            values = _store_metrics(backend)
            for key in keys:
                sums[key] += values.get(key, 0.0)
        return tuple(sums[key] for key in keys)


def _store_metrics(backend: KeyedStateBackend) -> dict[str, float]:
    """What the backend's store reports through `metrics()`, if it has one."""
    return {key: float(value or 0) for key, value in backend.metrics().items()}
