"""Every exception class of the project survives a pickle round trip.

An exception that does not unpickle breaks whatever carries it between processes: a
ProcessPoolExecutor (the LSM's local compactor) declares itself broken and fails every other task.
The classes are discovered by importing every module of the project's packages, so a new class is
covered without touching this test; one whose constructor takes an argument of a type this test
does not know fails here, until `ARGUMENTS` knows how to make one.
"""

import importlib
import inspect
import pickle
import pkgutil
import typing
from types import ModuleType
from typing import Any

import pytest

PACKAGES = ("statebackend", "streamlet", "compaction_service")
# A representative value per constructor parameter type.
ARGUMENTS: dict[Any, Any] = {
    str: "what went wrong",
    int: 7,
    float: 1.5,
    bool: True,
    bytes: b"\x00key",
    BaseException: ValueError("the cause"),
    Exception: ValueError("the cause"),
}


def _modules() -> list[ModuleType]:
    modules = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            modules.append(importlib.import_module(info.name))
    return modules


def _exception_classes() -> list[type[BaseException]]:
    found = {
        cls
        for module in _modules()
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__.split(".")[0] in PACKAGES
    }
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def _argument(cls: type, parameter: inspect.Parameter, hints: dict[str, Any]) -> Any:
    hint = hints.get(parameter.name, str)
    options = typing.get_args(hint) or (hint,)  # `X | None`: make an X
    for option in options:
        if option in ARGUMENTS:
            return ARGUMENTS[option]
    raise AssertionError(
        f"{cls.__qualname__}: no representative value for parameter {parameter.name}: {hint}; "
        "add one to ARGUMENTS"
    )


def _instance(cls: type[BaseException]) -> BaseException:
    init = cls.__init__
    if init is BaseException.__init__ or init is Exception.__init__ or not inspect.isfunction(init):
        return cls("what went wrong")
    hints = typing.get_type_hints(init)
    args = [
        _argument(cls, p, hints)
        for p in list(inspect.signature(init).parameters.values())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    kwargs = {
        p.name: _argument(cls, p, hints)
        for p in inspect.signature(init).parameters.values()
        if p.default is inspect.Parameter.empty and p.kind is p.KEYWORD_ONLY
    }
    return cls(*args, **kwargs)


def _comparable(value: Any) -> Any:
    if isinstance(value, BaseException):
        return (type(value), str(value))
    return value


def test_the_discovery_finds_the_project_exceptions() -> None:
    names = {cls.__qualname__ for cls in _exception_classes()}
    assert {"StateError", "CorruptTableError", "OperatorError", "WorkerLost"} <= names


@pytest.mark.parametrize(
    "cls", _exception_classes(), ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}"
)
def test_exception_survives_a_pickle_round_trip(cls: type[BaseException]) -> None:
    error = _instance(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert {k: _comparable(v) for k, v in vars(copy).items()} == {
        k: _comparable(v) for k, v in vars(error).items()
    }
