"""tunneld.childsas: the data-plane side of Child SAs (make-before-break, delete
delay, routes, volume and sequence-number limits), with a real SADatabase."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest

from ike.constants import EncrId
from ike.events import ChildSaKeys, ChildSaUp
from tests.helpers.packets import ipv4
from tunneld.childsas import SEQ32_MAX, SEQ_HEADROOM, ChildSet, Limits, data_plane_sas
from tunneld.dataplane.drops import DropReason, EspDrop
from tunneld.dataplane.sa import InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase
from tunneld.routes import MemoryRoutes

SITE_A = ipaddress.ip_network("198.51.100.0/24")
SITE_B = ipaddress.ip_network("203.0.113.0/24")
PEER = ("192.0.2.2", 4500)
LIMITS = Limits(soft_packets=100, soft_bytes=10**9, hard_packets=110, hard_bytes=2 * 10**9)
SESSION: Any = object()  # ChildSet only stores it


def inner(payload: bytes = b"x") -> bytes:
    return ipv4("198.51.100.10", "203.0.113.10", payload, proto=253)  # 253: experimental


def event(
    spi_in: int, spi_out: int, *, rekey_of: int | None = None, active: bool = True
) -> ChildSaUp:
    keys = ChildSaKeys(os.urandom(32), os.urandom(4), os.urandom(32), os.urandom(4))
    return ChildSaUp(
        inbound_spi=spi_in,
        outbound_spi=spi_out,
        keys=keys,
        esn=False,
        local_ts=(SITE_A,),
        remote_ts=(SITE_B,),
        algorithms="aes256gcm16",
        remote_addr=PEER,
        encr=EncrId.AES_GCM_16,
        rekey_of=rekey_of,
        outbound_active=active,
    )


def make(sa_factory: Any = data_plane_sas) -> tuple[ChildSet, SADatabase, MemoryRoutes]:
    sadb, routes = SADatabase(), MemoryRoutes()
    return (
        ChildSet(
            "gw-b",
            sadb,
            routes,
            delete_delay=5.0,
            replay_window=64,
            limits=LIMITS,
            sa_factory=sa_factory,
        ),
        sadb,
        routes,
    )


def sent_spi(sadb: SADatabase) -> int:
    esp, peer = sadb.encapsulate(inner())
    assert peer == PEER
    return int.from_bytes(esp[:4], "big")


def test_first_child_installs_inbound_outbound_and_route() -> None:
    children, sadb, routes = make()
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    assert sadb.inbound(0x1001) is not None
    assert sent_spi(sadb) == 0x2001
    assert routes.installed() == {SITE_B}


def test_rekey_responder_waits_for_activation_before_sending_on_the_new_sa() -> None:
    children, sadb, _ = make()
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    record = children.install(
        SESSION, event(0x1002, 0x2002, rekey_of=0x1001, active=False), now=1.0
    )
    assert record.generation == 1
    assert sadb.inbound(0x1002) is not None  # inbound first: the peer may use it already
    assert sent_spi(sadb) == 0x2001  # ... but we keep sending on the old SA
    children.activate(0x1002)
    assert sent_spi(sadb) == 0x2002


def test_removed_child_keeps_inbound_for_the_delete_delay() -> None:
    children, sadb, routes = make()
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    children.install(SESSION, event(0x1002, 0x2002, rekey_of=0x1001), now=1.0)
    assert sent_spi(sadb) == 0x2002
    children.remove(0x1001, now=2.0)
    assert children.retiring_spis() == [0x1001]
    assert sadb.inbound(0x1001) is not None and routes.installed() == {SITE_B}
    assert children.next_expiry() == 7.0
    children.expire(6.9)
    assert sadb.inbound(0x1001) is not None
    children.expire(7.0)
    assert sadb.inbound(0x1001) is None and children.retiring_spis() == []
    assert sent_spi(sadb) == 0x2002


def test_last_child_gone_stops_sending_and_removes_the_route() -> None:
    children, sadb, routes = make()
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    children.remove(0x1001, now=1.0)
    assert routes.installed() == set()
    with pytest.raises(EspDrop) as drop:
        sadb.encapsulate(inner())
    assert drop.value.reason is DropReason.NO_POLICY
    children.expire(100.0)
    assert sadb.tunnels == ()


class LoggedRoutes(MemoryRoutes):
    """MemoryRoutes that remembers every change, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Any]] = []

    def add(self, net: Any) -> None:
        self.log.append(("add", net))
        super().add(net)

    def remove(self, net: Any) -> None:
        self.log.append(("remove", net))
        super().remove(net)


def test_rekey_responder_keeps_the_route_between_the_old_sas_delete_and_activation() -> None:
    """Regression: as rekey responder the old Child SA goes (the peer's DELETE) just
    before the new one is activated; the route used to be removed and added back in
    between, and the kernel dropped what arrived meanwhile (4 of 16,000 probes at
    1 per ms over 3 rekeys in tests/netns/test_rekey_netns.py)."""
    sadb, routes = SADatabase(), LoggedRoutes()
    children = ChildSet("gw-b", sadb, routes, delete_delay=5.0, replay_window=64, limits=LIMITS)
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    children.install(SESSION, event(0x1002, 0x2002, rekey_of=0x1001, active=False), now=1.0)
    children.remove(0x1001, now=1.1)
    assert routes.installed() == {SITE_B}
    children.activate(0x1002)
    assert routes.log == [("add", SITE_B)]  # never removed
    assert sent_spi(sadb) == 0x2002


def test_a_successor_never_activated_takes_the_route_with_it() -> None:
    children, sadb, routes = make()
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    children.install(SESSION, event(0x1002, 0x2002, rekey_of=0x1001, active=False), now=1.0)
    children.remove(0x1001, now=1.1)
    children.remove(0x1002, now=1.2)
    assert routes.installed() == set()
    with pytest.raises(EspDrop):
        sadb.encapsulate(inner())


def test_removing_the_current_child_falls_back_to_the_newest_active_one() -> None:
    children, sadb, _ = make()
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    children.install(SESSION, event(0x1002, 0x2002), now=1.0)
    children.remove(0x1002, now=2.0)
    assert sent_spi(sadb) == 0x2001


def test_watch_reports_inbound_traffic_soft_and_hard_limits() -> None:
    children, sadb, _ = make()
    record = children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    assert children.watch().inbound_seen == []
    for _ in range(LIMITS.soft_packets):
        sadb.encapsulate(inner())
    result = children.watch()
    assert result.rekey == [record] and result.expire == []
    assert children.watch().rekey == []  # asked once only
    for _ in range(LIMITS.hard_packets - LIMITS.soft_packets):
        sadb.encapsulate(inner())
    assert children.watch().expire == [record]
    # authenticated inbound ESP is reported once per change
    peer_sa = OutboundSA(0x1001, record.event.keys.inbound_key, record.event.keys.inbound_salt)
    reply = bytearray(inner())
    reply[12:20] = reply[16:20] + reply[12:16]  # swap source and destination
    sadb.decapsulate(peer_sa.encrypt(bytes(reply), 4))
    assert children.watch().inbound_seen == [record]
    assert children.watch().inbound_seen == []


def test_watch_wanted_says_whether_watch_would_report_and_changes_nothing() -> None:
    """The daemon's watcher wakes a peer only when this says so (peer.py rule 4)."""
    children, sadb, _ = make()
    record = children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    assert not children.watch_wanted()  # idle: the peer task sleeps on
    for _ in range(LIMITS.soft_packets):
        sadb.encapsulate(inner())
    assert children.watch_wanted() and children.watch_wanted()  # reading changes nothing
    assert children.watch().rekey == [record]
    assert not children.watch_wanted()  # the rekey was asked for once
    peer_sa = OutboundSA(0x1001, record.event.keys.inbound_key, record.event.keys.inbound_salt)
    reply = bytearray(inner())
    reply[12:20] = reply[16:20] + reply[12:16]
    sadb.decapsulate(peer_sa.encrypt(bytes(reply), 4))
    assert children.watch_wanted()  # inbound ESP: liveness to report
    assert children.watch().inbound_seen == [record]
    assert not children.watch_wanted()
    for _ in range(LIMITS.hard_packets - LIMITS.soft_packets):
        sadb.encapsulate(inner())
    assert children.watch_wanted() and children.watch().expire == [record]


def test_a_sequence_number_near_2_32_forces_a_rekey_before_it_wraps() -> None:
    start = SEQ32_MAX - SEQ_HEADROOM - 3

    def near_wrap(ev: ChildSaUp, window: int) -> tuple[InboundSA, OutboundSA]:
        inbound, _ = data_plane_sas(ev, window)
        keys = ev.keys
        return inbound, OutboundSA(
            ev.outbound_spi, keys.outbound_key, keys.outbound_salt, initial_seq=start
        )

    children, sadb, _ = make(near_wrap)
    record = children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    for _ in range(3):
        sadb.encapsulate(inner())
    assert children.watch().rekey == []  # packet count far below the soft limit
    sadb.encapsulate(inner())
    assert record.outbound.seq == SEQ32_MAX - SEQ_HEADROOM
    assert children.watch().rekey == [record]


# -- rules 3 and 6: Child SAs of an IKE SA being deleted (withdrawn), Child SAs the
# peer may not have installed yet (unconfirmed); issue #8 ---------------------------


def make_logged() -> tuple[ChildSet, SADatabase, LoggedRoutes]:
    sadb, routes = SADatabase(), LoggedRoutes()
    return (
        ChildSet("gw-b", sadb, routes, delete_delay=5.0, replay_window=64, limits=LIMITS),
        sadb,
        routes,
    )


def test_a_withdrawn_child_hands_over_to_a_confirmed_one_at_once() -> None:
    children, sadb, routes = make_logged()
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)  # the survivor's
    children.install(SESSION, event(0x1002, 0x2002), now=1.0)  # the loser's, newer: current
    assert sent_spi(sadb) == 0x2002
    children.withdraw(0x1002)
    assert sent_spi(sadb) == 0x2001
    children.remove(0x1002, now=2.0)  # the DELETE completes
    assert sent_spi(sadb) == 0x2001 and routes.log == [("add", SITE_B)]


def test_a_withdrawn_child_keeps_sending_until_the_unconfirmed_one_is_confirmed() -> None:
    children, sadb, routes = make_logged()
    # the survivor's Child SA: we answered its IKE_AUTH, the peer may not have it yet
    children.install(SESSION, event(0x1001, 0x2001), now=0.0, confirmed=False)
    children.install(SESSION, event(0x1002, 0x2002), now=1.0)  # the loser's, confirmed
    children.withdraw(0x1002)
    assert sent_spi(sadb) == 0x2002  # nothing confirmed to hand over to
    assert children.successor(children.records[0x1002]) is None
    children.activate(0x1001)  # ESP arrived on it, or the loser's DELETE was answered
    assert sent_spi(sadb) == 0x2001
    children.remove(0x1002, now=2.0)
    assert sent_spi(sadb) == 0x2001 and routes.log == [("add", SITE_B)]


def test_a_withdrawn_child_never_takes_over_from_a_current_one() -> None:
    children, sadb, _ = make_logged()
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    children.install(SESSION, event(0x1002, 0x2002, active=False), now=1.0, confirmed=False)
    children.withdraw(0x1002)
    children.activate(0x1002)  # e.g. a late ChildSaOutboundActive
    assert sent_spi(sadb) == 0x2001


def test_the_last_withdrawn_child_still_sends_and_its_removal_unroutes() -> None:
    children, sadb, routes = make_logged()
    children.install(SESSION, event(0x1001, 0x2001), now=0.0)
    children.withdraw(0x1001)
    assert sent_spi(sadb) == 0x2001 and routes.installed() == {SITE_B}
    children.remove(0x1001, now=1.0)
    assert routes.installed() == set() and not children.carrying()
