"""save_keys: the rows of Wireshark's ``ikev2_decryption_table`` and ``esp_sa`` tables.

Exact rows for known keys (the formats strongSwan's save-keys plugin writes,
with the names Wireshark 4.0 knows), the files' modes and append-only life,
and tshark as the oracle: a directory written by :class:`KeyTables` used as
tshark's configuration directory decrypts our own SK payload and ESP packet.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from ike.constants import EncrId, ExchangeType, HeaderFlag, IdType, PayloadType
from ike.crypto import SkCipher
from ike.events import ChildSaKeys, ChildSaUp
from ike.payloads import IdPayload
from ike.sakeys import IkeSaKeys
from ike.wire import Message, encrypt_message
from tunneld.dataplane.sa import OutboundSA
from tunneld.savekeys import (
    ESP_TABLE,
    IKEV2_TABLE,
    KeyTables,
    NoWiresharkName,
    esp_row,
    esp_rows,
    ikev2_row,
)

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("f1f2f3f4f5f6f7f8")
SK_EI = bytes.fromhex("000102030405060708090a0b0c0d0e0fa0a1a2a3")  # AES-128 key | salt
SK_ER = bytes.fromhex("101112131415161718191a1b1c1d1e1fb0b1b2b3")
NET = [ipaddress.ip_network("198.51.100.0/24")]


def ike_keys(**kw: object) -> IkeSaKeys:
    args: dict[str, object] = dict(
        spi_i=SPI_I, spi_r=SPI_R, encr=EncrId.AES_GCM_16, encr_key_bits=128, integ=None,
        sk_ei=SK_EI, sk_er=SK_ER, sk_ai=b"", sk_ar=b"",
    )  # fmt: skip
    args.update(kw)
    return IkeSaKeys(**args)  # type: ignore[arg-type]


def child_up(encr: EncrId = EncrId.AES_GCM_16) -> ChildSaUp:
    keys = ChildSaKeys(
        inbound_key=bytes.fromhex("11" * 16),
        inbound_salt=bytes.fromhex("01020304"),
        outbound_key=bytes.fromhex("22" * 16),
        outbound_salt=bytes.fromhex("05060708"),
    )
    return ChildSaUp(
        inbound_spi=0xC0000001, outbound_spi=0x0000ABCD, keys=keys, encr=encr, esn=False,
        local_ts=tuple(NET), remote_ts=tuple(NET), algorithms="aes128gcm16",
        remote_addr=("192.0.2.2", 4500),
    )  # fmt: skip


# --- the rows ----------------------------------------------------------------------


def test_ikev2_row_is_wiresharks_uat_record() -> None:
    assert ikev2_row(ike_keys()) == (
        "0102030405060708,f1f2f3f4f5f6f7f8,"
        "000102030405060708090a0b0c0d0e0fa0a1a2a3,101112131415161718191a1b1c1d1e1fb0b1b2b3,"
        '"AES-GCM-128 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"\n'
    )
    row = ikev2_row(ike_keys(encr_key_bits=256, sk_ei=bytes(36), sk_er=bytes(36)))
    assert '"AES-GCM-256 with 16 octet ICV [RFC5282]"' in row


def test_esp_rows_name_both_directions_with_key_and_salt() -> None:
    assert esp_rows(child_up(), "192.0.2.1") == (
        '"IPv4","192.0.2.2","192.0.2.1","0xc0000001","AES-GCM with 16 octet ICV [RFC4106]",'
        '"0x1111111111111111111111111111111101020304","NULL",""\n'
        '"IPv4","192.0.2.1","192.0.2.2","0x0000abcd","AES-GCM with 16 octet ICV [RFC4106]",'
        '"0x2222222222222222222222222222222205060708","NULL",""\n'
    )


def test_esp_row_ipv6_and_a_wildcard_listen_address() -> None:
    row = esp_row("2001:db8::2", "::", 0x100, EncrId.AES_GCM_16, bytes(16), bytes(4))
    assert row.startswith('"IPv6","2001:db8::2","*","0x00000100",')
    assert esp_row("0.0.0.0", "192.0.2.1", 1, 20, b"", b"").startswith('"IPv4","*","192.0.2.1"')


def test_ciphers_wireshark_cannot_decrypt_get_no_row() -> None:
    with pytest.raises(NoWiresharkName, match="CHACHA20_POLY1305"):
        esp_row("192.0.2.1", "192.0.2.2", 1, EncrId.CHACHA20_POLY1305, bytes(32), bytes(4))
    with pytest.raises(NoWiresharkName, match="CHACHA20_POLY1305"):
        ikev2_row(ike_keys(encr=EncrId.CHACHA20_POLY1305, encr_key_bits=None))
    with pytest.raises(NoWiresharkName, match="integrity"):
        ikev2_row(ike_keys(integ=12))


def test_ike_sa_keys_repr_names_spis_only() -> None:
    text = repr(ike_keys()) + str(ike_keys())
    assert SPI_I.hex() in text and "redacted" in text
    assert SK_EI.hex() not in text and SK_ER.hex()[:8] not in text


# --- the files ---------------------------------------------------------------------


def test_tables_are_private_append_only_and_ike_sas_written_once(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    tables = KeyTables(directory)
    tables.save_ike("gw-b", [ike_keys()])
    tables.save_ike("gw-b", [ike_keys(), ike_keys(spi_r=bytes(range(8)))])  # one is new
    tables.save_child("gw-b", child_up(), "192.0.2.1")
    tables.save_child("gw-b", child_up(), "192.0.2.1")

    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    ike_lines = (directory / IKEV2_TABLE).read_text().splitlines()
    esp_lines = (directory / ESP_TABLE).read_text().splitlines()
    assert ike_lines[0].startswith("# tunneld save_keys") and "SECRET" in ike_lines[0]
    assert [line[:33] for line in ike_lines[1:]] == [
        "0102030405060708,f1f2f3f4f5f6f7f8",
        "0102030405060708,0001020304050607",
    ]
    assert len(esp_lines) == 1 + 4 and esp_lines[0].startswith("# ")
    for table in (IKEV2_TABLE, ESP_TABLE):
        assert stat.S_IMODE((directory / table).stat().st_mode) == 0o600
    assert tables.failures == 0


def test_a_readable_existing_table_is_made_private(tmp_path: Path) -> None:
    (tmp_path / ESP_TABLE).write_text("# old rows\n")
    os.chmod(tmp_path / ESP_TABLE, 0o644)
    KeyTables(tmp_path).save_child("gw-b", child_up(), "192.0.2.1")
    assert stat.S_IMODE((tmp_path / ESP_TABLE).stat().st_mode) == 0o600
    lines = (tmp_path / ESP_TABLE).read_text().splitlines()
    assert lines[0] == "# old rows" and len(lines) == 3  # appended, no second header


def test_write_failures_are_logged_without_keys_and_never_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / IKEV2_TABLE).symlink_to(tmp_path / "elsewhere")  # never followed
    tables = KeyTables(tmp_path)
    with caplog.at_level(logging.INFO, logger="tunneld.savekeys"):
        tables.save_ike("gw-b", [ike_keys()])
        tables.save_child("gw-b", child_up(EncrId.CHACHA20_POLY1305), "192.0.2.1")
    assert tables.failures == 1
    assert (tmp_path / "elsewhere").read_text() == ""
    assert not (tmp_path / ESP_TABLE).exists()  # ChaCha20: no row, said once
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", "save_keys: cannot write key table"),
        ("INFO", "save_keys: no Wireshark row"),
    ]
    logged = " ".join(str(vars(r)) for r in caplog.records)
    assert SK_EI.hex() not in logged and "1111111111" not in logged


# --- tshark as the oracle ------------------------------------------------------------

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def tshark(pcap: Path, config_dir: Path, *fields: str) -> list[list[str]]:
    """tshark with ``config_dir`` as its configuration directory (where the tables are)."""
    cmd = ["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE"]
    cmd += ["-o", "esp.enable_authentication_check:TRUE", "-T", "fields"]
    cmd += [arg for f in fields for arg in ("-e", f)]
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(config_dir)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True, env=env)
    return [line.split("\t") for line in out.stdout.splitlines()]


@needs_tshark
def test_tshark_decrypts_with_the_tables_we_write(tmp_path: Path) -> None:
    event = child_up()
    esp = OutboundSA(event.outbound_spi, event.keys.outbound_key, event.keys.outbound_salt)
    inner = IP(src="198.51.100.10", dst="203.0.113.10") / ICMP(type=8, id=7, seq=1) / b"x"
    auth = Message(
        spi_i=SPI_I, spi_r=SPI_R, exchange_type=ExchangeType.IKE_AUTH,
        flags=HeaderFlag.INITIATOR, message_id=1,
        payloads=[IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"gw-a.example.org")],
    )  # fmt: skip
    sk = encrypt_message(auth, SkCipher(EncrId.AES_GCM_16, SK_EI), bytes(7) + b"\x01")
    outer = Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4500, dport=4500)
    wrpcap(
        str(tmp_path / "c.pcap"), [outer / (bytes(4) + sk), outer / esp.encrypt(bytes(inner), 4)]
    )

    tables = KeyTables(tmp_path / "keys")
    tables.save_ike("gw-b", [ike_keys()])
    tables.save_child("gw-b", event, "192.0.2.1")
    fields = ("isakmp.id.data.fqdn", "esp.spi", "esp.icv_good", "icmp.type", "icmp.seq")
    rows = tshark(tmp_path / "c.pcap", tmp_path / "keys", *fields)
    assert rows == [["gw-a.example.org", "", "", "", ""], ["", "0x0000abcd", "1", "8", "1"]]
    # and the oracle says no without the tables
    assert tshark(tmp_path / "c.pcap", tmp_path, *fields)[1][2:] == ["", "", ""]
