"""The ordered key-value store under a keyed state backend, and how backends provide one.

A backend is a `StoreFactory`: it opens a `KvStore` for one operator subtask, new or restored from a
store handle, and reads the entries of a snapshot in a key range (`export`). Every state type is
implemented once, on top of this interface (`statebackend.state`), so a backend only has to be a
correct ordered byte store with snapshots.

A rescale (a restore with another parallelism) opens a store for a key-group range from the
snapshots of several old subtasks (`RescaleSource`s): a factory may do that natively with
`open_rescaled(context, sources)`; without it, `statebackend.registry` fills a new empty store from
`export` of each source.

Reading ahead and write stalls, for a runtime that never blocks its event loop: a store may read
keys ahead, concurrently (the optional `prefetch(keys, max_bytes)`, after which `get` of those
keys waits for nothing), and may put its write stalls off (`defer_write_stalls()`, then
`writes_stalled()` and `wait_writable()`, which blocks and is called off the event loop). Both are
optional: `lsm` has them, `memory` and `rocksdb` (local) do not.

Savepoints: a store may write its own format into a savepoint's directory (the optional
`KvStore.savepoint`, a `native` savepoint); every store can be saved in the `canonical` format
from its `scan` (`statebackend.canonical`). A native savepoint belongs to the user: the store never
releases it. A factory whose savepoints reference files outside their directory (shared with the
job, e.g. pinned tables) has `dispose_savepoint`, called before the directory is deleted.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from statebackend.keygroups import KeyGroupRange
from statebackend.layout import key_group_prefix
from statebackend.ttl import Clock, system_clock

StoreHandle = dict[str, Any]
"""A small, JSON-serializable description of a store snapshot (file names, sizes, checksums)."""


@dataclass(frozen=True)
class StoreContext:
    """Where and for whom a store is opened.

    `scope` names the operator subtask (a relative path such as "job-1/counter/0"); the store
    keeps its checkpoint files below `checkpoint_dir/scope` and its working files below
    `local_dir/scope`. `clock` is the backend's clock (milliseconds since the epoch): a store
    that drops expired entries by itself (the `lsm` backend's compactions) asks it, never the wall
    clock, so that TTL means the same to readers and to compactions.
    """

    scope: str
    key_group_range: KeyGroupRange
    checkpoint_dir: str
    local_dir: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    clock: Clock = system_clock


@dataclass(frozen=True)
class RescaleSource:
    """The snapshot of an old subtask that a rescaled store takes entries from, and the key groups
    that snapshot holds."""

    handle: StoreHandle
    key_groups: KeyGroupRange


def key_range(key_groups: KeyGroupRange, within: KeyGroupRange) -> tuple[bytes, bytes]:
    """`(start, end)`: the physical keys of the key groups in both ranges are `start <= k < end`
    (the key group is the first two bytes of a physical key, `statebackend.layout`)."""
    common = key_groups.intersection(within)
    return key_group_prefix(common.start), key_group_prefix(common.start + len(common))


class KvStore(Protocol):
    """An ordered map of bytes to bytes.

    `scan(start, end)` yields the entries with `start <= key < end` in ascending key order, as
    of the moment `scan` is called: writes made while the iterator is consumed do not change
    what it yields.
    """

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    def snapshot(self, checkpoint_id: int) -> StoreHandle:
        """Persist the current contents to checkpoint storage; return a handle to restore them."""
        ...

    def release(self, handle: StoreHandle, retained: Sequence[StoreHandle]) -> None:
        """Give up the snapshot `handle`: a checkpoint that is no longer retained.

        Deletes what only `handle` references; whatever a `retained` snapshot or the live store
        still uses stays. Idempotent; may be called from another thread than the writer's.
        """
        ...

    def dispose(self) -> None:
        """Release all resources and delete local working files (checkpoint files are kept)."""
        ...

    # Optional: `savepoint(checkpoint_id: int, directory: str) -> StoreHandle`, the current
    # contents written into `directory` (a fresh directory the user owns, any fsspec URL) in the
    # store's own format. `open` restores the handle; no `release` is ever called on it, and the
    # store restored from it must not delete what it references (it is not the store's own).


class StoreFactory(Protocol):
    name: str

    def open(self, context: StoreContext, restore: StoreHandle | None) -> KvStore:
        """Open an empty store, or one restored from `restore`.

        Raises a `RestoreError` subclass, leaving no local files behind, if `restore` cannot be
        used.
        """
        ...

    def export(
        self, context: StoreContext, handle: StoreHandle, start: bytes, end: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        """The entries of the snapshot `handle` with `start <= key < end`, in key order.

        Read-only: it never writes to checkpoint storage nor takes the snapshot's store over, and
        it leaves no local files once exhausted or closed. Raises a `RestoreError` subclass (when
        iterated) if the snapshot cannot be read.
        """
        ...

    # Optional: `open_rescaled(context, sources: Sequence[RescaleSource]) -> KvStore`, a store
    # holding exactly the sources' entries whose key group is in `context.key_group_range`.

    # Optional: `dispose_savepoint(context, handle: StoreHandle) -> None`, let go of what the
    # savepoint `handle` (of `KvStore.savepoint`) references outside its directory, which the
    # caller deletes next. Idempotent. `context.scope` and `key_group_range` are the handle's.
