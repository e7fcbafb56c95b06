"""The physical key layout shared by every key-value backend.

    key_group:u16-be | state_id:u16-be | escaped(key) | escaped(namespace) | map_user_key

- The key group comes first, so the state of a range of key groups is one range of bytes.
- `escaped()` makes a component order-preserving and prefix-free: each 0x00 becomes 0x00 0xFF and
  the component ends with 0x00 0x01. Hence the entries of one key (or one key and namespace) form
  one contiguous range, and iterating a state yields keys in the order of their serialized bytes.
- A map's user key is last and not escaped: it runs to the end of the physical key.
"""

_TERMINATOR = b"\x00\x01"
EMPTY_COMPONENT = _TERMINATOR


def escape(component: bytes) -> bytes:
    return component.replace(b"\x00", b"\x00\xff") + _TERMINATOR


def unescape_prefix(data: bytes, start: int) -> tuple[bytes, int]:
    """Decode the escaped component starting at `start`; return it and the offset after it."""
    end = data.index(_TERMINATOR, start)
    return data[start:end].replace(b"\x00\xff", b"\x00"), end + len(_TERMINATOR)


def key_group_prefix(key_group: int) -> bytes:
    return key_group.to_bytes(2, "big")


def state_prefix(key_group: int, state_id: int) -> bytes:
    return key_group.to_bytes(2, "big") + state_id.to_bytes(2, "big")


def prefix_end(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string that starts with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        raise ValueError("a prefix of only 0xFF bytes has no upper bound")
    return stripped[:-1] + bytes((stripped[-1] + 1,))
