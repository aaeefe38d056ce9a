"""Certificates for interop tests, made by `tunneld pki` (tunneld.lab.make_pki).

One ECDSA P-256 CA ("tunneld lab CA") and one certificate per gateway:
subject ``CN=gw-a`` / ``CN=gw-b``, subjectAltName DNS ``gw-X.example.org``
and the gateway's underlay address. strongSwan matches an FQDN identity
against the DNS SAN, tunneld too, so both peers load the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tools.lab import make_pki

GW_A, GW_B = "gw-a.example.org", "gw-b.example.org"


@dataclass(frozen=True)
class Credentials:
    cert: Path
    key: Path
    ca: Path


def lab_pki(directory: Path, *, cli: bool = False) -> dict[str, Credentials]:
    """The lab's PKI keyed by identity; ``cli`` runs the `tunneld pki` commands."""
    make_pki(directory, key_type="ecdsa", cli=cli)
    return lab_credentials(directory)


def lab_credentials(directory: Path) -> dict[str, Credentials]:
    """The files make_pki wrote into ``directory`` (e.g. for tunneld.lab.write_site_configs)."""
    ca = directory / "ca" / "ca.pem"
    return {
        GW_A: Credentials(directory / "gw-a.pem", directory / "gw-a.key", ca),
        GW_B: Credentials(directory / "gw-b.pem", directory / "gw-b.key", ca),
    }
