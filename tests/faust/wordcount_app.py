"""A Faust word-count worker for the tests: `python -m tests.faust.wordcount_app [reset]`.

It counts the words of a source topic into two tables: `counts`, on the store the environment
names (the streamlet store under test), and `reference`, on Faust's memory store (the app's
default), which recovers by replaying its whole changelog. A word `-<word>` deletes `<word>` from
both. When a table has recovered (after every rebalance) it prints one line
`RECOVERED <table> <json of its items>`, the moment it serves the table again; and whenever what
this worker serves of `counts` changes, it prints one line `SERVING <json>` (`serving`).

Environment: BROKER (host:port), APP_ID, TOPIC, PARTITIONS, DATADIR, STORE (the counts table's
store URL), STANDBYS (standby replicas, default 0). The settings make group joins and commits
quick on the test broker, and the streamlet store logs its durable steps (DEBUG lines of
`streamlet_faust.store`). With the argument `reset`, it runs Faust's `reset` command instead of a
worker: every table's `reset_state`.
"""

import json
import logging
import os
import sys
from typing import Any

import faust
from faust.worker import Worker

from tests.faust.broker_offsets import install


def build_app() -> faust.App:
    broker = os.environ["BROKER"]
    install(broker)
    partitions = int(os.environ["PARTITIONS"])
    app = faust.App(
        os.environ["APP_ID"],
        broker=f"kafka://{broker}",
        datadir=os.environ["DATADIR"],
        topic_partitions=partitions,
        web_enabled=False,
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.25,
        broker_commit_interval=0.5,
        table_standby_replicas=int(os.environ.get("STANDBYS", "0")),
    )
    words = app.topic(os.environ["TOPIC"], value_type=str, partitions=partitions)
    # Per table: Faust takes a store URL without host, path or query ("memory://") for none
    # given and falls back to the app's store, so the app's store is memory://.
    # standby_buffer_size=1: a standby applies each changelog record at once (Faust's default
    # applies them 1000 at a time).
    counts = app.Table("counts", default=int, partitions=partitions, store=os.environ["STORE"],
                       standby_buffer_size=1)
    reference = app.Table("reference", default=int, partitions=partitions, standby_buffer_size=1)

    @app.agent(words)
    async def count(stream: faust.StreamT[str]) -> None:
        async for word in stream:
            if word.startswith("-"):
                del counts[word[1:]]
                del reference[word[1:]]
            else:
                counts[word] += 1
                reference[word] += 1

    for table in (counts, reference):
        table.on_recover(_announcer(table))

    served: list[dict[str, Any]] = [{}]

    @app.timer(interval=0.1)
    async def report() -> None:
        now = serving(app, counts)
        if now != served[0]:
            served[0] = now
            print(f"SERVING {json.dumps(now, sort_keys=True)}", flush=True)

    return app


def serving(app: faust.App, counts: faust.Table) -> dict[str, Any]:
    """What this worker serves of `counts`, read outside of a stream (as a web view reads): the
    changelog partitions it holds, active and standby; its iteration (over its active
    partitions); and a read of each word w0..w9 the table has (in every partition here, standbys
    too)."""
    topic = counts.changelog_topic.get_topic_name()
    assignor = app.assignor
    items = dict(counts.items())
    probed = [f"w{i}" for i in range(10)]
    return {
        "actives": sorted(tp.partition for tp in assignor.assigned_actives() if tp.topic == topic),
        "standbys": sorted(
            tp.partition for tp in assignor.assigned_standbys() if tp.topic == topic
        ),
        "items": items,
        "keys": sorted(counts.keys()),
        "values": sorted(counts.values()),
        "len": len(counts),
        "get": {word: counts[word] for word in probed if word in counts},
    }


def _announcer(table: faust.Table) -> object:
    async def announce() -> None:
        items = json.dumps(dict(table.items()), sort_keys=True)
        print(f"RECOVERED {table.name} {items}", flush=True)

    return announce


def main() -> None:
    app = build_app()
    store_log = logging.getLogger("streamlet_faust")
    store_log.setLevel(logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(message)s"))
    store_log.addHandler(handler)
    store_log.propagate = False
    if sys.argv[1:] == ["reset"]:
        app.main()  # Faust's command line: `reset`
    else:
        Worker(app, loglevel="info").execute_from_commandline()


if __name__ == "__main__":
    main()
