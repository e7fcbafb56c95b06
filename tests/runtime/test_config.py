"""Configuration: precedence, validation, environment variables, docs, backend options."""

import dataclasses
import inspect
import logging
import re
from pathlib import Path

import pytest

import compaction_service.client
from statebackend.lsm.backend import option_names, parse_options
from streamlet.config import NON_KEY_ENV_VARS, OPTIONS, ConfigError, Configuration
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
        overrides={"compaction.mode": "remote", "compaction.service.address": "h:1,h:2"},
        environ={"STREAMLET_STATE_BACKEND": "lsm"},
    )
    backend = config.backend_config()
    assert backend.name == "lsm"
    assert backend.options == {
        "compaction_mode": "remote",
        "compaction_service_address": "h:1,h:2",
        "compaction_service_token": "",
    }


def documented_options(section: str) -> dict[str, str]:
    """`{option: its table row}` of the tables under the `## section` of the page."""
    text = DOCS.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w.-]+)` \|.*$", text, re.M)}


def test_every_key_is_documented_in_docs_configuration_md() -> None:
    documented = documented_options("Keys")
    assert set(documented) == {option.key for option in OPTIONS}
    for option in OPTIONS:
        assert f"`{option.env_var}`" in documented[option.key]


def test_state_options_reach_the_backend_options() -> None:
    config = Configuration.load(
        overrides={"state.options": '{"lsm.block_cache_bytes": 0}'},
        environ={"STREAMLET_COMPACTION_SERVICE_TOKEN": "secret"},
    )
    options = config.backend_config().options
    assert options["lsm.block_cache_bytes"] == 0
    assert options["compaction_service_token"] == "secret"


def test_every_lsm_option_is_documented_with_its_default() -> None:
    documented = {
        key: row
        for key, row in documented_options("State backend options").items()
        if key.startswith("lsm.")
    }
    assert set(documented) == {f"lsm.{name}" for name in option_names()}
    options = parse_options({})  # every option at its default
    defaults = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    defaults |= {f.name: getattr(options.table, f.name) for f in dataclasses.fields(options.table)}
    del defaults["table"]
    for name, default in defaults.items():
        if default is not None:
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert f"`{shown}`" in documented[f"lsm.{name}"], name


def test_every_compaction_client_option_is_documented() -> None:
    source = inspect.getsource(compaction_service.client)
    read = set(re.findall(r'"(compaction_service_\w+)"', source))
    assert read  # what the remote compactor reads from the backend options
    assert set(documented_options("State backend options")) >= read


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


def test_remote_compaction_without_a_running_service_compacts_locally() -> None:
    config = Configuration.load(
        overrides={
            "compaction.mode": "remote",
            "compaction.service.address": "dns:///nosuch.invalid:1",
        },
        environ={},
    )
    options = config.backend_config().options
    assert (options["compaction_mode"], options["compaction_service_address"]) == ("local", "")
