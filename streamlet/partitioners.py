"""Partitioners: which downstream subtask(s) receive a record.

- `ForwardPartitioner`: subtask i sends to subtask i (equal parallelism; the default if possible).
- `KeyGroupPartitioner`: key -> stable hash -> key group -> the subtask owning that key group
  (Flink's formula, `statebackend.keygroups`): a key always reaches the subtask with its state.
  The channels of keys of the exact types `str`, `int` and `bytes` are remembered (up to
  `REMEMBERED_KEYS` keys, then afresh), so a key seen again is not serialized and hashed again.
- `RebalancePartitioner`: round-robin over all downstream subtasks.
- `BroadcastPartitioner`: every downstream subtask gets every record.
"""

from collections.abc import Callable
from typing import Any

from statebackend.keygroups import key_group_of, subtask_of_key_group
from statebackend.serializers import DEFAULT_SERIALIZER

KeySelector = Callable[[Any], Any]
REMEMBERED_KEYS = 1 << 16


def key_group_of_key(key: Any, max_parallelism: int) -> int:
    """The key group of a key (the same computation the state backend makes)."""
    return key_group_of(DEFAULT_SERIALIZER.serialize(key), max_parallelism)


class Partitioner:
    """Chooses target channels; `channels` is the number of downstream subtasks."""

    name = "partitioner"

    def bind(self, channels: int, own_subtask: int, max_parallelism: int) -> None:
        self.channels = channels
        self.own_subtask = own_subtask
        self.max_parallelism = max_parallelism

    def select(self, value: Any) -> int:
        """The channel index of one record (not used by the broadcast partitioner)."""
        raise NotImplementedError

    def copy(self) -> "Partitioner":
        """A fresh instance for one upstream subtask (partitioners keep per-subtask state)."""
        return type(self)()

    def __repr__(self) -> str:
        return self.name


class ForwardPartitioner(Partitioner):
    name = "forward"

    def select(self, value: Any) -> int:
        return 0  # a forward edge connects each upstream subtask to exactly one channel


class RebalancePartitioner(Partitioner):
    name = "rebalance"

    def bind(self, channels: int, own_subtask: int, max_parallelism: int) -> None:
        super().bind(channels, own_subtask, max_parallelism)
        self._next = own_subtask % channels

    def select(self, value: Any) -> int:
        channel = self._next
        self._next = (channel + 1) % self.channels
        return channel


class BroadcastPartitioner(Partitioner):
    name = "broadcast"


class KeyGroupPartitioner(Partitioner):
    name = "hash"

    def __init__(self, key_selector: KeySelector) -> None:
        self.key_selector = key_selector
        self._remembered: dict[Any, int] = {}

    def copy(self) -> "KeyGroupPartitioner":
        return KeyGroupPartitioner(self.key_selector)

    def select(self, value: Any) -> int:
        key = self.key_selector(value)
        kind = type(key)
        if kind is not str and kind is not int and kind is not bytes:
            return self._channel_of(key)
        channel = self._remembered.get(key)
        if channel is None:
            channel = self._channel_of(key)
            if len(self._remembered) >= REMEMBERED_KEYS:
                self._remembered.clear()
            self._remembered[key] = channel
        return channel

    def _channel_of(self, key: Any) -> int:
        key_group = key_group_of_key(key, self.max_parallelism)
        return subtask_of_key_group(self.max_parallelism, self.channels, key_group)
