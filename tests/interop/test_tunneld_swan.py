"""tunneld against strongSwan 5.9 (charon + kernel-libipsec): the main pairings.

tunneld runs on gw-a, charon on gw-b, in the lab of netns-scripts/lab.sh
(tests/helpers/pairing.py). The main pairing: ECDSA P-256 certificates from
`tunneld pki`, IKE aes256gcm16-prfsha256-x25519, ESP aes256gcm16 without ESN
(libipsec has none), each side initiating once with 10,000 probes. Variants
change one thing each (cipher, DH group negotiation, how charon initiates).
In every case:

1. the IKE SA and the Child SA come up on both sides;
2. ping and sequence-numbered UDP probes cross from site A to site B and
   back with nothing lost, duplicated or corrupted;
3. `swanctl --list-sas` and `tunneld status --json` agree: the same IKE
   SPIs, Child SA SPIs crosswise, algorithms, identities, selectors, roles,
   and packet counters (what one side sent is what the other received);
4. a DELETE from the initiating side takes the tunnel down on the other.

The rest of the matrix is in test_swan_auth.py (authentication x DH group x
direction), test_swan_esp.py (ESN), test_swan_rekey.py and
test_swan_delete_dpd.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers.pairing import (
    Pair,
    Setup,
    assert_agree,
    check_traffic,
    only,
)
from tests.helpers.sitelab import SITE_A_NET, SITE_B_HOST, SITE_B_NET, Lab

pytestmark = [pytest.mark.interop, pytest.mark.netns]


@dataclass(frozen=True)
class Case:
    setup: Setup
    probes: int = 1_000
    invalid_ke: bool = False  # charon must ask for another DH group first


CASES = {
    "tunneld-initiates": Case(Setup("tunneld"), probes=10_000),
    "swan-initiates": Case(Setup("swan-start"), probes=10_000),
    # RFC 7634 in IKE and ESP (the ESP cipher once never reached tunneld's data plane).
    "chacha20poly1305": Case(
        Setup(
            "swanctl",
            tunneld_ike=("chacha20poly1305-prfsha256-x25519",),
            tunneld_esp=("chacha20poly1305",),
            swan={"ike": "chacha20poly1305-prfsha256-x25519", "esp": "chacha20poly1305"},
            expect_ike="chacha20poly1305-prfsha256-x25519",
            expect_esp="chacha20poly1305-noesn",
        )
    ),
    # tunneld's default proposals: its KE is X25519, charon wants ECP-256 (INVALID_KE_PAYLOAD,
    # RFC 7296 §1.2), and picks AES-256-GCM without ESN from tunneld's ESN/no-ESN offers.
    "tunneld-defaults-ecp256": Case(
        Setup(
            "tunneld",
            tunneld_ike=("aes256gcm16-prfsha256-x25519-ecp256",),
            tunneld_esp=("aes256gcm16-esn-noesn", "aes128gcm16-esn-noesn"),
            swan={"ike": "aes256gcm16-prfsha256-ecp256"},
            expect_ike="aes256gcm16-prfsha256-ecp256",
        ),
        invalid_ke=True,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_tunneld_and_strongswan_carry_traffic_and_agree(
    case: Case,
    lab: Lab,
    swan_pair: Callable[..., Pair],
) -> None:
    # Without a tunnel site A cannot reach site B.
    assert lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0
    pair = swan_pair(case.setup)
    check_traffic(pair, case.probes)
    child, _ = assert_agree(pair, counters=True)
    assert child["out"]["packets"] >= case.probes + 3 and child["in"]["packets"] >= case.probes + 3
    if case.invalid_ke:  # the INVALID_KE_PAYLOAD round trip did happen
        assert "DH group CURVE_25519 unacceptable, requesting ECP_256" in pair.swan.log_text()
    if case.setup.tunneld_initiates:
        tunneld_stops_and_swan_sees_delete(pair)
    else:
        swan_terminates_and_tunneld_sees_delete(pair)


def tunneld_stops_and_swan_sees_delete(pair: Pair) -> None:
    """SIGTERM: tunneld sends DELETE for the IKE SA; charon removes it and its route."""
    assert pair.tunneld.stop() == 0
    pair.swan.wait_for(lambda: not pair.swan.list_sas_raw(), timeout=5, what="IKE SA deleted")
    assert "received DELETE for IKE_SA" in pair.swan.log_text()
    assert SITE_A_NET not in pair.lab.exec("gwb", "ip", "route", "show", "table", "220").stdout


def swan_terminates_and_tunneld_sees_delete(pair: Pair) -> None:
    """`swanctl --terminate`: charon sends DELETE; tunneld drops its SAs and route."""
    gw = pair.tunneld
    pair.swan.terminate()
    deadline = time.monotonic() + 5
    while pair.peer()["state"] != "down" and time.monotonic() < deadline:
        time.sleep(0.05)
    peer = pair.peer()
    assert (peer["state"], peer["child_sas"], peer["last_error"]) == ("down", [], None)
    # A closed IKE SA may linger to answer a retransmitted DELETE (RFC 7296 §2.1).
    assert {ike["state"] for ike in peer["ike_sas"]} <= {"closed"}
    assert "deleted by peer" in pair.tunneld_log()
    assert SITE_B_NET not in pair.lab.exec("gwa", "ip", "route", "show").stdout
    assert pair.lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0
    assert gw.stop() == 0


def test_charon_restart_replaces_the_stale_ike_sa(
    swan_pair: Callable[..., Pair],
) -> None:
    """charon dies (no DELETE), restarts and initiates with INITIAL_CONTACT: tunneld must
    keep the new IKE SA, not the stale one (tests/daemon/test_peer_restart.py)."""
    pair = swan_pair(Setup("swanctl"))
    gw, swan = pair.tunneld, pair.swan
    (stale,) = _established(pair)
    assert swan.started_pid is not None and swan.config is not None
    os.kill(swan.started_pid, signal.SIGKILL)
    swan.wait_for(lambda: not swan.running(), timeout=5, what="charon gone")

    swan.start(swan.config)
    swan.initiate()
    fresh_spi = only(swan.list_sas_raw())["initiator-spi"]
    swan.wait_for(
        lambda: [ike["spi_i"] for ike in _established(pair)] == [fresh_spi],
        timeout=5,
        what="tunneld on the new IKE SA only",
    )
    assert fresh_spi != stale["spi_i"]
    assert "N(INIT_CONTACT)" in swan.log_text()
    # RFC 7296 §2.4: the old IKE SA is forgotten at once, not kept "deleting" while a
    # DELETE nobody can answer is retransmitted.
    assert stale["spi_i"] not in {ike["spi_i"] for ike in pair.peer()["ike_sas"]}
    assert "INITIAL_CONTACT" in gw.log.read_text()
    check_traffic(pair)
    assert_agree(pair)


def _established(pair: Pair) -> list[dict[str, Any]]:
    return [ike for ike in pair.peer()["ike_sas"] if ike["state"] == "established"]
