"""The reference paper's job, with masked columns: wide rows, a last-value group-by, a left join.

Two generated sources of wide rows, `orders` (60 string columns) and `details` (160 string
columns), share a group column `gid` and a join column `jid`. Their union is grouped by `gid`,
keeping the last value of every column (a wide row per group that grows to 220 columns); the
grouped rows are then left-outer-joined with `details` on `jid` and written to a blackhole sink.
Every stage keeps its state in the configured backend, so the job writes a lot of state and, on the
`lsm` backend, keeps compactions busy: it is the workload the compaction service is for.

    streamlet run jobs/paper_job.py -p 2 -D state.backend=lsm

Environment variables: PAPER_ROWS (rows per source, default 200000), PAPER_RATE (rows per second
per source, default unlimited), PAPER_GROUPS (distinct `gid` values, default 20000), PAPER_JOINS
(distinct `jid` values, default 5000). The join is append-only: a left row that found no match is
emitted with `None` and not retracted when a match arrives later.
"""

import os
import random
from collections.abc import Iterator
from typing import Any

from statebackend import MapStateDescriptor
from streamlet import Job, KeyedProcessFunction
from streamlet.connectors import BlackholeSink, DataGeneratorSource

ROWS = int(os.environ.get("PAPER_ROWS", "200000"))
RATE = float(os.environ["PAPER_RATE"]) if os.environ.get("PAPER_RATE") else None
GROUPS = int(os.environ.get("PAPER_GROUPS", "20000"))
JOINS = int(os.environ.get("PAPER_JOINS", "5000"))
ORDER_COLUMNS = [f"o{i:02d}" for i in range(60)]
DETAIL_COLUMNS = [f"d{i:03d}" for i in range(160)]


def masked_row(columns: list[str], rng: random.Random) -> dict[str, str]:
    """A row of masked string values: the column's name and 32 random bits."""
    bits = rng.getrandbits(32 * len(columns)).to_bytes(4 * len(columns), "big").hex()
    row = {name: f"{name}:{bits[8 * i : 8 * i + 8]}" for i, name in enumerate(columns)}
    row["gid"] = f"g{rng.randrange(GROUPS)}"
    row["jid"] = f"j{rng.randrange(JOINS)}"
    return row


def order(index: int, rng: random.Random) -> dict[str, str]:
    return masked_row(ORDER_COLUMNS, rng)


def detail(index: int, rng: random.Random) -> dict[str, str]:
    return {**masked_row(DETAIL_COLUMNS, rng), "did": f"d{index}"}


def keep_last_values(current: dict[str, str], newer: dict[str, str]) -> dict[str, str]:
    """The group's row: every column holds the last value seen for it."""
    return {**current, **newer}


class LeftOuterJoin(KeyedProcessFunction):
    """Joins grouped rows (input tagged "L", by `gid`) with details (tagged "R", by `did`)."""

    LEFT = MapStateDescriptor("left-rows")
    RIGHT = MapStateDescriptor("right-rows")

    def process_element(self, value: tuple[str, dict[str, str]], ctx: Any) -> Iterator[Any]:
        side, row = value
        left, right = ctx.state(self.LEFT), ctx.state(self.RIGHT)
        if side == "L":
            left.put(row["gid"], row)
            matched = False
            for detail_row in right.values():
                matched = True
                yield row, detail_row
            if not matched:
                yield row, None
        else:
            right.put(row["did"], row)
            for group_row in left.values():
                yield group_row, row


job = Job("paper-job")
orders = job.source(DataGeneratorSource(order, rate=RATE, count=ROWS, seed=1), name="orders")
details = job.source(DataGeneratorSource(detail, rate=RATE, count=ROWS, seed=2), name="details")
grouped = (
    orders.union(details)
    .key_by(lambda row: row["gid"])
    .reduce(keep_last_values, name="group-last-values")
    .uid("group")
)
joined = (
    grouped.map(lambda row: ("L", row), name="tag-left")
    .union(details.map(lambda row: ("R", row), name="tag-right"))
    .key_by(lambda tagged: tagged[1]["jid"])
    .process(LeftOuterJoin(), name="left-outer-join")
    .uid("join")
)
joined.sink(BlackholeSink(), name="blackhole")
