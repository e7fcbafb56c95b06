"""Serializers: how keys and values become bytes.

The default, `MsgpackSerializer`, is compact, fast, deterministic (so serialized keys hash stably)
and round-trips None, bool, int, float, str, bytes, list, tuple and dict exactly. Anything else is
refused with a `SerializationError` naming the type; use `PickleSerializer` or any object with
`serialize`/`deserialize` methods for other types.

A serializer's `SerializationError` says why, not for whom: the state layer adds the state's name
and what it was serializing (`failure_reason` words a serializer's error for that), so a message
says each thing once.
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


_SUPPORTED = "None, bool, int, float, str, bytes, list, tuple and dict"


class _Unsupported(TypeError):
    """A value (its only argument) inside the one being packed that msgpack cannot hold."""


def _pack_extension(value: Any) -> msgpack.ExtType:
    if type(value) is tuple:
        return msgpack.ExtType(_TUPLE_EXT, _packer_bytes(list(value)))
    raise _Unsupported(value)


def _unsupported_reason(value: Any, inner: Any) -> str:
    if type(inner) is int:  # msgpack hands integers beyond 64 bits to the extension hook
        return f"the integer {inner} does not fit in the msgpack serializer's 64 bits"
    where = "" if inner is value else f" (inside a {type(value).__name__})"
    return (
        f"type {type(inner).__name__}{where} is not supported by the msgpack serializer, which "
        f"supports {_SUPPORTED}; use PickleSerializer or a custom serializer for other types"
    )


def failure_reason(value: Any, error: Exception) -> str:
    """Why serializing `value` failed with `error`, for a message that says what was serialized:
    a `SerializationError` explains itself; another error (a user's serializer) is named."""
    if isinstance(error, SerializationError):
        return str(error)
    return f"{type(error).__name__} on a value of type {type(value).__name__}: {error}"


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
        except _Unsupported as e:
            _packers.packer.reset()
            raise SerializationError(_unsupported_reason(value, e.args[0])) from None
        except (TypeError, ValueError, OverflowError) as e:
            _packers.packer.reset()
            raise SerializationError(
                f"a value of type {type(value).__name__} cannot be packed by msgpack: {e}"
            ) from None

    def deserialize(self, data: bytes) -> Any:
        try:
            return _unpack(data)
        except Exception as e:
            raise SerializationError(
                f"{len(data)} bytes are not msgpack data: {type(e).__name__}: {e}"
            ) from None


class PickleSerializer:
    """Serializes any picklable Python object (not stable across Python versions for keys)."""

    def serialize(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=5)
        except Exception as e:
            raise SerializationError(
                f"a value of type {type(value).__name__} cannot be pickled: {e}"
            ) from None

    def deserialize(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as e:
            raise SerializationError(
                f"{len(data)} bytes do not unpickle: {type(e).__name__}: {e}"
            ) from None


DEFAULT_SERIALIZER = MsgpackSerializer()
