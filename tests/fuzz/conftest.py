"""The fuzz profile runs only when asked for by marker: ``pytest -m fuzz tests/fuzz``.

Its tests carry ``@pytest.mark.fuzz``. They are deselected unless the ``-m``
expression names ``fuzz``, so the default run (``python3 -m pytest``) and
runs with another expression (``bash tests/run.sh -m "not interop"``, which
replaces any ``-m`` given in addopts) leave them out.
"""

from __future__ import annotations

import re

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if re.search(r"\bfuzz\b", config.option.markexpr or ""):
        return  # the expression decides
    deselected = [item for item in items if item.get_closest_marker("fuzz") is not None]
    if deselected:
        items[:] = [item for item in items if item.get_closest_marker("fuzz") is None]
        config.hook.pytest_deselected(items=deselected)
