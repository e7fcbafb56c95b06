"""Compaction debt of one LSM database: the work its compactions owe, and what it cost its writers.

- `pending_compaction_bytes(version, options)`: RocksDB's `estimate-pending-compaction-bytes`
  (`VersionStorageInfo::EstimateCompactionBytesNeeded` in its version_set.cc) for our leveled
  LSM: the bytes compactions would have to rewrite to bring every level under its target. With
  `size(n)` the bytes of level n's files (a clipped reference counts its whole file, as the picker
  does), `target(n) = level_base_bytes * level_multiplier^(n-1)` (the picker's `max_bytes`) and
  the levels that can be compaction inputs 1 .. num_levels - 2:

      triggered = number of L0 files >= l0_compaction_trigger
      debt  = size(0) + size(1)    if triggered  (an L0 compaction rewrites all of L0 and L1)
      carry = size(0)              if triggered, else 0
      for n in 1 .. num_levels - 2:
          s = size(n) + carry                  (what level n holds once the level above is done)
          carry = max(0, s - target(n))        (the excess that must move down)
          if carry > 0 and size(n + 1) > 0:
              debt += carry * (size(n + 1) / s + 1)     (the excess and the part of level n + 1
                                                         it overlaps, estimated by the fan-out)

  The excess of a level above an empty level adds nothing there (it moves down without merging)
  but is carried on. One difference from RocksDB: RocksDB also counts L0 as triggered when its
  bytes reach `max_bytes_for_level_base`, because its L0 score includes size; our picker scores
  L0 by file count only (`picker.Picker.scores`), so this estimate does too.
- `WriteStalls`: the writer's stalls, counted and timed by kind and cause: a *slowdown* (each
  memtable switch sleeps `slowdown_sleep_s` while L0 has `l0_slowdown_trigger` files or more) and
  a *stop* (the writer waits, because L0 has `l0_stop_trigger` files or more, cause `l0_files`,
  or because `max_immutables` memtables await flushing, cause `memtables`). A stop is counted
  when it begins (a wait whose cause changes counts as two stops), and its seconds so far are
  included while it lasts, so a scrape during a long stop sees it. `stop_cause` and
  `slows_down` hold the rules that decide a stall.
- `debt_metrics(...)`: the figures the store's `metrics()` reports, keyed as the runtime reads
  them (`streamlet.metrics`): `l0_files` and `pending_compaction_bytes` (gauges), and per stall
  kind and cause `write_stalls/<kind>/<cause>` (count) and `write_stall_seconds/<kind>/<cause>`.

Thread safety: `WriteStalls` is updated by the writer's thread and read by any (a metrics
scrape); a `Version` is immutable.
"""

import threading
import time

from statebackend.lsm.options import LsmOptions
from statebackend.lsm.picker import Picker, PickerOptions
from statebackend.lsm.version import Version

SLOWDOWN = "slowdown"
STOP = "stop"
L0_FILES = "l0_files"
MEMTABLES = "memtables"
Stall = tuple[str, str]  # (kind, cause)
STALLS: tuple[Stall, ...] = ((SLOWDOWN, L0_FILES), (STOP, L0_FILES), (STOP, MEMTABLES))


def pending_compaction_bytes(version: Version, options: PickerOptions) -> int:
    """The bytes compactions would rewrite to bring every level under its target (see the module
    docstring for the formula, RocksDB's `estimate-pending-compaction-bytes`)."""
    picker = Picker(options)
    triggered = len(version.levels[0]) >= options.l0_trigger
    debt = carry = version.level_bytes(0) if triggered else 0
    for level in range(1, options.num_levels - 1):
        size = version.level_bytes(level)
        if level == 1 and triggered:
            debt += size
        size += carry
        carry = max(0, size - picker.max_bytes(level))
        below = version.level_bytes(level + 1)
        if carry and below:
            debt += int(carry * (below / size + 1))
    return debt


def stop_cause(immutables: int, l0_files: int, options: LsmOptions) -> str | None:
    """Why a writer that wants to switch memtables must wait now, or None if it need not."""
    if immutables >= options.max_immutables:
        return MEMTABLES
    if options.auto_compact and l0_files >= options.l0_stop_trigger:
        return L0_FILES
    return None


def slows_down(l0_files: int, options: LsmOptions) -> bool:
    """Whether a writer switching memtables now sleeps (a slowdown)."""
    return options.auto_compact and l0_files >= options.l0_slowdown_trigger


class WriteStalls:
    """Counts and times of a DB's write stalls by (kind, cause); see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(STALLS, 0)
        self._seconds = dict.fromkeys(STALLS, 0.0)
        self._stop: tuple[Stall, float] | None = None  # the stop in progress, since when

    def slow_down(self, l0_files: int, options: LsmOptions) -> None:
        """Sleep `slowdown_sleep_s` if L0 is at its slowdown trigger: a slowdown, counted with the
        time it took."""
        if not slows_down(l0_files, options):
            return
        started = time.monotonic()
        time.sleep(options.slowdown_sleep_s)
        with self._lock:
            self._counts[SLOWDOWN, L0_FILES] += 1
            self._seconds[SLOWDOWN, L0_FILES] += time.monotonic() - started

    def stopped(self, cause: str) -> None:
        """The writer waits because of `cause`: a stop of that cause goes on, or begins (ending
        one of another cause: a writer waiting for a flush may go on waiting for L0)."""
        with self._lock:
            if self._stop is not None and self._stop[0] == (STOP, cause):
                return
            self._end_stop_locked()
            self._stop = ((STOP, cause), time.monotonic())
            self._counts[STOP, cause] += 1

    def resumed(self) -> None:
        """The writer goes on; ends the stop in progress, if any."""
        with self._lock:
            self._end_stop_locked()

    def _end_stop_locked(self) -> None:
        if self._stop is not None:
            stall, since = self._stop
            self._seconds[stall] += time.monotonic() - since
            self._stop = None

    def totals(self) -> dict[Stall, tuple[int, float]]:
        """(count, seconds) by stall, including the seconds of a stop in progress."""
        with self._lock:
            seconds = dict(self._seconds)
            if self._stop is not None:
                stall, since = self._stop
                seconds[stall] += time.monotonic() - since
            return {stall: (self._counts[stall], seconds[stall]) for stall in STALLS}


def debt_metrics(version: Version, options: LsmOptions, stalls: WriteStalls) -> dict[str, float]:
    """The debt figures of a DB, keyed as the store's `metrics()` reports them."""
    figures: dict[str, float] = {
        "l0_files": len(version.levels[0]),
        "pending_compaction_bytes": pending_compaction_bytes(version, PickerOptions.of(options)),
    }
    for (kind, cause), (count, seconds) in stalls.totals().items():
        figures[f"write_stalls/{kind}/{cause}"] = count
        figures[f"write_stall_seconds/{kind}/{cause}"] = seconds
    return figures
