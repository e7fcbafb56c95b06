"""`Store`: the `streamlet` Faust table store, one LSM database per table partition on the DFS.

Faust selects it with `store="streamlet://?state.dir=..."` (app-wide, or a table's `store=`);
the options are in `streamlet_faust.settings`. What it does with Faust's calls:

- get/set/del/iteration: as Faust's rocksdb store, a write goes to the partition of the event being
  processed, a read inside a stream reads that partition, a read outside one (a web view, a
  global table) looks in every partition here; iteration covers the active partitions (all of
  them for a global table). A write outside a stream is an error.
- Rebalances (`on_rebalance`): an active partition's database is opened on the DFS, where the
  previous owner left it; one revoked or turned standby gets a last durable step, then is closed.
  A standby partition is a local database that starts empty (see `partition`). Opening and closing
  run on worker threads.
- `persisted_offset`: the offset the partition's state holds every record up to, so Faust's
  recovery replays only what follows it; `apply_changelog_batch` takes the records it replays.
  The number replayed per partition is logged when recovery completes (`replayed`).
- Durable steps (`make_durable`), every `flush.interval`, on revocation and on stop: cut the
  partitions' pending writes, flush Faust's producer (the call Faust's commit makes before it
  commits the source offsets), put what the changelog now holds and its offset into each
  database, and flush the databases together (docs/faust.md explains the rule).
- `reset_state`: every partition database of the table starts over empty on the DFS, and the
  local directory is removed; the changelog topic is not touched.

Faust's exactly-once processing and tables with `use_partitioner` are refused at construction:
the store relies on the changelog record of a write going to the partition of its event, written
by the time Faust's producer is flushed.
"""

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faust.exceptions import ImproperlyConfigured
from faust.stores.base import SerializedStore
from faust.streams import current_event
from faust.types import TP, AppT, CollectionT, EventT
from faust.types.enums import ProcessingGuarantee
from mode import Service
from yarl import URL

from statebackend.dfs import filesystem
from statebackend.lsm.db import LsmDB
from streamlet_faust.partition import Partition, Role, read_offset
from streamlet_faust.settings import store_settings

log = logging.getLogger(__name__)

# Ready writes of a partition (replayed records) above which a durable step starts at once.
MAX_READY = 100_000
_THREADS = 4


class Store(SerializedStore):
    """A Faust table store on streamlet's disaggregated LSM (see the module docstring)."""

    def __init__(
        self,
        url: str | URL,
        app: AppT,
        table: CollectionT,
        *,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, app, table, options=options, **kwargs)
        if app.conf.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE:
            raise ImproperlyConfigured(
                f"table {self.table_name}: the streamlet store supports the at_least_once "
                f"processing guarantee only, not exactly_once"
            )
        if getattr(table, "use_partitioner", False):
            raise ImproperlyConfigured(
                f"table {self.table_name}: the streamlet store needs a table's writes to go to "
                f"the partition of the event being processed; use_partitioner tables are not "
                f"supported"
            )
        self.settings = store_settings(
            self.url, options or {}, str(app.conf.tabledir), app.conf.broker_commit_interval,
            self.table_name,
        )
        self._partitions: dict[int, Partition] = {}
        self._durable_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(_THREADS, thread_name_prefix="streamlet-faust")
        self._kicked: asyncio.Future[None] | None = None

    # ----------------------------------------------------------------------------- reads

    def _get(self, key: bytes) -> bytes | None:
        for part in self._partitions_to_read():
            value = part.get(key)
            if value is not None:
                return value
        return None

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _partitions_to_read(self) -> Iterable[Partition]:
        """The event's partition inside a stream (of a partitioned table), else every one here,
        the active ones first."""
        event = current_event()
        if event is not None and not self.table.is_global:
            part = self._partitions.get(event.message.partition)
            return [] if part is None else [part]
        parts = sorted(self._partitions.values(), key=lambda p: p.role is not Role.ACTIVE)
        return parts

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for part in list(self._partitions.values()):
            if part.role is Role.ACTIVE or self.table.is_global:
                yield from part.items()

    def _iterkeys(self) -> Iterator[bytes]:
        for key, _ in self._iteritems():
            yield key

    def _itervalues(self) -> Iterator[bytes]:
        for _, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iteritems())

    # ----------------------------------------------------------------------------- writes

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._written_partition("set a key of").write(key, value)

    def _del(self, key: bytes) -> None:
        if current_event() is not None:
            self._written_partition("delete a key of").write(key, None)
            return
        # Outside a stream (Faust's cleanup of expired windows): wherever the key is.
        for part in self._partitions.values():
            if part.role is Role.ACTIVE and part.get(key) is not None:
                part.write(key, None)

    def _written_partition(self, what: str) -> Partition:
        event = current_event()
        if event is None:
            raise TypeError(
                f"cannot {what} table {self.table_name} outside of a stream: the streamlet store "
                f"writes to the partition of the event being processed"
            )
        number = event.message.partition
        part = self._partitions.get(number) or self._open_late(number)
        if part is None or part.role is not Role.ACTIVE:
            raise RuntimeError(
                f"table {self.table_name}: partition {number} is not active on this worker"
            )
        return part

    def _clear(self) -> None:
        raise NotImplementedError(
            f"table {self.table_name}: the streamlet store does not clear a table behind its "
            f"changelog; delete its keys through the table (del table[key]), or use reset_state"
        )

    # ----------------------------------------------------------------------------- changelog

    def persisted_offset(self, tp: TP) -> int | None:
        part = self._partitions.get(tp.partition) or self._open_late(tp.partition)
        return None if part is None else part.offset

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        part = self._partitions.get(tp.partition)
        if part is not None and part.role is Role.ACTIVE:
            part.acknowledge(offset)

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Take changelog records Faust replays: into an active partition's ready writes (a
        durable step puts them into its database), or straight into a standby's database."""
        for event in batch:
            message = event.message
            if message.key is None:
                raise TypeError(f"Changelog entry is missing key: {message}")
            part = self._partitions.get(message.partition) or self._open_late(message.partition)
            if part is None:
                log.warning(
                    "table %s: dropped a changelog record of partition %d, not assigned here",
                    self.table_name, message.partition,
                )
                continue
            part.replay(message.key, message.value, message.offset)
        if any(len(p.ready) >= MAX_READY for p in self._partitions.values()):
            self._kick_durable_step()

    def _kick_durable_step(self) -> None:
        if self._kicked is None or self._kicked.done():
            self._kicked = asyncio.ensure_future(self.make_durable())

    # ----------------------------------------------------------------------------- rebalances

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        """Open the partitions assigned here in their role, after a last durable step and closing
        for those revoked or whose role changed."""
        actives = self._numbers(self.app.assignor.assigned_actives())
        standbys = self._numbers(self.app.assignor.assigned_standbys()) - actives
        async with self._durable_lock:
            leaving = [
                part
                for number, part in self._partitions.items()
                if part.role is not _role(number, actives, standbys)
            ]
            await self._make_durable_locked([p for p in leaving if p.role is Role.ACTIVE])
            for part in leaving:
                del self._partitions[part.number]
            await asyncio.gather(*(self._in_thread(self._close, part) for part in leaving))
            opening = [
                (number, _role(number, actives, standbys))
                for number in sorted(actives | standbys)
                if number not in self._partitions
            ]
            opened = await asyncio.gather(
                *(self._in_thread(self._open, number, role) for number, role in opening)
            )
            self._partitions.update((part.number, part) for part in opened)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Log, once per opening, where each active partition's state came from."""
        for part in self._partitions.values():
            if part.role is Role.ACTIVE and not part.reported:
                part.reported = True
                log.info(
                    "table %s partition %d: recovered from the DFS at changelog offset %s; "
                    "replayed %d changelog records",
                    self.table_name, part.number, part.opened_at, part.replayed,
                )

    @property
    def replayed(self) -> dict[int, int]:
        """Changelog records replayed into each active partition since it was opened here."""
        return {
            part.number: part.replayed
            for part in self._partitions.values()
            if part.role is Role.ACTIVE
        }

    def _numbers(self, tps: Iterable[TP]) -> set[int]:
        topics = self.table.changelog_topic.topics
        return {tp.partition for tp in tps if tp.topic in topics}

    def _open_late(self, number: int) -> Partition | None:
        """Open a partition Faust uses before a rebalance opened it (blocking), if it is
        assigned here; None otherwise."""
        actives = self._numbers(self.app.assignor.assigned_actives())
        standbys = self._numbers(self.app.assignor.assigned_standbys()) - actives
        role = _role(number, actives, standbys)
        if role is None:
            return None
        log.warning("table %s: opening partition %d outside of a rebalance", self.table_name,
                    number)
        part = self._partitions[number] = self._open(number, role)
        return part

    def _open(self, number: int, role: Role) -> Partition:
        """Open partition `number`'s database (blocking): the DFS one for an active partition, a
        new local one for a standby."""
        settings = self.settings
        local = os.path.join(settings.local_dir, str(number))
        if role is Role.ACTIVE:
            root = settings.root(self.app.conf.id, self.table_name, number)
            db = LsmDB(
                root, settings.options_for(local), settings.storage_options,
                settings.compactor(root),
            )
            offset = read_offset(db)
            log.info("table %s partition %d: opened %s at changelog offset %s",
                     self.table_name, number, root, offset)
            return Partition(number, role, db, offset)
        standby = os.path.join(settings.local_dir, f"standby-{number}")
        shutil.rmtree(standby, ignore_errors=True)
        root = f"file://{standby}"
        db = LsmDB(root, settings.options_for(local), {}, settings.compactor(root), fresh=True)
        return Partition(number, role, db, None)

    def _close(self, part: Partition) -> None:
        part.db.close()
        if part.role is Role.STANDBY:
            shutil.rmtree(os.path.join(self.settings.local_dir, f"standby-{part.number}"),
                          ignore_errors=True)

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # ----------------------------------------------------------------------------- durability

    @Service.task
    async def _flush_periodically(self) -> None:
        while not self.should_stop:
            await self.sleep(self.settings.flush_interval_s)
            if not self.should_stop:
                await self.make_durable()

    async def make_durable(self) -> None:
        """A durable step of every active partition (see the module docstring)."""
        async with self._durable_lock:
            active = [p for p in self._partitions.values() if p.role is Role.ACTIVE]
            await self._make_durable_locked(active)

    async def _make_durable_locked(self, parts: list[Partition]) -> None:
        parts = [part for part in parts if part.failed is None]
        cut = [part for part in parts if part.cut()]
        if cut:
            try:
                await self.app.producer.flush()
            except Exception as e:  # noqa: BLE001 - the writes wait for the next step
                log.warning("table %s: flushing the changelog failed, the writes stay pending: "
                            "%s", self.table_name, e)
                for part in cut:
                    part.changelog_flush_failed()
            else:
                for part in cut:
                    part.changelog_flushed()
        steps = [self._make_partition_durable(part) for part in parts if part.has_news()]
        await asyncio.gather(*steps)

    async def _make_partition_durable(self, part: Partition) -> None:
        writes = len(part.ready)
        try:
            offset = await part.apply()
            await self._in_thread(part.db.flush)
        except Exception as e:  # noqa: BLE001 - the state stays readable; the changelog has it
            part.failed = e
            log.error("table %s partition %d: its database failed, it is no longer made "
                      "durable (a restart replays the changelog from offset %s): %s",
                      self.table_name, part.number, part.durable, e)
            return
        part.durable = offset
        log.debug("table %s partition %d: durable at changelog offset %s (%d writes)",
                  self.table_name, part.number, offset, writes)

    async def on_stop(self) -> None:
        """A last durable step, then close every database."""
        async with self._durable_lock:
            parts = list(self._partitions.values())
            await self._make_durable_locked([p for p in parts if p.role is Role.ACTIVE])
            self._partitions.clear()
            await asyncio.gather(*(self._in_thread(self._close, part) for part in parts))
        self._executor.shutdown(wait=False)

    # ----------------------------------------------------------------------------- backups

    async def backup_partition(
        self, tp: TP | int, flush: bool = True, purge: bool = False, keep: int = 1
    ) -> None:
        """A partition's database on the DFS is its backup: this makes every active partition
        durable now (`flush`, `purge` and `keep` do not apply)."""
        await self.make_durable()

    def restore_backup(self, tp: TP | int, latest: bool = True, backup_id: int = 0) -> None:
        raise NotImplementedError(
            f"table {self.table_name}: the streamlet store keeps no separate backups; a worker "
            f"that opens a partition starts from its database on the DFS"
        )

    # ----------------------------------------------------------------------------- reset

    def reset_state(self) -> None:
        """Remove all data of this table: each partition database on the DFS starts over empty (a
        new empty version; its tables are collected later), and the local directory is removed.
        The changelog topic is not touched. Blocking; run it while no worker serves the table."""
        for part in self._partitions.values():
            self._close(part)
        self._partitions.clear()
        settings = self.settings
        base = settings.table_root(self.app.conf.id, self.table_name)
        fs, path = filesystem(base, settings.storage_options)
        names = [os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)] if (
            fs.exists(path)
        ) else []
        for name in filter(str.isdigit, names):
            root = settings.root(self.app.conf.id, self.table_name, int(name))
            local = os.path.join(settings.local_dir, name)
            LsmDB(
                root, settings.options_for(local), settings.storage_options,
                settings.compactor(root), fresh=True,
            ).close()
            log.info("table %s: reset %s", self.table_name, root)
        shutil.rmtree(settings.local_dir, ignore_errors=True)


def _role(number: int, actives: set[int], standbys: set[int]) -> Role | None:
    if number in actives:
        return Role.ACTIVE
    return Role.STANDBY if number in standbys else None
