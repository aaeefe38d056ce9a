"""The metrics collector against two real daemons over in-memory links (virtual clock).

What a scrape says must be what the daemon did: one IKE SA and one Child SA
with the peer, its packets and bytes both ways, and totals that keep growing
across a Child SA rekey and an IKE SA rekey (the old SAs' counts stay in
them once those SAs are gone: tunneld.childsas rule 7).
"""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.daemon_memory import Pair, children, wait_for_children
from tests.helpers.packets import udp_packet
from tunneld.metrics import EndpointStats, registry_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(pair: Pair) -> Samples:
    """gw-a's exposition, as Prometheus would parse it: value by (name, sorted labels)."""
    registry = registry_for(pair.a.daemon, EndpointStats())
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def peer(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({"peer": "gw-b", **labels}.items()))


async def send_both_ways(pair: Pair, count: int) -> int:
    """``count`` packets each way; the inner bytes sent by gw-a."""
    tun_a, tun_b = pair.a.devices.tun, pair.b.devices.tun
    assert tun_a is not None and tun_b is not None
    size = 0
    for i in range(count):
        packet = udp_packet("198.51.100.10", "203.0.113.10", b"a->b %d" % i)
        size += len(packet)
        tun_a.host_send(packet)
        tun_b.host_send(udp_packet("203.0.113.10", "198.51.100.10", b"b->a %d" % i))
    with trio.fail_after(5):
        for _ in range(count):
            await tun_b.host_recv()
            await tun_a.host_recv()
    return size


async def wait_for_rekeyed_child(pair: Pair, spi: str) -> None:
    with trio.fail_after(30):
        while [c["spi_in"] for c in children(pair.a)] in ([], [spi]) or len(children(pair.a)) > 1:
            await trio.sleep(0.1)


async def test_a_scrape_counts_sas_packets_and_rekeys_of_the_peer(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    sent = await send_both_ways(pair, 50)
    m = scrape(pair)
    assert m[peer("tunneld_peer_state", state="established")] == 1
    assert m[peer("tunneld_peer_state", state="down")] == 0
    assert m[peer("tunneld_peer_ike_sas")] == 1
    assert m[peer("tunneld_peer_child_sas")] == 1
    assert m[peer("tunneld_peer_packets_total", direction="out")] == 50
    assert m[peer("tunneld_peer_packets_total", direction="in")] == 50
    assert m[peer("tunneld_peer_bytes_total", direction="out")] == sent
    assert m[peer("tunneld_peer_ike_sas_established_total")] == 1
    assert m[peer("tunneld_peer_handshake_duration_seconds_count")] == 1
    assert m[peer("tunneld_peer_handshake_duration_seconds_bucket", le="+Inf")] == 1
    assert m[peer("tunneld_peer_child_rekeys_total")] == 0
    assert m[("tunneld_dataplane_drops_total", (("direction", "in"), ("reason", "replay")))] == 0

    # A Child SA rekey, then an IKE SA rekey: the old SAs go, their counts stay.
    (old,) = children(pair.a)
    assert (await pair.a.daemon._control({"cmd": "rekey", "peer": "gw-b"}))["ok"]
    await wait_for_rekeyed_child(pair, old["spi_in"])
    assert (await pair.a.daemon._control({"cmd": "rekey", "peer": "gw-b", "ike": True}))["ok"]
    await trio.sleep(60)  # past the delete delay: the old inbound SA leaves the data plane
    assert pair.a.daemon.sadb.inbound(int(old["spi_in"], 16)) is None
    sent += await send_both_ways(pair, 30)
    m = scrape(pair)
    assert m[peer("tunneld_peer_child_rekeys_total")] == 1
    assert m[peer("tunneld_peer_ike_rekeys_total")] == 1
    assert m[peer("tunneld_peer_ike_sas")] == 1 and m[peer("tunneld_peer_child_sas")] == 1
    assert m[peer("tunneld_peer_packets_total", direction="out")] == 80
    assert m[peer("tunneld_peer_packets_total", direction="in")] == 80
    assert m[peer("tunneld_peer_bytes_total", direction="out")] == sent
    assert m[peer("tunneld_peer_ike_sas_established_total")] == 1  # a rekey is not a handshake


async def test_a_peer_that_is_down_scrapes_as_down_with_its_totals_kept(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    await send_both_ways(pair, 10)
    assert (await pair.a.daemon._control({"cmd": "down", "peer": "gw-b"}))["ok"]
    await trio.sleep(60)
    m = scrape(pair)
    assert m[peer("tunneld_peer_state", state="down")] == 1
    assert m[peer("tunneld_peer_state", state="established")] == 0
    assert m[peer("tunneld_peer_ike_sas")] == 0 and m[peer("tunneld_peer_child_sas")] == 0
    assert m[peer("tunneld_peer_packets_total", direction="in")] == 10
