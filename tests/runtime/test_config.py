"""Configuration: precedence, validation, environment variables, docs, backend options."""

import dataclasses
import inspect
import logging
import re
from pathlib import Path

import pytest

import compaction_service.client
from statebackend.lsm.backend import option_names, parse_options
from streamlet.backend_keys import LSM_KEYS, ROUTES
from streamlet.config import NON_KEY_ENV_VARS, OPTIONS, ConfigError, Configuration
from streamlet.config_types import ConfigOption
from streamlet.launcher import parse_defines

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_file_then_environment_then_defines(tmp_path: Path) -> None:
    file = tmp_path / "streamlet.yaml"
    file.write_text(
        "state:\n  backend: rocksdb\ncheckpoint:\n  interval: 5s\n  retained: 7\n"
        "parallelism.default: 3\n"
    )
    config = Configuration.load(
        file,
        overrides={"checkpoint.retained": "9"},
        environ={"STREAMLET_CHECKPOINT_INTERVAL": "250ms", "STREAMLET_STATE_BACKEND": "memory"},
    )
    assert config.get("state.backend") == "memory"
    assert config.get("checkpoint.interval") == 250
    assert config.get("checkpoint.retained") == 9
    assert config.get("parallelism.default") == 3
    assert config.get("restart.attempts") == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"checkpoint.intervall": "1s"}, "did you mean checkpoint.interval"),
        ({"state.backend": "leveldb"}, "not one of memory, rocksdb, lsm"),
        ({"checkpoint.interval": "soon"}, "bad value for checkpoint.interval in -D"),
        ({"compaction.mode": "remotely"}, "not one of local, remote"),
        (
            {"parallelism.default": "0"},
            "bad value for parallelism.default in -D parallelism.default: must be at least 1",
        ),
        ({"restart.attempts": "-1"}, "must not be negative"),
        (
            {"parallelism": "2"},
            r"'parallelism' in -D parallelism \(did you mean parallelism.default or -p\?\)",
        ),
    ],
)
def test_bad_keys_and_values_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Configuration.load(overrides=overrides, environ={})


def test_defines_must_be_key_value() -> None:
    assert parse_defines(["a.b=1", "c= x=y"]) == {"a.b": "1", "c": " x=y"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_defines(["novalue"])


def test_compaction_keys_reach_the_backend_options() -> None:
    config = Configuration.load(
        overrides={
            "compaction.mode": "remote",
            "compaction.service.address": "dns:///compactors:50051",
            "compaction.client.deadline": "90s",
            "compaction.client.breaker.backoff": "1500ms",
            "compaction.client.subcompactions": "off",
        },
        environ={"STREAMLET_STATE_BACKEND": "lsm"},
    )
    backend = config.backend_config()
    assert backend.name == "lsm"
    assert backend.options == {
        "compaction_mode": "remote",
        "compaction_service_address": "dns:///compactors:50051",  # resolved by the client
        "compaction_service_token": "",
        "compaction_service_deadline_s": 90.0,
        "compaction_service_tls_ca_file": "",
        "compaction_service_tls_cert_file": "",
        "compaction_service_tls_key_file": "",
        "compaction_service_tls_server_name": "",
        "compaction_service_breaker_failures": 3,
        "compaction_service_breaker_backoff_s": 1.5,
        "compaction_service_breaker_max_backoff_s": 120.0,
        "compaction_service_resolve_interval_s": 2.0,
        "compaction_service_subcompactions": False,
    }


def documented_options(section: str) -> dict[str, str]:
    """`{option: its table row}` of the tables under the `## section` of the page."""
    text = DOCS.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w.-]+)` \|.*$", text, re.M)}


def _shown_default(option: ConfigOption) -> str | None:
    """How the docs show a key's default (None: a computed default, described in words)."""
    default = option.default
    if default is None:
        return None
    if default == "":
        return "(none)"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default} ms`" if option.type_name == "duration" else f"`{default}`"


def test_every_key_is_documented_with_its_type_and_default() -> None:
    documented = documented_options("Keys")
    assert set(documented) == {option.key for option in OPTIONS}
    for option in OPTIONS:
        cells = [cell.strip() for cell in documented[option.key].split(" | ")]
        assert cells[3] == f"`{option.env_var}`", option.key
        choices = " \\| ".join(option.choices)
        assert cells[1] == option.type_name + (f": {choices}" if choices else ""), option.key
        shown = _shown_default(option)
        assert shown is None or cells[2].startswith(shown), (option.key, cells[2])


def test_state_options_reach_the_backend_options() -> None:
    config = Configuration.load(
        overrides={"state.options": '{"lsm.block_cache_bytes": 0, "write_buffer_bytes": 7}'},
        environ={"STREAMLET_COMPACTION_SERVICE_TOKEN": "secret"},
    )
    options = config.backend_config().options
    assert options["lsm.block_cache_bytes"] == 0 and options["write_buffer_bytes"] == 7
    assert options["compaction_service_token"] == "secret"


def test_every_lsm_option_is_a_key_and_lsm_root_is_documented() -> None:
    assert {o.key for o in LSM_KEYS} == {f"lsm.{name}" for name in option_names()} - {"lsm.root"}
    options = parse_options({})  # every option at its default
    defaults = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    defaults |= {f.name: getattr(options.table, f.name) for f in dataclasses.fields(options.table)}
    del defaults["table"]
    assert {o.key: o.default for o in LSM_KEYS} == {f"lsm.{k}": v for k, v in defaults.items()}
    assert "`lsm.root`" in DOCS.read_text().split("\n## State backend options\n", 1)[1]


def test_the_client_reads_every_compaction_key_with_the_same_defaults() -> None:
    source = inspect.getsource(compaction_service.client)
    read = set(re.findall(r'"(compaction_\w+)"', source))
    routed = {route.name for key, route in ROUTES.items() if key.startswith("compaction.")}
    # compaction_mode picks the client (statebackend.lsm.compactor); the runtime adds the lookup
    assert read == routed - {"compaction_mode"} | {"compaction_job_lookup"}
    mapped = documented_options("State backend options")  # key -> its backend option
    for key, route in ROUTES.items():
        if key.startswith("compaction."):
            assert f"`{route.name}`" in mapped[key], key
    parameters = inspect.signature(compaction_service.client.RemoteCompactor).parameters
    backend = Configuration.load(environ={}).backend_config().options
    for name, (argument, _) in compaction_service.client.OPTIONS.items():
        if name != "compaction_service_token":
            assert parameters[argument].default == backend[name], name


def test_remote_compaction_without_an_address_refuses_to_start() -> None:
    for address in ("", " , "):
        with pytest.raises(ConfigError, match="compaction.service.address is not set"):
            Configuration.load(
                overrides={"compaction.mode": "remote", "compaction.service.address": address},
                environ={},
            )
    with pytest.raises(ConfigError, match="compaction.mode is remote, but compaction.service"):
        Configuration.load(overrides={"compaction.mode": "remote"}, environ={})
    with pytest.raises(ConfigError, match="compaction.service.address is not set"):
        Configuration({"compaction.mode": "remote"})  # what execute_job builds from a mapping


def test_a_mistyped_environment_variable_is_named_once_with_a_suggestion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {"STREAMLET_CHECKPOINT_INTERVALL": "1s", "STREAMLET_STATE_BACKEND": "lsm"}
    with caplog.at_level(logging.WARNING, logger="streamlet.config"):
        for _ in range(2):
            config = Configuration.load(environ=environ)
    assert [r.getMessage() for r in caplog.records] == [
        "environment variable STREAMLET_CHECKPOINT_INTERVALL names no configuration key; ignored "
        "(did you mean STREAMLET_CHECKPOINT_INTERVAL?)"
    ]
    assert config.get("state.backend") == "lsm"


def test_streamlet_variables_used_on_purpose_are_not_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {name: "x" for name in NON_KEY_ENV_VARS} | {"STREAMLET_CLUSTER_TOKEN": "t"}
    with caplog.at_level(logging.WARNING, logger="streamlet.config"):
        Configuration.load(environ=environ)
    assert caplog.records == []
    # The k8s example's scripts export them to the streamlet commands they run.
    scripts = (DOCS.parents[1] / "k8s" / "scripts").glob("*.sh")
    used = set(re.findall(r"\bSTREAMLET_[A-Z_]+", "".join(p.read_text() for p in scripts)))
    assert used - {option.env_var for option in OPTIONS} == NON_KEY_ENV_VARS


def test_the_address_is_not_resolved_by_the_configuration() -> None:
    config = Configuration.load(
        overrides={
            "compaction.mode": "remote",
            "compaction.service.address": "dns:///nosuch.invalid:1",
        },
        environ={},
    )
    options = config.backend_config().options
    assert (options["compaction_mode"], options["compaction_service_address"]) == (
        "remote",
        "dns:///nosuch.invalid:1",
    )
