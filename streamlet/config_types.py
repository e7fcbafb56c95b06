"""What a configuration key is (`ConfigOption`: key, type, default, doc, parser) and the parsers
of its value types; `streamlet.config` holds the keys and loads their values.

Types: `duration` takes milliseconds or a number with a unit (`500ms`, `10s`, `2min`, `1h`) and
gives milliseconds; `bool` takes true/false, yes/no, 1/0, on/off; `mapping` a mapping, or JSON;
`int` and `float` refuse booleans.
"""

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "STREAMLET_"


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


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    parsed = json.loads(str(value))
    if not isinstance(parsed, dict):
        raise ValueError(f"not a mapping: {value!r}")
    return parsed


def parse_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"not an integer: {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"not an integer: {value!r}") from None


def parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None


def parse_count(value: Any) -> int:
    """A non-negative integer."""
    number = parse_int(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def parse_positive(value: Any) -> int:
    number = parse_count(value)
    if number == 0:
        raise ValueError("must be at least 1")
    return number


def parse_duration(value: Any) -> int:
    ms = parse_duration_ms(value)
    if ms < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return ms


def parse_positive_duration(value: Any) -> int:
    ms = parse_duration(value)
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
