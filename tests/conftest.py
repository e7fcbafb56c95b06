"""Fixtures shared by the whole suite: real services from `tests.support`."""

pytest_plugins = ["tests.support.fixtures"]
