"""Leveled compaction picking: what to compact next, as a trivial move or a `CompactionSpec`.

Scores (a level needs compaction when its score is >= 1):
- level 0: number of tables / l0_trigger (L0 tables overlap, so reads pay per file);
- level n >= 1: bytes in level n / (level_base_bytes * level_multiplier^(n-1)).
The highest-scoring level that can be compacted without conflicting with running compactions wins.

- L0 -> L1 takes every L0 table (they are the oldest-to-newest prefix of L0 at pick time, so tables
  flushed later stay newer than the output) plus the L1 tables overlapping them.
- Ln -> Ln+1 takes one table of Ln, round-robin by key (a per-level cursor, as in LevelDB), plus
  the overlapping tables of Ln+1.
- A single input table with nothing to merge with below becomes a trivial move: a version edit,
  no I/O (LevelDB's IsTrivialMove).
- Conflicts: an input that a running compaction reads is busy; a running compaction reserves its
  output key range in its output level, and no other compaction may write or read that range there.
- `bottommost` holds when no deeper level has a table overlapping the inputs' key range: only then
  may tombstones be dropped without resurrecting older values.

Tables are references (docs/lsm-protocol.md, "Table references"): ranges, overlaps, cursors and
reservations use their effective ranges `[lo, hi)`, and a running compaction's inputs are busy by
`ref_id`. Level sizes count whole files, also for a clipped reference (an over-estimate, which only
makes rewriting a shared table sooner). A manual full compaction also rewrites a level's single
reference when it is clipped or of another root, so that the DB stops holding shared tables.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from statebackend.lsm.compaction_job import SPEC_VERSION, CompactionInput, CompactionSpec
from statebackend.lsm.files import compaction_prefix, new_compaction_id
from statebackend.lsm.meta import RefId, TableMeta, TableOptions
from statebackend.lsm.version import Version

if TYPE_CHECKING:
    from statebackend.lsm.options import LsmOptions

KeyRange = tuple[bytes, bytes]  # half-open [lo, hi)


@dataclass(frozen=True)
class PickerOptions:
    num_levels: int = 7
    l0_trigger: int = 4
    level_base_bytes: int = 64 << 20
    level_multiplier: int = 10

    @classmethod
    def of(cls, options: "LsmOptions") -> "PickerOptions":
        """The picking settings of a DB's options."""
        o = options
        return cls(o.num_levels, o.l0_compaction_trigger, o.level_base_bytes, o.level_multiplier)


@dataclass(frozen=True)
class Reservation:
    """The key range a running compaction writes in its output level."""

    level: int
    lo: bytes
    hi: bytes  # exclusive

    def overlaps(self, level: int, r: KeyRange) -> bool:
        return self.level == level and self.lo < r[1] and r[0] < self.hi


@dataclass(frozen=True)
class Pick:
    """A chosen compaction. `trivial_move` means: move inputs[0]'s one table to output_level."""

    inputs: tuple[CompactionInput, ...]  # newest first
    output_level: int
    bottommost: bool
    score: float
    trivial_move: bool

    def refs(self) -> set[RefId]:
        return {t.ref_id for i in self.inputs for t in i.tables}

    def key_range(self) -> KeyRange:
        return _range([t for i in self.inputs for t in i.tables])

    def spec(
        self,
        db_root: str,
        epoch: int,
        target_file_size: int,
        table_options: TableOptions,
        now_ms: int,
    ) -> CompactionSpec:
        """The spec to run this pick: a fresh id, its outputs named under the compaction prefix
        of `epoch` and that id, and `now_ms` (the time of the DB's clock, which decides TTL) as
        the TTL cut-off."""
        cid = new_compaction_id()
        return CompactionSpec(
            version=SPEC_VERSION,
            compaction_id=cid,
            db_root=db_root,
            inputs=self.inputs,
            output_level=self.output_level,
            target_file_size=target_file_size,
            bottommost=self.bottommost,
            ttl_cutoff_ms=now_ms,
            output_prefix=compaction_prefix(epoch, cid),
            table_options=table_options,
            score=self.score,
        )

    def __str__(self) -> str:
        return (
            f"{len(self.refs())} tables into level {self.output_level} "
            f"(score {self.score:.2f}, bottommost {self.bottommost})"
        )


def _range(tables: list[TableMeta]) -> KeyRange:
    return min(t.lo for t in tables), max(t.hi for t in tables)


class Picker:
    """Stateful only in its round-robin cursors; used by the DB's background thread alone."""

    def __init__(self, options: PickerOptions) -> None:
        self.o = options
        self._cursor: dict[int, bytes] = {}  # level -> effective end of the last table picked

    def max_bytes(self, level: int) -> int:
        return self.o.level_base_bytes * self.o.level_multiplier ** (level - 1)

    def scores(self, version: Version) -> list[tuple[float, int]]:
        """(score, level) for every level that can be compacted, highest first."""
        out = [(len(version.levels[0]) / self.o.l0_trigger, 0)]
        for n in range(1, self.o.num_levels - 1):
            out.append((version.level_bytes(n) / self.max_bytes(n), n))
        return sorted(out, reverse=True)

    def pick(
        self, version: Version, busy: set[RefId], reserved: list[Reservation]
    ) -> Pick | None:
        for score, level in self.scores(version):
            if score < 1:
                return None
            p = self._pick_level(version, level, score, busy, reserved)
            if p is not None:
                return p
        return None

    def pick_all(self, version: Version) -> Pick | None:
        """Everything into one level: a manual full compaction.

        The output level is the deepest non-empty one (at least 1), or deeper if the data would
        exceed that level's size target (else the result would be compacted down again at once).
        """
        out = max(1, version.deepest_nonempty_level())
        total = sum(t.size for _, t in version.tables())
        while out < self.o.num_levels - 1 and total > self.max_bytes(out):
            out += 1
        inputs = [CompactionInput(0, (t,)) for t in version.levels[0]]
        inputs += [
            CompactionInput(n, version.levels[n]) for n in range(1, out + 1) if version.levels[n]
        ]
        if not inputs or (
            len(inputs) == 1
            and inputs[0].level == out
            and len(inputs[0].tables) == 1
            and inputs[0].tables[0].is_whole
        ):
            return None  # empty, or already one whole table of this root in the last level
        return Pick(tuple(inputs), out, True, 0.0, False)

    def _pick_level(
        self,
        version: Version,
        level: int,
        score: float,
        busy: set[RefId],
        reserved: list[Reservation],
    ) -> Pick | None:
        if level == 0:
            upper = list(version.levels[0])
            if any(t.ref_id in busy for t in upper):
                return None
            inputs = [CompactionInput(0, (t,)) for t in upper]
        else:
            upper = self._round_robin(version, level, busy, reserved)
            if not upper:
                return None
            inputs = [CompactionInput(level, tuple(upper))]
        lo, hi = _range(upper)
        lower = version.overlapping(level + 1, lo, hi)
        if any(t.ref_id in busy for t in lower):
            return None
        full = _range(upper + lower)
        if any(r.overlaps(level + 1, full) for r in reserved):
            return None
        if lower:
            inputs.append(CompactionInput(level + 1, tuple(lower)))
        bottommost = all(
            not version.overlapping(n, full[0], full[1])
            for n in range(level + 2, self.o.num_levels)
        )
        trivial = len(upper) == 1 and not lower
        if level > 0:
            self._cursor[level] = upper[-1].hi
        return Pick(tuple(inputs), level + 1, bottommost, score, trivial)

    def _round_robin(
        self, version: Version, level: int, busy: set[RefId], reserved: list[Reservation]
    ) -> list[TableMeta]:
        tables = version.levels[level]
        cursor = self._cursor.get(level)
        start = (
            0 if cursor is None else next((i for i, t in enumerate(tables) if t.lo >= cursor), 0)
        )
        for t in tables[start:] + tables[:start]:
            if t.ref_id in busy or any(r.overlaps(level, (t.lo, t.hi)) for r in reserved):
                continue
            return [t]
        return []
