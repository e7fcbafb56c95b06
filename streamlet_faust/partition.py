"""One changelog partition of a Faust table on this worker: its LSM database and the writes that
are not in the database yet.

An *active* partition's database lives on the DFS and outlives the worker. Its writes pass
through layers, newest first:

- `pending`: writes made while processing events; their changelog records may not be written yet;
- `cutting`: the pending writes of a durable step while it flushes Faust's producer;
- `ready`: writes whose changelog records are written: cut writes once the producer is flushed,
  and records replayed from the changelog;
- `applying`: ready writes being put into the database;
- the database.

A tombstone (None) in a layer hides the key in the layers below. The rule (docs/faust.md): the
database only ever holds writes whose changelog records are written, and `OFFSET_KEY` an offset
every record up to which it holds; both are made durable by one flush of the database. So the
state is never ahead of the changelog, the offset never ahead of the state, and a recovery from
the DFS replays the changelog from that offset on.

A *standby* partition (Faust's standby replica) is a local database, started empty, that the
changelog records Faust replays go into directly; it never touches the DFS, so it never fences
the active partition's database, which another worker writes.

Threads: the database's writes (put/delete) run on the event loop, never while it is flushed;
the flush runs on a worker thread, during which the event loop still reads the database
(get/scan), as the database's reader invariants allow (`statebackend.lsm.db`). An active
partition's database never stalls a write on the event loop (`LsmDB.defer_stalls`): a memtable
switch that would wait for compactions (L0 at its stop or slowdown trigger) is waited out on a
worker thread between chunks of a durable step's writes. A standby's writes come from Faust's
synchronous changelog replay, so they stall where they are, as Faust's rocksdb store's do.
"""

import asyncio
import enum
import logging
from collections.abc import Iterator

from statebackend.lsm.db import LsmDB

log = logging.getLogger(__name__)

DATA = b"d"  # prefix of the table's keys in the database
_DATA_END = b"e"
OFFSET_KEY = b"m:changelog-offset"  # sorts apart from DATA: never a table key
# Writes put into the database between two yields to the event loop.
APPLY_CHUNK = 5000
_ABSENT = object()


class Role(enum.Enum):
    ACTIVE = "active"
    STANDBY = "standby"


Layer = dict[bytes, bytes | None]


class Partition:
    """A partition's database and layers; `offset` is the newest changelog offset every record up
    to which is in `ready`, `applying` or the database (None: none yet)."""

    def __init__(self, number: int, role: Role, db: LsmDB, offset: int | None) -> None:
        self.number = number
        self.role = role
        self.db = db
        if role is Role.ACTIVE:
            db.defer_stalls()  # stalls are waited out off the event loop (`apply`)
        self.pending: Layer = {}
        self.cutting: Layer = {}
        self.ready: Layer = {}
        self.applying: Layer = {}
        self.offset = offset
        self.acked = offset  # the newest offset Faust reported written (set_persisted_offset)
        self.cut_offset: int | None = None  # `acked` when the running step cut `pending`
        self.opened_at = offset  # the offset the database held when it was opened
        self.durable = offset  # the offset of the database's last flush
        self.replayed = 0  # changelog records replayed into it since it was opened
        self.reported = False  # whether its recovery was logged
        self.failed: BaseException | None = None  # a database error: no more durable steps

    # ----------------------------------------------------------------------------- reads

    def get(self, key: bytes) -> bytes | None:
        for layer in (self.pending, self.cutting, self.ready, self.applying):
            value = layer.get(key, _ABSENT)
            if value is not _ABSENT:
                return value  # type: ignore[return-value]
        return self.db.get(DATA + key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """The live entries, as of the call (later writes may or may not be seen)."""
        overlay = {**self.applying, **self.ready, **self.cutting, **self.pending}
        for key, value in self.db.scan(DATA, _DATA_END):
            if key[1:] not in overlay:
                yield key[1:], value
        for key, overlaid in overlay.items():
            if overlaid is not None:
                yield key, overlaid

    # ----------------------------------------------------------------------------- writes

    def write(self, key: bytes, value: bytes | None) -> None:
        """A write made while processing an event (its changelog record is on its way)."""
        self.pending[key] = value

    def replay(self, key: bytes, value: bytes | None, offset: int) -> None:
        """A changelog record Faust replays (recovery, or a standby following the changelog)."""
        if self.role is Role.ACTIVE:
            self.ready[key] = value
            self.replayed += 1
        elif value is None:
            self.db.delete(DATA + key)
        else:
            self.db.put(DATA + key, value)
        self.offset = offset if self.offset is None else max(self.offset, offset)

    def acknowledge(self, offset: int) -> None:
        """Faust wrote a changelog record of this partition at `offset`."""
        self.acked = offset if self.acked is None else max(self.acked, offset)

    # ----------------------------------------------------------------------------- durable steps

    def cut(self) -> bool:
        """Start a durable step; True when it has pending writes, which wait in `cutting` for the
        producer flush. Every record up to `acked` is the record of a write made before now."""
        self.cut_offset = self.acked
        if not self.pending:
            self._advance(self.cut_offset)  # all its writes are in `ready` or the database
            return False
        self.cutting, self.pending = self.pending, {}
        return True

    def changelog_flushed(self) -> None:
        """The producer was flushed after the cut: the cut writes' records are written."""
        self.ready.update(self.cutting)  # newer than what `ready` holds
        self.cutting = {}
        self._advance(self.cut_offset)

    def changelog_flush_failed(self) -> None:
        self.pending = {**self.cutting, **self.pending}
        self.cutting = {}

    def _advance(self, offset: int | None) -> None:
        if offset is not None and (self.offset is None or offset > self.offset):
            self.offset = offset

    def has_news(self) -> bool:
        return bool(self.ready) or self.offset != self.durable

    async def apply(self) -> int | None:
        """Put the ready writes and the offset they complete into the database (on the event loop,
        yielding between chunks); return that offset."""
        self.applying, self.ready = self.ready, {}
        offset = self.offset
        entries = list(self.applying.items())
        for start in range(0, len(entries), APPLY_CHUNK):
            for key, value in entries[start : start + APPLY_CHUNK]:
                if value is None:
                    self.db.delete(DATA + key)
                else:
                    self.db.put(DATA + key, value)
            if self.db.writes_stalled():  # a full memtable whose switch would stall
                await asyncio.to_thread(self.db.wait_writable)
            else:
                await asyncio.sleep(0)
        if offset is not None:
            self.db.put(OFFSET_KEY, str(offset).encode())
        self.applying = {}
        return offset


def read_offset(db: LsmDB) -> int | None:
    """The changelog offset a database holds every record up to (None: a new database)."""
    raw = db.get(OFFSET_KEY)
    return None if raw is None else int(raw)
