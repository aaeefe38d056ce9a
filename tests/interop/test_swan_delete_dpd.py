"""tunneld against strongSwan: DELETE from either side, Child SA deletes, DPD both ways.

- A DELETE for the IKE SA (RFC 7296 §1.4.1) from either side takes both down:
  `swanctl --terminate --ike` and `tunneld down` (test_tunneld_swan.py has
  the other two: tunneld's SIGTERM, and charon's terminate of an IKE SA it
  initiated). Routes go on both gateways and site A no longer reaches site B.
  tunneld with ``auto = "start"`` brings the tunnel back after its retry
  delay when the peer deleted it, not when its operator did.
- A DELETE for the Child SA alone (`swanctl --terminate --child`) leaves the
  IKE SA; `swanctl --initiate` then creates a new Child SA on it
  (CREATE_CHILD_SA without REKEY_SA), which carries traffic again.
- Dead peer detection (§2.4): charon's empty INFORMATIONAL requests
  (``dpd_delay = 1s``) are answered and charon keeps the IKE SA; tunneld's
  own (``dpd_delay = "1s"``) are answered by charon.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.helpers.pairing import (
    Initiator,
    Pair,
    Setup,
    assert_agree,
    check_traffic,
    only,
    wait_until,
)
from tests.helpers.sitelab import SITE_A_NET, SITE_B_HOST, SITE_B_NET, Lab

pytestmark = [pytest.mark.interop, pytest.mark.netns]

RETRY_INITIAL = 2.0  # tunneld.peer: first re-initiation after the IKE SA went


def _routes_gone(pair: Pair) -> None:
    assert SITE_B_NET not in pair.lab.exec("gwa", "ip", "route", "show").stdout
    assert SITE_A_NET not in pair.lab.exec("gwb", "ip", "route", "show", "table", "220").stdout
    assert pair.lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0


def _both_down(pair: Pair) -> None:
    wait_until(lambda: pair.peer()["state"] == "down", 5, "tunneld's peer down")
    pair.swan.wait_for(lambda: not pair.swan.list_sas_raw(), timeout=5, what="no IKE SA")
    peer = pair.peer()
    assert (peer["child_sas"], peer["last_error"]) == ([], None)  # a clean DELETE is no error
    _routes_gone(pair)


@pytest.mark.parametrize(
    ("initiator", "deleter"),
    [("tunneld", "swanctl"), ("swanctl", "tunneld"), ("tunneld", "tunneld")],
    ids=["tunneld-initiated-swan-deletes", "swan-initiated-tunneld-deletes", "tunneld-both"],
)
def test_ike_sa_delete_from_either_side_takes_both_down(
    initiator: Initiator,
    deleter: str,
    lab: Lab,
    swan_pair: Callable[..., Pair],
) -> None:
    pair = swan_pair(Setup(initiator))
    assert lab.ping("a", SITE_B_HOST, count=1) == 1
    if deleter == "swanctl":
        pair.swan.terminate()  # swanctl --terminate --ike gw
        down_at = time.monotonic()
        _both_down(pair)
        assert "deleted by peer" in pair.tunneld_log()
        # auto = "start": tunneld wants the tunnel, so it initiates again after its retry delay.
        pair.tunneld.wait_for_child(timeout=RETRY_INITIAL + 5)
        assert time.monotonic() - down_at >= RETRY_INITIAL - 0.5
        pair.swan.wait_for(lambda: len(pair.swan.child_sas()) == 1, timeout=5, what="Child SA")
        check_traffic(pair, probes=200)
        assert_agree(pair, counters=True)
        return
    pair.tunneld_cli("down")
    _both_down(pair)
    assert "received DELETE for IKE_SA" in pair.swan.log_text()
    time.sleep(RETRY_INITIAL + 0.5)  # the operator's `down` holds: nobody initiates
    assert pair.peer()["state"] == "down" and pair.swan.list_sas_raw() == []


def test_child_sa_delete_keeps_the_ike_sa_and_a_new_child_sa_follows(
    swan_pair: Callable[..., Pair],
) -> None:
    pair = swan_pair(Setup("swanctl"))
    ike_before = only(pair.swan.list_sas_raw())["initiator-spi"]
    old, _ = assert_agree(pair)
    pair.swan.terminate(child="net")  # INFORMATIONAL { D(ESP, SPI) } for the Child SA only
    wait_until(lambda: pair.peer()["child_sas"] == [], 5, "tunneld's Child SA deleted")
    peer = pair.peer()
    assert peer["state"] == "established" and peer["last_error"] is None
    assert only(pair.swan.list_sas_raw())["initiator-spi"] == ike_before
    _routes_gone(pair)

    pair.swan.initiate()  # CREATE_CHILD_SA { SA, Ni, TSi, TSr } on the same IKE SA
    pair.tunneld.wait_for_child(timeout=5)
    check_traffic(pair, probes=500)
    new, _ = assert_agree(pair, counters=True)
    assert only(pair.swan.list_sas_raw())["initiator-spi"] == ike_before
    assert new["generation"] == 0 and not {new["spi_in"], new["spi_out"]} & {
        old["spi_in"],
        old["spi_out"],
    }
    assert "generating CREATE_CHILD_SA request" in pair.swan.log_text()


DPD_WAIT = 2.6  # seconds of silence: two checks at a 1 s dpd_delay


def _informational_pairs(log: str, direction: str) -> tuple[int, int]:
    """Empty INFORMATIONAL exchanges in charon's log: (requests, responses) with
    ``direction`` "sent" (charon asked) or "received" (charon was asked)."""
    ours, theirs = ("generating", "parsed") if direction == "sent" else ("parsed", "generating")
    requests = re.findall(rf"{ours} INFORMATIONAL request (\d+) \[ \]", log)
    answers = re.findall(rf"{theirs} INFORMATIONAL response (\d+) \[ \]", log)
    return len(requests), len(set(requests) & set(answers))


def test_strongswan_dpd_is_answered_and_charon_keeps_the_sa(
    swan_pair: Callable[..., Pair],
) -> None:
    setup = Setup("tunneld", tunneld_extra="dpd_delay = 0\n", swan={"dpd_delay": "1s"})
    pair = swan_pair(setup)
    spis = only(pair.swan.list_sas_raw())["initiator-spi"]
    time.sleep(DPD_WAIT)
    log = pair.swan.log_text()
    sent, answered = _informational_pairs(log, "sent")
    assert log.count("sending DPD request") == sent >= 2 and answered == sent
    assert only(pair.swan.list_sas_raw())["initiator-spi"] == spis
    assert pair.peer()["state"] == "established"
    check_traffic(pair, probes=200)
    assert_agree(pair, counters=True)


def test_tunneld_dpd_is_answered_by_strongswan(
    swan_pair: Callable[..., Pair],
) -> None:
    setup = Setup("swanctl", tunneld_extra='dpd_delay = "1s"\n', swan={"dpd_delay": "0s"})
    pair = swan_pair(setup)
    time.sleep(DPD_WAIT)
    received, answered = _informational_pairs(pair.swan.log_text(), "received")
    assert received >= 2 and answered == received
    peer = pair.peer()
    assert peer["liveness"]["state"] == "alive" and peer["counters"]["dead_peer_detections"] == 0
    assert peer["liveness"]["last_heard"] < 1.0 + 1.0  # the last answer came within a check
    check_traffic(pair, probes=200)
    assert_agree(pair, counters=True)
