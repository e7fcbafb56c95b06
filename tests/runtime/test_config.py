"""Configuration: precedence, validation, environment variables, docs, backend options."""

import re
from pathlib import Path

import pytest

from streamlet.config import OPTIONS, ConfigError, Configuration
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


def test_every_key_is_documented_in_docs_configuration_md() -> None:
    documented = set(re.findall(r"^\| `([a-z.-]+)` \|", DOCS.read_text(), re.MULTILINE))
    assert documented == {option.key for option in OPTIONS}
    for option in OPTIONS:
        assert option.env_var in DOCS.read_text()


def test_state_options_reach_the_backend_options() -> None:
    config = Configuration.load(
        overrides={"state.options": '{"lsm.block_cache_bytes": 0}'},
        environ={"STREAMLET_COMPACTION_SERVICE_TOKEN": "secret"},
    )
    options = config.backend_config().options
    assert options["lsm.block_cache_bytes"] == 0
    assert options["compaction_service_token"] == "secret"


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
