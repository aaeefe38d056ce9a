"""``save_keys``: SA keys written as Wireshark's decryption tables (a debugging aid).

Off by default, on per peer (``save_keys = true``), as strongSwan's save-keys
plugin: whoever reads the files can decrypt the peer's traffic, so the daemon
says so with one warning per peer at startup.

Theory of operation:

1. Two files in one directory (``[gateway] save_keys_dir``), named as
   Wireshark names its own tables, so that the directory can serve as its
   configuration directory (``WIRESHARK_CONFIG_DIR=DIR tshark ...``):
   ``ikev2_decryption_table`` (one row per IKE SA: SPIs, SK_ei, SK_er,
   cipher, SK_ai, SK_ar, integrity) and ``esp_sa`` (one row per direction of
   each Child SA: address family, source, destination, SPI, cipher, key,
   authentication, authentication key).
2. Rows are only ever appended (across restarts too: old rows name SPIs that
   never come back). The directory is created mode 0700, the files 0600,
   never following a symlink.
3. Algorithms are written under Wireshark's own names (packet-isakmp.c,
   packet-esp.c). A cipher Wireshark cannot decrypt (ChaCha20-Poly1305 in
   Wireshark 4.0) gets no row, and one log line says so.
4. A failed write is logged (the path and the error, never a key) and
   otherwise ignored: a debugging aid never takes a tunnel down.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ike.constants import EncrId
from ike.events import ChildSaUp
from ike.sakeys import IkeSaKeys

log = logging.getLogger("tunneld.savekeys")

IKEV2_TABLE = "ikev2_decryption_table"
ESP_TABLE = "esp_sa"
HEADER = "# tunneld save_keys: Wireshark {table}. SECRET KEYS: whoever reads this decrypts.\n"

# Wireshark's IKEv2 cipher names (packet-isakmp.c), by transform ID (RFC 7296
# §3.3.2, RFC 5282) and key bits. SK_e here is key | salt (RFC 5282 §7.1).
_IKE_ENCR: dict[tuple[int, int], str] = {
    (EncrId.AES_GCM_8, 128): "AES-GCM-128 with 8 octet ICV [RFC5282]",
    (EncrId.AES_GCM_8, 256): "AES-GCM-256 with 8 octet ICV [RFC5282]",
    (EncrId.AES_GCM_12, 128): "AES-GCM-128 with 12 octet ICV [RFC5282]",
    (EncrId.AES_GCM_12, 256): "AES-GCM-256 with 12 octet ICV [RFC5282]",
    (EncrId.AES_GCM_16, 128): "AES-GCM-128 with 16 octet ICV [RFC5282]",
    (EncrId.AES_GCM_16, 256): "AES-GCM-256 with 16 octet ICV [RFC5282]",
}
_IKE_INTEG_NONE = "NONE [RFC4306]"  # an AEAD cipher: no INTEG transform

# Wireshark's ESP cipher names (packet-esp.c); the key column is key | salt
# (RFC 4106 §8.1), the ICV belongs to the cipher, so authentication is NULL.
_ESP_ENCR: dict[int, str] = {
    EncrId.AES_GCM_8: "AES-GCM with 8 octet ICV [RFC4106]",
    EncrId.AES_GCM_12: "AES-GCM with 12 octet ICV [RFC4106]",
    EncrId.AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
}
_ESP_AUTH_NONE = "NULL"


class NoWiresharkName(ValueError):
    """Wireshark has no decryption support for this algorithm: no row can be written."""


def ikev2_row(keys: IkeSaKeys) -> str:
    """One ``ikev2_decryption_table`` line (SPIs and keys as bare hex)."""
    encr = _IKE_ENCR.get((keys.encr, keys.encr_key_bits or 0))
    if encr is None:
        raise NoWiresharkName(f"IKE cipher {_encr_name(keys.encr)}/{keys.encr_key_bits}")
    if keys.integ is not None:
        raise NoWiresharkName(f"IKE integrity algorithm {keys.integ}")
    fields = [
        keys.spi_i.hex(),
        keys.spi_r.hex(),
        keys.sk_ei.hex(),
        keys.sk_er.hex(),
        f'"{encr}"',
        keys.sk_ai.hex(),
        keys.sk_ar.hex(),
        f'"{_IKE_INTEG_NONE}"',
    ]
    return ",".join(fields) + "\n"


def esp_row(src: str, dst: str, spi: int, encr: int, key: bytes, salt: bytes) -> str:
    """One ``esp_sa`` line: the SA carrying ESP from ``src`` to ``dst`` under ``spi``."""
    name = _ESP_ENCR.get(encr)
    if name is None:
        raise NoWiresharkName(f"ESP cipher {_encr_name(encr)}")
    family = "IPv6" if ipaddress.ip_address(src).version == 6 else "IPv4"
    fields = (family, _host(src), _host(dst), f"0x{spi:08x}", name, "0x" + (key + salt).hex())
    return ",".join(f'"{f}"' for f in (*fields, _ESP_AUTH_NONE, "")) + "\n"


def esp_rows(event: ChildSaUp, local_host: str) -> str:
    """Both directions of a new Child SA: inbound (peer -> us), then outbound."""
    remote, k = event.remote_addr[0], event.keys
    inbound = esp_row(
        remote, local_host, event.inbound_spi, event.encr, k.inbound_key, k.inbound_salt
    )
    outbound = esp_row(
        local_host, remote, event.outbound_spi, event.encr, k.outbound_key, k.outbound_salt
    )
    return inbound + outbound


def _host(address: str) -> str:
    """An unspecified address (a wildcard listen) matches any address in Wireshark: ``*``."""
    return "*" if ipaddress.ip_address(address).is_unspecified else address


def _encr_name(encr: int) -> str:
    try:
        return EncrId(encr).name
    except ValueError:
        return str(encr)


class KeyTables:
    """Appends rows to the two tables in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._saved_ike: set[tuple[bytes, bytes]] = set()
        self.failures = 0

    def save_ike(self, peer: str, keys: Iterable[IkeSaKeys]) -> None:
        """Rows for IKE SAs not written yet (callers may pass the same SA many times)."""
        rows = []
        for k in keys:
            if k.spis in self._saved_ike:
                continue
            self._saved_ike.add(k.spis)
            try:
                rows.append(ikev2_row(k))
            except NoWiresharkName as err:
                log.info("save_keys: no Wireshark row", extra={"peer": peer, "reason": str(err)})
        if rows:
            self._append(IKEV2_TABLE, "".join(rows))

    def save_child(self, peer: str, event: ChildSaUp, local_host: str) -> None:
        try:
            rows = esp_rows(event, local_host)
        except NoWiresharkName as err:
            log.info("save_keys: no Wireshark row", extra={"peer": peer, "reason": str(err)})
            return
        self._append(ESP_TABLE, rows)

    def _append(self, table: str, text: str) -> None:
        path = self.directory / table
        try:
            self._make_directory()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "a") as f:
                st = os.fstat(fd)
                if st.st_mode & 0o077:  # made by someone else: not for others' eyes
                    os.fchmod(fd, 0o600)
                f.write((HEADER.format(table=table) if st.st_size == 0 else "") + text)
        except OSError as err:
            self.failures += 1
            log.warning(
                "save_keys: cannot write key table",
                extra={"path": str(path), "error": err.strerror or str(err)},
            )

    def _make_directory(self) -> None:
        """0700 whatever the umask; a directory that exists is the operator's to keep."""
        try:
            self.directory.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            return
        os.chmod(self.directory, 0o700)
