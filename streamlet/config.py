"""Configuration: every key the runtime reads, its type, default and meaning, in one place.

Values come from, in increasing precedence: the defaults below, a YAML file (`--config FILE`,
a flat or nested mapping), environment variables (`STREAMLET_` + the key in upper case with `.` and
`-` as `_`, e.g. `STREAMLET_STATE_BACKEND`), and `-D key=value` on the command line. Unknown keys
and bad values are errors that name the key and where it came from, and suggest the closest key
(or command-line flag). A `STREAMLET_*` environment variable that names no key is ignored with a
warning (once per process) suggesting the closest variable, unless the project uses it on purpose
(`NON_KEY_ENV_VARS`). `compaction.mode: remote` without `compaction.service.address` is an
error. `docs/configuration.md` lists the same keys (a test keeps the two in step).

>>> config = Configuration.load(overrides={"checkpoint.interval": "2s"}, environ={})
>>> config.get("checkpoint.interval"), config.get("state.backend")
(2000, 'memory')
"""

import difflib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from statebackend import BackendConfig

ENV_PREFIX = "STREAMLET_"
# `STREAMLET_*` variables that are not configuration keys but are used on purpose: the settings of
# the Kubernetes example's scripts (k8s/scripts/*.sh), which export them to `streamlet` commands.
NON_KEY_ENV_VARS = frozenset({"STREAMLET_JOBMANAGER", "STREAMLET_TOKEN", "STREAMLET_PORT"})
# Keys that a command-line flag of `streamlet run` (and `streamlet submit`) sets too.
FLAGS = {
    "parallelism.default": "-p",
    "checkpoint.allow-non-restored-state": "--allow-non-restored-state",
}

log = logging.getLogger("streamlet.config")


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


def parse_duration_ms(value: Any) -> int:
    """Milliseconds from an int (ms) or a string such as `500ms`, `10s`, `2min`, `1h`."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h)?\s*", str(value))
    if match is None:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 10s, 2min, 1h)")
    number, unit = float(match.group(1)), match.group(2) or "ms"
    return int(number * {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}[unit])


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _parse_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    parsed = json.loads(str(value))
    if not isinstance(parsed, dict):
        raise ValueError(f"not a mapping: {value!r}")
    return parsed


def _parse_count(value: Any) -> int:
    """A non-negative integer."""
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    number = int(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def _parse_positive(value: Any) -> int:
    number = _parse_count(value)
    if number == 0:
        raise ValueError("must be at least 1")
    return number


def _parse_duration(value: Any) -> int:
    ms = parse_duration_ms(value)
    if ms < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return ms


def _parse_positive_duration(value: Any) -> int:
    ms = _parse_duration(value)
    if ms == 0:
        raise ValueError("must be longer than 0 ms")
    return ms


@dataclass(frozen=True)
class ConfigOption:
    key: str
    type_name: str
    default: Any
    doc: str
    parse: Callable[[Any], Any]
    choices: tuple[str, ...] = ()

    def convert(self, value: Any) -> Any:
        result = self.parse(value)
        if self.choices and result not in self.choices:
            raise ValueError(f"{result!r} is not one of {', '.join(self.choices)}")
        return result

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + re.sub(r"[.\-]", "_", self.key).upper()


def _default_dir(name: str) -> str:
    return (Path.cwd() / ".streamlet" / name).as_uri()


OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption(
        "parallelism.default", "int", 1, "Parallelism of operators that set none.", _parse_positive
    ),
    ConfigOption(
        "parallelism.max",
        "int",
        128,
        "Maximum parallelism: the number of key groups keyed state is split into. Fixed for the "
        "life of a job's checkpoints.",
        _parse_positive,
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
        _parse_duration,
    ),
    ConfigOption(
        "checkpoint.retained",
        "int",
        3,
        "How many completed checkpoints to keep; older ones are deleted.",
        _parse_positive,
    ),
    ConfigOption(
        "checkpoint.restore",
        "bool",
        True,
        "Restore the latest completed checkpoint of the job (if any) when it starts, at the "
        "parallelism the job has now; `streamlet run -s URL` (and `streamlet submit -s URL`) "
        "restores the checkpoint or savepoint at URL instead.",
        _parse_bool,
    ),
    ConfigOption(
        "checkpoint.allow-non-restored-state",
        "bool",
        False,
        "Start from a checkpoint or savepoint that holds state of operators the job no longer has "
        "(matched by uid), leaving that state out; otherwise that is an error.",
        _parse_bool,
    ),
    ConfigOption(
        "dfs.storage-options",
        "mapping",
        {},
        "fsspec storage options for state.dir and checkpoint.dir (a YAML mapping, or JSON in "
        "-D/environment), e.g. an S3 endpoint and credentials.",
        _parse_mapping,
    ),
    ConfigOption(
        "restart.attempts",
        "int",
        0,
        "Fixed-delay restart strategy: how many times a failed job is restarted from its latest "
        "checkpoint before it fails for good (0: never).",
        _parse_count,
    ),
    ConfigOption("restart.delay", "duration", 1000, "Wait before each restart.", _parse_duration),
    ConfigOption(
        "pipeline.batch-size",
        "int",
        256,
        "Most records a channel batch holds (records travel between subtasks in batches).",
        _parse_positive,
    ),
    ConfigOption(
        "pipeline.channel-capacity",
        "int",
        8,
        "Batches a channel holds before its producer waits (backpressure).",
        _parse_positive,
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
        "compaction service job of the cluster) or dns:///<name>:<port>; required when "
        "compaction.mode is remote.",
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
        '{"lsm.block_cache_bytes": 0} or {"block_cache_bytes": 67108864} for rocksdb; see '
        "docs/state-backends.md.",
        _parse_mapping,
    ),
    ConfigOption(
        "progress.interval",
        "duration",
        1000,
        "How often `streamlet run` refreshes its progress line.",
        _parse_duration,
    ),
    ConfigOption(
        "compaction.service.port",
        "int",
        0,
        "Port the compaction service job (`streamlet submit compaction_service`) binds; 0: any "
        "free port (the job registers the bound one with the job manager).",
        _parse_count,
    ),
    ConfigOption(
        "compaction.service.workers",
        "int",
        2,
        "Worker processes of the compaction service job.",
        _parse_positive,
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
        "(loopback unless set otherwise).",
        str,
    ),
    ConfigOption(
        "cluster.heartbeat.interval",
        "duration",
        1000,
        "How often a task manager reports to the job manager.",
        _parse_positive_duration,
    ),
    ConfigOption(
        "cluster.heartbeat.timeout",
        "duration",
        5000,
        "A task manager silent this long is declared lost; its jobs restart elsewhere from their "
        "latest checkpoint.",
        _parse_positive_duration,
    ),
    ConfigOption(
        "taskmanager.slots",
        "int",
        2,
        "Slots of a task manager: a job with parallelism p takes p slots.",
        _parse_positive,
    ),
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

    def _check(self) -> None:
        """Rules across keys: remote compaction needs the service's address."""
        if self.get("compaction.mode") == "remote" and not _names_an_address(
            self.get("compaction.service.address")
        ):
            raise ConfigError(
                "compaction.mode is remote, but compaction.service.address is not set: set it to "
                "the compaction service's host:port (several separated by commas), job:<name> or "
                "dns:///<name>:<port>, or set compaction.mode to local"
            )

    def get(self, key: str) -> Any:
        if key not in OPTIONS_BY_KEY:
            raise ConfigError(f"unknown configuration key {key!r}")
        if key in self._values:
            return self._values[key]
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
        """The state backend settings these values select, with the compaction mode wired.

        With `compaction.mode: remote`, the compaction service's client is registered as the
        `remote` mode and `compaction.service.address` (which a remote mode requires) is resolved
        (`job:<name>` through the cluster's endpoint directory, `dns:///name:port` through DNS) to
        the `host:port` list the backend gets. When it resolves to nothing (e.g. the service job
        is not running yet), the backend compacts locally, with a warning.
        """
        mode = self.get("compaction.mode")
        address = self.get("compaction.service.address")
        if mode == "remote":
            mode, address = _remote_compaction(address)
        return BackendConfig(
            name=self.get("state.backend"),
            checkpoint_dir=self.get("state.dir"),
            local_dir=self.get("state.local-dir"),
            storage_options=self.get("dfs.storage-options"),
            options={
                **self.get("state.options"),
                "compaction_mode": mode,
                "compaction_service_address": address,
                "compaction_service_token": self.get("compaction.service.token"),
            },
        )


def _remote_compaction(address: str) -> tuple[str, str]:
    """(compaction mode, resolved address) for `compaction.mode: remote`."""
    import compaction_service.client  # noqa: F401 - registers the `remote` compaction mode
    from streamlet.cluster.endpoints import current_lookup, resolve_compaction_endpoints

    endpoints = resolve_compaction_endpoints(address, current_lookup())
    if not endpoints:
        log.warning(
            "compaction.service.address %r names no running compaction service: compacting locally",
            address,
        )
        return "local", ""
    return "remote", ",".join(endpoints)
