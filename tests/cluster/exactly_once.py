"""What the exactly-once checks of the fault tests compare: the counts the keyed-count test job
must reach, and the updates its FileSink committed."""

from collections import Counter, defaultdict
from pathlib import Path

from tests.runtime.jobs import keyed_count

JOB = str(Path(keyed_count.__file__))


def expected_counts(records: int) -> Counter:
    return Counter(keyed_count.WORDS_SOURCE.record(i) for i in range(records))


def assert_exactly_once(output: Path, records: int) -> None:
    """Each word's committed updates are 1, 2, ..., its count: none lost, none twice."""
    updates: dict[str, list[int]] = defaultdict(list)
    for part in sorted(output.glob("part-*")):
        for line in part.read_text().splitlines():
            word, count = line.split()
            updates[word].append(int(count))
    expected = expected_counts(records)
    assert set(updates) == set(expected)
    for word, count in expected.items():
        assert sorted(updates[word]) == list(range(1, count + 1)), word
