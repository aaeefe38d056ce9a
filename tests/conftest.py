"""Fixtures for the whole suite, from the shared helper layer (tests/helpers/), and
the two opt-in profiles.

Profiles: tests marked ``fuzz`` (10^6-input decoder fuzzing, tests/fuzz) or
``soak`` (the long versions of the namespace and property tests: 60 s floods,
20 simultaneous starts, 5,000-example sweeps) are deselected unless the ``-m``
expression names the marker, so the default run (``bash tests/run.sh``, CI)
stays under 12 minutes: ``bash tests/run.sh -m soak`` or ``pytest -m fuzz
tests/fuzz`` runs a profile. Each soak test has a shorter twin in the default
run (the same code with smaller numbers), so no behaviour goes untested there.
"""

from __future__ import annotations

import re

import pytest

pytest_plugins = ["tests.helpers.daemon_memory", "tests.helpers.fixtures"]

PROFILES = ("fuzz", "soak")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expression = config.option.markexpr or ""
    for profile in PROFILES:
        if re.search(rf"\b{profile}\b", expression):
            continue  # the expression decides
        deselected = [item for item in items if item.get_closest_marker(profile) is not None]
        if deselected:
            items[:] = [item for item in items if item.get_closest_marker(profile) is None]
            config.hook.pytest_deselected(items=deselected)
