"""Peers that move, through two real daemons in the namespace lab (issue #10).

gw-a is a spoke behind a NAT in its own namespace (tests/helpers/moving.py);
gw-b is its hub and has no ``address`` for it. Probes at 1 ms run site A ->
site B -> site A throughout, so an echo proves both directions.

1. NAT rebinding: the NAT's outside port changes (new rule, conntrack
   flushed). gw-b follows the first authenticated ESP from the new port
   (peer.py rule 10): probes flow both ways again within 1 s of the move
   gw-b logs (which is when that packet arrived). Then a forged ESP packet
   (gw-b's SPI, bad ICV) from another address moves nothing.
2. Roaming: gw-a's outside address changes and the old one goes dark; both
   directions carry probes again within 2 s of the first authenticated packet
   from the new address; the move is logged once.

Figures on a ``MEASURED`` line (``pytest -s``) and in ``figures.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.hostile import ATTACKER, arm_attacker, spoof
from tests.helpers.lab_sites import Sites
from tests.helpers.moving import (
    ROAMED,
    behind_nat,
    figures,
    log_time,
    prepare_roaming,
    probing,
    rebind,
    resumption,
    roam,
)
from tests.helpers.sitelab import Lab
from tools.lab import GWA_UNDERLAY, GWB_UNDERLAY, SiteOptions

pytestmark = pytest.mark.slow
RATE = 1000.0  # probes per second: one per millisecond
MOVED = "peer address changed"


@pytest.fixture
def lab_stem() -> str:
    return "mv"


def spoke_and_hub(make_sites: Callable[[SiteOptions], Sites]) -> Sites:
    sites = make_sites(SiteOptions(log_format="json"))
    text = sites.conf_b.read_text()
    assert f'address = "{GWA_UNDERLAY}"\n' in text
    sites.conf_b.write_text(text.replace(f'address = "{GWA_UNDERLAY}"\n', ""))  # a dynamic spoke
    return sites


def hub_view(sites: Sites) -> dict[str, Any]:
    return sites.peer_status(sites.gwb)


def test_nat_rebinding_traffic_resumes_and_forged_esp_moves_nothing(
    lab: Lab, make_sites: Callable[[SiteOptions], Sites], tmp_path: Path
) -> None:
    sites = spoke_and_hub(make_sites)
    behind_nat(lab, 40000)
    sites.start()
    sites.wait_established()
    assert hub_view(sites)["address"] == f"{GWA_UNDERLAY}:40000"

    count = 5000
    with probing(lab, count, RATE, gap=0.01) as run:
        time.sleep(1.5)
        rebound_at = time.time()
        rebind(lab, 40001)
        report = run.result(timeout=60)
    (move,) = sites.log_events(sites.gwb, MOVED)
    assert (move["old"], move["new"], move["by"]) == (
        f"{GWA_UNDERLAY}:40000",
        f"{GWA_UNDERLAY}:40001",
        "ESP",
    )
    resumed, outage = resumption(report, log_time(move), rebound_at)
    view = hub_view(sites)
    assert view["address"] == f"{GWA_UNDERLAY}:40001"
    assert view["ike_sas"][0]["remote"] == f"{GWA_UNDERLAY}:40001"

    # a forged ESP packet from elsewhere: gw-b's SPI, a fresh sequence number, a bad ICV
    auth_failed = view["child_sas"][0]["drops"].get("auth_failed", 0)
    arm_attacker(lab)
    spi = bytes.fromhex(view["child_sas"][0]["spi_in"])
    forged = spi + (1 << 30).to_bytes(4, "big") + bytes(8) + b"\x55" * 64 + bytes(16)
    spoof(lab, [forged], src=ATTACKER, dst=GWB_UNDERLAY, sport=4500, dport=4500)
    time.sleep(0.5)
    after = hub_view(sites)
    forged_moves = len(sites.log_events(sites.gwb, MOVED)) - 1
    assert after["child_sas"][0]["drops"].get("auth_failed", 0) == auth_failed + 1
    assert after["address"] == f"{GWA_UNDERLAY}:40001"
    assert after["counters"]["address_changes"] == 1
    assert sites.ping(3).returncode == 0

    figures(
        tmp_path / "figures.json",
        rebinding_resumed_after_move_s=round(resumed, 3),
        rebinding_longest_outage_s=round(outage, 3),
        probes_lost_forward=report["forward"]["lost"],
        probes_lost_reverse=report["reverse"]["lost"],
        forged_moves=forged_moves,
    )
    assert forged_moves == 0
    assert resumed <= 1.0, report["gaps"]
    assert report["reverse"]["received"] > 0.9 * count  # both ways, for the whole run


def test_roaming_spoke_both_directions_within_2s_logged_once(
    lab: Lab, make_sites: Callable[[SiteOptions], Sites], tmp_path: Path
) -> None:
    sites = spoke_and_hub(make_sites)
    prepare_roaming(lab)
    sites.start()
    sites.wait_established()
    assert hub_view(sites)["address"] == f"{GWA_UNDERLAY}:4500"

    count = 5000
    with probing(lab, count, RATE, gap=0.01) as run:
        time.sleep(1.5)
        roamed_at = time.time()
        roam(lab)
        report = run.result(timeout=60)
    moves = sites.log_events(sites.gwb, MOVED)
    assert [(m["old"], m["new"]) for m in moves] == [(f"{GWA_UNDERLAY}:4500", f"{ROAMED}:4500")]
    resumed, outage = resumption(report, log_time(moves[0]), roamed_at)
    assert hub_view(sites)["address"] == f"{ROAMED}:4500"
    assert sites.gwa.status()["peers"][0]["counters"]["address_changes"] == 0
    figures(
        tmp_path / "figures.json",
        roaming_resumed_after_move_s=round(resumed, 3),
        roaming_longest_outage_s=round(outage, 3),
        probes_lost_forward=report["forward"]["lost"],
        probes_lost_reverse=report["reverse"]["lost"],
        moves_logged=len(moves),
    )
    assert resumed <= 2.0, report["gaps"]
    assert report["reverse"]["received"] > 0.9 * count
