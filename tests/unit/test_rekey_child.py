"""Child SA rekeying (RFC 7296 §1.3.3, §2.8, §2.17): timing, make-before-break, PFS, loss.

Two sessions over :class:`sessionpair.SessionPair` on a virtual clock. The
exchanges of a rekey, strongSwan style::

    CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr } -->
                <-- { SA, Nr, [KEr,] TSi, TSr }
    INFORMATIONAL { D(ESP, old inbound SPI) } -->
                <-- { D(ESP, the other half) }
"""

from __future__ import annotations

import pytest
from sessionpair import (
    T0,
    Link,
    Sent,
    SessionPair,
    assert_one_pair,
    config_pair,
    data_plane,
    with_,
)

from ike.constants import ExchangeType, NotifyType, PayloadType
from ike.crypto import prf_plus
from ike.events import ChildSaDown, ChildSaOutboundActive, ChildSaUp, IkeSaDown
from ike.exchanges.context import ChildStatus, decode_message
from ike.payloads import KePayload, NoncePayload, NotifyPayload, SaPayload, TsPayload
from ike.proposals import parse_esp_proposal
from ike.session import IkeSession
from ike.wire import Message

LIFETIME = 60.0  # child_lifetime of these tests; the IKE SA keeps the default 4 h
CCSA = ExchangeType.CREATE_CHILD_SA
INFO = ExchangeType.INFORMATIONAL


def pair_of(
    seed: int = 0, link: Link | None = None, r_esp: str | None = None, **common: object
) -> SessionPair:
    """Sessions with 60 s Child SAs; ``r_esp`` gives the responder its own ESP proposal."""
    i_cfg, r_cfg = config_pair(child_lifetime=LIFETIME, **common)
    if r_esp is not None:
        r_cfg = with_(r_cfg, esp_proposals=(parse_esp_proposal(r_esp),))
    return SessionPair(i_cfg, r_cfg, link=link, seed=seed)


def established(
    seed: int = 0, link: Link | None = None, r_esp: str | None = None, **common: object
) -> SessionPair:
    pair = pair_of(seed, link, r_esp, **common)
    pair.start()
    pair.run(until=T0 + 1)
    assert pair.established()
    return pair


def session(pair: SessionPair, side: str) -> IkeSession:
    return pair.initiator if side == "i" else pair.responder


def only_child_spi(pair: SessionPair, side: str) -> int:
    (child,) = session(pair, side).children
    return child.inbound_spi


def exchanges(pair: SessionPair, since: int = 0) -> list[tuple[str, str, bool]]:
    """(sender, exchange, is_response) of everything on the wire from index ``since``."""
    return [
        (s.sender, ExchangeType(s.header.exchange_type).name, s.header.is_response)
        for s in pair.wire[since:]
    ]


def decrypted(pair: SessionPair, sent: Sent) -> Message:
    """A message as its receiver decrypted it (read-only use of the receiver's keys)."""
    receiver = pair.responder if sent.sender == "i" else pair.initiator
    return decode_message(receiver._ctx, sent.header, sent.data)


# -- when -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_soft_lifetime_rekey_starts_inside_the_jitter_window(seed: int) -> None:
    """Both sides schedule at created + 60 s x (1 - 0.1 u); the earlier one rekeys, exactly then."""
    pair = established(seed)
    (ci,), (cr,) = pair.initiator.children, pair.responder.children
    for child in (ci, cr):
        created = child.lifetime.created
        assert created + 0.9 * LIFETIME <= child.lifetime.rekey_at <= created + LIFETIME
        assert child.lifetime.expire_at == pytest.approx(created + 1.1 * LIFETIME)
    first = min(ci.lifetime.rekey_at, cr.lifetime.rekey_at)
    starter = "i" if ci.lifetime.rekey_at < cr.lifetime.rekey_at else "r"
    before = len(pair.wire)
    pair.run(until=first - 1e-6)
    assert len(pair.wire) == before  # nothing happens before the soft lifetime
    pair.run(until=first + 1)
    request = pair.wire[before]
    assert (request.sender, request.header.exchange_type, request.at) == (starter, CCSA, first)
    assert_one_pair(pair)


def test_jitter_spreads_the_rekey_times_and_zero_jitter_is_exact() -> None:
    times = []
    for seed in range(20):
        (child,) = established(seed).initiator.children
        times.append(child.lifetime.rekey_at - child.lifetime.created)
    assert all(0.9 * LIFETIME <= t <= LIFETIME for t in times)
    assert max(times) - min(times) > 0.25 * 0.1 * LIFETIME  # really random, not a constant
    (child,) = established(rekey_jitter=0.0).initiator.children
    assert child.lifetime.rekey_at == child.lifetime.created + LIFETIME


def test_the_rekeyed_sa_is_rekeyed_again_one_lifetime_later() -> None:
    pair = established(rekey_jitter=0.0)
    pair.run(until=T0 + 3.5 * LIFETIME)
    ups = pair.of("i", ChildSaUp)
    assert len(ups) == 4  # IKE_AUTH's, then one rekey per lifetime
    assert [u.rekey_of for u in ups[1:]] == [u.inbound_spi for u in ups[:-1]]
    assert_one_pair(pair)


# -- how: make-before-break, from either side ---------------------------------------------


@pytest.mark.parametrize("starter", ["i", "r"])
def test_forced_rekey_is_make_before_break(starter: str) -> None:
    pair = established()
    other = "r" if starter == "i" else "i"
    old_s, old_o = only_child_spi(pair, starter), only_child_spi(pair, other)
    before, events_before = len(pair.wire), {k: len(v) for k, v in pair.events.items()}
    seen_at_response: list[int] = []
    pair.link.rules.append(
        lambda s: (
            seen_at_response.append(len(pair.events[other]))
            if (s.header.exchange_type, s.header.is_response) == (CCSA, True)
            else None
        )
    )
    assert session(pair, starter).rekey_child(old_s, pair.now)
    assert not session(pair, starter).rekey_child(old_s, pair.now)  # under way already
    pair.run(until=pair.now + 5)

    assert exchanges(pair, before) == [
        (starter, "CREATE_CHILD_SA", False),  # { N(REKEY_SA), SA, Ni, TSi, TSr } -->
        (other, "CREATE_CHILD_SA", True),  # <-- { SA, Nr, TSi, TSr }
        (starter, "INFORMATIONAL", False),  # { D(ESP, old inbound SPI) } -->
        (other, "INFORMATIONAL", True),  # <-- { D(ESP, the other half) }
    ]
    new_s, new_o = assert_one_pair(pair)
    if starter == "r":
        new_s, new_o = new_o, new_s
    # The starter installs and sends at once; its old SA goes when the DELETE completes.
    up, down = pair.events[starter][events_before[starter] :]
    assert isinstance(up, ChildSaUp) and (up.rekey_of, up.outbound_active) == (old_s, True)
    assert isinstance(down, ChildSaDown) and (down.inbound_spi, down.reason) == (old_s, "rekeyed")
    # The other side installs inbound before its response leaves, sends only after the DELETE.
    up, down, active = pair.events[other][events_before[other] :]
    assert isinstance(up, ChildSaUp) and (up.rekey_of, up.outbound_active) == (old_o, False)
    assert seen_at_response == [events_before[other] + 1]  # ChildSaUp queued before the answer
    assert isinstance(down, ChildSaDown) and down.inbound_spi == old_o
    assert isinstance(active, ChildSaOutboundActive) and active.inbound_spi == new_o.inbound_spi
    first = pair.of(starter, ChildSaUp)[0]
    assert (
        new_s.inbound_spi not in (old_s, old_o)
        and new_s.keys.outbound_key != first.keys.outbound_key
    )


def test_rekey_request_and_response_carry_the_rfc_payloads() -> None:
    pair = established()
    old_i, old_r = only_child_spi(pair, "i"), only_child_spi(pair, "r")
    before = len(pair.wire)
    pair.initiator.rekey_child(old_i, pair.now)
    pair.run(until=pair.now + 5)
    request, response = (decrypted(pair, s) for s in pair.wire[before : before + 2])
    assert [type(p).__name__ for p in request.payloads] == [
        "NotifyPayload", "SaPayload", "NoncePayload", "TsPayload", "TsPayload",
    ]  # fmt: skip
    (rekey,) = request.find_all(NotifyPayload)
    assert rekey.notify_type == NotifyType.REKEY_SA and rekey.protocol == 3
    assert int.from_bytes(rekey.spi, "big") == old_i  # §1.3.3: the SPI we receive on
    assert [type(p).__name__ for p in response.payloads] == [
        "SaPayload", "NoncePayload", "TsPayload", "TsPayload",
    ]  # fmt: skip
    new_i, new_r = assert_one_pair(pair)
    (offer,) = request.find_all(SaPayload)[0].proposals
    assert int.from_bytes(offer.spi, "big") == new_i.inbound_spi
    assert (
        int.from_bytes(response.find_all(SaPayload)[0].proposals[0].spi, "big") == new_r.inbound_spi
    )
    kinds = [p.payload_type for p in request.find_all(TsPayload)]
    assert kinds == [PayloadType.TSi, PayloadType.TSr]
    deletes = [decrypted(pair, s) for s in pair.wire[before + 2 : before + 4]]
    assert [d.payloads[0].spis for d in deletes] == [  # type: ignore[attr-defined]
        (old_i.to_bytes(4, "big"),),
        (old_r.to_bytes(4, "big"),),
    ]


def _keymat_without_pfs(pair: SessionPair, request: Message, response: Message) -> bytes:
    ctx = pair.initiator._ctx  # read-only: the IKE SA's PRF and SK_d
    assert ctx.prf is not None and ctx.keys is not None
    ni = request.find_all(NoncePayload)[0].nonce
    nr = response.find_all(NoncePayload)[0].nonce
    return prf_plus(ctx.prf, ctx.keys.sk_d, ni + nr, 2 * (32 + 4))


@pytest.mark.parametrize("pfs", [False, True])
def test_pfs_rekey_mixes_a_fresh_dh_secret_into_keymat(pfs: bool) -> None:
    """§2.17: KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr) with PFS, prf+(SK_d, Ni | Nr) without."""
    esp = ("aes256gcm16-x25519",) if pfs else ("aes256gcm16",)
    pair = established(esp=esp)
    first = pair.child_up("i")
    assert first.algorithms == "aes256gcm16-noesn"  # IKE_AUTH's Child SA has no KE (§1.2)
    before = len(pair.wire)
    pair.initiator.rekey_child(first.inbound_spi, pair.now)
    pair.run(until=pair.now + 5)
    request, response = (decrypted(pair, s) for s in pair.wire[before : before + 2])
    assert bool(request.find_all(KePayload)) is pfs and bool(response.find_all(KePayload)) is pfs
    new_i, _new_r = assert_one_pair(pair)  # both sides agree, crosswise
    assert new_i.algorithms == ("aes256gcm16-x25519-noesn" if pfs else "aes256gcm16-noesn")
    plain = _keymat_without_pfs(pair, request, response)
    ours = new_i.keys.outbound_key + new_i.keys.outbound_salt + new_i.keys.inbound_key
    assert (ours == plain[: len(ours)]) is not pfs


def test_invalid_ke_payload_retries_with_the_group_the_responder_wants() -> None:
    """§1.3: INVALID_KE_PAYLOAD names the group; the rekey is sent again with it."""
    # We offer both groups, KE for ecp256 first; the responder takes x25519 only.
    pair = established(esp=("aes256gcm16-ecp256-x25519",), r_esp="aes256gcm16-x25519")
    before = len(pair.wire)
    pair.initiator.rekey_child(only_child_spi(pair, "i"), pair.now)
    pair.run(until=pair.now + 5)
    first_request, refusal, second_request = (
        decrypted(pair, s) for s in pair.wire[before : before + 3]
    )
    assert first_request.find_all(KePayload)[0].group == 19
    (n,) = refusal.notifies()
    assert (n.notify_type, n.data) == (NotifyType.INVALID_KE_PAYLOAD, (31).to_bytes(2, "big"))
    assert second_request.find_all(KePayload)[0].group == 31
    new_i, _ = assert_one_pair(pair)
    assert new_i.algorithms == "aes256gcm16-x25519-noesn"


# -- loss and delay -----------------------------------------------------------------------


def _drop_first(kind: ExchangeType, response: bool, times: int = 1) -> object:
    left = [times]

    def rule(sent: Sent) -> int | None:
        if (sent.header.exchange_type, sent.header.is_response) == (kind, response) and left[0]:
            left[0] -= 1
            return 0
        return None

    return rule


@pytest.mark.parametrize(
    ("what", "times"),
    [("request", 1), ("response", 1), ("request", 3), ("response", 3)],
)
def test_lost_rekey_messages_are_retransmitted_and_install_once(what: str, times: int) -> None:
    link = Link()
    pair = established(link=link)
    link.rules.append(_drop_first(CCSA, what == "response", times))  # type: ignore[arg-type]
    pair.initiator.rekey_child(only_child_spi(pair, "i"), pair.now)
    pair.run(until=pair.now + 30)
    assert_one_pair(pair)
    for side in "ir":
        assert len(pair.of(side, ChildSaUp)) == 2  # the first and one rekey, never twice
    requests = [s for s in pair.sent_by("i") if s.header.exchange_type == CCSA]
    assert len(requests) == times + 1 and len({s.data for s in requests}) == 1  # §2.1


def test_a_delayed_response_after_a_retransmission_still_ends_with_one_sa() -> None:
    """The first answer comes 2.5 s late, after the retransmission was answered from cache."""
    link = Link()
    pair = established(link=link)
    late = [1]

    def delay(sent: Sent) -> float | None:
        if (sent.header.exchange_type, sent.header.is_response) == (CCSA, True) and late[0]:
            late[0] -= 1
            return 2.5
        return None

    link.delays.append(delay)
    pair.initiator.rekey_child(only_child_spi(pair, "i"), pair.now)
    pair.run(until=pair.now + 30)
    assert_one_pair(pair)
    answers = [s for s in pair.sent_by("r") if s.header.exchange_type == CCSA]
    assert len(answers) == 2 and answers[0].data == answers[1].data  # cached, identical
    assert len(pair.of("r", ChildSaUp)) == 2 and sum(pair.initiator.drops.values()) == 1


# -- when rekeying does not work: the hard lifetime ------------------------------------------


def test_hard_lifetime_ends_a_child_sa_that_could_not_be_rekeyed() -> None:
    """Each side offers what the other refuses (PFS vs none): at 1.1 x lifetime the SA goes."""
    pair = established(esp=("aes256gcm16-x25519",), r_esp="aes256gcm16")
    (ci,), (cr,) = pair.initiator.children, pair.responder.children
    hard = min(ci.lifetime.expire_at, cr.lifetime.expire_at)
    pair.run(until=hard - 1e-6)
    assert data_plane(pair.events["i"]) and data_plane(pair.events["r"])  # refused, still up
    refusals = [
        n.notify_type
        for s in pair.wire
        if s.header.exchange_type == CCSA and s.header.is_response
        for n in decrypted(pair, s).notifies()
    ]
    assert refusals and set(refusals) == {NotifyType.NO_PROPOSAL_CHOSEN}
    pair.run(until=hard + 5)
    first_down = min(
        (s.at for s in pair.wire if s.at >= hard and s.header.exchange_type == INFO),
    )
    assert first_down == hard  # the DELETE leaves exactly at the hard lifetime
    for side in "ir":
        (down,) = pair.of(side, ChildSaDown)
        assert down.reason in ("hard lifetime expired", "deleted by peer")
        assert not data_plane(pair.events[side]) and not pair.of(side, IkeSaDown)
    assert pair.initiator.children == () and pair.responder.children == ()


def test_status_reports_rekey_state_without_keys() -> None:
    pair = established()
    pair.initiator.rekey_child(only_child_spi(pair, "i"), pair.now)
    (child,) = pair.initiator.status(pair.now)["child_sas"]
    assert child["state"] == "rekey_sent" and child["outbound_active"] is True
    assert 0 < child["rekey_in"] <= LIFETIME and child["expires_in"] > child["rekey_in"]
    assert pair.initiator.rekeying
    pair.run(until=pair.now + 5)
    assert not pair.initiator.rekeying
    assert [c.status for c in pair.initiator.children] == [ChildStatus.INSTALLED]


def test_no_repr_or_status_leaks_keys_after_pfs_rekeys_and_a_collision() -> None:
    pair = established(esp=("aes256gcm16-x25519",))
    pair.initiator.rekey_child(only_child_spi(pair, "i"), pair.now)
    pair.responder.rekey_child(only_child_spi(pair, "r"), pair.now)  # a collision, too
    pair.run(until=pair.now + 5)
    sessions = (pair.initiator, pair.responder)
    texts = [repr(s) for s in sessions] + [str(s.status(pair.now)) for s in sessions]
    texts += [repr(c) for s in sessions for c in s.children]
    texts += [repr(s._ctx) for s in sessions]  # read-only: the SA context holds SK_*
    texts += [repr(e) for side in "ir" for e in pair.events[side]]
    blob = "\n".join(texts)
    secrets: list[bytes] = []
    for side in "ir":
        for up in pair.of(side, ChildSaUp):
            k = up.keys
            secrets += [k.inbound_key, k.outbound_key, k.inbound_salt, k.outbound_salt]
    for s in sessions:
        keys = s._ctx.keys
        assert keys is not None
        secrets += [keys.sk_d, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr]
        secrets += [n for c in s.children for n in c.nonces]
    assert len(secrets) > 20
    for secret in secrets:
        assert secret.hex() not in blob and repr(secret)[2:-1] not in blob


# -- an additional Child SA (§1.3.1) ---------------------------------------------------------


@pytest.mark.parametrize(("creator", "pfs"), [("i", False), ("r", True)])
def test_an_additional_child_sa_for_a_narrower_selector_pair(creator: str, pfs: bool) -> None:
    """CREATE_CHILD_SA { SA, Ni, [KEi,] TSi, TSr } --> <-- { SA, Nr, [KEr,] TSi, TSr }"""
    pair = established(esp=("aes256gcm16-x25519",) if pfs else ("aes256gcm16",))
    other = "r" if creator == "i" else "i"
    first = pair.child_up(creator)
    local, remote = (
        net.subnets(new_prefix=25).__next__() for net in (first.local_ts[0], first.remote_ts[0])
    )
    session(pair, creator).create_child(pair.now, [local], [remote])
    pair.run(until=pair.now + 5)
    live = {side: data_plane(pair.events[side]) for side in "ir"}
    assert len(live["i"]) == len(live["r"]) == 2 and first.inbound_spi in live[creator]
    new_c = next(sa.up for spi, sa in live[creator].items() if spi != first.inbound_spi)
    new_o = live[other][new_c.outbound_spi].up
    assert new_c.rekey_of is None and new_c.outbound_active and new_o.outbound_active
    assert (new_c.local_ts, new_c.remote_ts) == ((local,), (remote,))
    assert (new_o.local_ts, new_o.remote_ts) == ((remote,), (local,))
    assert new_c.keys.outbound_key == new_o.keys.inbound_key
    assert new_c.keys.inbound_key == new_o.keys.outbound_key
    assert ("x25519" in new_c.algorithms) is pfs
    assert not pair.of("i", ChildSaDown) and not pair.of("r", ChildSaDown)
