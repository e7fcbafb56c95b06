"""The keys that reach the state backend: the compaction client's and the lsm options, typed and
parsed once; `state.options` alongside them; and the `remote` mode, which the runtime registers
where it assembles a program, never `streamlet.config`."""

import subprocess
import sys
from typing import Any

import pytest

from statebackend import BackendConfig
from streamlet.backend_keys import CLIENT_KEYS, LSM_KEYS
from streamlet.config import OPTIONS_BY_KEY, ConfigError, Configuration
from tests.support.processes import REPO_ROOT

# A good raw value (as -D gives it) and its typed value, and a bad value, per type.
GOOD = {
    "int": ("5", 5),
    "float": ("0.25", 0.25),
    "bool": ("no", False),
    "duration": ("2s", 2000),
    "str": ("x", "x"),
    "path": ("/etc/x.pem", "/etc/x.pem"),
}
BAD = {"int": "many", "float": "soon", "bool": "maybe", "duration": "later"}


def load(**overrides: Any) -> Configuration:
    return Configuration.load(overrides=overrides, environ={})


@pytest.mark.parametrize("option", [*CLIENT_KEYS, *LSM_KEYS], ids=lambda o: o.key)
def test_every_backend_key_is_parsed_typed_and_its_bad_values_named(option) -> None:
    raw, typed = GOOD[option.type_name]
    if option.choices:
        raw = typed = option.choices[-1]
    related = {
        "compaction.client.tls.cert-file": {"compaction.client.tls.key-file": "k"},
        "compaction.client.tls.key-file": {"compaction.client.tls.cert-file": "c"},
        "compaction.client.breaker.backoff": {"compaction.client.breaker.max-backoff": "1h"},
        "compaction.client.breaker.max-backoff": {"compaction.client.breaker.backoff": "1s"},
    }.get(option.key, {})
    tls = option.key.startswith("compaction.client.tls.")
    if tls and option.key != "compaction.client.tls.ca-file":
        related["compaction.client.tls.ca-file"] = "/ca.pem"
    if option.key.startswith("lsm.l0_") or option.key == "lsm.num_levels":
        raw, typed = ("12", 12)  # within what the other L0 triggers allow
    config = load(**{option.key: raw}, **related)
    assert config.get(option.key) == typed
    env = Configuration.load(environ={option.env_var: raw, **_env(related)})
    assert env.get(option.key) == typed
    if option.type_name in BAD:
        with pytest.raises(ConfigError, match=f"bad value for {option.key} in -D {option.key}"):
            load(**{option.key: BAD[option.type_name]})


def _env(values: dict[str, str]) -> dict[str, str]:
    return {OPTIONS_BY_KEY[key].env_var: value for key, value in values.items()}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"compaction.client.deadline": "0"}, "compaction.client.deadline .*longer than 0 ms"),
        ({"compaction.client.breaker.failures": "0"}, "must be at least 1"),
        ({"compaction.client.tls.cert-file": "c.pem"}, "go together"),
        ({"compaction.client.tls.server-name": "svc"}, "ca-file is not"),
        (
            {"compaction.client.breaker.backoff": "5min"},
            "max-backoff must be at least compaction.client.breaker.backoff",
        ),
        ({"lsm.compression": "lz4"}, "'lz4' is not one of none, zstd"),
        ({"lsm.memtable_bytes": "2.5"}, "not an integer"),
        (
            {"lsm.l0_compaction_trigger": "9", "lsm.l0_slowdown_trigger": "8"},
            r"lsm.l0_compaction_trigger \(9\) must be <= lsm.l0_slowdown_trigger \(8\)",
        ),
        ({"lsm.memtable_byte": "1"}, "did you mean lsm.memtable_bytes"),
    ],
)
def test_bad_client_and_lsm_settings_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(**overrides)


def test_lsm_keys_and_state_options_together() -> None:
    config = load(
        **{
            "state.backend": "lsm",
            "lsm.memtable_bytes": "65536",
            "state.options": '{"l0_compaction_trigger": "2", "lsm.gc_grace_s": 0, '
            '"compaction_service_deadline_s": 1.5, "lsm.root": "file:///db", "other": 1}',
        }
    )
    assert config.get("lsm.l0_compaction_trigger") == 2  # typed, parsed once, here
    assert config.get("compaction.client.deadline") == 1500
    options = config.backend_config().options
    assert {k: v for k, v in options.items() if k.startswith("lsm.")} == {
        "lsm.memtable_bytes": 65536,
        "lsm.l0_compaction_trigger": 2,
        "lsm.gc_grace_s": 0.0,
        "lsm.root": "file:///db",  # no key: handed over as it is
    }
    assert "l0_compaction_trigger" not in options and options["other"] == 1
    assert options["compaction_service_deadline_s"] == 1.5


def test_rocksdb_keeps_its_plain_options() -> None:
    options = (
        load(**{"state.backend": "rocksdb", "state.options": '{"block_cache_bytes": 1024}'})
        .backend_config()
        .options
    )
    assert options["block_cache_bytes"] == 1024 and "lsm.block_cache_bytes" not in options


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"lsm.memtable_bytes": "1", "state.options": '{"memtable_bytes": 2}'},
            "lsm.memtable_bytes is given twice: as lsm.memtable_bytes in -D lsm.memtable_bytes "
            "and as 'memtable_bytes' in state.options in -D state.options",
        ),
        (
            {
                "compaction.client.deadline": "1s",
                "state.options": '{"compaction_service_deadline_s": 2}',
            },
            "compaction.client.deadline is given twice: .* as 'compaction_service_deadline_s'",
        ),
        (
            {"state.options": '{"lsm.memtable_bytes": 1, "memtable_bytes": 2}'},
            "lsm.memtable_bytes is given twice in state.options .*'lsm.memtable_bytes' and as "
            "'memtable_bytes'",
        ),
        (
            {"state.options": '{"lsm.memtable_bytes": "big"}'},
            "bad value for lsm.memtable_bytes \\(as 'lsm.memtable_bytes' in state.options",
        ),
    ],
)
def test_a_key_given_both_ways_is_an_error_naming_both(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(**{"state.backend": "lsm", **overrides})


def test_remote_mode_without_an_address_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="compaction.service.address is not set"):
        load(**{"compaction.mode": "remote", "compaction.client.deadline": "1s"})


def _in_a_fresh_process(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_configuration_registers_no_compaction_mode_the_program_assembly_does() -> None:
    code = """
from statebackend.lsm.compactor import create_compactor
from streamlet.compaction import backend_config
from streamlet.config import Configuration

config = Configuration({"compaction.mode": "remote", "compaction.service.address": "job:svc",
                        "cluster.jobmanager": "http://127.0.0.1:9"})
options = config.backend_config().options
try:
    create_compactor("remote", options, False)
except ValueError as e:
    print("before:", e)
options = backend_config(config).options
compactor = create_compactor("remote", options, False)
print("after:", type(compactor).__name__, compactor.resolver.address)
compactor.close()
"""
    before, after = _in_a_fresh_process(code).splitlines()
    assert before == "before: unknown compaction mode 'remote'; known modes: local"
    assert after == "after: RemoteCompactor job:svc"


def test_a_job_lookup_reaches_the_backend_only_in_remote_mode() -> None:
    local = Configuration({})
    assert isinstance(local.backend_config(), BackendConfig)
    from streamlet.compaction import backend_config

    assert "compaction_job_lookup" not in backend_config(local).options
    remote = Configuration({"compaction.mode": "remote", "compaction.service.address": "h:1"})
    lookup = backend_config(remote).options["compaction_job_lookup"]
    assert lookup == backend_config(remote).options["compaction_job_lookup"]  # one per process
