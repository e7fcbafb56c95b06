"""A Faust table partition's durable step (`streamlet_faust.partition`) on a database whose writes
stall: the event loop goes on while the step waits the stall out."""

import asyncio
import threading
import uuid

from statebackend.lsm.db import LsmDB
from streamlet_faust.partition import DATA, OFFSET_KEY, Partition, Role
from tests.lsm.options import small_options
from tests.lsm.test_db import GatedCompactor, fill_l0, wait_for

STOP = 4  # L0 files at which memtable switches wait for a compaction


def test_a_durable_step_waits_out_a_write_stop_off_the_event_loop() -> None:
    gated = GatedCompactor()  # compactions wait for its gate: L0 stays at its stop trigger
    db = LsmDB(
        f"memory://faust-partition-{uuid.uuid4().hex}/db",
        small_options(l0_compaction_trigger=2, l0_slowdown_trigger=3, l0_stop_trigger=STOP),
        compactor=gated,
    )
    try:
        fill_l0(db, STOP)
        wait_for(lambda: len(gated.specs) == 1)
        part = Partition(0, Role.ACTIVE, db, offset=None)  # its writes no longer stall
        # Enough ready writes to fill several memtables: a switch is due, and it would stop.
        writes = 20 * db.o.memtable_bytes // 100
        for n in range(writes):
            part.replay(b"w%07d" % n, b"v" * 80, offset=n)

        async def step_while_the_loop_ticks() -> tuple[bool, int, int | None]:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            applying = asyncio.create_task(part.apply())
            await asyncio.sleep(0.5)
            waited, ticked = not applying.done(), ticks
            gated.gate.set()  # the compaction runs: L0 falls below the stop trigger
            offset = await asyncio.wait_for(applying, 30)
            ticker.cancel()
            return waited, ticked, offset

        # Should the step block the event loop, the gate still opens (the test fails, not hangs).
        safety = threading.Timer(3.0, gated.gate.set)
        safety.start()
        try:
            waited, ticked, offset = asyncio.run(step_while_the_loop_ticks())
        finally:
            safety.cancel()
        assert waited, "the step did not wait for the stop"
        assert ticked >= 10, f"the event loop ticked {ticked} times in 0.5 s of a stop"
        assert offset == writes - 1
        assert db.get(OFFSET_KEY) == str(writes - 1).encode()
        assert db.get(DATA + b"w0000000") == db.get(DATA + b"w%07d" % (writes - 1)) == b"v" * 80
        assert not part.ready and not part.applying
    finally:
        gated.gate.set()
        db.close()
