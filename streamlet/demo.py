"""A keyed word count over generated words, run through the state backend API.

Two parallel subtasks each own a key-group range and count the words routed to them. Halfway
through, the demo takes a checkpoint (the state handles plus the source offset), throws the
backends away as a crash would, restores them from the checkpoint, replays the source from the
recorded offset and finishes. The counts are then checked against a plain `Counter`: the restore
gives exactly-once state.

>>> from streamlet.demo import run_word_count
>>> result = run_word_count("memory", words=2000, seed=7)
>>> result.matches_expected
True
"""

import random
import tempfile
from collections import Counter
from dataclasses import dataclass

from statebackend import (
    BackendConfig,
    KeyedStateBackend,
    KeyGroupRange,
    ValueStateDescriptor,
    create_backend,
    key_group_of,
)
from statebackend.keygroups import subtask_of_key_group
from statebackend.serializers import DEFAULT_SERIALIZER

MAX_PARALLELISM = 128
COUNT = ValueStateDescriptor("count", default=0)
VOCABULARY = (
    "stream state key group window watermark barrier checkpoint snapshot restore compaction "
    "memtable level table bloom manifest epoch fence cache flush merge tombstone ttl offset "
    "source sink operator task slot job cluster service worker schedule"
).split()


def generate_words(count: int, seed: int) -> list[str]:
    """A skewed (Zipf-like) stream of words, the same for the same seed."""
    rng = random.Random(seed)
    weights = [1 / rank for rank in range(1, len(VOCABULARY) + 1)]
    return rng.choices(VOCABULARY, weights=weights, k=count)


@dataclass
class WordCountResult:
    backend: str
    top: list[tuple[str, int]]
    checkpoint_offset: int
    matches_expected: bool


def run_word_count(backend: str, words: int = 100_000, seed: int = 42, parallelism: int = 2):
    stream = generate_words(words, seed)
    with tempfile.TemporaryDirectory(prefix="streamlet-demo-") as workdir:
        config = BackendConfig(
            backend, checkpoint_dir=f"file://{workdir}/checkpoints", local_dir=f"{workdir}/local"
        )
        ranges = [
            KeyGroupRange.of_subtask(MAX_PARALLELISM, parallelism, i) for i in range(parallelism)
        ]

        def open_subtasks(handles: list | None = None) -> list[KeyedStateBackend]:
            return [
                create_backend(
                    config,
                    scope=f"wordcount/{i}",
                    key_group_range=ranges[i],
                    max_parallelism=MAX_PARALLELISM,
                    restore=None if handles is None else handles[i],
                )
                for i in range(parallelism)
            ]

        subtasks = open_subtasks()
        checkpoint_offset = len(stream) // 2
        _count(subtasks, stream[:checkpoint_offset], parallelism)
        handles = [subtask.snapshot(checkpoint_id=1) for subtask in subtasks]
        _count(subtasks, stream[checkpoint_offset : checkpoint_offset + 1000], parallelism)
        for subtask in subtasks:  # a crash: everything after the checkpoint is lost
            subtask.dispose()

        subtasks = open_subtasks(handles)
        _count(subtasks, stream[checkpoint_offset:], parallelism)
        counts = Counter()
        for subtask in subtasks:
            state = subtask.get_state(COUNT)
            for word in subtask.keys(COUNT.name):
                subtask.set_current_key(word)
                counts[word] = state.value()
            subtask.dispose()
    return WordCountResult(
        backend=backend,
        top=counts.most_common(10),
        checkpoint_offset=checkpoint_offset,
        matches_expected=counts == Counter(stream),
    )


def _count(subtasks: list[KeyedStateBackend], words: list[str], parallelism: int) -> None:
    states = [subtask.get_state(COUNT) for subtask in subtasks]
    for word in words:
        key_group = key_group_of(DEFAULT_SERIALIZER.serialize(word), MAX_PARALLELISM)
        index = subtask_of_key_group(MAX_PARALLELISM, parallelism, key_group)
        subtasks[index].set_current_key(word)
        states[index].update(states[index].value() + 1)
