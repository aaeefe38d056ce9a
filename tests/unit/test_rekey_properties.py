"""Whatever the link does during rekeys, both sessions end consistent (hypothesis).

Any mix of Child SA and IKE SA rekeys, started by either side or both at
once, over a link that loses and duplicates datagrams; then the link heals.
Sometimes the operator deletes the Child SA in the middle of it. Afterwards
either both sides hold the same single IKE SA and one matching Child SA pair
(or none, after a delete), or the IKE SA is gone on both sides (liveness
checks notice a peer that gave up) with nothing left in the data plane.

The default run explores a couple of hundred examples chosen by Hypothesis
(plus the regressions below, always); ``test_rekeys_sweep`` (marked
``slow``) replays fixed examples, each drawn from its own seed, the same ones
every run: 500 in the default run, 10,000 with the soak profile
(``-m soak``; ``-m "not slow"`` leaves the sweep out).
"""

from __future__ import annotations

import random
from dataclasses import astuple, dataclass
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sessionpair import T0, Link, SessionPair, assert_one_pair, config_pair, data_plane

from ike.events import IkeSaDown
from ike.states import IkeState

SIDES = ["", "i", "r", "ir"]
DELETERS = ["", "i", "r"]


def assert_same_data_plane(pair: SessionPair) -> None:
    """At most one Child SA pair, sending both ways, halves matching crosswise."""
    live_i, live_r = data_plane(pair.events["i"]), data_plane(pair.events["r"])
    assert len(live_i) == len(live_r) <= 1
    if live_i:
        assert_one_pair(pair)


def rekeys_on_a_bad_link(
    seed: int, loss: float, dup: float, child: str, ike: str, delete: str, delay: float
) -> None:
    """The property: rekeys (and maybe a delete) over a bad link, then it heals."""
    link = Link(seed)
    i_cfg, r_cfg = config_pair(dpd_delay=10.0)
    pair = SessionPair(i_cfg, r_cfg, link=link, seed=seed)
    pair.start()
    pair.run(until=T0 + 1)
    link.loss, link.dup = loss, dup
    sessions = {"i": pair.initiator, "r": pair.responder}
    for side in child:
        (sa,) = sessions[side].children
        sessions[side].rekey_child(sa.inbound_spi, pair.now)
    pair.run(until=pair.now + delay)
    for side in ike:
        if sessions[side].state is IkeState.ESTABLISHED:
            sessions[side].rekey_ike(pair.now)
    for side in delete:  # the operator deletes a Child SA in the middle of it all
        installed = [c for c in sessions[side].children if c.outbound_active]
        if installed and sessions[side].state is IkeState.ESTABLISHED:
            sessions[side].delete_child(installed[0].inbound_spi, pair.now)
    pair.run(until=pair.now + 120)
    link.loss = link.dup = 0.0
    pair.run(until=pair.now + 180)

    for side in "ir":
        data_plane(pair.events[side])  # no SA up twice, none activated twice
    downs = {side: pair.of(side, IkeSaDown) for side in "ir"}
    if downs["i"] or downs["r"]:
        for side in "ir":
            (down,) = downs[side]
            assert pair.events[side][-1] is down
            assert not data_plane(pair.events[side])
        return
    if delete:
        assert_same_data_plane(pair)
    else:
        assert_one_pair(pair)
    i, r = pair.initiator, pair.responder
    assert len(i.local_spis) == len(r.local_spis) == 1
    assert (i.spi_i, i.spi_r) == (r.spi_i, r.spi_r)
    assert not i.rekeying and not r.rekeying


# -- the default run: Hypothesis, modest, plus fixed regressions --------------------


@settings(max_examples=200, deadline=None)  # about 4 s
@given(
    seed=st.integers(0, 2**16),
    loss=st.floats(0.0, 0.3),
    dup=st.floats(0.0, 0.3),
    child=st.sampled_from(SIDES),
    ike=st.sampled_from(SIDES),
    delete=st.sampled_from(DELETERS),
    delay=st.floats(0.0, 3.0),
)
# Issue #8: both rekey the Child SA, i's operator deletes the old one; i's
# rekey wins, i deletes its own new SA with the old one, and r never learnt
# that its new SA lost, so i waited forever for r's DELETE of it.
@example(seed=3651, loss=0.25, dup=0.0, child="ir", ike="", delete="i", delay=1.0)
# The same after r's operator deleted r's winning new SA before i's rekey completed.
@example(seed=16996, loss=0.125, dup=0.0, child="ir", ike="", delete="r", delay=1.0)
def test_rekeys_on_a_bad_link_end_consistent(
    seed: int, loss: float, dup: float, child: str, ike: str, delete: str, delay: float
) -> None:
    rekeys_on_a_bad_link(seed, loss, dup, child, ike, delete, delay)


# -- the slow sweep: thousands of fixed examples, each drawn from its seed ----------


@dataclass(frozen=True)
class Scenario:
    seed: int
    loss: float
    dup: float
    child: str
    ike: str
    delete: str
    delay: float


# Delays that line up an action with the retransmission schedule (1 s, then
# x1.8) or with an answer in flight (one way 0.01 s) find races uniform
# draws rarely hit; so do the round loss rates and no duplication at all.
EDGE_DELAYS = (0.0, 0.01, 0.02, 1.0, 1.01, 1.02, 2.0, 2.8, 2.81)
EDGE_RATES = (0.0, 0.125, 0.25, 0.3)


def scenario(n: int) -> Scenario:
    """Example ``n`` of the sweep: every parameter follows from ``n`` alone."""
    rng = random.Random(f"rekey-sweep-{n}")

    def rate() -> float:
        return rng.choice(EDGE_RATES) if rng.random() < 0.5 else rng.uniform(0.0, 0.3)

    loss, dup = rate(), (0.0 if rng.random() < 0.5 else rate())
    delay = rng.choice(EDGE_DELAYS) if rng.random() < 0.5 else rng.uniform(0.0, 3.0)
    return Scenario(
        rng.randrange(2**16),
        loss,
        dup,
        rng.choice(SIDES),
        rng.choice(SIDES),
        rng.choice(DELETERS),
        delay,
    )


SWEEP = 500  # examples of the default run (CI): about 14 s on one core
SOAK = 10_000  # the soak profile (`-m soak`) adds the rest: about 280 s
CHUNK = 250  # per test item: a failure names its range, progress shows


def _chunks() -> list[Any]:
    return [
        pytest.param(start, marks=[pytest.mark.soak] if start >= SWEEP else [])
        for start in range(0, SOAK, CHUNK)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("start", _chunks(), ids=lambda s: f"{s}-{s + CHUNK - 1}")
def test_rekeys_sweep(start: int) -> None:
    for n in range(start, start + CHUNK):
        case = scenario(n)
        try:
            rekeys_on_a_bad_link(*astuple(case))
        except AssertionError as err:
            raise AssertionError(f"sweep example {n}: {case}") from err
