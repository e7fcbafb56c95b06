"""Blocks: the checksummed, optionally compressed units a table file is made of.

On disk a block is

    payload  compression:u8  checksum:u64-le

where `checksum = xxh3_64(payload + compression)` and `payload` is the block content, compressed
with zstd when `compression == 1` (0: stored as is). A block is compressed only when that saves at
least 1/8 of its size (the writer skips most attempts on data that does not compress). Readers
verify the checksum before they look at anything else, so a block whose bytes changed is always
detected (never decoded into wrong data).

A data block's content is the msgpack encoding of `[keys, values]`: two arrays of equal length, keys
as bin (strictly ascending), values as bin or nil (nil is a tombstone). Decoding it is a single
`msgpack.unpackb` call in C that returns the two lists a reader uses.

The footer, the fixed-size end of a table file, locates the meta blocks:

    index offset:u64 size:u64  filter offset:u64 size:u64  properties offset:u64 size:u64
    format version:u32  reserved:u32 (0)  magic:8 bytes  checksum:u64

(all little-endian; the checksum is the xxh3-64 of the 64 bytes before it). The blocks are
contiguous: data blocks from offset 0, then index, filter (size 0: no filter), properties, footer.

Decoded maps (properties, and the table metadata and options that manifests and tables store as
msgpack) are checked field by field with `read_fields`, whose errors name the field.
"""

import struct
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
import xxhash
import zstandard

NO_COMPRESSION = 0
ZSTD = 1
COMPRESSIONS = {"none": NO_COMPRESSION, "zstd": ZSTD}

TRAILER_SIZE = 9  # compression:u8 + checksum:u64
_GIVE_UP = 8
_RETRY = 16
_CHECKSUM = struct.Struct("<Q")
FORMAT_VERSION = 1
MAGIC = b"sltable\x00"
_FOOTER = struct.Struct("<6QII8s")
FOOTER_SIZE = _FOOTER.size + _CHECKSUM.size
checksum = xxhash.xxh3_64_intdigest
"""The checksum of blocks and of the footer: xxh3-64."""


class BlockError(ValueError):
    """A block whose bytes do not verify or do not decode (the caller adds file and offset)."""


class BlockEncoder:
    """Turns block contents into on-disk blocks. Not thread-safe: one per table builder.

    After `_GIVE_UP` blocks in a row that did not compress, it tries only every `_RETRY`-th block
    until one compresses again: incompressible values (random ids, encrypted or already compressed
    data) then cost no compression time.
    """

    def __init__(self, compression: str, level: int) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(
                f"unknown compression {compression!r}, expected one of {list(COMPRESSIONS)}"
            )
        self._compressor = (
            zstandard.ZstdCompressor(level=level) if COMPRESSIONS[compression] == ZSTD else None
        )
        self._incompressible = 0  # blocks in a row that did not compress

    def encode(self, content: bytes, compress: bool = True) -> bytes:
        """The on-disk block of `content`."""
        kind = NO_COMPRESSION
        skips = self._incompressible
        if (
            compress
            and self._compressor is not None
            and (skips < _GIVE_UP or (skips - _GIVE_UP) % _RETRY == 0)
        ):
            packed = self._compressor.compress(content)
            if len(packed) <= len(content) - len(content) // 8:
                content, kind = packed, ZSTD
        if compress:
            self._incompressible = 0 if kind == ZSTD else skips + 1
        body = content + bytes((kind,))
        return body + _CHECKSUM.pack(checksum(body))


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    # zstd contexts must not be shared between threads; one per thread is reused across blocks.
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def decode(block: bytes | memoryview) -> bytes:
    """The verified, decompressed content of an on-disk block; BlockError when it is damaged."""
    if len(block) < TRAILER_SIZE:
        raise BlockError(f"block of {len(block)} bytes is shorter than its trailer")
    view = memoryview(block)
    expected = _CHECKSUM.unpack_from(block, len(block) - 8)[0]
    if checksum(view[:-8]) != expected:
        raise BlockError("checksum mismatch")
    kind = block[-9]
    content = view[:-9]
    if kind == NO_COMPRESSION:
        return bytes(content)
    if kind == ZSTD:
        try:
            return _decompressor().decompress(content)
        except zstandard.ZstdError as e:
            raise BlockError(f"zstd: {e}") from e
    raise BlockError(f"unknown compression type {kind}")


def pack(obj: Any) -> bytes:
    """msgpack encoding of a block's content (bytes as bin)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(content: bytes) -> Any:
    try:
        return msgpack.unpackb(content, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise BlockError(f"undecodable content: {e}") from e


def entries_of(content: bytes) -> tuple[list[bytes], list[bytes | None]]:
    """The `(keys, values)` lists of a data block's verified, decompressed content."""
    content = unpack(content)
    if (
        type(content) is not list
        or len(content) != 2
        or type(content[0]) is not list
        or type(content[1]) is not list
        or len(content[0]) != len(content[1])
        or not content[0]
    ):
        raise BlockError("data block is not two non-empty lists of equal length")
    return content[0], content[1]


def encode_entries(encoder: BlockEncoder, keys: list[bytes], values: list[bytes | None]) -> bytes:
    return encoder.encode(pack([keys, values]))


def decode_object(block: bytes | memoryview) -> Any:
    """The msgpack content of an on-disk (meta) block."""
    return unpack(decode(block))


def encode_footer(handles: tuple[int, int, int, int, int, int]) -> bytes:
    """The footer for (index offset, size, filter offset, size, properties offset, size)."""
    footer = _FOOTER.pack(*handles, FORMAT_VERSION, 0, MAGIC)
    return footer + _CHECKSUM.pack(checksum(footer))


def decode_footer(footer: bytes | memoryview, offset: int) -> tuple[int, ...]:
    """The six block handles of a footer found at `offset`; BlockError when it does not verify."""
    fields = _FOOTER.unpack_from(footer)
    if fields[-1] != MAGIC:
        raise BlockError("no footer at the end of the file (truncated or not a table)")
    if checksum(footer[: _FOOTER.size]) != _CHECKSUM.unpack_from(footer, _FOOTER.size)[0]:
        raise BlockError("footer checksum mismatch")
    if fields[6] != FORMAT_VERSION:
        raise BlockError(f"unknown table format version {fields[6]}")
    handles = fields[:6]
    index_offset, index_size, filter_offset, filter_size, props_offset, props_size = handles
    if not (
        TRAILER_SIZE <= index_offset
        and index_size >= TRAILER_SIZE
        and filter_offset == index_offset + index_size
        and (filter_size == 0 or filter_size >= TRAILER_SIZE)
        and props_offset == filter_offset + filter_size
        and props_size >= TRAILER_SIZE
        and props_offset + props_size == offset
    ):
        raise BlockError(f"inconsistent block handles {handles}")
    return handles


def read_field(
    data: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], owner: str
) -> Any:
    """`data[name]`, checked to be of one of `kinds` (bool is not an int); ValueError otherwise."""
    if name not in data:
        raise ValueError(f"{owner}: missing field {name!r}")
    value = data[name]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        expected = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
        raise ValueError(
            f"{owner}: field {name!r} must be {expected}, got {type(value).__name__} {value!r:.80}"
        )
    return value


def reject_unknown_fields(data: Mapping[str, Any], known: Iterable[str], owner: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{owner}: expected a mapping, got {type(data).__name__}")
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"{owner}: unknown fields {sorted(map(str, unknown))}")


def read_fields(
    data: Mapping[str, Any], fields: Mapping[str, type | tuple[type, ...]], owner: str
) -> dict[str, Any]:
    """The `fields` of `data`, type-checked, and no others (ValueError naming the field)."""
    reject_unknown_fields(data, fields, owner)
    return {name: read_field(data, name, kinds, owner) for name, kinds in fields.items()}
