"""Fixtures for the whole suite, from the shared helper layer (tests/helpers/)."""

pytest_plugins = ["tests.helpers.daemon_memory", "tests.helpers.fixtures"]
