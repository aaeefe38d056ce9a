"""What an IKE SA keeps once it needs no more: a deleted one lingers light (ike.session
invariant 7, ike.ikesa rule 4), an established one drops its IKE_SA_INIT messages.

For the retransmission total (41.3 s) a deleted IKE SA still answers a
retransmitted request from its cache (RFC 7296 §2.1): the peer's DELETE may
have crossed our answer, which got lost. From the end of the input that deleted
it, the SA keeps only what that takes (SPIs, addresses, message window, the
cached answer): no keys, nonces, IKE_SA_INIT messages, Child SAs or rekey
tasks. Each test below replays the DELETE during the linger and expects the
byte-identical answer, and looks for any secret left.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
from sessionpair import T0, Sent, SessionPair, config_pair

from ike.constants import ExchangeType
from ike.errors import LocalError
from ike.events import Address
from ike.exchanges.context import PER_IKE_SA, SaContext
from ike.ikesa import IkeSa
from ike.policy import DEFAULT_RETRANSMIT
from ike.session import IkeSession
from ike.states import IkeState
from ike.tombstones import Tombstones
from ike.tombstones import Verdict as TombVerdict
from ike.wire import parse_header

INFO = ExchangeType.INFORMATIONAL


def established(**common: object) -> SessionPair:
    pair = SessionPair(*config_pair(**common))
    pair.start()
    pair.run(until=T0 + 1)
    assert pair.established()
    return pair


def assert_nothing_secret(sa: IkeSa) -> None:
    ctx = sa.ctx
    assert sa.shed
    fresh = SaContext(ctx.configs, ctx.entropy, ctx.is_initiator, ctx.local_addr, ctx.remote_addr)
    for f in fields(SaContext):
        if f.name in PER_IKE_SA:  # keys, ciphers, PRF, nonces, IKE_SA_INIT messages
            assert getattr(ctx, f.name) == getattr(fresh, f.name), f.name
    assert ctx.children == {} and ctx.lookup is None
    assert sa.tm.in_flight is None and not sa.tm.queue
    assert sa.tm.cached is not None  # what it lingers for


def last_delete(pair: SessionPair, sender: str) -> tuple[Sent, bytes]:
    """The last INFORMATIONAL request ``sender`` sent, and the answer it got."""
    info = [s for s in pair.wire if s.header.exchange_type == INFO]
    request = [s for s in info if s.sender == sender and not s.header.is_response][-1]
    answer = [s for s in info if s.sender != sender and s.header.is_response][-1]
    return request, answer.data


def replay(session: IkeSession, sent: Sent, now: float, data: bytes | None = None) -> list[bytes]:
    """A retransmission of ``sent`` (or ``data`` in its place) arrives: what goes back."""
    session.receive_datagram(sent.data if data is None else data, sent.src, sent.dst, now)
    return [d for d, _, _ in session.datagrams_to_send()]


def test_a_deleted_session_lingers_without_secrets_and_still_answers_from_its_cache() -> None:
    pair = established()
    responder = pair.responder
    pair.initiator.close(pair.now)
    pair.run_until(lambda: pair.initiator.finished, limit=10)
    assert responder.state is IkeState.CLOSED and not responder.finished
    assert_nothing_secret(responder._sa)
    assert responder.ike_sa_keys() == ()
    assert responder.children == ()
    delete, answer = last_delete(pair, "i")
    assert replay(responder, delete, pair.now + 20) == [answer]  # §2.1: from the cache
    forged = delete.data[:-1] + bytes([delete.data[-1] ^ 1])
    assert replay(responder, delete, pair.now + 21, forged) == []
    assert responder.drops["different request under an answered message ID"] == 1
    deadline = responder.next_deadline()
    assert deadline is not None and deadline <= pair.now + DEFAULT_RETRANSMIT.total
    responder.handle_timer(deadline)
    assert responder.finished and responder.next_deadline() is None
    assert replay(responder, delete, deadline + 1) == []  # the linger is over


def test_the_events_of_the_ending_survive_the_shedding() -> None:
    """The IkeSaDown (and the ChildSaDown before it) are queued by the same input that
    sheds the SA: the daemon drains them after it."""
    pair = established()
    responder = pair.responder
    responder_events = len(pair.events["r"])
    pair.initiator.close(pair.now)
    pair.run_until(lambda: pair.initiator.finished, limit=10)
    names = [type(e).__name__ for e in pair.events["r"][responder_events:]]
    assert names == ["ChildSaDown", "IkeSaDown"]
    assert responder._sa.shed


def test_an_old_ike_sa_lingers_light_after_a_rekey() -> None:
    """CREATE_CHILD_SA rekeys the IKE SA; the initiator deletes the old one. The responder
    keeps answering a retransmitted DELETE on the old SA, without its keys."""
    pair = established(ike_lifetime=600.0)
    responder = pair.responder
    old_keys = responder._sa.ctx.keys
    assert pair.initiator.rekey_ike(pair.now)
    pair.run(until=pair.now + 2)
    retiring = responder._core.sas.retiring
    assert len(retiring) == 1 and retiring[0].linger_until is not None
    old = retiring[0]
    assert_nothing_secret(old)
    assert responder._sa.ctx.keys is not None and responder._sa.ctx.keys != old_keys
    assert responder.state is IkeState.ESTABLISHED and len(responder.children) == 1
    delete, answer = last_delete(pair, "i")
    assert replay(responder, delete, pair.now + 10) == [answer]
    pair.run(until=pair.now + 45)  # past the linger
    assert responder._core.sas.retiring == []
    assert len(responder.local_spis) == 1


def test_an_established_ike_sa_drops_its_ike_sa_init_messages() -> None:
    """They were signed by the AUTH payloads (§2.15) and serve nothing after IKE_AUTH;
    a retransmitted IKE_AUTH is still answered, from the cache."""
    pair = established()
    for session in (pair.initiator, pair.responder):
        assert (session._ctx.init_request, session._ctx.init_response) == (b"", b"")
    auth = [s for s in pair.wire if s.header.exchange_type == ExchangeType.IKE_AUTH]
    request, answer = auth[0], auth[-1]
    assert not request.header.is_response and answer.header.is_response
    assert replay(pair.responder, request, pair.now + 1) == [answer.data]


# -- burial (invariant 8): the daemon keeps a tombstone, not the session --------------


def buried(pair: SessionPair) -> tuple[Tombstones, Sent, bytes]:
    """The initiator deletes the IKE SA; the closed responder is buried at once."""
    responder = pair.responder
    pair.initiator.close(pair.now)
    pair.run_until(lambda: pair.initiator.finished, limit=10)
    assert responder.buriable and not responder.finished
    table = Tombstones()
    table.bury(responder.bury(), pair.now)
    assert responder.finished and not responder.buriable and responder.next_deadline() is None
    delete, answer = last_delete(pair, "i")
    return table, delete, answer


def ask(
    table: Tombstones, sent: Sent, now: float, data: bytes | None = None, src: Address | None = None
) -> tuple[TombVerdict, bytes | None]:
    data = sent.data if data is None else data
    header = parse_header(data)
    own = header.spi_r if header.is_initiator else header.spi_i
    return table.lookup(own, header, data, sent.src if src is None else src, now)


def test_a_buried_session_answers_a_retransmitted_delete_byte_for_byte() -> None:
    pair = established()
    table, delete, answer = buried(pair)
    assert len(table) == 1
    assert ask(table, delete, pair.now + 20) == (TombVerdict.ANSWER, answer)
    assert table.answered == 1


def test_a_tombstone_answers_nothing_but_the_retransmission() -> None:
    pair = established()
    table, delete, answer = buried(pair)
    now = pair.now + 1
    forged = delete.data[:-1] + bytes([delete.data[-1] ^ 1])
    assert ask(table, delete, now, forged) == (TombVerdict.DROP, None)
    third_party = ("203.0.113.99", 500)
    assert ask(table, delete, now, src=third_party) == (TombVerdict.DROP, None)
    assert table.dropped == 2
    assert ask(table, delete, now) == (TombVerdict.ANSWER, answer)


def test_a_tombstone_expires_with_the_retransmission_window() -> None:
    pair = established()
    table, delete, _ = buried(pair)
    until = pair.now + DEFAULT_RETRANSMIT.total + 1
    assert ask(table, delete, until) == (TombVerdict.UNKNOWN, None)
    assert len(table) == 0


def test_a_tombstone_holds_no_secret_and_shows_none() -> None:
    """Its fields are the SPIs, the message ID, the two messages as they crossed the
    wire (encrypted), the addresses and the deadline; its repr shows no message."""
    pair = established()
    keys = pair.responder._ctx.keys
    assert keys is not None
    secrets = [getattr(keys, f.name) for f in fields(keys)]
    table, delete, answer = buried(pair)
    (stone,) = table._by_spi.values()
    assert (stone.request, stone.response) == (delete.data, answer)
    for f in fields(stone):
        value = getattr(stone, f.name)
        assert not any(s and s == value for s in secrets), f.name
    assert delete.data.hex() not in repr(stone) and answer.hex() not in repr(stone)
    assert "request" not in repr(stone) and "response" not in repr(stone)


def test_only_a_closed_lingering_session_can_be_buried() -> None:
    pair = established()
    with pytest.raises(LocalError):
        pair.responder.bury()
