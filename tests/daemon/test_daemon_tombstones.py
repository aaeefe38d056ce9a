"""A deleted IKE SA answers a retransmitted DELETE from the daemon's tombstones
(ike.tombstones, daemon rule 2), without keeping the session.

gw-a's operator takes the tunnel down: gw-a sends DELETE, gw-b answers and
closes its IKE SA. The answer may be lost, so gw-b must answer the same
DELETE again, byte for byte, for the retransmission window (RFC 7296 §2.1).
gw-b now buries the closed session at once: its peer holds no session, the
SPI routes to a tombstone. Anything else sent to that SPI is dropped, counted.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio
import trio.testing

from ike.constants import NON_ESP_MARKER, ExchangeType
from ike.events import Address
from ike.policy import DEFAULT_RETRANSMIT
from ike.wire import parse_header
from tests.helpers.daemon_memory import Pair, wait_for_children

Sent = tuple[bytes, Address, Address]


class Recorder:
    """A MemoryNetwork impairment that lets everything through and keeps the IKE
    INFORMATIONAL messages (marker stripped), with their addresses."""

    def __init__(self) -> None:
        self.informational: list[Sent] = []

    def __call__(self, data: bytes, src: Address, dst: Address) -> Iterator[bytes]:
        message = data[len(NON_ESP_MARKER) :] if data.startswith(NON_ESP_MARKER) else data
        if dst[1] in (500, 4500) and len(message) >= 28 and message[17] == 0x20:
            try:
                header = parse_header(message)
            except Exception:
                header = None
            if header is not None and header.exchange_type == ExchangeType.INFORMATIONAL:
                self.informational.append((data, src, dst))
        yield data


def ike_sas(pair: Pair) -> list[object]:
    (peer,) = pair.b.daemon.status()["peers"]
    sas: list[object] = peer["ike_sas"]
    return sas


async def test_a_retransmitted_delete_is_answered_from_a_tombstone(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    recorder = Recorder()
    pair.network.impair = recorder
    assert await pair.a.daemon._control({"cmd": "down", "peer": "gw-b"}) == {"ok": True}
    with trio.fail_after(10):
        while ike_sas(pair):
            await trio.sleep(0.05)
    b = pair.b.daemon
    assert b.status()["deleted_ike_sas"]["held"] == 1
    assert not any(p._records for p in b.peers.values())  # no session object is kept
    (delete, answer) = recorder.informational[-2:]
    assert not parse_header(delete[0].removeprefix(NON_ESP_MARKER)).is_response
    recorder.informational.clear()

    def sent_by_b() -> list[Sent]:
        return [m for m in recorder.informational if m[1] == delete[2]]

    await trio.sleep(DEFAULT_RETRANSMIT.total / 2)
    pair.network.transmit(*delete)  # the DELETE again: its answer was "lost"
    await trio.sleep(0.1)
    assert sent_by_b() == [answer]  # the same bytes, to the same address
    status = b.status()
    assert status["deleted_ike_sas"]["answered"] == 1

    forged = bytearray(delete[0])
    forged[-1] ^= 1  # not the request it answered: no keys are left to check it
    pair.network.transmit(bytes(forged), delete[1], delete[2])
    await trio.sleep(0.1)
    assert sent_by_b() == [answer]  # nothing more was sent
    assert b.status()["ike_dispatch"]["deleted_sa"] == 1

    await trio.sleep(DEFAULT_RETRANSMIT.total)  # the window is over: swept
    assert b.status()["deleted_ike_sas"]["held"] == 0
    pair.network.transmit(*delete)
    await trio.sleep(0.1)
    assert b.status()["ike_dispatch"]["unknown_spi"] == 1
