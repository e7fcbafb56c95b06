"""The runnable examples in the runtime's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import streamlet


def modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(streamlet.__path__, "streamlet."):
        if info.name in ("streamlet.cli", "streamlet.demo"):
            continue
        module = importlib.import_module(info.name)
        if any(test.examples for test in doctest.DocTestFinder().find(module)):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that use the default directories write here
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
