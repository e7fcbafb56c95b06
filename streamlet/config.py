"""Configuration: every key the runtime reads, its type, default and meaning, in one place.

Values come from, in increasing precedence: the defaults below, a YAML file (`--config FILE`,
a flat or nested mapping), environment variables (`STREAMLET_` + the key in upper case with `.` and
`-` as `_`, e.g. `STREAMLET_STATE_BACKEND`), and `-D key=value` on the command line. Unknown keys
and bad values are errors that name the key and where it came from, and suggest the closest key
(or command-line flag). A `STREAMLET_*` environment variable that names no key is ignored with a
warning (once per process) suggesting the closest variable, unless the project uses it on purpose
(`NON_KEY_ENV_VARS`). `compaction.mode: remote` without `compaction.service.address` is an
error. `docs/configuration.md` lists the same keys (a test keeps the two in step).

The keys that reach the state backend as its options (the lsm options `lsm.<field>`, generated
from the LSM's option dataclasses, and the compaction client's `compaction.client.*`) live in
`streamlet.backend_keys`; their values are parsed once, here. `state.options` may still give them
under their backend names (an error if a key is given both ways); its other entries go to the
backend as they are. Nothing here registers compaction modes or resolves addresses: the runtime
does that where it assembles a program (`streamlet.compaction`).

>>> config = Configuration.load(overrides={"checkpoint.interval": "2s"}, environ={})
>>> config.get("checkpoint.interval"), config.get("state.backend")
(2000, 'memory')
"""

import difflib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from statebackend import BackendConfig
from statebackend.cache import DEFAULT_CACHE_BYTES
from statebackend.lsm.backend import parse_options
from streamlet.backend_keys import (
    CLIENT_KEYS,
    LSM_KEYS,
    ROUTES,
    backend_value,
    key_of_state_option,
    key_value,
)
from streamlet.config_types import (
    ENV_PREFIX,
    ConfigError,
    ConfigOption,
    parse_bool,
    parse_count,
    parse_duration,
    parse_mapping,
    parse_positive,
    parse_positive_duration,
)

# `STREAMLET_*` variables that are not configuration keys but are used on purpose: the settings of
# the Kubernetes example's scripts (k8s/scripts/*.sh), which export them to `streamlet` commands.
NON_KEY_ENV_VARS = frozenset({"STREAMLET_JOBMANAGER", "STREAMLET_TOKEN", "STREAMLET_PORT"})
# Keys that a command-line flag of `streamlet run` (and `streamlet submit`) sets too.
FLAGS = {
    "parallelism.default": "-p",
    "checkpoint.allow-non-restored-state": "--allow-non-restored-state",
}

log = logging.getLogger("streamlet.config")


def _default_dir(name: str) -> str:
    return (Path.cwd() / ".streamlet" / name).as_uri()


OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption(
        "parallelism.default", "int", 1, "Parallelism of operators that set none.", parse_positive
    ),
    ConfigOption(
        "parallelism.max",
        "int",
        128,
        "Maximum parallelism: the number of key groups keyed state is split into. Fixed for the "
        "life of a job's checkpoints.",
        parse_positive,
    ),
    ConfigOption(
        "state.backend",
        "str",
        "memory",
        "Keyed state backend: memory, rocksdb or lsm (the disaggregated LSM tree).",
        str,
        ("memory", "rocksdb", "lsm"),
    ),
    ConfigOption(
        "state.dir",
        "url",
        None,
        "fsspec URL (file://, s3://, memory://) under which state backends keep their files on "
        "the DFS. Default: file://<cwd>/.streamlet/state.",
        str,
    ),
    ConfigOption(
        "state.local-dir",
        "path",
        None,
        "Local working directory of the state backends (RocksDB files, LSM cache). "
        "Default: <tmp>/streamlet.",
        str,
    ),
    ConfigOption(
        "state.cache-bytes",
        "int",
        DEFAULT_CACHE_BYTES,
        "Bytes (estimated) of the state cache of each keyed operator subtask: decoded values of "
        "value, reducing and aggregating state, kept in front of the backend's store and "
        "written back at checkpoints, before scans and on eviction; a quarter of it remembers "
        "keys. 0: at most one value.",
        parse_count,
    ),
    ConfigOption(
        "state.async.enabled",
        "bool",
        True,
        "Read keyed state ahead for each batch of records, concurrently and off the event loop "
        "(the lsm backend), and await a write stall of the store instead of blocking the event "
        "loop; false: every state access is synchronous, on the event loop.",
        parse_bool,
    ),
    ConfigOption(
        "state.async.max-records",
        "int",
        1024,
        "Most records of a keyed operator subtask whose state is read ahead at once: a larger "
        "input batch is split into parts of this many records, each read ahead and run in turn; "
        "also the most records of an async def process function in flight at once.",
        parse_positive,
    ),
    ConfigOption(
        "state.async.max-bytes",
        "int",
        16 << 20,
        "Most bytes of keys and values a keyed operator subtask holds of what it read ahead; "
        "values beyond them are read again, synchronously, when the records ask for them.",
        parse_positive,
    ),
    ConfigOption(
        "checkpoint.dir",
        "url",
        None,
        "fsspec URL where checkpoint metadata is written: <dir>/<job>/chk-<id>/_metadata; a "
        "savepoint given no directory goes to <dir>/savepoints/<job>/. "
        "Default: file://<cwd>/.streamlet/checkpoints.",
        str,
    ),
    ConfigOption(
        "checkpoint.interval",
        "duration",
        10_000,
        "Time between periodic checkpoints (500ms, 10s, 2min...); 0 turns periodic checkpoints "
        "off (a final checkpoint is still taken when the job ends or is stopped).",
        parse_duration,
    ),
    ConfigOption(
        "checkpoint.retained",
        "int",
        3,
        "How many completed checkpoints to keep; older ones are deleted.",
        parse_positive,
    ),
    ConfigOption(
        "checkpoint.restore",
        "bool",
        True,
        "Restore the latest completed checkpoint of the job (if any) when it starts, at the "
        "parallelism the job has now; `streamlet run -s URL` (and `streamlet submit -s URL`) "
        "restores the checkpoint or savepoint at URL instead.",
        parse_bool,
    ),
    ConfigOption(
        "checkpoint.allow-non-restored-state",
        "bool",
        False,
        "Start from a checkpoint or savepoint that holds state of operators the job no longer has "
        "(matched by uid), leaving that state out; otherwise that is an error.",
        parse_bool,
    ),
    ConfigOption(
        "dfs.storage-options",
        "mapping",
        {},
        "fsspec storage options for state.dir and checkpoint.dir (a YAML mapping, or JSON in "
        "-D/environment), e.g. an S3 endpoint and credentials.",
        parse_mapping,
    ),
    ConfigOption(
        "restart.attempts",
        "int",
        0,
        "Fixed-delay restart strategy: how many times a failed job is restarted from its latest "
        "checkpoint before it fails for good (0: never).",
        parse_count,
    ),
    ConfigOption("restart.delay", "duration", 1000, "Wait before each restart.", parse_duration),
    ConfigOption(
        "pipeline.batch-size",
        "int",
        256,
        "Most records a channel batch holds (records travel between subtasks in batches).",
        parse_positive,
    ),
    ConfigOption(
        "pipeline.channel-capacity",
        "int",
        8,
        "Batches a channel holds before its producer waits (backpressure).",
        parse_positive,
    ),
    ConfigOption(
        "compaction.mode",
        "str",
        "local",
        "Where the lsm backend runs compactions: local, or remote on the compaction service "
        "(falling back to local when it is unreachable).",
        str,
        ("local", "remote"),
    ),
    ConfigOption(
        "compaction.service.address",
        "str",
        "",
        "host:port of the compaction service (several separated by commas), job:<name> (a "
        "compaction service job of the cluster), dns:///<name>:<port> (every address the name "
        "resolves to, through the system resolver) or dns://<dns-server-ip>[:<port>]/<name>:"
        "<port> (the A and AAAA records of the name at that DNS server); required when "
        "compaction.mode is remote. job: and dns: addresses are resolved again every "
        "compaction.client.resolve-interval, so instances that start or stop are seen while the "
        "job runs; while it names no running instance, compactions run locally.",
        str,
    ),
    ConfigOption(
        "compaction.service.token",
        "str",
        "",
        "Bearer token the compaction service requires (its --token-file); empty: none. Prefer "
        "the environment variable STREAMLET_COMPACTION_SERVICE_TOKEN.",
        str,
    ),
    ConfigOption(
        "state.options",
        "mapping",
        {},
        "Backend-specific settings (a YAML mapping, or JSON in -D/environment), e.g. "
        '{"block_cache_bytes": 67108864} for rocksdb; see docs/state-backends.md. An entry '
        "named like a key's backend option (lsm.memtable_bytes, compaction_service_deadline_s) "
        "sets that key, for compatibility: giving a key both ways is an error.",
        parse_mapping,
    ),
    ConfigOption(
        "progress.interval",
        "duration",
        1000,
        "How often `streamlet run` refreshes its progress line.",
        parse_duration,
    ),
    ConfigOption(
        "compaction.service.port",
        "int",
        0,
        "Port the compaction service job (`streamlet submit compaction_service`) binds; 0: any "
        "free port (the job registers the bound one with the job manager).",
        parse_count,
    ),
    ConfigOption(
        "compaction.service.workers",
        "int",
        2,
        "Worker processes of the compaction service job.",
        parse_positive,
    ),
    ConfigOption(
        "compaction.service.allowed-roots",
        "str",
        "",
        "DFS URLs (comma-separated) the compaction service job may read and write. Default: "
        "cluster.dir.",
        str,
    ),
    ConfigOption(
        "cluster.jobmanager",
        "url",
        "http://127.0.0.1:8081",
        "REST URL of the job manager, for task managers and `streamlet submit/list/status/cancel`.",
        str,
    ),
    ConfigOption(
        "cluster.token",
        "str",
        "",
        "Shared secret every REST call to the job manager carries (`Authorization: Bearer ...`); "
        "required on the job manager and on every client. Prefer the environment variable.",
        str,
    ),
    ConfigOption(
        "cluster.dir",
        "url",
        None,
        "fsspec URL of the cluster's HA metadata (jobs, their files and latest checkpoints) and "
        "default home of jobs' checkpoints and state. Default: file://<cwd>/.streamlet/cluster.",
        str,
    ),
    ConfigOption(
        "cluster.bind-host",
        "str",
        "127.0.0.1",
        "Interface the job manager, task managers and the compaction service job bind to "
        "(loopback unless set otherwise). A job submitted to a cluster binds that of the task "
        "manager that runs it, unless submitted with its own.",
        str,
    ),
    ConfigOption(
        "cluster.heartbeat.interval",
        "duration",
        1000,
        "How often a task manager reports to the job manager.",
        parse_positive_duration,
    ),
    ConfigOption(
        "cluster.heartbeat.timeout",
        "duration",
        5000,
        "A task manager silent this long is declared lost; its jobs restart elsewhere from their "
        "latest checkpoint.",
        parse_positive_duration,
    ),
    ConfigOption(
        "taskmanager.slots",
        "int",
        2,
        "Slots of a task manager: a job with parallelism p takes p slots.",
        parse_positive,
    ),
    ConfigOption(
        "taskmanager.labels",
        "str",
        "",
        "Labels of a task manager (comma-separated, e.g. compactor), which jobs select with "
        "placement.taskmanager-label; `streamlet taskmanager --label L` adds one.",
        str,
    ),
    ConfigOption(
        "taskmanager.drain-grace",
        "duration",
        30_000,
        "On SIGTERM a task manager drains: it takes no new work, withdraws its jobs' endpoints "
        "and gives the services its jobs run (the compaction service) this long to finish the "
        "calls they run, then stops them and exits. Keep a pod's terminationGracePeriodSeconds "
        "above it.",
        parse_duration,
    ),
    ConfigOption(
        "placement.per-taskmanager",
        "bool",
        False,
        "Run the job as one instance (parallelism 1, one slot) on every task manager that "
        "matches placement.taskmanager-label, also on those that join later; an instance ends "
        "with its task manager and is not moved. Instances are independent: no -s, periodic "
        "checkpoints off unless checkpoint.interval is set.",
        parse_bool,
    ),
    ConfigOption(
        "placement.taskmanager-label",
        "str",
        "",
        "Only task managers with this label (taskmanager.labels) run the job; empty: any.",
        str,
    ),
    *CLIENT_KEYS,
    *LSM_KEYS,
)
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}
_ENV_VARS = {option.env_var: option for option in OPTIONS}
_warned_env_vars: set[str] = set()


def _did_you_mean(key: str) -> str:
    """` (did you mean KEY?)` for an unknown key: `<key>.default` when there is one (`parallelism`
    means `parallelism.default`), else the closest key; with the flag that sets it too."""
    if f"{key}.default" in OPTIONS_BY_KEY:
        close = f"{key}.default"
    else:
        matches = difflib.get_close_matches(key, OPTIONS_BY_KEY, n=1)
        if not matches:
            return ""
        close = matches[0]
    flag = f" or {FLAGS[close]}" if close in FLAGS else ""
    return f" (did you mean {close}{flag}?)"


def _warn_unknown_env_vars(env: Mapping[str, str]) -> None:
    """Warn (once per variable and process) of `STREAMLET_*` variables that name no key."""
    for name in sorted(env):
        if (
            not name.startswith(ENV_PREFIX)
            or name in _ENV_VARS
            or name in NON_KEY_ENV_VARS
            or name in _warned_env_vars
        ):
            continue
        _warned_env_vars.add(name)
        close = difflib.get_close_matches(name, _ENV_VARS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        log.warning("environment variable %s names no configuration key; ignored%s", name, hint)


_TLS_FILES = ("ca-file", "cert-file", "key-file", "server-name")


def _names_an_address(address: str) -> bool:
    return any(part.strip() for part in address.split(","))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and full not in OPTIONS_BY_KEY:
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


class Configuration:
    """Validated configuration values; `get(key)` returns the typed value."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values: dict[str, Any] = {}
        self._sources: dict[str, str] = {}  # where each value in _values came from
        self._given: dict[str, Any] = {}  # values state.options gives for keys (compatibility)
        self._backend_only: dict[str, Any] = {}  # the other entries of state.options
        for key, value in (values or {}).items():
            self.set(key, value, "the configuration")
        self._check()

    @classmethod
    def load(
        cls,
        file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> "Configuration":
        """Defaults, then `file` (YAML), then environment variables, then `overrides`."""
        config = cls()
        if file is not None:
            try:
                data = yaml.safe_load(Path(file).read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot read configuration file {file}: {e}") from e
            if not isinstance(data, Mapping):
                raise ConfigError(f"configuration file {file} must hold a mapping of keys")
            for key, value in _flatten(data).items():
                config.set(key, value, str(file))
        env = os.environ if environ is None else environ
        _warn_unknown_env_vars(env)
        for option in OPTIONS:
            if option.env_var in env:
                config.set(option.key, env[option.env_var], f"${option.env_var}")
        for key, value in (overrides or {}).items():
            config.set(key, value, f"-D {key}")
        config._check()
        return config

    def set(self, key: str, value: Any, source: str) -> None:
        option = OPTIONS_BY_KEY.get(key)
        if option is None:
            raise ConfigError(f"unknown configuration key {key!r} in {source}{_did_you_mean(key)}")
        try:
            self._values[key] = option.convert(value)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"bad value for {key} in {source}: {e}") from e
        self._sources[key] = source

    def _check(self) -> None:
        """Rules across keys: the keys state.options gives (each once), remote compaction
        needs the service's address, the client's TLS files go together, the breaker's
        back-offs are in order, and the lsm options fit together."""
        self._take_state_options()
        if self.get("compaction.mode") == "remote" and not _names_an_address(
            self.get("compaction.service.address")
        ):
            raise ConfigError(
                "compaction.mode is remote, but compaction.service.address is not set: set it to "
                "the compaction service's host:port (several separated by commas), job:<name>, "
                "dns:///<name>:<port> or dns://<dns-server-ip>/<name>:<port>, or set "
                "compaction.mode to local"
            )
        tls = {name: self.get(f"compaction.client.tls.{name}") for name in _TLS_FILES}
        if bool(tls["cert-file"]) != bool(tls["key-file"]):
            raise ConfigError(
                "compaction.client.tls.cert-file and compaction.client.tls.key-file go together "
                "(a client certificate and its private key): set both or neither"
            )
        if any(tls.values()) and not tls["ca-file"]:
            raise ConfigError(
                "compaction.client.tls.* is set but compaction.client.tls.ca-file is not: TLS to "
                "the compaction service needs the CA that signed its certificate"
            )
        backoff = self.get("compaction.client.breaker.backoff")
        if self.get("compaction.client.breaker.max-backoff") < backoff:
            raise ConfigError(
                f"compaction.client.breaker.max-backoff must be at least "
                f"compaction.client.breaker.backoff ({backoff} ms)"
            )
        lsm = {
            option.key[len("lsm.") :]: self.get(option.key)
            for option in LSM_KEYS
            if option.key in self._values or option.key in self._given
        }
        try:
            parse_options(lsm)
        except ValueError as e:
            raise ConfigError(f"bad lsm options: {e}") from e

    def _take_state_options(self) -> None:
        """Split state.options into values of keys (entries under a key's backend name,
        `streamlet.backend_keys`) and the backend's own options; a key given both as a key and in
        state.options, or twice in state.options, is an error naming both places."""
        where = self._sources.get("state.options", "the defaults")
        backend = self.get("state.backend")
        given: dict[str, Any] = {}
        names: dict[str, str] = {}
        rest: dict[str, Any] = {}
        for name, value in self.get("state.options").items():
            try:
                key = key_of_state_option(name, backend)
            except ValueError as e:
                raise ConfigError(f"bad state.options in {where}: {e}") from e
            if key is None:
                rest[name] = value
                continue
            if key in self._values:
                raise ConfigError(
                    f"{key} is given twice: as {key} in {self._sources[key]} and as {name!r} in "
                    f"state.options in {where}; give it once (as {key})"
                )
            if key in names:
                raise ConfigError(
                    f"{key} is given twice in state.options in {where}: as {names[key]!r} and "
                    f"as {name!r}"
                )
            names[key] = name
            try:
                given[key] = OPTIONS_BY_KEY[key].convert(key_value(key, value))
            except (ValueError, TypeError) as e:
                raise ConfigError(
                    f"bad value for {key} (as {name!r} in state.options in {where}): {e}"
                ) from e
        self._given, self._backend_only = given, rest

    def get(self, key: str) -> Any:
        if key not in OPTIONS_BY_KEY:
            raise ConfigError(f"unknown configuration key {key!r}")
        if key in self._values:
            return self._values[key]
        if key in self._given:
            return self._given[key]
        return self._default(key)

    def _default(self, key: str) -> Any:
        if key == "state.dir":
            return _default_dir("state")
        if key == "checkpoint.dir":
            return _default_dir("checkpoints")
        if key == "cluster.dir":
            return _default_dir("cluster")
        if key == "state.local-dir":
            return os.path.join(tempfile.gettempdir(), "streamlet")
        return OPTIONS_BY_KEY[key].default

    def backend_config(self) -> BackendConfig:
        """The state backend these values select, with its options: the entries of
        state.options that are no keys, and the keys that reach the backend under their
        backend names (`streamlet.backend_keys.ROUTES`). The address is not resolved here: the
        remote compactor resolves it continuously (`streamlet.compaction` wires it)."""
        options = dict(self._backend_only)
        for key, route in ROUTES.items():
            if route.always or key in self._values or key in self._given:
                options[route.name] = backend_value(key, self.get(key))
        return BackendConfig(
            name=self.get("state.backend"),
            checkpoint_dir=self.get("state.dir"),
            local_dir=self.get("state.local-dir"),
            storage_options=self.get("dfs.storage-options"),
            options=options,
            cache_bytes=self.get("state.cache-bytes"),
        )
