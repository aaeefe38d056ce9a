"""A peer's ``last_error`` in ``tunneld status``: errors only, never a clean DELETE.

Regression: ``Peer._ike_down`` asked the session whether it was established
*after* it had gone down (always no), so every IKE SA that ended, also one
deleted cleanly by the peer or by the operator, showed up as ``last_error``
("deleted by peer", "closed locally"). Found by
tests/netns/test_daemon_netns.py::test_sigterm_deletes_sas_and_routes_on_both_sides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from ike.constants import DhGroup, ExchangeType, HeaderFlag
from ike.payloads import KePayload, NoncePayload, SaPayload
from ike.proposals import make_offer, parse_ike_proposal
from ike.wire import Message
from tests.helpers.daemon_memory import Pair, children, start_site, wait_for_children
from tools.lab import GWA_UNDERLAY, GWB_UNDERLAY, SiteOptions, write_site_configs
from tunneld.io.udp import MemoryNetwork


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """Two daemons over in-memory devices (as in test_daemon_memory), certificate auth."""
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        b, cancel_b = await start_site(nursery, conf_b, network)
        a, cancel_a = await start_site(nursery, conf_a, network)
        yield Pair(a, b, network, nursery, cancel_a, cancel_b)
        nursery.cancel_scope.cancel()


def peer_status(site: object) -> dict[str, object]:
    (peer,) = site.daemon.status()["peers"]  # type: ignore[attr-defined]
    result: dict[str, object] = peer
    return result


async def wait_down(*sites: object) -> None:
    with trio.fail_after(10):
        while any(peer_status(s)["state"] != "down" for s in sites):
            await trio.sleep(0.05)


async def test_stopped_peer_is_down_without_an_error(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    pair.a.daemon.stop()
    await wait_down(pair.b)
    peer_b = peer_status(pair.b)
    assert peer_b["last_error"] is None, peer_b
    assert children(pair.b) == []


async def test_operator_down_is_not_an_error_on_either_side(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    assert await pair.a.daemon._control({"cmd": "down", "peer": "gw-b"}) == {"ok": True}
    await wait_down(pair.a, pair.b)
    assert peer_status(pair.a)["last_error"] is None
    assert peer_status(pair.b)["last_error"] is None


async def test_a_refused_spoof_leaves_a_working_tunnel_without_an_error(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    """Peer rule 13: an unauthenticated IKE_SA_INIT from the peer's address that gw-b
    refuses is counted apart, never last_error, while the tunnel is up."""
    await wait_for_children(pair.a, pair.b)
    offer = make_offer([parse_ike_proposal("aes128gcm16-prfsha384-ecp384")])
    spoof = Message(
        spi_i=bytes(range(1, 9)),
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=HeaderFlag.INITIATOR,
        message_id=0,
        payloads=[SaPayload(offer), KePayload(DhGroup.ECP_384, bytes(96)), NoncePayload(bytes(32))],
    )
    pair.network.transmit(spoof.build(), (GWA_UNDERLAY, 500), (GWB_UNDERLAY, 500))
    with trio.fail_after(5):
        while peer_status(pair.b)["last_unauthenticated_failure"] is None:
            await trio.sleep(0.05)
    assert "NO_PROPOSAL_CHOSEN" in str(peer_status(pair.b)["last_unauthenticated_failure"])
    assert peer_status(pair.b)["last_error"] is None
    assert peer_status(pair.b)["state"] == "established"


async def test_a_refused_ike_sa_is_the_last_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The fix must not hide real failures: gw-b accepts none of gw-a's IKE proposals."""
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
    old, new = 'ike = ["aes256gcm16-prfsha256-x25519"]', 'ike = ["aes128gcm16-prfsha384-ecp384"]'
    assert old in conf_b.read_text()
    conf_b.write_text(conf_b.read_text().replace(old, new))
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        with trio.fail_after(10):
            while (
                peer_status(a)["last_error"] is None
                or peer_status(b)["last_unauthenticated_failure"] is None
            ):
                await trio.sleep(0.05)
        # Our own attempt's failure is ours to report (after the §2.21.1 grace)...
        assert "NO_PROPOSAL_CHOSEN" in str(peer_status(a)["last_error"])
        # ...and the responder's refusal is its last_error while it has no IKE SA with the
        # peer (peer rule 13), marked as unauthenticated: it could be anyone's spoof.
        error_b = str(peer_status(b)["last_error"])
        assert "NO_PROPOSAL_CHOSEN" in error_b and "unauthenticated" in error_b, error_b
        assert "NO_PROPOSAL_CHOSEN" in str(peer_status(b)["last_unauthenticated_failure"])
        assert children(a) == [] and children(b) == []
        nursery.cancel_scope.cancel()
