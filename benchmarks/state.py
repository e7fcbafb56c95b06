"""State backends against raw rocksdict: ValueState put and get, MapState iteration.

Every backend runs the same workload through the state API: `put` writes a value for each of N
keys, `get` reads them back in random order, `map_iter` iterates the entries of M map keys.
Raw rocksdict does the same on the same bytes (the physical keys and values the API stores), with
the same options as the `rocksdb` backend. The ratios `<backend>_<op>_vs_rocksdict` are ops/s of
the backend over ops/s of raw rocksdict: they show what the state API costs on top of a store.
"""

import random
import shutil
import tempfile
import time
from collections.abc import Callable

from rocksdict import Rdict

from statebackend import (
    BackendConfig,
    KeyedStateBackend,
    MapStateDescriptor,
    ValueStateDescriptor,
    create_backend,
)
from statebackend.layout import prefix_end
from statebackend.rocksdb import no_wal_write_options, rocksdb_options

BACKENDS = ["memory", "rocksdb", "lsm"]
VALUE = "v" * 100


def run(quick: bool = False) -> dict[str, float | int | str]:
    keys = 20_000 if quick else 300_000
    map_keys, map_entries = (200, 50) if quick else (2_000, 100)
    result: dict[str, float | int | str] = {"keys": keys, "map_entries": map_keys * map_entries}
    workdir = tempfile.mkdtemp(prefix="bench-state-")
    try:
        raw = _raw_rocksdict(workdir, keys, map_keys, map_entries)
        for op, ops in raw.items():
            result[f"rocksdict_{op}_ops"] = ops
        for name in BACKENDS:
            figures = _backend(name, workdir, keys, map_keys, map_entries)
            for op, ops in figures.items():
                result[f"{name}_{op}_ops"] = ops
                result[f"{name}_{op}_vs_rocksdict"] = ops / raw[op]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _ops_per_second(count: int, work: Callable[[], None]) -> float:
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


def _backend(name: str, workdir: str, keys: int, map_keys: int, entries: int) -> dict[str, float]:
    config = BackendConfig(
        name, checkpoint_dir=f"file://{workdir}/{name}-chk", local_dir=f"{workdir}/{name}"
    )
    backend = create_backend(config, scope="bench/0")
    try:
        return _state_workload(backend, keys, map_keys, entries)
    finally:
        backend.dispose()


def _state_workload(
    backend: KeyedStateBackend, keys: int, map_keys: int, entries: int
) -> dict[str, float]:
    value = backend.get_state(ValueStateDescriptor("value"))
    mapped = backend.get_state(MapStateDescriptor("map"))
    order = list(range(keys))
    random.Random(1).shuffle(order)

    def put() -> None:
        for key in range(keys):
            backend.set_current_key(key)
            value.update(VALUE)

    def get() -> None:
        for key in order:
            backend.set_current_key(key)
            value.value()

    for key in range(map_keys):
        backend.set_current_key(key)
        mapped.put_all({i: VALUE for i in range(entries)})

    def map_iter() -> None:
        for key in range(map_keys):
            backend.set_current_key(key)
            for _ in mapped.items():
                pass

    return {
        "put": _ops_per_second(keys, put),
        "get": _ops_per_second(keys, get),
        "map_iter": _ops_per_second(map_keys * entries, map_iter),
    }


def _raw_rocksdict(workdir: str, keys: int, map_keys: int, entries: int) -> dict[str, float]:
    """The same physical keys and values, written and read with rocksdict directly."""
    capture = create_backend(
        BackendConfig("memory", checkpoint_dir=f"memory://{workdir}"), scope="capture/0"
    )
    _state_workload(capture, min(keys, 1), map_keys, entries)
    physical_keys = []
    for key in range(keys):
        capture.set_current_key(key)
        physical_keys.append(capture.key_prefix("value"))
    map_prefixes = []
    for key in range(map_keys):
        capture.set_current_key(key)
        map_prefixes.append(capture.key_prefix("map"))
    map_data = list(capture.store.scan(b"", b"\xff"))
    capture.dispose()
    stored_value = b"\x00" + VALUE.encode()
    order = list(physical_keys)
    random.Random(1).shuffle(order)

    db = Rdict(f"{workdir}/raw", options=rocksdb_options({}))
    db.set_write_options(no_wal_write_options())
    try:

        def put() -> None:
            for key in physical_keys:
                db.put(key, stored_value)

        def get() -> None:
            for key in order:
                db.get(key)

        for key, stored in map_data:
            db.put(key, stored)

        def map_iter() -> None:
            for prefix in map_prefixes:
                end = prefix_end(prefix)
                iterator = db.iter()
                iterator.seek(prefix)
                while iterator.valid() and iterator.key() < end:
                    iterator.value()
                    iterator.next()

        return {
            "put": _ops_per_second(keys, put),
            "get": _ops_per_second(keys, get),
            "map_iter": _ops_per_second(map_keys * entries, map_iter),
        }
    finally:
        db.close()
