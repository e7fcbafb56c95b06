"""Configuration keys that reach the state backend as its options (`BackendConfig.options`).

- The lsm backend's tuning: a key `lsm.<field>` for every field of `LsmOptions` and
  `TableOptions` (statebackend/lsm), with the field's type and default and the doc below
  (`LSM_KEYS`, generated: a field without a doc here is an error at import). The backend reads
  each under the same name; only the keys that are set reach it (the others keep the defaults of
  the dataclasses).
- The compaction client's settings (`CLIENT_KEYS`, `compaction.client.*`), and with them
  `compaction.mode`, `compaction.service.address` and `.token`, reach it as the options that
  `compaction_service.client.remote_compactor` reads (`compaction_service_*`; durations in
  seconds): always, at their defaults too.

`ROUTES` says, per key, under which name the backend reads it. `state.options` may still give
these settings under their backend names (compatibility; for the lsm backend also without the
`lsm.` prefix): `streamlet.config` takes them as values of the keys, so a setting given both ways
is an error (`key_of_state_option`).
"""

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from statebackend.lsm.backend import option_names
from statebackend.lsm.block import COMPRESSIONS
from statebackend.lsm.options import LsmOptions
from statebackend.lsm.table import TableOptions
from streamlet.config_types import (
    ConfigOption,
    parse_bool,
    parse_float,
    parse_int,
    parse_positive,
    parse_positive_duration,
)

LSM_PREFIX = "lsm."

# The meaning of every LsmOptions and TableOptions field (sizes in bytes, times in seconds).
_LSM_DOCS = {
    "memtable_bytes": "Size at which the memtable becomes immutable and is flushed to an L0 table "
    "on the DFS (overwrites of a key do not grow it).",
    "max_immutables": "Immutable memtables waiting for their flush before writers wait.",
    "num_levels": "Levels of the tree (L0 to L<n-1>).",
    "l0_compaction_trigger": "L0 tables that start an L0 compaction.",
    "l0_slowdown_trigger": "L0 tables from which each memtable switch sleeps "
    "lsm.slowdown_sleep_s (a compactor falling behind slows writers down). At least "
    "lsm.l0_compaction_trigger.",
    "l0_stop_trigger": "L0 tables from which a memtable switch waits for compactions "
    "(backpressure instead of unbounded growth). At least lsm.l0_slowdown_trigger.",
    "slowdown_sleep_s": "The sleep of a slowed-down memtable switch, in seconds.",
    "level_base_bytes": "Target size of L1; a level above its target is compacted into the next.",
    "level_multiplier": "Each level's target is this many times the previous one's.",
    "target_file_size": "Size at which a compaction starts a new output table.",
    "block_size": "Target uncompressed size of a table's data blocks (the unit read and cached).",
    "bloom_bits_per_key": "Bloom filter bits per key in each table; 0: no filter.",
    "compression": "Compression of data blocks.",
    "compression_level": "zstd level.",
    "block_cache_bytes": "In-memory cache of decoded data blocks, per database; 0: none.",
    "file_cache_bytes": "Local-disk cache of whole table files, per database; 0: none (blocks "
    "are read from the DFS).",
    "local_dir": "Directory of the file cache. Default: <state.local-dir>/<job>/<operator>/"
    "<subtask>.",
    "auto_compact": "Compact in the background; false also turns off the L0 slowdown and stop "
    "(compactions then run only when asked for, e.g. in tests).",
    "max_compactions": "Compactions of one database running at once.",
    "compaction_workers": "Worker processes of the local compactor, shared by the process's "
    "databases (with compaction.mode local).",
    "compaction_timeout_s": "A compaction running longer (seconds) is abandoned and its outputs "
    "deleted; the database picks it again.",
    "gc_grace_s": "A table no version or retained checkpoint references is deleted only after it "
    "has been seen unreferenced this long (seconds; this also removes the outputs of abandoned "
    "remote compactions).",
    "gc_interval_s": "Seconds between garbage collections.",
    "manifest_retention": "Newest manifests kept (with their tables), so that opening falls back "
    "to an older one when the newest is damaged.",
    "io_retries": "Retries of a failed DFS write (flush, manifest) before the database fails.",
    "retry_backoff_s": "Wait (seconds) before the first retry of a failed write or compaction, "
    "doubled per further failure.",
}
_PARSERS = {int: ("int", parse_int), float: ("float", parse_float), bool: ("bool", parse_bool)}


def _lsm_key(field: dataclasses.Field[Any], defaults: Any) -> ConfigOption:
    if field.name not in _LSM_DOCS:
        raise RuntimeError(f"streamlet/backend_keys.py: document the LSM option {field.name}")
    choices = tuple(COMPRESSIONS) if field.name == "compression" else ()
    if field.type in _PARSERS:
        type_name, parse = _PARSERS[field.type]  # type: ignore[index]
    else:  # str, or str | None (a path)
        type_name, parse = ("str" if field.type is str else "path"), str
    return ConfigOption(
        LSM_PREFIX + field.name,
        type_name,
        getattr(defaults, field.name),
        _LSM_DOCS[field.name],
        parse,
        choices,
    )


LSM_KEYS: tuple[ConfigOption, ...] = (
    *(_lsm_key(f, TableOptions()) for f in dataclasses.fields(TableOptions)),
    *(_lsm_key(f, LsmOptions()) for f in dataclasses.fields(LsmOptions) if f.name != "table"),
)

CLIENT_KEYS: tuple[ConfigOption, ...] = (
    ConfigOption(
        "compaction.client.deadline",
        "duration",
        300_000,
        "Deadline of one remote compaction call; past it (or on any other failure) the "
        "compaction runs locally, so nothing is lost.",
        parse_positive_duration,
    ),
    ConfigOption(
        "compaction.client.tls.ca-file",
        "path",
        "",
        "PEM file of the CA that signed the compaction service's certificate: set, the client "
        "speaks TLS (the service's --tls-cert/--tls-key); empty: plaintext.",
        str,
    ),
    ConfigOption(
        "compaction.client.tls.cert-file",
        "path",
        "",
        "With compaction.client.tls.key-file: the client's certificate (PEM), for a service that "
        "requires client certificates (mutual TLS: its --tls-client-ca).",
        str,
    ),
    ConfigOption(
        "compaction.client.tls.key-file",
        "path",
        "",
        "The private key (PEM) of compaction.client.tls.cert-file.",
        str,
    ),
    ConfigOption(
        "compaction.client.tls.server-name",
        "str",
        "",
        "The name checked against the service's certificate instead of the address's host (e.g. "
        "when the address is an IP address or a dns: name that resolves to pod IPs).",
        str,
    ),
    ConfigOption(
        "compaction.client.breaker.failures",
        "int",
        3,
        "Consecutive failed calls after which a service instance gets no work (its compactions "
        "go to the other instances, or run locally) for compaction.client.breaker.backoff.",
        parse_positive,
    ),
    ConfigOption(
        "compaction.client.breaker.backoff",
        "duration",
        10_000,
        "How long an instance that keeps failing gets no work; then a gRPC health check decides: "
        "serving, it gets work again; otherwise the back-off doubles, up to "
        "compaction.client.breaker.max-backoff.",
        parse_positive_duration,
    ),
    ConfigOption(
        "compaction.client.breaker.max-backoff",
        "duration",
        120_000,
        "The longest back-off of an instance that keeps failing its health checks; at least "
        "compaction.client.breaker.backoff.",
        parse_positive_duration,
    ),
    ConfigOption(
        "compaction.client.resolve-interval",
        "duration",
        2000,
        "How often a dns: or job: address is resolved again, in the background (and soon "
        "after a failed call): a service instance that starts gets work within about this long "
        "(for job:, plus a heartbeat), one that leaves gets no new work.",
        parse_positive_duration,
    ),
    ConfigOption(
        "compaction.client.subcompactions",
        "bool",
        True,
        "Let the service split a large compaction into key-range subcompactions that run on "
        "several of its workers at once.",
        parse_bool,
    ),
)


@dataclass(frozen=True)
class Route:
    """How a key reaches the backend: as option `name`, in seconds if `seconds` (the key is a
    duration in milliseconds); `always` at its default too, else only when set."""

    name: str
    seconds: bool = False
    always: bool = True


ROUTES: dict[str, Route] = {
    "compaction.mode": Route("compaction_mode"),
    "compaction.service.address": Route("compaction_service_address"),
    "compaction.service.token": Route("compaction_service_token"),
    "compaction.client.deadline": Route("compaction_service_deadline_s", seconds=True),
    "compaction.client.tls.ca-file": Route("compaction_service_tls_ca_file"),
    "compaction.client.tls.cert-file": Route("compaction_service_tls_cert_file"),
    "compaction.client.tls.key-file": Route("compaction_service_tls_key_file"),
    "compaction.client.tls.server-name": Route("compaction_service_tls_server_name"),
    "compaction.client.breaker.failures": Route("compaction_service_breaker_failures"),
    "compaction.client.breaker.backoff": Route(
        "compaction_service_breaker_backoff_s", seconds=True
    ),
    "compaction.client.breaker.max-backoff": Route(
        "compaction_service_breaker_max_backoff_s", seconds=True
    ),
    "compaction.client.resolve-interval": Route(
        "compaction_service_resolve_interval_s", seconds=True
    ),
    "compaction.client.subcompactions": Route("compaction_service_subcompactions"),
    **{option.key: Route(option.key, always=False) for option in LSM_KEYS},
}
_KEY_OF_NAME = {route.name: key for key, route in ROUTES.items()}
# lsm backend options that are no keys: a database's root is its own (docs/configuration.md).
_LSM_BACKEND_ONLY = {LSM_PREFIX + name for name in option_names()} - set(_KEY_OF_NAME)


def key_of_state_option(name: str, backend: str) -> str | None:
    """The key an entry `name` of `state.options` sets (None: an option of the backend only).

    An lsm option may leave out its `lsm.` prefix when the backend is lsm (other backends have
    options of the same plain names, e.g. rocksdb's block_cache_bytes). An unknown `lsm.` name
    is a ValueError that suggests the closest.
    """
    if name in _KEY_OF_NAME:
        return _KEY_OF_NAME[name]
    if backend == "lsm" and LSM_PREFIX + name in _KEY_OF_NAME:
        return LSM_PREFIX + name
    if name.startswith(LSM_PREFIX) and name not in _LSM_BACKEND_ONLY:
        close = difflib.get_close_matches(name, [o.key for o in LSM_KEYS], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown LSM option {name!r}{hint}")
    return None


def backend_value(key: str, value: Any) -> Any:
    """A key's value as the backend reads it (durations of `seconds` routes in seconds)."""
    return value / 1000 if ROUTES[key].seconds else value


def key_value(key: str, value: Any) -> Any:
    """The inverse of `backend_value`: a value given in `state.options`, in the key's units."""
    return parse_float(value) * 1000 if ROUTES[key].seconds else value
