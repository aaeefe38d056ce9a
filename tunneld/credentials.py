"""Credentials named by the configuration: certificates, private keys, PSKs.

Everything is loaded and checked when the configuration is read, so that
``tunneld check`` catches a bad file before the daemon needs it. Errors are
:class:`CredentialError` with a reason only; :mod:`tunneld.config` adds the
configuration file and key path. No error message, repr or log line ever
contains a private key or a PSK: :class:`PrivateKey` and :class:`Psk` redact
their repr, and messages about them name the file, never its content.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

MAX_FILE_SIZE = 1 << 20  # no credential file is bigger; refuse to slurp a wrong path
PSK_MIN_BYTES = 16  # 128 bits when random; see docs/configuration.md
PSK_MAX_BYTES = 1024
RSA_MIN_BITS = 2048
_EC_CURVES = {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}


class CredentialError(ValueError):
    """A credential or identity is unusable; the message is safe to print."""


# ---------------------------------------------------------------------------
# Secret holders


class Psk:
    """A pre-shared key (AUTH method 2, RFC 7296 §2.15). The repr shows only the length."""

    __slots__ = ("_value", "path")

    def __init__(self, value: bytes, path: Path | None = None) -> None:
        self._value = bytes(value)
        self.path = path

    def reveal(self) -> bytes:
        """The key itself: call only where it is fed to the PRF."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"Psk(<{len(self._value)} bytes redacted>, path={str(self.path)!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Psk) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Psk, len(self._value)))


class PrivateKey:
    """Our signing key. The repr names its kind and file, never its value."""

    __slots__ = ("_key", "kind", "path")

    def __init__(self, key: CertificateIssuerPrivateKeyTypes, kind: str, path: Path) -> None:
        self._key = key
        self.kind = kind
        self.path = path

    def reveal(self) -> CertificateIssuerPrivateKeyTypes:
        return self._key

    def public_der(self) -> bytes:
        return _spki(self._key.public_key())

    def __repr__(self) -> str:
        return f"PrivateKey(<{self.kind} redacted>, path={str(self.path)!r})"

    __str__ = __repr__


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ---------------------------------------------------------------------------
# Files


def read_file(path: Path, what: str, *, private: bool = False) -> bytes:
    """Read a credential file; ``private`` files must not be readable by group or others."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise CredentialError(f"{what} {path} is not a regular file")
            if private and info.st_mode & 0o077:
                mode = stat.S_IMODE(info.st_mode)
                raise CredentialError(
                    f"{what} {path} is accessible by group/others (mode {mode:04o}); "
                    f"run: chmod 600 {path}"
                )
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise CredentialError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_SIZE:
        raise CredentialError(f"{what} {path} is larger than {MAX_FILE_SIZE} bytes")
    return data


def load_psk(path: Path) -> Psk:
    """A PSK file: the key as text (outer whitespace stripped), ``0x<hex>`` or ``0s<base64>``."""
    raw = read_file(path, "PSK file", private=True).strip()
    if raw[:2] in (b"0x", b"0X"):
        try:
            raw = bytes.fromhex(raw[2:].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise CredentialError(f"PSK file {path}: '0x' prefix but not valid hex") from None
    elif raw[:2] == b"0s":
        try:
            raw = base64.b64decode(raw[2:], validate=True)
        except binascii.Error:
            raise CredentialError(f"PSK file {path}: '0s' prefix but not valid base64") from None
    if len(raw) < PSK_MIN_BYTES:
        raise CredentialError(
            f"PSK in {path} is {len(raw)} bytes; at least {PSK_MIN_BYTES} are required"
        )
    if len(raw) > PSK_MAX_BYTES:
        raise CredentialError(f"PSK in {path} is longer than {PSK_MAX_BYTES} bytes")
    return Psk(raw, path)


def key_kind(key: object) -> str:
    """Our name for a supported key type; CredentialError for the others."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        kind = _EC_CURVES.get(key.curve.name)
        if kind is None:
            raise CredentialError(
                f"unsupported EC curve {key.curve.name} (use P-256, P-384 or P-521)"
            )
        return kind
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < RSA_MIN_BITS:
            raise CredentialError(f"RSA key of {key.key_size} bits (at least {RSA_MIN_BITS})")
        return f"rsa-{key.key_size}"
    name = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
    raise CredentialError(
        f"unsupported key type {name} (use ECDSA P-256/P-384/P-521, Ed25519 or RSA >= 2048 bits)"
    )


def load_private_key(path: Path) -> PrivateKey:
    data = read_file(path, "private key file", private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CredentialError(
            f"private key {path} is encrypted; store it unencrypted, mode 0600"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialError(f"{path} holds no PEM private key we can read") from None
    kind = key_kind(key)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise CredentialError(f"unsupported key type in {path}")  # key_kind refused it already
    return PrivateKey(key, kind, path)


def load_certificates(path: Path, what: str) -> tuple[x509.Certificate, ...]:
    """All PEM certificates in a file, in file order (at least one)."""
    data = read_file(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CredentialError(f"{what} {path} holds no PEM certificate") from None
    return tuple(certs)


def check_key_matches(key: PrivateKey, cert: x509.Certificate) -> None:
    key_kind(cert.public_key())
    if _spki(cert.public_key()) != key.public_der():
        raise CredentialError(
            f"private key {key.path} does not match the certificate {cert.subject.rfc4514_string()}"
        )


def check_is_ca(cert: x509.Certificate, path: Path) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CredentialError(f"{path}: {cert.subject.rfc4514_string()} is not a CA certificate")


def check_validity(cert: x509.Certificate, now: datetime, path: Path) -> None:
    if now < cert.not_valid_before_utc:
        raise CredentialError(
            f"{path}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now > cert.not_valid_after_utc:
        raise CredentialError(f"{path}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
