"""A test job that shows its arguments (`-- OUTPUT WORD...`): it writes the name in `sys.argv[0]`
and the words, as the module saw them while it loaded, to a FileSink at OUTPUT; a word `fail`
makes its map raise, so the job fails."""

import sys
from pathlib import Path

from streamlet import Job
from streamlet.connectors import CollectionSource, FileSink

OUTPUT, *WORDS = sys.argv[1:]
SEEN = [Path(sys.argv[0]).name, *WORDS]


def check(word: str) -> str:
    if word == "fail":
        raise ValueError("the job was asked to fail")
    return word


job = Job("argv")
job.source(CollectionSource(SEEN), name="argv").map(check, name="check").sink(FileSink(OUTPUT))
