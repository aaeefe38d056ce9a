"""Whatever the link does during rekeys, both sessions end consistent (hypothesis).

Any mix of Child SA and IKE SA rekeys, started by either side or both at
once, over a link that loses and duplicates datagrams; then the link heals.
Sometimes the operator deletes the Child SA in the middle of it. Afterwards
either both sides hold the same single IKE SA and one matching Child SA pair
(or none, after a delete), or the IKE SA is gone on both sides (liveness
checks notice a peer that gave up) with nothing left in the data plane.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sessionpair import T0, Link, SessionPair, assert_one_pair, config_pair, data_plane

from ike.events import IkeSaDown
from ike.states import IkeState


def assert_same_data_plane(pair: SessionPair) -> None:
    """At most one Child SA pair, sending both ways, halves matching crosswise."""
    live_i, live_r = data_plane(pair.events["i"]), data_plane(pair.events["r"])
    assert len(live_i) == len(live_r) <= 1
    if live_i:
        assert_one_pair(pair)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    loss=st.floats(0.0, 0.3),
    dup=st.floats(0.0, 0.3),
    child=st.sampled_from(["", "i", "r", "ir"]),
    ike=st.sampled_from(["", "i", "r", "ir"]),
    delete=st.sampled_from(["", "i", "r"]),
    delay=st.floats(0.0, 3.0),
)
def test_rekeys_on_a_bad_link_end_consistent(
    seed: int, loss: float, dup: float, child: str, ike: str, delete: str, delay: float
) -> None:
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
