"""What versions and compaction specs say about table files: `TableOptions` and `TableMeta`.

A `TableMeta` is the metadata of one table file (name, size, key span, counts) and, inside a
version or a compaction's inputs, a *reference* to that file (docs/lsm-protocol.md, "Table
references"): the DB root owning the file (`root`, empty for the DB's own root) and a clip range
`[clip_start, clip_end)` of keys (None: unbounded). Only the keys of the file inside the clip
belong to the reference. Its *effective range* is `[lo, hi)`: the file's key span
`[smallest, largest]` as a half-open range (`largest + b"\\x00"` is the least key above
`largest`) intersected with the clip. A reference's identity within a version is `ref_id`:
(root, name, clip_start); the same file may be referenced more than once with disjoint clips.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from statebackend.lsm import block
from statebackend.lsm.block import read_fields

_OPTIONS_FIELDS = {
    "block_size": int,
    "bloom_bits_per_key": int,
    "compression": str,
    "compression_level": int,
}


@dataclass(frozen=True)
class TableOptions:
    block_size: int = 16 * 1024  # target uncompressed data-block size (key + value bytes)
    bloom_bits_per_key: int = 10  # 0 disables the filter
    compression: str = "zstd"  # "zstd" | "none"
    compression_level: int = 1

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.bloom_bits_per_key < 0:
            raise ValueError(f"bloom_bits_per_key must be >= 0, got {self.bloom_bits_per_key}")
        if self.compression not in block.COMPRESSIONS:
            raise ValueError(f"compression must be one of {list(block.COMPRESSIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _OPTIONS_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TableOptions":
        return cls(**read_fields(data, _OPTIONS_FIELDS, "TableOptions"))


_META_FIELDS = {
    "name": str,
    "size": int,
    "smallest": bytes,
    "largest": bytes,
    "entries": int,
    "tombstones": int,
    "min_expiry_ms": (int, type(None)),
    "creator": str,
}
# Fields of a reference to another root or a clipped one; recorded only when set, so manifests
# without them read and write as before.
_REFERENCE_FIELDS = {"root": str, "clip_start": bytes, "clip_end": bytes}

RefId = tuple[str, str, bytes | None]
"""A reference's identity within a version: (root, name, clip_start)."""


@dataclass(frozen=True)
class TableMeta:
    """What a manifest records about a table: the file's metadata, and where and how much of it
    a reference uses (see the module docstring)."""

    name: str  # file name relative to ROOT/tables/
    size: int  # bytes
    smallest: bytes
    largest: bytes
    entries: int
    tombstones: int
    min_expiry_ms: int | None  # smallest TTL expiry in the table (None: nothing expires)
    creator: str  # "flush", "compaction:<id>", "remote:<host>", ...
    root: str = ""  # the DB root owning the file; "": the root of the DB that references it
    clip_start: bytes | None = None  # the reference holds only keys >= clip_start ...
    clip_end: bytes | None = None  # ... and < clip_end (None: unbounded)
    # Derived from the fields above (not compared, not recorded):
    lo: bytes = field(init=False, repr=False, compare=False)  # effective range [lo, hi)
    hi: bytes = field(init=False, repr=False, compare=False)
    key: str = field(init=False, repr=False, compare=False)  # names the file within a DB

    def __post_init__(self) -> None:
        lo, hi = self.smallest, self.largest + b"\x00"
        if self.clip_start is not None and self.clip_start > lo:
            lo = self.clip_start
        if self.clip_end is not None and self.clip_end < hi:
            hi = self.clip_end
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "key", table_key(self.root, self.name))

    @property
    def ref_id(self) -> RefId:
        return self.root, self.name, self.clip_start

    @property
    def is_empty(self) -> bool:
        """Whether the reference holds no key of its file (its clip misses the file's keys)."""
        return self.lo >= self.hi

    @property
    def is_whole(self) -> bool:
        """Whether this is a plain table of the DB's own root: no root, no clip."""
        return not self.root and self.clip_start is None and self.clip_end is None

    def clipped(self, root: str, start: bytes | None, end: bytes | None) -> "TableMeta":
        """This reference with its root (when empty) set to `root` and its clip narrowed to
        `[start, end)`; a clip bound that no longer cuts the file's keys is dropped."""
        clip_start = _tighter(self.clip_start, start, max)
        clip_end = _tighter(self.clip_end, end, min)
        if clip_start is not None and clip_start <= self.smallest:
            clip_start = None
        if clip_end is not None and clip_end > self.largest:
            clip_end = None
        return TableMeta(
            self.name, self.size, self.smallest, self.largest, self.entries, self.tombstones,
            self.min_expiry_ms, self.creator, self.root or root, clip_start, clip_end,
        )

    def to_dict(self) -> dict[str, Any]:
        """msgpack-friendly (keys stay bytes); the reference fields only when set."""
        data = {name: getattr(self, name) for name in _META_FIELDS}
        if self.root:
            data["root"] = self.root
        for name in ("clip_start", "clip_end"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TableMeta":
        present = {name: kind for name, kind in _REFERENCE_FIELDS.items() if name in data}
        return cls(**read_fields(data, {**_META_FIELDS, **present}, "TableMeta"))


def table_key(root: str, name: str) -> str:
    """What names a table file within one DB: its name in the DB's own root (root ""), else
    root and name."""
    return f"{root}|{name}" if root else name


def _tighter(a: bytes | None, b: bytes | None, pick: Any) -> bytes | None:
    if a is None:
        return b
    return a if b is None else pick(a, b)
