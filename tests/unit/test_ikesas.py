"""IkeSas: the current, successor and retiring IKE SAs of one session (ike/ikesa.py)."""

from __future__ import annotations

import pytest
from sessionpair import config_pair

from ike.constants import ExchangeType, HeaderFlag
from ike.entropy import DeterministicEntropy
from ike.exchanges.context import SaContext
from ike.exchanges.informational import LivenessTask
from ike.ikesa import IkeSa, IkeSas
from ike.taskmanager import Exchange
from ike.wire import IkeHeader

CONFIG = config_pair()[0]


def make_sa(spi: int, *, initiator: bool = True) -> IkeSa:
    """An IKE SA with SPIs spi/spi+1 (no keys: routing and timers only)."""
    addrs = ("192.0.2.1", 500), ("192.0.2.2", 500)
    ctx = SaContext((CONFIG,), DeterministicEntropy(spi), initiator, *addrs)
    ctx.spi_i, ctx.spi_r = spi.to_bytes(8, "big"), (spi + 1).to_bytes(8, "big")
    return IkeSa.of(ctx)


def header_for(sa: IkeSa) -> IkeHeader:
    """A request from the peer on ``sa`` (the peer's role is the opposite of ours)."""
    ctx = sa.ctx
    flags = HeaderFlag.NONE if ctx.is_initiator else HeaderFlag.INITIATOR
    return IkeHeader(ctx.spi_i, ctx.spi_r, 0, 2, 0, ExchangeType.INFORMATIONAL, flags, 1, 28)


def liveness() -> Exchange:
    return Exchange(ExchangeType.INFORMATIONAL, [LivenessTask()])


def test_a_new_set_holds_only_the_current_sa() -> None:
    current = make_sa(10)
    sas = IkeSas(current)
    assert sas.all() == [current] and sas.sending() == [current]
    assert sas.successor is None and sas.retiring == [] and sas.deadline() is None


def test_find_routes_a_datagram_to_the_sa_whose_spis_it_names() -> None:
    current, successor, old = make_sa(10), make_sa(20), make_sa(30)
    sas = IkeSas(old)
    sas.switch_to(current, give_up_at=100.0)
    sas.offer_successor(successor)
    assert sas.all() == [current, successor, old]
    for sa in (current, successor, old):
        assert sas.find(header_for(sa)) is sa
    assert sas.find(header_for(make_sa(40))) is None


def test_switch_moves_the_queue_and_retires_the_old_sa_with_a_give_up_time() -> None:
    old, new = make_sa(10), make_sa(20)
    sas = IkeSas(old)
    queued = liveness()
    old.tm.enqueue(queued)
    returned = sas.switch_to(new, give_up_at=120.0)
    assert returned is old and sas.current is new
    assert list(new.tm.queue) == [queued] and not old.tm.queue  # rule 3
    assert sas.retiring == [old] and old.give_up_at == 120.0
    assert sas.deadline() == 120.0
    assert sas.sending() == [new, old]


def test_switching_to_the_successor_takes_it_out_of_that_role() -> None:
    old, new = make_sa(10), make_sa(20)
    sas = IkeSas(old)
    sas.offer_successor(new)
    assert sas.sending() == [old]  # a successor carries nothing of ours yet
    sas.switch_to(new, give_up_at=1.0)
    assert sas.successor is None and sas.all() == [new, old]


def test_an_sa_has_one_role_at_a_time() -> None:
    current, other = make_sa(10), make_sa(20)
    sas = IkeSas(current)
    with pytest.raises(ValueError):
        sas.offer_successor(current)
    with pytest.raises(ValueError):
        sas.keep_retiring(current)
    sas.offer_successor(other)
    sas.keep_retiring(other)  # a successor that loses a collision retires
    assert sas.successor is None and sas.retiring == [other]
    sas.keep_retiring(other)  # idempotent
    assert sas.all() == [current, other]
    with pytest.raises(ValueError):
        sas.offer_successor(other)


def test_remove_and_take_successor_forget_an_sa() -> None:
    current, successor, old = make_sa(10), make_sa(20), make_sa(30)
    sas = IkeSas(current)
    sas.offer_successor(successor)
    sas.keep_retiring(old)
    assert sas.take_successor() is successor and sas.take_successor() is None
    sas.remove(old)
    assert sas.all() == [current]
    sas.remove(current)  # the current SA never leaves
    assert sas.current is current


def test_drop_others_abandons_their_requests() -> None:
    current, successor, old = make_sa(10), make_sa(20), make_sa(30)
    sas = IkeSas(current)
    sas.offer_successor(successor)
    sas.keep_retiring(old)
    old.tm.enqueue(liveness())
    sas.drop_others()
    assert sas.all() == [current] and not old.tm.queue


def test_the_deadline_is_the_earliest_timer_of_a_retiring_sa() -> None:
    current, a, b = make_sa(10), make_sa(20), make_sa(30)
    sas = IkeSas(current)
    sas.keep_retiring(a)
    sas.keep_retiring(b)
    a.give_up_at, b.linger_until = 50.0, 40.0
    assert sas.deadline() == 40.0
    current.tm.enqueue(liveness())  # the current SA's timers are the session's, not these
    assert sas.deadline() == 40.0
