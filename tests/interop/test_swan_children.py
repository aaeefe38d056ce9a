"""tunneld against strongSwan with two named Child SAs of different subnets (issue 10).

tunneld's ``[[peer.child]]`` "low" (198.51.100.0/25 <=> 203.0.113.0/25) and
"high" (the upper halves) against charon's connection with two ``children``
of the same names and selectors. Whoever initiates, the first Child SA comes
up in IKE_AUTH and the second with CREATE_CHILD_SA on the same IKE SA; the
responder matches it to its configured child by the traffic selectors; when
both start, one IKE SA with both children remains.
`tunneld status --json` and `swanctl --list-sas` agree child by child, 1 ms
probes cross both children with nothing lost, and a rekey of one child (by
charon) leaves the other alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from tests.helpers.lab_sites import assert_probes_clean
from tests.helpers.moving import hosts_file
from tests.helpers.pairing import Initiator, Pair, Setup, assert_children_agree, wait_until
from tests.helpers.sitelab import WAN_B, Lab
from tests.helpers.two_children import add_upper_hosts, probe_both
from tools.lab import SITE_A_HALVES, SITE_B_HALVES, TWO_CHILDREN
from tunneld.peer import REAUTH_GRACE

pytestmark = [pytest.mark.interop, pytest.mark.netns]

NAMES = ["low", "high"]
SWAN_NAME = "charon.example.org"  # gw-b's address, by name, in the "both" case
PROBES = 2000
RATE = 1000.0
# charon on gw-b: site B's halves are its local side
SWAN_CHILDREN = {
    "child": "low",
    "local_ts": SITE_B_HALVES[0],
    "remote_ts": SITE_A_HALVES[0],
    "extra_children": (("high", SITE_B_HALVES[1], SITE_A_HALVES[1]),),
}


@pytest.fixture
def lab_stem() -> str:
    return "chx"


@pytest.mark.parametrize("initiator", ["tunneld", "swan-start", "both"])
def test_two_children_against_strongswan(
    initiator: Initiator | str, lab: Lab, swan_pair: Callable[..., Pair]
) -> None:
    add_upper_hosts(lab)
    both = initiator == "both"
    swan = {**SWAN_CHILDREN, "start_action": "start"} if both else SWAN_CHILDREN
    who: Initiator = "tunneld" if both else initiator  # type: ignore[assignment]
    # both sides start, and tunneld knows charon by a DNS name (gw-a's /etc/hosts)
    name = SWAN_NAME if both else None
    with contextlib.ExitStack() as stack:
        if name is not None:
            stack.enter_context(hosts_file(lab, "gwa", {name: WAN_B}))
        # (with both, charon may hold two "low" for a while: start_pair's wait would not do)
        setup = Setup(who, children=TWO_CHILDREN, swan=swan, peer_name=name)
        pair = swan_pair(setup, wait=not both)
        if name is not None:
            wait_until(lambda: pair.peer()["resolved"] == WAN_B, 10, "the name resolved")
            assert pair.peer()["remote"].startswith(f"{name}:")
        _two_children_work(pair, lab, initiator)


def _two_children_work(pair: Pair, lab: Lab, initiator: str) -> None:
    # both: two IKE SAs; charon's came second without INITIAL_CONTACT, so tunneld takes it
    # for a reauthentication and deletes its own after REAUTH_GRACE (peer.py rule 5b)
    agreed = assert_children_agree(pair, NAMES, timeout=REAUTH_GRACE + 10)
    routes = pair.lab.exec("gwb", "ip", "route", "show", "table", "220").stdout
    assert all(net in routes for net in SITE_A_HALVES), routes
    if initiator == "tunneld":  # (with "both" the IKE SA that stays may be charon's)
        assert "CREATE_CHILD_SA request 2 [ SA No TSi TSr ]" in pair.swan.log_text()

    # the counters below are per SA: no inbound SA of a deleted duplicate may take probes
    wait_until(lambda: not pair.peer()["retiring_spis"], 10, "no retiring inbound SA")
    reports = probe_both(lab, PROBES, RATE)
    for report in reports.values():
        assert_probes_clean(report, PROBES)
    after = assert_children_agree(pair, NAMES)
    for name in NAMES:
        child, swan_child = after[name]
        assert child["spi_in"] == agreed[name][0]["spi_in"]
        assert child["out"]["packets"] >= PROBES and child["in"]["packets"] >= PROBES
        assert int(swan_child["packets-in"]) == child["out"]["packets"]

    # charon rekeys "high" alone; "low" keeps its SPIs, probes cross both meanwhile
    pair.swan.rekey_child("high")
    wait_until(
        lambda: any(
            c["child"] == "high" and c["generation"] == 1 for c in pair.peer()["child_sas"]
        ),
        10,
        "tunneld's rekeyed 'high'",
    )
    reports = probe_both(lab, PROBES, RATE)
    for report in reports.values():
        assert_probes_clean(report, PROBES)
    rekeyed = assert_children_agree(pair, NAMES)
    assert rekeyed["low"][0]["spi_in"] == agreed["low"][0]["spi_in"]
    assert rekeyed["low"][0]["generation"] == 0
    assert rekeyed["high"][0]["spi_in"] != agreed["high"][0]["spi_in"]
