"""Key groups: the unit of state partitioning and rescaling.

A key is serialized, hashed with a stable hash (xxh3-64 of its bytes, never Python's `hash()`) and
mapped into one of `max_parallelism` key groups. Each parallel subtask owns one contiguous range of
key groups. The formulas are Flink's, so a range of key groups is always contiguous and a rescale
moves whole key groups between subtasks.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

DEFAULT_MAX_PARALLELISM = 128
# The key group is stored as a 2-byte big-endian prefix of every physical key.
MAX_MAX_PARALLELISM = 1 << 15


def key_group_of(key_bytes: bytes, max_parallelism: int) -> int:
    """The key group of a serialized key."""
    return xxhash.xxh3_64_intdigest(key_bytes) % max_parallelism


@dataclass(frozen=True)
class KeyGroupRange:
    """An inclusive range of key groups `[start, end]`; empty when `end < start`."""

    start: int
    end: int

    def __contains__(self, key_group: object) -> bool:
        return isinstance(key_group, int) and self.start <= key_group <= self.end

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end + 1))

    def __len__(self) -> int:
        return max(0, self.end - self.start + 1)

    def intersection(self, other: "KeyGroupRange") -> "KeyGroupRange":
        """The key groups in both ranges (empty if none)."""
        return KeyGroupRange(max(self.start, other.start), min(self.end, other.end))

    @classmethod
    def of_subtask(cls, max_parallelism: int, parallelism: int, index: int) -> "KeyGroupRange":
        """The key groups that subtask `index` of `parallelism` owns."""
        check_parallelism(max_parallelism, parallelism)
        if not 0 <= index < parallelism:
            raise ValueError(f"subtask index {index} is outside 0..{parallelism - 1}")
        start = -(-index * max_parallelism // parallelism)
        end = -(-(index + 1) * max_parallelism // parallelism) - 1
        return cls(start, end)

    @classmethod
    def all(cls, max_parallelism: int) -> "KeyGroupRange":
        return cls(0, max_parallelism - 1)


def subtask_of_key_group(max_parallelism: int, parallelism: int, key_group: int) -> int:
    """The subtask that owns `key_group` (the inverse of `KeyGroupRange.of_subtask`)."""
    return key_group * parallelism // max_parallelism


def check_parallelism(max_parallelism: int, parallelism: int) -> None:
    if not 1 <= max_parallelism <= MAX_MAX_PARALLELISM:
        raise ValueError(f"max_parallelism {max_parallelism} is outside 1..{MAX_MAX_PARALLELISM}")
    if not 1 <= parallelism <= max_parallelism:
        raise ValueError(
            f"parallelism {parallelism} is outside 1..max_parallelism ({max_parallelism})"
        )
