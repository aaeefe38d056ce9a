"""IkeShare: the IKE port's share of the pumps' thread while ESP moves (tunneld.ikeshare)."""

from __future__ import annotations

import pytest

from tunneld.ikeshare import IkeShare

BATCH = 0.002  # seconds of thread one batch of flood takes here (64 cookies)


def run(share: IkeShare, seconds: float, esp_moving: bool) -> float:
    """A pump that always has a batch to read (a flood) for ``seconds``; returns the
    fraction of the time it spent reading. The rest of the time the data plane ran."""
    now, busy, esp = 100.0, 0.0, 0
    end = now + seconds
    while now < end:
        esp += 5 if esp_moving else 0
        wait = share.delay(now, esp)
        if wait > 0:  # the pump sleeps; the ESP pumps have the thread
            now += wait
            continue
        share.charge(BATCH, now + BATCH)
        now += BATCH
        busy += BATCH
    return busy / seconds


def test_while_esp_moves_the_ike_port_gets_its_share_and_no_more() -> None:
    share = IkeShare(share=0.2, burst=0.01)
    fraction = run(share, 10.0, esp_moving=True)
    assert 0.19 <= fraction <= 0.2 + 0.01 / 10 + BATCH / 10
    assert share.waits > 100 and share.status()["waits"] == share.waits
    assert share.waited == pytest.approx(10.0 * (1 - fraction), abs=0.05)


def test_with_the_tunnels_idle_the_ike_port_is_not_limited() -> None:
    share = IkeShare(share=0.2)
    assert run(share, 5.0, esp_moving=False) == pytest.approx(1.0, abs=0.001)
    assert share.waits == 0


def test_no_debt_from_an_idle_spell_is_carried_into_traffic() -> None:
    """A flood answered flat out while idle must not make the pump wait long once ESP
    starts: the first wait is about one batch's worth, not the whole spell's."""
    share = IkeShare(share=0.2, burst=0.01, idle_after=0.1)
    run(share, 5.0, esp_moving=False)
    now = 200.0
    assert share.delay(now, 1) == 0.0  # ESP just moved: its first batch is in the burst
    share.charge(0.02, now + 0.02)
    wait = share.delay(now + 0.02, 2)
    assert 0 < wait <= 0.02 / 0.2


def test_esp_that_stops_lifts_the_limit_after_idle_after() -> None:
    share = IkeShare(share=0.2, burst=0.01, idle_after=0.1)
    assert share.delay(0.0, 0) == 0.0  # the first look: no movement yet
    share.delay(0.0, 1)
    share.charge(0.05, 0.05)
    assert share.delay(0.05, 1) > 0  # ESP moved 50 ms ago: still limited
    assert share.delay(0.2, 1) == 0.0  # nothing for 200 ms: idle


@pytest.mark.parametrize(
    "kwargs", [{"share": 0.0}, {"share": 1.5}, {"burst": 0.0}, {"idle_after": -1.0}]
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        IkeShare(**kwargs)
