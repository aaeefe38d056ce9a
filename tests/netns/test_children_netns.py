"""Two named Child SAs between two real tunneld daemons in the namespace lab (issue 10).

Both gateways have ``auto = "start"`` and two ``[[peer.child]]`` entries:
"low" joins 198.51.100.0/25 and 203.0.113.0/25 (the hosts' .10), "high"
198.51.100.128/25 and 203.0.113.128/25 (.200, added to the site hosts).
Whichever IKE SA survives the simultaneous start, each gateway ends with one
Child SA per child, a route per remote half into its TUN device, and 1 ms
probes through both children lose nothing; `tunneld rekey --child high`
rekeys that child alone, under probes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers.lab_sites import Sites, assert_probes_clean, poll
from tests.helpers.two_children import add_upper_hosts, probe_both
from tools.lab import TWO_CHILDREN, Lab, SiteOptions

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

PROBES = 3000
RATE = 1000.0  # one probe per millisecond through each child, each way


@pytest.fixture
def lab_stem() -> str:
    return "ch"


def by_child(sites: Sites) -> list[dict[str, list[dict[str, Any]]]]:
    """Per gateway (gw-a, gw-b), its Child SAs by child name, from `tunneld status --json`."""
    out = []
    for status in sites.status_cli():
        (peer,) = status["peers"]
        found: dict[str, list[dict[str, Any]]] = {}
        for child in peer["child_sas"]:
            found.setdefault(child["child"], []).append(child)
        out.append(found)
    return out


def settled(sites: Sites) -> bool:
    """One established IKE SA and one active Child SA per child on both gateways, and no
    inbound SA of a deleted duplicate IKE SA left (its delete delay, 5 s, has passed)."""
    for gw in (sites.gwa, sites.gwb):
        (peer,) = gw.status()["peers"]
        ike = [s for s in peer["ike_sas"] if s["state"] == "established"]
        names = sorted(c["child"] for c in peer["child_sas"] if c["outbound_active"])
        if len(ike) != 1 or names != ["high", "low"]:  # (a deleted duplicate may linger)
            return False
        if len(peer["child_sas"]) != 2 or peer["retiring_spis"]:
            return False  # (no inbound SA of a deleted duplicate still takes packets)
    return True


def child_spis(sites: Sites) -> list[set[str]]:
    return [
        {c["spi_in"] for c in gw.status()["peers"][0]["child_sas"]} for gw in (sites.gwa, sites.gwb)
    ]


def stable(sites: Sites) -> bool:
    if not settled(sites):
        return False
    before = child_spis(sites)
    time.sleep(4.0)
    return settled(sites) and child_spis(sites) == before


def test_two_children_both_start_carry_probes_and_rekey_alone(
    lab: Lab, make_sites: Callable[[SiteOptions], Sites]
) -> None:
    add_upper_hosts(lab)
    sites = make_sites(
        SiteOptions(children=TWO_CHILDREN, auto_a="start", auto_b="start", log_format="json")
    )
    sites.start()
    # both sides create what they miss (the IKE SA's responder after a 3 s grace) and a
    # child made by both at once loses one copy: settled, and still the same SAs 4 s on,
    # or a child may change under the probes (none lost, but its counters split)
    assert poll(lambda: stable(sites), timeout=40), json.dumps(
        [gw.status()["peers"] for gw in (sites.gwa, sites.gwb)], indent=1
    )
    assert sorted(r.split()[0] for r in sites.tun_routes("gwa")) == [
        "203.0.113.0/25",
        "203.0.113.128/25",
    ]
    assert sorted(r.split()[0] for r in sites.tun_routes("gwb")) == [
        "198.51.100.0/25",
        "198.51.100.128/25",
    ]
    a, b = by_child(sites)
    for name, local_a, local_b in (
        ("low", "198.51.100.0/25", "203.0.113.0/25"),
        ("high", "198.51.100.128/25", "203.0.113.128/25"),
    ):
        (ca,), (cb,) = a[name], b[name]
        assert (ca["local_ts"], ca["remote_ts"]) == ([local_a], [local_b])
        assert (cb["local_ts"], cb["remote_ts"]) == ([local_b], [local_a])
        assert (ca["spi_in"], ca["spi_out"]) == (cb["spi_out"], cb["spi_in"])

    reports = probe_both(lab, PROBES, RATE)
    for name, report in reports.items():
        assert_probes_clean(report, PROBES), name
    a, b = by_child(sites)
    for found in (a, b):
        for name in ("low", "high"):
            (child,) = found[name]
            assert child["in"]["packets"] >= PROBES and child["out"]["packets"] >= PROBES, name

    human = sites.gwa.cli("status", "-s", str(sites.gwa.socket))
    assert "[child low]" in human.stdout and "[child high]" in human.stdout, human
    before = {name: a[name][0]["spi_in"] for name in ("low", "high")}
    rekey = sites.gwa.cli("rekey", "gw-b", "--child", "high", "-s", str(sites.gwa.socket))
    assert rekey.returncode == 0 and "rekey child high of gw-b: started" in rekey.stdout, rekey
    reports = probe_both(lab, PROBES, RATE)  # the rekey runs under the first probes
    for report in reports.values():
        assert_probes_clean(report, PROBES)
    assert poll(lambda: settled(sites), timeout=10)
    a, b = by_child(sites)
    assert a["low"][0]["spi_in"] == before["low"] and a["low"][0]["generation"] == 0
    assert a["high"][0]["spi_in"] != before["high"] and a["high"][0]["generation"] == 1
    assert b["high"][0]["generation"] == 1
    unknown = sites.gwa.cli("rekey", "gw-b", "--child", "nope", "-s", str(sites.gwa.socket))
    assert unknown.returncode == 1 and "has no child 'nope'" in unknown.stderr
