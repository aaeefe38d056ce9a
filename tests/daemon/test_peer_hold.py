"""``tunneld down PEER`` holds (issue #8, peer rule 8).

Measured before: after ``down`` on gw-a the route stayed pointing at the
Child SA of the IKE SA being deleted (a black hole once gw-b had removed its
half), and gw-b, ``auto = "start"``, initiated again 2 s later: gw-a
accepted, and the tunnel was back up although the operator had taken it down.
Now ``down`` takes the Child SAs out of the data plane at once, and gw-a
refuses gw-b's new IKE SAs (dropped, counted, logged once) until ``up``, or
until the time given with ``down --for``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers.daemon_memory import Pair, Site, children, wait_for_children
from tools.lab import SiteOptions

BOTH_START = SiteOptions(auto_a="start", auto_b="start")
REFUSAL = "refusing the peer's new IKE SA"


def peer(site: Site) -> dict[str, Any]:
    (status,) = site.daemon.status()["peers"]
    result: dict[str, Any] = status
    return result


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(REFUSAL)]


async def take_down(pair: Pair, **extra: object) -> float:
    """``down`` on gw-a: its routes and outbound SA go at once, before any answer.
    Returns when it was taken down."""
    await wait_for_children(pair.a, pair.b)
    at: float = trio.current_time()
    resp = await pair.a.daemon._control({"cmd": "down", "peer": "gw-b", **extra})
    assert resp == {"ok": True}
    assert pair.a.devices.route_table.installed() == set()
    assert all(t.current is None for t in pair.a.daemon.sadb.tunnels)
    with trio.fail_after(10):
        while children(pair.a) or children(pair.b):
            await trio.sleep(0.05)
    return at


@pytest.mark.parametrize("pair", [BOTH_START], indirect=True)
async def test_down_refuses_the_peers_new_ike_sas_until_up(
    pair: Pair, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    await take_down(pair)
    await trio.sleep(60)  # gw-b (auto = start) tries again and again meanwhile
    status = peer(pair.a)
    assert status["state"] == "down" and status["ike_sas"] == [] and children(pair.a) == []
    assert status["held_down"] == {"remaining": None}
    assert status["counters"]["refused_initiations"] >= 3  # gw-b's retries
    (record,) = refusals(caplog)  # logged once
    assert record.levelno == logging.INFO and record.__dict__["peer"] == "gw-b"
    assert "tunneld up gw-b" in record.getMessage()
    assert peer(pair.b)["state"] in ("down", "connecting")

    assert (await pair.a.daemon._control({"cmd": "up", "peer": "gw-b"}))["ok"]
    await wait_for_children(pair.a, pair.b, timeout=10)
    assert peer(pair.a)["held_down"] is None


@pytest.mark.parametrize("pair", [BOTH_START], indirect=True)
async def test_down_for_a_time_then_auto_applies_again(
    pair: Pair, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    down_at = await take_down(pair, **{"for": 30})
    await trio.sleep(25)
    assert children(pair.a) == [] and children(pair.b) == []
    assert 0 < peer(pair.a)["held_down"]["remaining"] <= 5
    assert len(refusals(caplog)) == 1
    with trio.fail_after(15):  # gw-a initiates once the hold is over (auto = start)
        while not (children(pair.a) and children(pair.b)):
            await trio.sleep(0.05)
    assert trio.current_time() - down_at >= 30
    assert peer(pair.a)["held_down"] is None


@pytest.mark.parametrize("pair", [SiteOptions(auto_a="listen", auto_b="start")], indirect=True)
async def test_down_for_a_time_on_a_listening_gateway_accepts_the_peer_afterwards(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await take_down(pair, **{"for": 10})
    await trio.sleep(9)
    assert children(pair.a) == [] and peer(pair.a)["counters"]["refused_initiations"] >= 1
    await wait_for_children(pair.a, pair.b, timeout=15)  # gw-b's next try is accepted


@pytest.mark.parametrize("hold", [0, -1, "10", True, float("inf")])
async def test_down_for_must_be_a_positive_number(
    pair: Pair, autojump_clock: trio.testing.MockClock, hold: object
) -> None:
    resp = await pair.a.daemon._control({"cmd": "down", "peer": "gw-b", "for": hold})
    assert resp["ok"] is False and "'for'" in resp["error"]
    assert peer(pair.a)["held_down"] is None
