"""Time-to-live for state entries, and the value envelope that carries expiry times.

Every stored value is wrapped in an envelope whose first byte says whether it expires:

    0x00 payload                      never expires
    0x01 expires_at_ms:u64-be payload  expires at `expires_at_ms` (milliseconds since the epoch)

The envelope is the one thing below the state layer that knows about TTL: a compaction (in any
backend, local or remote) drops an entry whose `expires_at_ms` is before its TTL cut-off, without
knowing the state type. An expired entry is never returned to a reader.
"""

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], int]
"""Returns the current time in milliseconds since the epoch."""

_PLAIN = b"\x00"
_EXPIRING = 0x01
_EXPIRY_END = 9


def system_clock() -> int:
    return time.time_ns() // 1_000_000


class TtlUpdate(enum.Enum):
    """When an entry's time-to-live restarts."""

    ON_CREATE_AND_WRITE = "on_create_and_write"
    ON_READ_AND_WRITE = "on_read_and_write"


@dataclass(frozen=True)
class TtlConfig:
    """Entries expire `ttl_ms` milliseconds after their last write (or read, if so configured).

    Expired entries are never returned, are removed when read, and are dropped by compaction.
    """

    ttl_ms: int
    update: TtlUpdate = TtlUpdate.ON_CREATE_AND_WRITE

    def __post_init__(self) -> None:
        if self.ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {self.ttl_ms}")

    @classmethod
    def seconds(
        cls, seconds: float, update: TtlUpdate = TtlUpdate.ON_CREATE_AND_WRITE
    ) -> "TtlConfig":
        return cls(int(seconds * 1000), update)


def wrap(payload: bytes, expires_at_ms: int | None) -> bytes:
    """The envelope of `payload`."""
    if expires_at_ms is None:
        return _PLAIN + payload
    return bytes((_EXPIRING,)) + expires_at_ms.to_bytes(8, "big") + payload


def expiry_of(envelope: bytes) -> int | None:
    """The expiry time in an envelope, or None when it never expires."""
    if envelope[0] == _EXPIRING:
        return int.from_bytes(envelope[1:_EXPIRY_END], "big")
    return None


def payload_of(envelope: bytes) -> bytes:
    return envelope[_EXPIRY_END:] if envelope[0] == _EXPIRING else envelope[1:]


def is_expired(envelope: bytes, now_ms: int) -> bool:
    expiry = expiry_of(envelope)
    return expiry is not None and expiry <= now_ms
