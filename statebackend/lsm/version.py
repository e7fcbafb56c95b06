"""Versions of an LSM tree: which table references make up each level, and the edits between them.

A `Version` is immutable. Level 0 holds references that may overlap, newest first; a level >= 1
is one sorted run: the effective ranges (`TableMeta.lo`/`hi`, which honour a reference's clip) of
its references are disjoint and ascending. A reference may name a table of another DB's root and
hold only a clipped part of it (docs/lsm-protocol.md, "Table references"). A `VersionEdit`
removes and adds references; applying it yields a new `Version` and checks the level invariants,
so a buggy edit fails loudly instead of producing an unreadable tree.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from statebackend.lsm.meta import RefId, TableMeta

# Levels a version read from another DB may have (a compaction spec's levels are below 64 too).
MAX_LEVELS = 64


@dataclass(frozen=True)
class VersionEdit:
    """References to remove and to add, each with its level (removal matches by `ref_id`).

    References added to level 0 go in front of the existing ones, in the order given (newest
    first).
    """

    removed: tuple[tuple[int, TableMeta], ...] = ()
    added: tuple[tuple[int, TableMeta], ...] = ()


class Version:
    """The references of each level. `levels[0]` is newest first; `levels[n >= 1]` is sorted."""

    __slots__ = ("levels", "runs")

    def __init__(self, levels: Iterable[Iterable[TableMeta]], num_levels: int) -> None:
        lv = [tuple(level) for level in levels]
        if len(lv) > num_levels:
            if any(lv[num_levels:]):
                raise ValueError(f"version has tables below level {num_levels - 1}")
            lv = lv[:num_levels]
        lv += [()] * (num_levels - len(lv))
        self.levels: tuple[tuple[TableMeta, ...], ...] = tuple(lv)
        for n, level in enumerate(self.levels):
            for t in level:
                if t.is_empty:
                    raise ValueError(f"level {n} references {t.name} with an empty clip")
        for n, level in enumerate(self.levels[1:], start=1):
            for a, b in zip(level, level[1:], strict=False):
                if not a.hi <= b.lo:
                    raise ValueError(
                        f"level {n} tables {a.name} and {b.name} overlap or are unsorted"
                    )
        # The non-empty levels >= 1 as (references, their effective ends), for the point-lookup
        # loop: bisecting the ends finds a level's one candidate reference for a key.
        self.runs: tuple[tuple[tuple[TableMeta, ...], list[bytes]], ...] = tuple(
            (level, [t.hi for t in level]) for level in self.levels[1:] if level
        )

    @classmethod
    def empty(cls, num_levels: int) -> "Version":
        return cls((), num_levels)

    def tables(self) -> Iterator[tuple[int, TableMeta]]:
        for n, level in enumerate(self.levels):
            for t in level:
                yield n, t

    def names(self) -> set[str]:
        """The names of the tables of the DB's own root that this version references."""
        return {t.name for _, t in self.tables() if not t.root}

    def foreign(self) -> dict[str, set[str]]:
        """The tables of other roots this version references: root -> table names."""
        refs: dict[str, set[str]] = {}
        for _, t in self.tables():
            if t.root:
                refs.setdefault(t.root, set()).add(t.name)
        return refs

    def level_bytes(self, level: int) -> int:
        """The bytes of a level's files (a clipped reference counts its whole file)."""
        return sum(t.size for t in self.levels[level])

    def overlapping(self, level: int, lo: bytes, hi: bytes) -> list[TableMeta]:
        """The references of `level` whose effective range intersects [lo, hi)."""
        return [t for t in self.levels[level] if t.lo < hi and lo < t.hi]

    def deepest_nonempty_level(self) -> int:
        for n in range(len(self.levels) - 1, -1, -1):
            if self.levels[n]:
                return n
        return 0

    def apply(self, edit: VersionEdit) -> "Version":
        removed = {(n, t.ref_id) for n, t in edit.removed}
        present: set[tuple[int, RefId]] = {(n, t.ref_id) for n, t in self.tables()}
        missing = removed - present
        if missing:
            names = sorted((n, name) for n, (_, name, _) in missing)
            raise ValueError(f"edit removes tables that are not in the version: {names}")
        levels = [
            [t for t in level if (n, t.ref_id) not in removed]
            for n, level in enumerate(self.levels)
        ]
        l0_added = [t for n, t in edit.added if n == 0]
        levels[0] = l0_added + levels[0]
        for n, t in edit.added:
            if n > 0:
                levels[n].append(t)
        for n in range(1, len(levels)):
            levels[n].sort(key=lambda t: t.lo)
        return Version(levels, len(self.levels))

    def to_list(self) -> list[list[dict]]:
        return [[t.to_dict() for t in level] for level in self.levels]

    @classmethod
    def from_list(cls, data: list[list[dict]], num_levels: int) -> "Version":
        return cls(([TableMeta.from_dict(d) for d in level] for level in data), num_levels)
