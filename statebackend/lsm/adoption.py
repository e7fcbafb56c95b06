"""The version a DB adopts from other DBs' versions: after a rescale, or when it restores a
savepoint or another job's checkpoint (docs/lsm-protocol.md, "Adopting versions of other
databases"). No table is copied: every reference of a source version is clipped to the keys the
new DB takes from that source and given the source's root; references left without keys go.
"""

from collections.abc import Sequence

from statebackend.lsm.meta import TableMeta
from statebackend.lsm.version import Version

Levels = list[list[TableMeta]]


def clip(version: Version, root: str, start: bytes, end: bytes) -> Levels:
    """The references of `version` (of the DB at `root`) clipped to [start, end), per level."""
    levels: Levels = []
    for level in version.levels:
        clipped = (t.clipped(root, start, end) for t in level)
        levels.append([t for t in clipped if not t.is_empty])
    return levels


def assemble(parts: Sequence[Levels], num_levels: int) -> Version:
    """One version from clipped parts of disjoint key ranges: level 0 keeps each part's order
    (newest first; keys of different parts never meet), deeper levels are sorted by key.
    ValueError when a part has more levels than `num_levels` allows."""
    levels: Levels = [[] for _ in range(max([num_levels, *(len(p) for p in parts)]))]
    for part in parts:
        for n, level in enumerate(part):
            levels[n].extend(level)
    for level in levels[1:]:
        level.sort(key=lambda t: t.lo)
    return Version(levels, num_levels)
