"""CREATE_CHILD_SA requests that must be refused and change nothing (RFC 7296 §1.3, §2.25).

Each request is built with the initiator's keys (read-only use of its SA
context) under the next message ID and handed to the responder directly; the
answer's notifies are read back (§3.10.1). Afterwards the responder must be
exactly as before (same Child SAs, no events) and still able to rekey.
"""

from __future__ import annotations

import ipaddress

import pytest
from sessionpair import ADDR_I, ADDR_R, T0, SessionPair, assert_one_pair, config_pair

from ike.constants import DhGroup, NotifyType, PayloadType, ProtocolId
from ike.events import RequestRefused
from ike.exchanges import selectors
from ike.exchanges.context import decode_message, encode_message
from ike.payloads import (
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsPayload,
)
from ike.proposals import make_offer, parse_esp_proposal, parse_ike_proposal
from ike.states import IkeState
from ike.wire import parse_header

NONCE = bytes(range(32))
IKE_OFFER = [parse_ike_proposal("aes256gcm16-prfsha256-x25519")]
NEW_IKE_SPI = bytes(range(1, 9))
SITE_I, SITE_R = "198.51.100.0/24", "203.0.113.0/24"
NAT_T_I, NAT_T_R = (ADDR_I[0], 4500), (ADDR_R[0], 4500)


def established(**common: object) -> SessionPair:
    pair = SessionPair(*config_pair(**common))
    pair.start()
    pair.run(until=T0 + 1)
    return pair


def ts(local: str = SITE_I, remote: str = SITE_R) -> list[Payload]:
    return [
        TsPayload(PayloadType.TSi, selectors.from_networks([ipaddress.ip_network(local)])),
        TsPayload(PayloadType.TSr, selectors.from_networks([ipaddress.ip_network(remote)])),
    ]


def esp_sa(proposal: str = "aes256gcm16", spi: int = 0x01020304) -> SaPayload:
    return SaPayload(make_offer([parse_esp_proposal(proposal)], spi.to_bytes(4, "big")))


def rekey_sa(spi: bytes, protocol: int = ProtocolId.ESP) -> NotifyPayload:
    return NotifyPayload(NotifyType.REKEY_SA, protocol=protocol, spi=spi)


def ask(pair: SessionPair, payloads: list[Payload]) -> list[NotifyPayload]:
    """Send a CREATE_CHILD_SA request from the initiator's SA; the responder's notifies."""
    ctx = pair.initiator._ctx  # read-only: the keys to frame a genuine-looking request
    message_id = pair.initiator._tm.peek_next_id()  # the initiator never uses it afterwards
    request = encode_message(ctx, 36, message_id, payloads, False)
    pair.responder.receive_datagram(request, NAT_T_I, NAT_T_R, pair.now)
    ((answer, _src, _dst),) = pair.responder.datagrams_to_send()
    return decode_message(ctx, parse_header(answer), answer).notifies()


def their_spi(pair: SessionPair) -> bytes:
    """The SPI the initiator receives on: what its REKEY_SA would name."""
    (child,) = pair.initiator.children
    return child.inbound_spi.to_bytes(4, "big")


CASES = {
    "unknown SPI in REKEY_SA": (
        lambda p: [rekey_sa(b"\xde\xad\xbe\xef"), esp_sa(), NoncePayload(NONCE), *ts()],
        NotifyType.CHILD_SA_NOT_FOUND,
    ),
    "REKEY_SA for AH": (
        lambda p: [rekey_sa(their_spi(p), ProtocolId.AH), esp_sa(), NoncePayload(NONCE), *ts()],
        NotifyType.CHILD_SA_NOT_FOUND,
    ),
    "rekey without Nonce": (
        lambda p: [rekey_sa(their_spi(p)), esp_sa(), *ts()],
        NotifyType.INVALID_SYNTAX,
    ),
    "rekey without TSr": (
        lambda p: [rekey_sa(their_spi(p)), esp_sa(), NoncePayload(NONCE), ts()[0]],
        NotifyType.INVALID_SYNTAX,
    ),
    "rekey with an unacceptable proposal": (
        lambda p: [rekey_sa(their_spi(p)), esp_sa("aes128gcm16"), NoncePayload(NONCE), *ts()],
        NotifyType.NO_PROPOSAL_CHOSEN,
    ),
    "new Child SA for selectors we do not serve": (
        lambda p: [esp_sa(), NoncePayload(NONCE), *ts("192.0.2.128/25", "192.0.2.0/25")],
        NotifyType.TS_UNACCEPTABLE,
    ),
    "IKE SA rekey without KE": (
        lambda p: [
            SaPayload(make_offer(IKE_OFFER, NEW_IKE_SPI)),
            NoncePayload(NONCE),
        ],
        NotifyType.INVALID_SYNTAX,
    ),
    "IKE SA rekey without SPI": (
        lambda p: [
            SaPayload(make_offer(IKE_OFFER)),
            NoncePayload(NONCE),
            KePayload(DhGroup.CURVE25519, bytes(32)),
        ],
        NotifyType.INVALID_SYNTAX,
    ),
    "IKE SA rekey with KE for another group": (
        lambda p: [
            SaPayload(make_offer(IKE_OFFER, NEW_IKE_SPI)),
            NoncePayload(NONCE),
            KePayload(DhGroup.ECP_256, bytes(64)),
        ],
        NotifyType.INVALID_KE_PAYLOAD,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_refused_create_child_sa_changes_nothing(case: str) -> None:
    pair = established()
    build, expected = CASES[case]
    children = [(c.inbound_spi, c.status) for c in pair.responder.children]
    (notify,) = ask(pair, build(pair))
    assert notify.notify_type == expected
    if expected == NotifyType.CHILD_SA_NOT_FOUND:  # §2.25: the SPI copied from REKEY_SA
        assert notify.spi == build(pair)[0].spi  # type: ignore[attr-defined]
    event = pair.responder.next_event()
    if expected in (NotifyType.NO_PROPOSAL_CHOSEN, NotifyType.TS_UNACCEPTABLE):
        # a configuration mismatch: reported for the daemon's log and last_error
        assert isinstance(event, RequestRefused) and event.notify == expected, event
        assert event.exchange == "CREATE_CHILD_SA" and "configured" in event.reason
        event = pair.responder.next_event()
    assert event is None
    assert [(c.inbound_spi, c.status) for c in pair.responder.children] == children
    assert pair.responder.state is IkeState.ESTABLISHED and len(pair.responder.local_spis) == 1
    # Nothing is stuck: the responder still rekeys (in its own window).
    (child,) = pair.responder.children
    assert pair.responder.rekey_child(child.inbound_spi, pair.now)
    pair.run(until=pair.now + 5)
    assert_one_pair(pair)


def test_pfs_rekey_with_ke_for_another_group_is_told_the_group() -> None:
    pair = established(esp=("aes256gcm16-x25519",))
    notify_ = ask(
        pair,
        [
            rekey_sa(their_spi(pair)),
            esp_sa("aes256gcm16-x25519-ecp256"),
            NoncePayload(NONCE),
            KePayload(DhGroup.ECP_256, bytes(64)),
            *ts(),
        ],
    )
    assert [(n.notify_type, n.data) for n in notify_] == [
        (NotifyType.INVALID_KE_PAYLOAD, DhGroup.CURVE25519.to_bytes(2, "big"))
    ]
    assert pair.responder.next_event() is None
