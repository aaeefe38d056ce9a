"""`tunneld pki`: CA and leaf certificates checked with cryptography and ike.certs."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ike.certs import verify_chain
from tunneld import pki

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ca")
    pki.init_ca(out, "tunneld test CA", now=NOW)
    return out


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Key files must be 0600 whatever the umask: test with the most permissive one."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_init_ca(tmp_path: Path, loose_umask: None) -> None:
    files = pki.init_ca(tmp_path / "ca", "Lab CA", now=NOW)
    assert files == pki.IssuedFiles(tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "ca.key")
    assert mode(files.key) == 0o600
    cert = load_cert(files.certificate)
    assert cert.subject.rfc4514_string() == "CN=Lab CA" == cert.issuer.rfc4514_string()
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    cert.verify_directly_issued_by(cert)  # self-signed
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3650, minutes=5)
    assert cert.not_valid_before_utc <= NOW
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    assert key.public_key() == cert.public_key()


def test_init_ca_ed25519(tmp_path: Path) -> None:
    files = pki.init_ca(tmp_path, "Ed CA", key_type="ed25519", days=30, now=NOW)
    cert = load_cert(files.certificate)
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=30)


def test_issue_leaf(ca_dir: Path, tmp_path: Path, loose_umask: None) -> None:
    files = pki.issue(
        ca_dir, "gw-a", tmp_path, dns=["gw-a.example.org"], ips=["192.0.2.1", "2001:db8::1"],
        emails=["ops@example.org"], now=NOW,
    )  # fmt: skip
    assert files == pki.IssuedFiles(tmp_path / "gw-a.pem", tmp_path / "gw-a.key")
    assert mode(files.key) == 0o600
    ca = load_cert(ca_dir / "ca.pem")
    cert = load_cert(files.certificate)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=gw-a"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw-a.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.1"),
        ipaddress.ip_address("2001:db8::1"),
    ]
    assert san.get_values_for_type(x509.RFC822Name) == ["ops@example.org"]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    # What a tunneld peer checks (RFC 5280 path, key usage, validity).
    der = serialization.Encoding.DER
    assert verify_chain(cert.public_bytes(der), [], [ca], NOW) == cert


@pytest.mark.parametrize(
    ("key_type", "key_class"),
    [
        ("ecdsa", ec.EllipticCurvePrivateKey),
        ("ed25519", ed25519.Ed25519PrivateKey),
        ("rsa", rsa.RSAPrivateKey),
    ],
)
def test_issue_key_types(
    ca_dir: Path, tmp_path: Path, key_type: pki.KeyType, key_class: type
) -> None:
    files = pki.issue(
        ca_dir, "leaf", tmp_path, dns=["leaf.example.org"], key_type=key_type, now=NOW
    )
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    assert isinstance(key, key_class)
    assert load_cert(files.certificate).public_key() == key.public_key()
    if key_type == "rsa":
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == pki.RSA_BITS


def test_issue_eku_on_request(ca_dir: Path, tmp_path: Path) -> None:
    files = pki.issue(
        ca_dir, "ovpn", tmp_path, eku=["serverAuth", "clientAuth", "serverAuth"], now=NOW
    )
    eku = load_cert(files.certificate).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(pki.PkiError, match="--eku codeSigning"):
        pki.issue(ca_dir, "bad", tmp_path, eku=["codeSigning"], now=NOW)


def test_leaf_never_outlives_ca(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, "Short CA", days=10, now=NOW)
    files = pki.issue(tmp_path, "gw", days=365, now=NOW)
    assert files.certificate.parent == tmp_path  # --out defaults to the CA directory
    assert (
        load_cert(files.certificate).not_valid_after_utc
        == load_cert(tmp_path / "ca.pem").not_valid_after_utc
    )


def test_refuses_to_overwrite_and_force_recreates_0600(ca_dir: Path, tmp_path: Path) -> None:
    pki.issue(ca_dir, "gw", tmp_path, now=NOW)
    with pytest.raises(pki.PkiError, match="exists; remove it or pass --force"):
        pki.issue(ca_dir, "gw", tmp_path, now=NOW)
    (tmp_path / "gw.key").chmod(0o644)  # a careless operator
    old = (tmp_path / "gw.key").read_bytes()
    pki.issue(ca_dir, "gw", tmp_path, force=True, now=NOW)
    assert mode(tmp_path / "gw.key") == 0o600
    assert (tmp_path / "gw.key").read_bytes() != old


def test_ca_key_must_be_private(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, "CA", now=NOW)
    (tmp_path / "ca.key").chmod(0o640)
    with pytest.raises(pki.PkiError, match=r"ca\.key is accessible by group/others \(mode 0640\)"):
        pki.issue(tmp_path, "gw", now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "../evil"}, "name '../evil'"),
        ({"name": "gw", "ips": ["192.0.2.256"]}, "--ip '192.0.2.256'"),
        ({"name": "gw", "dns": ["has space.example"]}, "--dns 'has space.example'"),
        ({"name": "gw", "emails": ["nobody"]}, "--email 'nobody'"),
        ({"name": "gw", "days": 0}, "--days must be at least 1"),
    ],
)
def test_issue_rejects(
    ca_dir: Path, tmp_path: Path, kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(pki.PkiError, match=fragment.replace(".", r"\.")):
        pki.issue(ca_dir, out_dir=tmp_path, now=NOW, **kwargs)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="cannot read CA certificate"):
        pki.issue(tmp_path / "nowhere", "gw", tmp_path)


def test_cli_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="tunneld")
    pki.add_pki_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["pki", "init-ca", "--out", str(tmp_path), "--name", "CLI CA", "--key-type", "ed25519"]
    )
    assert args.func(args) == 0
    args = parser.parse_args(
        [
            "pki",
            "issue",
            "--ca",
            str(tmp_path),
            "--name",
            "gw-b",
            "--dns",
            "gw-b.example.org",
            "--ip",
            "192.0.2.2",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'gw-b.pem'}" in out and "gw-b.key (mode 0600)" in out
    san = load_cert(tmp_path / "gw-b.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["gw-b.example.org"]
    # Errors go to stderr with exit status 1.
    assert args.func(args) == 1
    assert "exists; remove it or pass --force" in capsys.readouterr().err
