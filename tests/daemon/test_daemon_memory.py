"""Two daemons in one process, joined by in-memory devices, on trio's virtual clock.

Everything but the kernel is real: configuration files, PKI, IKE sessions,
the SA database, the packet pumps and the control socket. The TUN devices,
UDP sockets and routes are the in-memory twins from ``tunneld.io`` and
``tunneld.routes``. The ``pair`` fixture and its helpers, shared by the other
tests here: tests/helpers/daemon_memory.py.
"""

from __future__ import annotations

import ipaddress

import pytest
import trio
import trio.testing

from tests.helpers.daemon_memory import Pair, children, wait_for_children
from tests.helpers.packets import udp_packet
from tools.lab import SiteOptions
from tunneld import control
from tunneld.cli import format_status

SITE_A = ipaddress.ip_network("198.51.100.0/24")
SITE_B = ipaddress.ip_network("203.0.113.0/24")


@pytest.mark.parametrize(
    "pair",
    [
        SiteOptions(),
        SiteOptions(key_type="ed25519", ike=("aes128gcm16-prfsha384-ecp256",)),
        SiteOptions(auth="psk", esp=("aes128gcm16-esn",)),
    ],
    indirect=True,
    ids=["ecdsa-x25519", "ed25519-ecp256", "psk-esn"],
)
async def test_tunnel_comes_up_and_carries_packets_both_ways(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    ca, cb = children(pair.a)[0], children(pair.b)[0]
    assert ca["spi_in"] == cb["spi_out"] and ca["spi_out"] == cb["spi_in"]
    assert pair.a.devices.route_table.installed() == {SITE_B}
    assert pair.b.devices.route_table.installed() == {SITE_A}

    tun_a, tun_b = pair.a.devices.tun, pair.b.devices.tun
    assert tun_a is not None and tun_b is not None
    for i in range(100):
        tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"a->b %d" % i))
        tun_b.host_send(udp_packet("203.0.113.10", "198.51.100.10", b"b->a %d" % i))
    with trio.fail_after(5):
        got_b = [await tun_b.host_recv() for _ in range(100)]
        got_a = [await tun_a.host_recv() for _ in range(100)]
    assert got_b[42].endswith(b"a->b 42") and got_a[99].endswith(b"b->a 99")
    ca = children(pair.a)[0]
    assert ca["out"] == {"packets": 100, "bytes": sum(len(p) for p in got_b), "seq": 100}
    assert ca["in"]["packets"] == 100


async def test_status_over_the_control_socket_shows_sas_without_secrets(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    st = await trio.to_thread.run_sync(control.request, str(pair.a.socket), {"cmd": "status"})
    assert st["ok"] and st["gateway"] == "gw-a"
    (peer,) = st["peers"]
    assert peer["state"] == "established"
    assert peer["liveness"]["state"] == "alive" and peer["liveness"]["last_heard"] >= 0
    child = peer["child_sas"][0]
    assert child["generation"] == 0
    # the default child lifetime is 1 h, rekeyed up to 10 % early, deleted at 110 %
    # (virtual time passes while the status request runs in a thread: compare the two)
    assert 0 < child["rekey_in"] <= 3600 and child["expires_in"] <= 3960
    assert 360 <= child["expires_in"] - child["rekey_in"] <= 720
    (ike,) = peer["ike_sas"]
    assert ike["role"] == "initiator" and ike["remote_id"] == "gw-b.example.org"
    assert peer["child_sas"][0]["algorithms"].startswith("aes256gcm16")
    text = repr(st)
    human = format_status({k: v for k, v in st.items() if k != "ok"})
    assert "peer gw-b [established]" in human and "liveness alive" in human
    assert f"Child SA {child['spi_in']}_in {child['spi_out']}_out" in human and "gen 0" in human
    records = list(pair.a.daemon.peers["gw-b"].children.records.values())
    assert records
    for record in records:
        keys = record.event.keys
        for secret in (keys.outbound_key, keys.inbound_key, keys.outbound_salt):
            assert secret.hex() not in text and secret.hex().upper() not in text


async def test_down_sends_delete_and_removes_routes_on_both_sides(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    resp = await pair.a.daemon._control({"cmd": "down", "peer": "gw-b"})
    assert resp == {"ok": True}
    with trio.fail_after(10):
        while children(pair.b) or children(pair.a):
            await trio.sleep(0.05)
    assert pair.a.devices.route_table.installed() == set()
    assert pair.b.devices.route_table.installed() == set()
    peer_b = pair.b.daemon.status()["peers"][0]
    assert peer_b["state"] == "down"
    # `up` brings it back with fresh SPIs.
    old = pair.a.daemon.peers["gw-b"].children.installed_total
    await pair.a.daemon._control({"cmd": "up", "peer": "gw-b"})
    await wait_for_children(pair.a, pair.b)
    assert pair.a.daemon.peers["gw-b"].children.installed_total == old + 1


async def test_stopping_a_daemon_deletes_the_peers_sas(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    pair.a.daemon.stop()
    with trio.fail_after(10):
        while children(pair.b):
            await trio.sleep(0.05)
    assert pair.b.devices.route_table.installed() == set()


async def test_unknown_control_command_and_peer_are_refused(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    assert (await pair.a.daemon._control({"cmd": "frobnicate"}))["ok"] is False
    resp = await pair.a.daemon._control({"cmd": "up", "peer": "nobody"})
    assert resp["ok"] is False and "nobody" in resp["error"]


async def test_garbage_on_the_ike_ports_is_counted_not_fatal(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    junk = pair.network.bind("192.0.2.99", 500)
    for data in (b"", b"\x00" * 3, b"\x01" * 40, b"\xff" * 300):
        junk.sendto(data, ("192.0.2.2", 500))
        junk.sendto(b"\x00\x00\x00\x00" + data, ("192.0.2.2", 4500))
    await trio.sleep(1)
    st = pair.b.daemon.status()
    assert st["ike_dispatch"]["unparsable"] >= 4
    assert children(pair.b)  # the tunnel is still up
