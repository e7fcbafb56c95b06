"""Serializers: how keys and values become bytes.

The default, `MsgpackSerializer`, is compact, fast, deterministic (so serialized keys hash stably)
and round-trips None, bool, int, float, str, bytes, list, tuple and dict exactly. Anything else is
refused with a `SerializationError` naming the type; use `PickleSerializer` or any object with
`serialize`/`deserialize` methods for other types.
"""

import pickle
import threading
from typing import Any, Protocol, runtime_checkable

import msgpack

from statebackend.errors import SerializationError

_TUPLE_EXT = 1


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back. `deserialize(serialize(v)) == v` must hold."""

    def serialize(self, value: Any) -> bytes: ...

    def deserialize(self, data: bytes) -> Any: ...


def _pack_extension(value: Any) -> msgpack.ExtType:
    if type(value) is tuple:
        return msgpack.ExtType(_TUPLE_EXT, _packer_bytes(list(value)))
    raise TypeError(f"type {type(value).__name__} is not supported by the msgpack serializer")


def _unpack_extension(code: int, data: bytes) -> Any:
    if code == _TUPLE_EXT:
        return tuple(_unpack(data))
    raise ValueError(f"unknown msgpack extension type {code}")


def _packer_bytes(value: Any) -> bytes:
    # A fresh packer: this also runs inside `_pack_extension`, while a reused packer is busy.
    return msgpack.packb(value, default=_pack_extension, strict_types=True, use_bin_type=True)


class _ReusedPackers(threading.local):
    """One msgpack Packer per thread: creating a Packer costs more than packing a small value."""

    def __init__(self) -> None:
        self.packer = msgpack.Packer(default=_pack_extension, strict_types=True, use_bin_type=True)


_packers = _ReusedPackers()


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_unpack_extension, raw=False, strict_map_key=False)


class MsgpackSerializer:
    """The default serializer (see the module docstring for the supported types)."""

    def serialize(self, value: Any) -> bytes:
        try:
            return _packers.packer.pack(value)
        except (TypeError, ValueError, OverflowError) as e:
            _packers.packer.reset()
            raise SerializationError(
                f"cannot serialize a value of type {type(value).__name__}: {e}; "
                "use PickleSerializer or a custom serializer for such values"
            ) from e

    def deserialize(self, data: bytes) -> Any:
        try:
            return _unpack(data)
        except Exception as e:
            raise SerializationError(f"cannot deserialize {len(data)} bytes: {e}") from e


class PickleSerializer:
    """Serializes any picklable Python object (not stable across Python versions for keys)."""

    def serialize(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=5)
        except Exception as e:
            raise SerializationError(
                f"cannot pickle a value of type {type(value).__name__}: {e}"
            ) from e

    def deserialize(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as e:
            raise SerializationError(f"cannot unpickle {len(data)} bytes: {e}") from e


DEFAULT_SERIALIZER = MsgpackSerializer()
