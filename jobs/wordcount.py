"""Word count: generated sentences, split into words, counted per word in one-second event-time
windows, printed as `word count` lines (one per word and window).

    streamlet run jobs/wordcount.py -p 2 -D checkpoint.interval=2s

Stop it with Ctrl-C (a final checkpoint is taken); run it again and it continues from there.
"""

import random

from streamlet import Job, TumblingEventTimeWindows, WatermarkStrategy
from streamlet.connectors import DataGeneratorSource, PrintSink

WORDS = (
    "stream state key group window watermark barrier checkpoint snapshot restore compaction "
    "memtable level table bloom manifest"
).split()
RECORDS_PER_SECOND = 2_000


def sentence(index: int, rng: random.Random) -> dict:
    """Record `index`: a few random words, stamped 1/RATE s apart in event time."""
    return {
        "ts": index * 1000 // RECORDS_PER_SECOND,
        "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))),
    }


job = Job("wordcount")
sentences = job.source(
    DataGeneratorSource(sentence, rate=RECORDS_PER_SECOND, count=60 * RECORDS_PER_SECOND, seed=1),
    name="sentences",
    watermarks=WatermarkStrategy.bounded_out_of_orderness(ms=200, timestamp=lambda s: s["ts"]),
)
counts = (
    sentences.flat_map(lambda s: ((word, 1) for word in s["text"].split()), name="split")
    .key_by(lambda pair: pair[0])
    .window(TumblingEventTimeWindows(1000))
    .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
)
counts.map(lambda pair: pair[0] + " " + str(pair[1]), name="format").sink(PrintSink(), name="print")
