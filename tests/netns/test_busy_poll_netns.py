"""Two real daemons with ``[gateway] data_thread = true`` and ``busy_poll_us``
(tunneld/datapath.py, "Busy polling"): pings cross, and the crossings that follow
another closely (gateway B's reply after the request it wrote to its TUN, gateway A's
answer after the request it sent) are found by the polling data thread, as
``tunneld status --json`` counts (``dataplane.pumps.busy_polls``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.lab_sites import Sites
from tools.lab import SiteOptions

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

PINGS = 5
WINDOW_US = 20_000  # well past a ping's round trip here, even on a loaded machine


@pytest.fixture
def lab_stem() -> str:
    return "hlbp"


def _gateway_lines(conf: Path, lines: str) -> None:
    text = conf.read_text()
    assert "[gateway]\n" in text
    conf.write_text(text.replace("[gateway]\n", "[gateway]\n" + lines, 1))


def test_pings_cross_a_polling_data_thread(make_sites: Callable[[SiteOptions], Sites]) -> None:
    sites = make_sites(SiteOptions())
    for conf in (sites.conf_a, sites.conf_b):
        _gateway_lines(conf, f"data_thread = true\nbusy_poll_us = {WINDOW_US}\n")
    sites.start()
    sites.wait_established()
    before = [s["dataplane"]["pumps"]["busy_polls"] for s in sites.status_cli()]
    ping = sites.ping(PINGS)  # 0.2 s apart: each ping wakes each gateway once
    assert f"{PINGS} received" in ping.stdout, ping.stdout
    after = [s["dataplane"]["pumps"] for s in sites.status_cli()]
    for pumps, start in zip(after, before, strict=True):
        assert pumps["busy_polls"] - start >= PINGS, pumps
        assert pumps["inbound"]["drops"] == {}  # (outbound: the TUN's own IPv6 chatter)
