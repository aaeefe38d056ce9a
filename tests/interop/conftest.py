"""The interop tests run on the shared fixtures (tests/helpers/fixtures.py: ``lab``,
``strongswan``, ``tunneld_gateway``, ``swan_pair``) in namespaces named
hmxXXXXX-{a,gwa,wan,gwb,b}."""

from __future__ import annotations

import pytest


@pytest.fixture
def lab_stem() -> str:
    return "hmx"
