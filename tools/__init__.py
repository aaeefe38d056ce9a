"""Repository tooling, not shipped: the namespace lab, the demo and the benchmark.

These modules drive ``netns-scripts/`` and run the daemon from a checkout
(``python -m tools.demo``, ``python -m tools.bench`` from the repository root);
the tests import the lab from here. The wheel holds only ``ike`` and ``tunneld``
(``[tool.setuptools.packages.find]`` in pyproject.toml), which
tests/unit/test_packaging.py checks.
"""
