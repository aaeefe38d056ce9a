"""`tunneld pki`: a small CA for gateway certificates (init-ca, issue).

Choices (docs/configuration.md explains them to operators):

- Keys: ECDSA P-256 by default (AUTH method 14 with ECDSA/SHA-256, RFC 7427),
  Ed25519 and RSA-3072 on request. Private keys are PKCS#8 PEM without a
  passphrase (the daemon starts unattended), created with mode 0600 by
  ``os.open(..., 0o600)``: the file never exists with a wider mode.
- CA: self-signed, basicConstraints CA:TRUE (critical), keyUsage
  keyCertSign + cRLSign (critical), subject key identifier; 10 years.
- Leaf: basicConstraints CA:FALSE (critical), keyUsage digitalSignature
  (critical), SKI and AKI, subjectAltName from --dns/--ip/--email; 1 year,
  never beyond the CA's own expiry. No extendedKeyUsage by default: IKEv2
  does not need one (RFC 4945 §5.1.3.12: an IKE peer must not refuse a
  certificate for lacking EKU) and strongSwan accepts certificates without
  it; ``--eku`` adds serverAuth/clientAuth/ikeIntermediate for peers that
  insist (some Windows clients, OpenVPN's remote-cert-tls).
- Validity starts five minutes in the past to tolerate clock skew.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from ike.errors import LocalError
from ike.identity import Identity
from tunneld import credentials as cred

KeyType = Literal["ecdsa", "ed25519", "rsa"]
RSA_BITS = 3072  # NIST SP 800-57: 128-bit security, like P-256
CA_DAYS = 3650
LEAF_DAYS = 365
CLOCK_SKEW = dt.timedelta(minutes=5)
# RFC 4945 §5.1.3.12; id-kp-ipsecIKE (RFC 4945) is what "ikeIntermediate" means in strongSwan.
EKU_NAMES = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "ikeIntermediate": ObjectIdentifier("1.3.6.1.5.5.8.2.2"),
}
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PkiError(Exception):
    """A pki command cannot do what was asked; the message is safe to print."""


@dataclass(frozen=True)
class IssuedFiles:
    certificate: Path
    key: Path


def generate_key(key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise PkiError(f"unknown key type '{key_type}' (ecdsa, ed25519 or rsa)")


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _subject(name: str) -> x509.Name:
    try:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    except ValueError as exc:  # e.g. longer than the 64 characters X.520 allows
        raise PkiError(f"--name '{name}': {exc}") from None


def _validity(now: dt.datetime | None, days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise PkiError(f"--days must be at least 1, not {days}")
    start = (now or dt.datetime.now(dt.UTC)) - CLOCK_SKEW
    return start, start + CLOCK_SKEW + dt.timedelta(days=days)


def init_ca(
    out_dir: str | Path,
    name: str,
    *,
    key_type: KeyType = "ecdsa",
    days: int = CA_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> IssuedFiles:
    """Create ``out_dir/ca.pem`` and ``out_dir/ca.key`` (mode 0600): a self-signed CA."""
    out = Path(out_dir)
    files = IssuedFiles(out / "ca.pem", out / "ca.key")
    _refuse_overwrite(files, force)
    key = generate_key(key_type)
    dn = _subject(name)
    start, end = _validity(now, days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(dn)
        .issuer_name(dn)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    cert = builder.sign(key, _hash_for(key))
    _write(files, cert, key, force)
    return files


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def load_ca(ca_dir: str | Path) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """The CA certificate and key written by :func:`init_ca` (the key must be mode 0600)."""
    ca = Path(ca_dir)
    try:
        (cert, *_) = cred.load_certificates(ca / "ca.pem", "CA certificate")
        cred.check_is_ca(cert, ca / "ca.pem")
        key = cred.load_private_key(ca / "ca.key")
        cred.check_key_matches(key, cert)
    except cred.CredentialError as exc:
        raise PkiError(str(exc)) from None
    return cert, key.reveal()


def issue(
    ca_dir: str | Path,
    name: str,
    out_dir: str | Path | None = None,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    emails: Sequence[str] = (),
    key_type: KeyType = "ecdsa",
    days: int = LEAF_DAYS,
    eku: Sequence[str] = (),
    force: bool = False,
    now: dt.datetime | None = None,
) -> IssuedFiles:
    """Issue ``out_dir/NAME.pem`` and ``NAME.key`` (mode 0600), signed by the CA in ``ca_dir``.

    ``out_dir`` defaults to ``ca_dir``. The subject is ``CN=NAME``.
    """
    if not _FILE_NAME_RE.fullmatch(name):
        raise PkiError(f"name '{name}' must be 1-64 of A-Z a-z 0-9 _ . - (it names the files)")
    out = Path(out_dir) if out_dir is not None else Path(ca_dir)
    files = IssuedFiles(out / f"{name}.pem", out / f"{name}.key")
    _refuse_overwrite(files, force)
    ca_cert, ca_key = load_ca(ca_dir)
    key = generate_key(key_type)
    start, end = _validity(now, days)
    end = min(end, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    names = _alt_names(dns, ips, emails)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if eku:
        builder = builder.add_extension(_eku(eku), critical=False)
    cert = builder.sign(ca_key, _hash_for(ca_key))
    _write(files, cert, key, force)
    return files


def _alt_names(
    dns: Iterable[str], ips: Iterable[str], emails: Iterable[str]
) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for d in dns:
        _check_identity(f"fqdn:{d}", "--dns", d)
        names.append(x509.DNSName(d))
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"--ip '{ip}' is not an IPv4/IPv6 address") from None
    for e in emails:
        if "@" not in e:
            raise PkiError(f"--email '{e}' is not an e-mail address")
        _check_identity(f"email:{e}", "--email", e)
        names.append(x509.RFC822Name(e))
    return names


def _check_identity(text: str, option: str, value: str) -> None:
    """SAN values must also be valid IKE identities, or no peer could name us by them."""
    try:
        Identity.parse(text)
    except LocalError as exc:
        raise PkiError(f"{option} '{value}': {exc}") from None


def _eku(names: Sequence[str]) -> x509.ExtendedKeyUsage:
    unknown = [n for n in names if n not in EKU_NAMES]
    if unknown:
        raise PkiError(f"--eku {unknown[0]}: not one of {', '.join(EKU_NAMES)}")
    return x509.ExtendedKeyUsage([EKU_NAMES[n] for n in dict.fromkeys(names)])


# --- files ------------------------------------------------------------------------


def _refuse_overwrite(files: IssuedFiles, force: bool) -> None:
    if force:
        return
    for path in (files.certificate, files.key):
        if path.exists():
            raise PkiError(f"{path} exists; remove it or pass --force")


def _write(
    files: IssuedFiles, cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes, force: bool
) -> None:
    files.key.parent.mkdir(parents=True, exist_ok=True)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new_file(files.key, private, 0o600, force)
    write_new_file(files.certificate, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)


def write_new_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Create ``path`` with ``mode`` from the start (never a chmod afterwards).

    With ``force`` an existing file is removed first, so that the new one is
    created with ``mode`` rather than inheriting the old file's permissions.
    """
    if force:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise PkiError(f"{path} exists; remove it or pass --force") from None
    except OSError as exc:
        raise PkiError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- `tunneld pki` ----------------------------------------------------------------


def add_pki_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pki init-ca`` and ``pki issue``; each parser's ``func(args) -> int`` runs it."""
    pki = subparsers.add_parser("pki", help="create a CA and issue gateway certificates")
    sub = pki.add_subparsers(dest="pki_command", required=True, metavar="{init-ca,issue}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--key-type", choices=get_args(KeyType), default="ecdsa")
    common.add_argument("--force", action="store_true", help="overwrite existing files")

    ca = sub.add_parser("init-ca", parents=[common], help="create ca.pem and ca.key")
    ca.add_argument("--out", required=True, type=Path, help="directory for ca.pem/ca.key")
    ca.add_argument("--name", required=True, help="the CA's common name")
    ca.add_argument("--days", type=int, default=CA_DAYS)
    ca.set_defaults(func=_run_init_ca)

    leaf = sub.add_parser("issue", parents=[common], help="issue NAME.pem and NAME.key")
    leaf.add_argument("--ca", required=True, type=Path, help="directory holding ca.pem/ca.key")
    leaf.add_argument("--name", required=True, help="common name and file name")
    leaf.add_argument("--out", type=Path, help="output directory (default: the CA directory)")
    leaf.add_argument("--dns", action="append", default=[], help="subjectAltName DNS name")
    leaf.add_argument("--ip", action="append", default=[], help="subjectAltName IP address")
    leaf.add_argument("--email", action="append", default=[], help="subjectAltName e-mail")
    leaf.add_argument("--eku", action="append", default=[], choices=list(EKU_NAMES))
    leaf.add_argument("--days", type=int, default=LEAF_DAYS)
    leaf.set_defaults(func=_run_issue)


def _run_init_ca(args: argparse.Namespace) -> int:
    return _report(
        lambda: init_ca(
            args.out, args.name, key_type=args.key_type, days=args.days,
            force=args.force,
        )
    )  # fmt: skip


def _run_issue(args: argparse.Namespace) -> int:
    return _report(
        lambda: issue(
            args.ca, args.name, args.out, dns=args.dns, ips=args.ip, emails=args.email,
            key_type=args.key_type, days=args.days, eku=args.eku,
            force=args.force,
        )
    )  # fmt: skip


def _report(action: Callable[[], IssuedFiles]) -> int:
    try:
        files = action()
    except (PkiError, cred.CredentialError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {files.certificate}")
    print(f"wrote {files.key} (mode 0600)")
    return 0
