"""save_keys through two in-memory daemons on the virtual clock.

Every datagram between the daemons is recorded; the keys the daemons write
(as Wireshark's tables) must open the IKE_AUTH messages and the ESP packets
of that recording, both daemons must write the same rows, an IKE rekey adds
the new IKE SA's row, and without ``save_keys`` nothing reaches the disk.
(tshark reading such tables: tests/unit/test_savekeys.py and, on a real
capture, tests/netns/test_savekeys_netns.py.)
"""

from __future__ import annotations

import csv
import logging
import stat
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from ike.constants import EncrId, ExchangeType
from ike.crypto import SkCipher
from ike.payloads import IdPayload
from ike.wire import decrypt_message, parse_header
from tests.helpers.daemon_memory import Site, start_site, wait_for_children
from tests.helpers.packets import udp_packet
from tools.lab import SiteOptions, write_site_configs
from tunneld.dataplane.sa import InboundSA
from tunneld.io.udp import MemoryNetwork
from tunneld.savekeys import ESP_TABLE, IKEV2_TABLE

Datagram = tuple[bytes, tuple[str, int], tuple[str, int]]
MARKER = bytes(4)  # RFC 3948 §2.2 non-ESP marker


@dataclass
class Recorded:
    a: Site
    b: Site
    wire: list[Datagram]
    work: Path

    def rows(self, gateway: str, table: str) -> list[str]:
        path = self.work / f"{gateway}-keys" / table
        return [line for line in path.read_text().splitlines() if not line.startswith("#")]


async def run_pair(
    tmp_path: Path, options: SiteOptions, nursery: trio.Nursery, wire: list[Datagram]
) -> Recorded:
    def tap(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> Iterable[bytes]:
        wire.append((data, src, dst))
        return [data]

    conf_a, conf_b = write_site_configs(tmp_path, "mem", options)
    network = MemoryNetwork(impair=tap)
    b, _ = await start_site(nursery, conf_b, network)
    a, _ = await start_site(nursery, conf_a, network)
    return Recorded(a, b, wire, tmp_path)


@pytest.fixture
async def recorded(tmp_path: Path) -> AsyncIterator[Recorded]:
    async with trio.open_nursery() as nursery:
        yield await run_pair(tmp_path, SiteOptions(extra_peer="save_keys = true"), nursery, [])
        nursery.cancel_scope.cancel()


def ike_auth_ids(wire: list[Datagram], ike_rows: list[str]) -> list[bytes]:
    """The ID payloads of every IKE_AUTH message on the wire, opened with the rows' keys."""
    keys = {}
    for row in ike_rows:
        spi_i, spi_r, sk_ei, sk_er, *_ = row.split(",")
        keys[spi_i + spi_r] = (bytes.fromhex(sk_ei), bytes.fromhex(sk_er))
    ids = []
    for data, _, _ in wire:
        if not data.startswith(MARKER) or len(data) < 32:
            continue
        header = parse_header(data[4:])
        if header.exchange_type != ExchangeType.IKE_AUTH:
            continue
        sk_ei, sk_er = keys[header.spi_i.hex() + header.spi_r.hex()]
        cipher = SkCipher(EncrId.AES_GCM_16, sk_ei if header.is_initiator else sk_er)
        message = decrypt_message(data[4:], cipher)
        ids += [p.data for p in message.payloads if isinstance(p, IdPayload)]
    return ids


def open_esp(wire: list[Datagram], esp_rows: list[str]) -> list[bytes]:
    """Every ESP packet on the wire, decrypted with the key its SPI's row names."""
    sas = {}
    for src, dst, spi, key in (
        (r[1], r[2], int(r[3], 16), bytes.fromhex(r[5][2:])) for r in csv.reader(esp_rows)
    ):
        sas[spi] = (src, dst, InboundSA(spi, key[:-4], key[-4:]))
    inner = []
    for data, (src, _), (dst, port) in wire:
        if port != 4500 or data.startswith(MARKER) or data == b"\xff":
            continue  # IKE_SA_INIT (port 500), IKE (marker), NAT keepalive
        row_src, row_dst, sa = sas[int.from_bytes(data[:4], "big")]
        assert (row_src, row_dst) == (src, dst)
        inner.append(sa.decrypt(data)[1])
    return inner


async def test_the_saved_keys_open_the_recorded_ike_auth_and_esp(
    recorded: Recorded, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(recorded.a, recorded.b)
    tun_a, tun_b = recorded.a.devices.tun, recorded.b.devices.tun
    assert tun_a is not None and tun_b is not None
    for i in range(5):
        tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"a->b %d" % i))
        tun_b.host_send(udp_packet("203.0.113.10", "198.51.100.10", b"b->a %d" % i))
    await trio.sleep(0.5)

    ike_rows, esp_rows = recorded.rows("gw-a", IKEV2_TABLE), recorded.rows("gw-a", ESP_TABLE)
    # both daemons write the same rows: one IKE SA, one Child SA (two directions)
    assert ike_rows == recorded.rows("gw-b", IKEV2_TABLE) and len(ike_rows) == 1
    assert sorted(esp_rows) == sorted(recorded.rows("gw-b", ESP_TABLE)) and len(esp_rows) == 2
    assert ike_rows[0].endswith(',"AES-GCM-256 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"')

    ids = ike_auth_ids(recorded.wire, ike_rows)
    assert b"gw-a.example.org" in ids and b"gw-b.example.org" in ids
    inner = open_esp(recorded.wire, esp_rows)
    assert sorted(p[28:] for p in inner) == sorted(
        [b"a->b %d" % i for i in range(5)] + [b"b->a %d" % i for i in range(5)]
    )
    for gw in ("gw-a", "gw-b"):
        directory = recorded.work / f"{gw}-keys"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for table in (IKEV2_TABLE, ESP_TABLE):
            assert stat.S_IMODE((directory / table).stat().st_mode) == 0o600


async def test_an_ike_rekey_adds_the_new_ike_sas_row(
    recorded: Recorded, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(recorded.a, recorded.b)
    (session,) = recorded.a.daemon.peers["gw-b"].sessions
    first = session.spi_i.hex() + "," + session.spi_r.hex()
    reply = await recorded.a.daemon._control({"cmd": "rekey", "peer": "gw-b", "ike": True})
    assert reply["ok"]
    with trio.fail_after(10):
        while session.spi_i.hex() + "," + session.spi_r.hex() == first:
            await trio.sleep(0.05)
    await trio.sleep(1)
    rows = recorded.rows("gw-a", IKEV2_TABLE)
    assert [r[:33] for r in rows] == [first, session.spi_i.hex() + "," + session.spi_r.hex()]
    assert rows == recorded.rows("gw-b", IKEV2_TABLE)
    # the new IKE SA's keys open what is sent on it: a Child SA rekey, its DELETE
    assert (await recorded.a.daemon._control({"cmd": "rekey", "peer": "gw-b"}))["ok"]
    await trio.sleep(1)
    after = [d for d in recorded.wire if d[0].startswith(MARKER + session.spi_i)]
    assert len(after) >= 4
    for data, _, _ in after:
        header = parse_header(data[4:])
        _, _, sk_ei, sk_er, *_ = rows[1].split(",")
        key = sk_ei if header.is_initiator else sk_er  # the I flag: the original initiator
        decrypt_message(data[4:], SkCipher(EncrId.AES_GCM_16, bytes.fromhex(key)))


async def test_without_save_keys_nothing_is_written_and_nothing_warns(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        async with trio.open_nursery() as nursery:
            rec = await run_pair(tmp_path, SiteOptions(), nursery, [])
            await wait_for_children(rec.a, rec.b)
            nursery.cancel_scope.cancel()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["pki"]
    assert not [r for r in caplog.records if "save_keys" in r.getMessage()]


async def test_save_keys_warns_once_per_peer_and_never_logs_a_key(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with trio.open_nursery() as nursery:
            rec = await run_pair(tmp_path, SiteOptions(extra_peer="save_keys = true"), nursery, [])
            await wait_for_children(rec.a, rec.b)
            nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [(r.getMessage().startswith("save_keys is on"), vars(r)["peer"]) for r in warnings] == [
        (True, "gw-a"),
        (True, "gw-b"),
    ]
    assert vars(warnings[0])["dir"] == str(tmp_path / "gw-b-keys")
    secrets = [f for r in rec.rows("gw-a", IKEV2_TABLE) for f in r.split(",")[2:4]]
    secrets += [r[5][2:] for r in csv.reader(rec.rows("gw-a", ESP_TABLE))]
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert len(secrets) == 4 and not any(s in logged or s[:16] in logged for s in secrets)
