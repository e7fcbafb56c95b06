"""Versions of an LSM tree: which tables make up each level, and the edits between versions.

A `Version` is immutable. Level 0 holds tables that may overlap, newest first; a level >= 1 is
one sorted run of non-overlapping tables ordered by key. A `VersionEdit` removes and adds tables;
applying it yields a new `Version` and checks the level invariants, so a buggy edit fails loudly
instead of producing an unreadable tree.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from statebackend.lsm.table import TableMeta


@dataclass(frozen=True)
class VersionEdit:
    """Tables to remove (by level and name) and to add (by level).

    Tables added to level 0 go in front of the existing ones, in the order given (newest first).
    """

    removed: tuple[tuple[int, str], ...] = ()
    added: tuple[tuple[int, TableMeta], ...] = ()


class Version:
    """The tables of each level. `levels[0]` is newest first; `levels[n >= 1]` is sorted by key."""

    __slots__ = ("levels", "largest_keys", "runs")

    def __init__(self, levels: Iterable[Iterable[TableMeta]], num_levels: int) -> None:
        lv = [tuple(level) for level in levels]
        if len(lv) > num_levels:
            if any(lv[num_levels:]):
                raise ValueError(f"version has tables below level {num_levels - 1}")
            lv = lv[:num_levels]
        lv += [()] * (num_levels - len(lv))
        self.levels: tuple[tuple[TableMeta, ...], ...] = tuple(lv)
        for n, level in enumerate(self.levels[1:], start=1):
            for a, b in zip(level, level[1:], strict=False):
                if not a.largest < b.smallest:
                    raise ValueError(
                        f"level {n} tables {a.name} and {b.name} overlap or are unsorted"
                    )
        # largest_keys[n] lets a point lookup bisect level n (n >= 1) to its one candidate table.
        self.largest_keys: tuple[list[bytes], ...] = tuple(
            [t.largest for t in level] for level in self.levels
        )
        # The non-empty levels >= 1 as (tables, largest keys), for the point-lookup loop.
        self.runs: tuple[tuple[tuple[TableMeta, ...], list[bytes]], ...] = tuple(
            (level, keys)
            for level, keys in zip(self.levels[1:], self.largest_keys[1:], strict=True)
            if level
        )

    @classmethod
    def empty(cls, num_levels: int) -> "Version":
        return cls((), num_levels)

    def tables(self) -> Iterator[tuple[int, TableMeta]]:
        for n, level in enumerate(self.levels):
            for t in level:
                yield n, t

    def names(self) -> set[str]:
        return {t.name for _, t in self.tables()}

    def level_bytes(self, level: int) -> int:
        return sum(t.size for t in self.levels[level])

    def overlapping(self, level: int, smallest: bytes, largest: bytes) -> list[TableMeta]:
        """The tables of `level` whose key range intersects [smallest, largest]."""
        return [t for t in self.levels[level] if t.smallest <= largest and smallest <= t.largest]

    def deepest_nonempty_level(self) -> int:
        for n in range(len(self.levels) - 1, -1, -1):
            if self.levels[n]:
                return n
        return 0

    def apply(self, edit: VersionEdit) -> "Version":
        removed = set(edit.removed)
        levels = [
            [t for t in level if (n, t.name) not in removed] for n, level in enumerate(self.levels)
        ]
        missing = removed - {(n, t.name) for n, t in self.tables()}
        if missing:
            raise ValueError(f"edit removes tables that are not in the version: {sorted(missing)}")
        l0_added = [t for n, t in edit.added if n == 0]
        levels[0] = l0_added + levels[0]
        for n, t in edit.added:
            if n > 0:
                levels[n].append(t)
        for n in range(1, len(levels)):
            levels[n].sort(key=lambda t: t.smallest)
        return Version(levels, len(self.levels))

    def to_list(self) -> list[list[dict]]:
        return [[t.to_dict() for t in level] for level in self.levels]

    @classmethod
    def from_list(cls, data: list[list[dict]], num_levels: int) -> "Version":
        return cls(([TableMeta.from_dict(d) for d in level] for level in data), num_levels)
