"""IkeSession: establishing an IKE SA and its first Child SA, and deleting them.

Each test drives two sessions over :class:`sessionpair.SessionPair`; the
exchanges it expects::

    IKE_SA_INIT { SA, KE, Ni, N(NATD_S), N(NATD_D), N(SIGHASH) } -->
                <-- { SA, KE, Nr, N(NATD_S), N(NATD_D), [CERTREQ], N(SIGHASH) }
    IKE_AUTH SK { IDi, [CERT], [CERTREQ], N(INITIAL_CONTACT), IDr, AUTH, SA, TSi, TSr } -->
                <-- SK { IDr, [CERT], AUTH, SA, TSi, TSr }
"""

from __future__ import annotations

import ipaddress

import pytest
from sessionpair import (
    ADDR_I,
    ADDR_R,
    GW_I,
    GW_R,
    SITE_I,
    SITE_R,
    T0,
    SessionPair,
    config_pair,
    make_config,
    psk,
    with_,
)

from ike.constants import ExchangeType, NotifyType, PayloadType
from ike.crypto import AEAD_SALT_LEN
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, InitialContact
from ike.exchanges.context import decode_message
from ike.payloads import AuthPayload, CertPayload, CertReqPayload, IdPayload, NotifyPayload
from ike.proposals import parse_esp_proposal
from ike.session import IkeSession
from ike.states import IkeState
from ike.wire import Message, parse_message


def establish(pair: SessionPair) -> SessionPair:
    pair.start()
    pair.run_until(pair.established)
    pair.run()
    return pair


def decrypted_ike_auth_request(pair: SessionPair) -> Message:
    """The IKE_AUTH request as the responder decrypted it (its own framing, its keys)."""
    sent = pair.sent_by("i")[1]
    assert sent.header.exchange_type == ExchangeType.IKE_AUTH
    return decode_message(pair.responder._ctx, sent.header, sent.data)


def assert_keys_crosswise(pair: SessionPair) -> None:
    """What one side sends with is what the other receives with (§2.17)."""
    i, r = pair.child_up("i"), pair.child_up("r")
    assert (i.inbound_spi, i.outbound_spi) == (r.outbound_spi, r.inbound_spi)
    assert i.keys.outbound_key == r.keys.inbound_key
    assert i.keys.outbound_salt == r.keys.inbound_salt
    assert i.keys.inbound_key == r.keys.outbound_key
    assert i.keys.inbound_salt == r.keys.outbound_salt
    assert i.keys.inbound_key != i.keys.outbound_key  # two directions, two keys
    assert len(i.keys.inbound_salt) == AEAD_SALT_LEN


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
@pytest.mark.parametrize("group", ["x25519", "ecp256"])
def test_certificates_establish_both_ways(kind: str, group: str) -> None:
    i_cfg, r_cfg = config_pair(kind, ike=(f"aes256gcm16-prfsha256-{group}",))
    pair = establish(SessionPair(i_cfg, r_cfg))

    assert [type(e) for e in pair.events["i"]] == [IkeSaUp, ChildSaUp]
    # The initiator sent INITIAL_CONTACT (§2.4): the responder reports it after IkeSaUp.
    assert [type(e) for e in pair.events["r"]] == [IkeSaUp, InitialContact, ChildSaUp]
    up_i, up_r = pair.of("i", IkeSaUp)[0], pair.of("r", IkeSaUp)[0]
    assert up_i.remote_id == GW_R and up_r.remote_id == GW_I
    assert up_i.algorithms == up_r.algorithms == f"aes256gcm16-prfsha256-{group}"
    assert (up_i.local_spi, up_i.remote_spi) == (up_r.remote_spi, up_r.local_spi)
    assert_keys_crosswise(pair)
    assert pair.initiator.state is IkeState.ESTABLISHED
    assert pair.responder.state is IkeState.ESTABLISHED
    assert len(pair.responders) == 1


def test_psk_establishes() -> None:
    i_cfg = make_config(GW_I, GW_R, psk(), local_ts=[str(SITE_I)], remote_ts=[str(SITE_R)])
    r_cfg = make_config(GW_R, GW_I, psk(), local_ts=[str(SITE_R)], remote_ts=[str(SITE_I)])
    pair = establish(SessionPair(i_cfg, r_cfg))
    assert_keys_crosswise(pair)
    # Without certificates there is nothing to send or ask for; AUTH is method 2.
    request = decrypted_ike_auth_request(pair)
    (auth,) = request.find_all(AuthPayload)
    assert auth.method == 2
    assert not request.find_all(CertPayload) and not request.find_all(CertReqPayload)
    assert parse_message(pair.wire[1].data).find(CertReqPayload) is None


def test_child_sa_carries_selectors_esn_and_address() -> None:
    i_cfg, r_cfg = config_pair(esp=("aes128gcm16-esn",))
    pair = establish(SessionPair(i_cfg, r_cfg))
    child_i, child_r = pair.child_up("i"), pair.child_up("r")
    assert child_i.local_ts == (SITE_I,) and child_i.remote_ts == (SITE_R,)
    assert child_r.local_ts == (SITE_R,) and child_r.remote_ts == (SITE_I,)
    assert child_i.esn and child_r.esn
    assert child_i.algorithms == "aes128gcm16-esn"
    assert len(child_i.keys.inbound_key) == 16
    # Forced encapsulation: both sides moved to UDP 4500 after IKE_SA_INIT.
    assert child_i.remote_addr == (ADDR_R[0], 4500)
    assert child_r.remote_addr == (ADDR_I[0], 4500)
    assert child_i.rekey_of is None


def test_esn_follows_the_responder_preference_among_offered() -> None:
    i_cfg, r_cfg = config_pair(esp=("aes256gcm16-esn-noesn",))
    r_cfg = with_(r_cfg, esp_proposals=(parse_esp_proposal("aes256gcm16-noesn"),))
    pair = establish(SessionPair(i_cfg, r_cfg))
    assert not pair.child_up("i").esn and not pair.child_up("r").esn


def test_wire_shape_of_the_handshake() -> None:
    """Ports, flags, message IDs and the cleartext payloads of IKE_SA_INIT."""
    i_cfg, r_cfg = config_pair()
    pair = establish(SessionPair(i_cfg, r_cfg))
    shape = [
        (s.sender, ExchangeType(s.header.exchange_type), s.header.message_id,
         s.header.is_response, s.src[1], s.dst[1])
        for s in pair.wire
    ]  # fmt: skip
    assert shape == [
        ("i", ExchangeType.IKE_SA_INIT, 0, False, 500, 500),
        ("r", ExchangeType.IKE_SA_INIT, 0, True, 500, 500),
        ("i", ExchangeType.IKE_AUTH, 1, False, 4500, 4500),
        ("r", ExchangeType.IKE_AUTH, 1, True, 4500, 4500),
    ]
    request = parse_message(pair.wire[0].data)
    notifies = {n.notify_type for n in request.find_all(NotifyPayload)}
    assert {
        NotifyType.NAT_DETECTION_SOURCE_IP,
        NotifyType.NAT_DETECTION_DESTINATION_IP,
        NotifyType.SIGNATURE_HASH_ALGORITHMS,
    } <= notifies
    response = parse_message(pair.wire[1].data)
    assert response.find(CertReqPayload) is not None  # §3.7
    assert all(s.header.is_initiator == (s.sender == "i") for s in pair.wire)


def test_ike_auth_contents_as_the_responder_decrypts_them() -> None:
    """The responder's view: IDi, CERT, CERTREQ, INITIAL_CONTACT, IDr, AUTH (method 14)."""
    message = decrypted_ike_auth_request(establish(SessionPair(*config_pair())))
    captured = [type(p).__name__ for p in message.payloads]
    assert captured[:2] == ["IdPayload", "CertPayload"]
    kinds = [p.payload_type for p in message.payloads if isinstance(p, IdPayload)]
    assert kinds == [PayloadType.IDi, PayloadType.IDr]
    assert any(
        isinstance(p, NotifyPayload) and p.notify_type == NotifyType.INITIAL_CONTACT
        for p in message.payloads
    )
    (auth,) = message.find_all(AuthPayload)
    assert auth.method == 14
    assert len(message.find_all(CertPayload)) == 1


def test_initial_contact_can_be_turned_off() -> None:
    pair = establish(SessionPair(*config_pair(send_initial_contact=False)))
    assert not decrypted_ike_auth_request(pair).notifies(NotifyType.INITIAL_CONTACT)


# -- deleting -------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["i", "r"])
def test_delete_ike_sa_from_either_side(closer: str) -> None:
    pair = establish(SessionPair(*config_pair()))
    child = pair.child_up(closer)
    session = pair.initiator if closer == "i" else pair.responder
    session.close(pair.now)
    pair.run()
    for side in "ir":
        downs = pair.of(side, ChildSaDown)
        assert len(downs) == 1
        assert {downs[0].inbound_spi, downs[0].outbound_spi} == {
            child.inbound_spi,
            child.outbound_spi,
        }
        assert pair.events[side][-1] == pair.down(side)  # the IkeSaDown comes last
    assert pair.down(closer).reason == "closed locally"
    other = "r" if closer == "i" else "i"
    assert pair.down(other).reason == "deleted by peer"
    assert pair.initiator.finished and pair.responder.finished
    assert pair.initiator.next_deadline() is None


def test_close_is_idempotent_and_close_before_establishment_is_local() -> None:
    pair = establish(SessionPair(*config_pair()))
    pair.initiator.close(pair.now)
    pair.initiator.close(pair.now)  # DELETING: no second delete
    pair.run()
    assert len(pair.of("i", IkeSaDown)) == 1
    deletes = [s for s in pair.sent_by("i") if s.header.exchange_type == ExchangeType.INFORMATIONAL]
    assert len(deletes) == 1

    fresh = SessionPair(*config_pair())
    fresh.start()
    fresh.initiator.close(fresh.now)
    fresh.flush()
    assert fresh.down("i").reason == "closed locally before establishment"
    assert fresh.initiator.finished


@pytest.mark.parametrize("forgetter", ["i", "r"])
def test_forget_ends_the_ike_sa_without_a_delete_exchange(forgetter: str) -> None:
    """INITIAL_CONTACT on a newer IKE SA: the old one ends here, nothing is sent."""
    pair = establish(SessionPair(*config_pair()))
    child = pair.child_up(forgetter)
    session = pair.initiator if forgetter == "i" else pair.responder
    wire_before = len(pair.wire)
    session.forget(pair.now)
    session.forget(pair.now)  # idempotent
    pair.flush()
    assert len(pair.wire) == wire_before  # no DELETE
    (down,) = pair.of(forgetter, ChildSaDown)
    assert down.inbound_spi == child.inbound_spi
    assert pair.events[forgetter][-1] == pair.down(forgetter)
    assert "INITIAL_CONTACT" in pair.down(forgetter).reason
    assert not pair.down(forgetter).peer_dead
    assert session.finished and session.next_deadline() is None


@pytest.mark.parametrize("deleter", ["i", "r"])
def test_delete_child_sa_from_either_side(deleter: str) -> None:
    """D(ESP, our inbound SPI) --> <-- D(ESP, theirs): both directions go (§1.4.1)."""
    pair = establish(SessionPair(*config_pair()))
    child = pair.child_up(deleter)
    session = pair.initiator if deleter == "i" else pair.responder
    session.delete_child(child.inbound_spi, pair.now)
    pair.run()
    for side in "ir":
        (down,) = pair.of(side, ChildSaDown)
        assert {down.inbound_spi, down.outbound_spi} == {child.inbound_spi, child.outbound_spi}
        assert not pair.of(side, IkeSaDown)  # the IKE SA stays
    other = "r" if deleter == "i" else "i"
    assert pair.of(other, ChildSaDown)[0].reason == "deleted by peer"
    assert pair.initiator.children == () and pair.responder.children == ()
    assert pair.initiator.state is IkeState.ESTABLISHED


def test_liveness_check_is_answered_and_keeps_the_sa() -> None:
    pair = establish(SessionPair(*config_pair()))
    before = len(pair.wire)
    pair.responder.check_liveness(pair.now)
    pair.run()
    exchanged = pair.wire[before:]
    assert [(s.sender, s.header.is_response) for s in exchanged] == [("r", False), ("i", True)]
    assert pair.initiator.state is pair.responder.state is IkeState.ESTABLISHED
    # Nothing outstanding: the next deadline is the Child SA's soft lifetime.
    (child,) = pair.initiator.children
    assert pair.initiator.next_deadline() == child.lifetime.rekey_at


# -- status and secrecy ------------------------------------------------------------


def test_status_reports_the_negotiation_without_keys() -> None:
    pair = establish(SessionPair(*config_pair()))
    status = pair.initiator.status(pair.now + 5)
    assert status["state"] == "established"
    assert status["role"] == "initiator"
    assert status["algorithms"] == "aes256gcm16-prfsha256-x25519"
    assert status["remote_id"] == GW_R
    assert status["established_for"] == pytest.approx(pair.now + 5 - (T0 + 0.02), abs=0.02)
    (child,) = status["child_sas"]
    assert child["local_ts"] == [str(SITE_I)] and child["remote_ts"] == [str(SITE_R)]
    assert pair.initiator.remote_identity == GW_R
    assert pair.initiator.established
    assert pair.initiator.local_spi == pair.responder.remote_spi


def _secrets(pair: SessionPair) -> list[bytes]:
    out: list[bytes] = []
    for side in "ir":
        for event in pair.of(side, ChildSaUp):
            keys = event.keys
            out += [keys.inbound_key, keys.outbound_key, keys.inbound_salt, keys.outbound_salt]
    # Reading (never patching) the SA context: SK_* must not leak either.
    for session in (pair.initiator, pair.responder):
        ike_keys = session._ctx.keys
        assert ike_keys is not None
        out += [ike_keys.sk_d, ike_keys.sk_ei, ike_keys.sk_er, ike_keys.sk_pi, ike_keys.sk_pr]
    return out


@pytest.mark.parametrize("use_psk", [False, True])
def test_no_repr_or_status_contains_key_material(use_psk: bool) -> None:
    if use_psk:
        i_cfg = make_config(GW_I, GW_R, psk(b"s3cret-psk-value"), local_ts=[str(SITE_I)],
                            remote_ts=[str(SITE_R)])  # fmt: skip
        r_cfg = make_config(GW_R, GW_I, psk(b"s3cret-psk-value"), local_ts=[str(SITE_R)],
                            remote_ts=[str(SITE_I)])  # fmt: skip
    else:
        i_cfg, r_cfg = config_pair()
    pair = establish(SessionPair(i_cfg, r_cfg))
    texts = [repr(pair.initiator), repr(pair.responder), str(pair.initiator.status(pair.now)),
             str(pair.responder.status(pair.now)), repr(i_cfg), repr(r_cfg),
             repr(pair.initiator._ctx), repr(pair.responder._ctx)]  # fmt: skip
    texts += [repr(e) for side in "ir" for e in pair.events[side]]
    texts += [str(e) for side in "ir" for e in pair.events[side]]
    blob = "\n".join(texts)
    secrets = _secrets(pair) + ([b"s3cret-psk-value"] if use_psk else [])
    for secret in secrets:
        assert len(secret) >= 4
        assert secret.hex() not in blob
        assert repr(secret)[2:-1] not in blob
    assert "redacted" in repr(pair.child_up("i"))


def test_responder_with_candidate_configurations_picks_by_identity() -> None:
    """Two configured peers behind one responder: IDi selects the configuration."""
    i_cfg, r_cfg = config_pair()
    other = with_(r_cfg, remote_id=type(r_cfg.local_id).parse("other.example.org"),
                  remote_ts=(ipaddress.ip_network("192.0.2.128/25"),))  # fmt: skip
    pair = establish(SessionPair(i_cfg, [other, r_cfg]))
    assert pair.child_up("r").remote_ts == (SITE_I,)
    assert pair.of("r", IkeSaUp)[0].remote_id == GW_I


def test_misuse_is_a_local_error() -> None:
    from ike.errors import LocalError

    i_cfg, r_cfg = config_pair()
    pair = establish(SessionPair(i_cfg, r_cfg))
    with pytest.raises(LocalError):
        pair.initiator.initiate(pair.now)  # only once, from IDLE
    with pytest.raises(LocalError):
        pair.responder.initiate(pair.now)
    with pytest.raises(LocalError):
        pair.initiator.delete_child(0x12345678, pair.now)
    responder = IkeSession.responder(r_cfg, pair._entropy_r, pair.now, ADDR_R, ADDR_I)
    with pytest.raises(LocalError):
        responder.check_liveness(pair.now)


def test_daemon_calls_during_an_ike_delete_are_harmless() -> None:
    """The daemon's limit watcher may still ask for rekeys/deletes while the IKE SA goes."""
    from ike.errors import LocalError

    pair = establish(SessionPair(*config_pair()))
    (child,) = pair.initiator.children
    pair.initiator.close(pair.now)  # DELETING until the peer answers
    assert not pair.initiator.rekey_child(child.inbound_spi, pair.now)
    assert not pair.initiator.rekey_ike(pair.now)
    pair.initiator.delete_child(child.inbound_spi, pair.now)  # goes with the IKE SA anyway
    with pytest.raises(LocalError):
        pair.initiator.rekey_child(0x12345678, pair.now)  # never ours: misuse
    pair.run()
    assert [type(e) for e in pair.events["i"][-2:]] == [ChildSaDown, IkeSaDown]
    sent = [s for s in pair.sent_by("i") if s.header.exchange_type != ExchangeType.IKE_AUTH]
    assert len(sent) == 2  # IKE_SA_INIT and the one DELETE: no rekey, no Child SA delete


def test_simultaneous_deletes_end_both_sides_once() -> None:
    """Both sides send D(IKE) at once; each answers the other's and goes down once."""
    pair = establish(SessionPair(*config_pair()))
    pair.initiator.close(pair.now)
    pair.responder.close(pair.now)
    pair.run()
    for side in "ir":
        assert len(pair.of(side, IkeSaDown)) == 1
        assert len(pair.of(side, ChildSaDown)) == 1
    assert pair.initiator.finished
    assert pair.initiator.state is pair.responder.state is IkeState.CLOSED
