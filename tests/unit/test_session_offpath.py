"""Unauthenticated messages change nothing (RFC 7296 §2.21, §3.14): the attacker's view.

Someone who sees the SPIs on the wire (they travel in clear) but has no keys
sends messages under them. None may be answered, move a message-ID window,
end an attempt early, or make us reflect a response to another address.
"""

from __future__ import annotations

from sessionpair import ADDR_I, ADDR_R, T0, SessionPair, config_pair

from ike.constants import ExchangeType, HeaderFlag, NotifyType
from ike.entropy import DeterministicEntropy
from ike.events import IkeSaUp
from ike.exchanges.context import encode_message
from ike.payloads import NotifyPayload
from ike.session import IkeSession
from ike.states import IkeState
from ike.wire import Message

NAT_T_I, NAT_T_R = (ADDR_I[0], 4500), (ADDR_R[0], 4500)
ATTACKER = ("203.0.113.66", 500)


def established_pair() -> SessionPair:
    pair = SessionPair(*config_pair())
    pair.start()
    pair.run()
    assert pair.initiator.state is IkeState.ESTABLISHED
    return pair


def cleartext(spi_i: bytes, spi_r: bytes, exchange: ExchangeType, message_id: int) -> bytes:
    """A request in the initiator's role with the live SPIs, but no SK payload."""
    return Message(
        spi_i=spi_i, spi_r=spi_r, exchange_type=exchange, flags=HeaderFlag.INITIATOR,
        message_id=message_id, payloads=[NotifyPayload(NotifyType.AUTHENTICATION_FAILED)],
    ).build()  # fmt: skip


def test_a_cleartext_informational_with_live_spis_is_not_answered() -> None:
    pair = established_pair()
    r = pair.responder
    forged = cleartext(r.spi_i, r.spi_r, ExchangeType.INFORMATIONAL, 2)
    r.receive_datagram(forged, NAT_T_I, NAT_T_R, pair.now)
    assert r.datagrams_to_send() == [] and r.next_event() is None
    assert r.drops == {"unauthenticated or malformed request": 1}
    assert r.state is IkeState.ESTABLISHED
    # The window did not move: the peer's genuine request with that ID is answered.
    genuine = encode_message(pair.initiator._ctx, ExchangeType.INFORMATIONAL, 2, [], False)
    r.receive_datagram(genuine, NAT_T_I, NAT_T_R, pair.now)
    assert len(r.datagrams_to_send()) == 1


def half_handshake() -> tuple[IkeSession, IkeSession, bytes]:
    """An initiator with its IKE_SA_INIT sent, the responder that answered it, the answer."""
    i_cfg, r_cfg = config_pair()
    i = IkeSession.initiator(i_cfg, DeterministicEntropy(1), T0, ADDR_I, ADDR_R)
    i.initiate(T0)
    ((init, _, _),) = i.datagrams_to_send()
    r = IkeSession.responder(r_cfg, DeterministicEntropy(2), T0, ADDR_R, ADDR_I)
    r.receive_datagram(init, ADDR_I, ADDR_R, T0)
    ((answer, _, _),) = r.datagrams_to_send()
    return i, r, answer


def test_a_handshake_completes_despite_a_forged_ike_auth() -> None:
    i, r, init_answer = half_handshake()
    # The attacker saw both SPIs and races the initiator's IKE_AUTH.
    r.receive_datagram(cleartext(r.spi_i, r.spi_r, ExchangeType.IKE_AUTH, 1), ATTACKER, ADDR_R, T0)
    assert r.datagrams_to_send() == [] and r.state is IkeState.AUTH_WAIT
    i.receive_datagram(init_answer, ADDR_R, ADDR_I, T0 + 0.01)
    ((auth, src, dst),) = i.datagrams_to_send()
    r.receive_datagram(auth, src, dst, T0 + 0.02)
    ((auth_answer, _, _),) = r.datagrams_to_send()
    i.receive_datagram(auth_answer, dst, src, T0 + 0.03)
    assert i.state is IkeState.ESTABLISHED and r.state is IkeState.ESTABLISHED


def _initiator_and_answer() -> tuple[IkeSession, bytes, bytes]:
    i, _r, answer = half_handshake()
    refusal = Message(
        spi_i=i.spi_i, exchange_type=ExchangeType.IKE_SA_INIT,
        flags=HeaderFlag.RESPONSE, message_id=0,
        payloads=[NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)],
    ).build()  # fmt: skip
    return i, answer, refusal


def test_a_spoofed_ike_sa_init_refusal_from_elsewhere_is_ignored() -> None:
    i, answer, refusal = _initiator_and_answer()
    i.receive_datagram(refusal, ATTACKER, ADDR_I, T0 + 0.01)
    assert i.drops == {"IKE_SA_INIT response from another address": 1}
    assert i.state is IkeState.INIT_SENT and i.next_event() is None
    i.receive_datagram(answer, ADDR_R, ADDR_I, T0 + 0.02)
    assert i.state is IkeState.AUTH_SENT


def test_a_refusal_before_the_real_response_does_not_end_the_attempt() -> None:
    """§2.21.1: keep waiting for a valid response; the real one wins."""
    i, answer, refusal = _initiator_and_answer()
    i.receive_datagram(refusal, ADDR_R, ADDR_I, T0 + 0.01)  # spoofed with the peer's address
    assert i.state is IkeState.INIT_SENT and i.next_event() is None
    assert i.drops == {"IKE_SA_INIT error response (unauthenticated)": 1}
    i.receive_datagram(answer, ADDR_R, ADDR_I, T0 + 0.5)
    assert i.state is IkeState.AUTH_SENT
    i.handle_timer(T0 + 5.0)  # the grace is over, and moot
    assert i.state is IkeState.AUTH_SENT


def test_a_replayed_request_from_another_address_is_not_reflected() -> None:
    pair = established_pair()
    request, answer = pair.sent_by("i")[1], pair.sent_by("r")[1]  # IKE_AUTH
    r = pair.responder
    r.receive_datagram(request.data, ATTACKER, request.dst, pair.now)
    assert r.datagrams_to_send() == []
    assert r.drops == {"retransmitted request from another address": 1}
    r.receive_datagram(request.data, request.src, request.dst, pair.now)  # the real peer
    ((data, _src, dst),) = r.datagrams_to_send()
    assert data == answer.data and dst == request.src
    assert not [e for e in pair.events["r"] if isinstance(e, IkeSaUp)][1:]
