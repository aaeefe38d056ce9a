"""A throwaway EC PKI for the benchmark's OpenVPN peers (``tools.bench``).

One CA and two leaf certificates (P-256, one day), made with ``cryptography`` into a
private temporary directory: ``ca.pem``, ``server.pem``/``server.key`` (EKU serverAuth)
and ``client.pem``/``client.key`` (EKU clientAuth), so that OpenVPN's
``remote-cert-tls`` (which wants both key usage and the matching EKU) accepts the peer.
Nothing here is a tunneld credential: tunneld's own PKI is ``tunneld pki``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_KEY_USAGE_OFF = (
    "content_commitment", "key_encipherment", "data_encipherment", "encipher_only", "decipher_only",
)  # fmt: skip


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    eku: x509.ObjectIdentifier | None,
) -> x509.Certificate:
    """A one-day EC certificate: a CA when ``issuer`` is None, else a leaf with ``eku``."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signing_key = issuer if issuer else (name, key)
    ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            # OpenVPN's remote-cert-tls requires a key usage extension on the peer's cert.
            x509.KeyUsage(
                **dict.fromkeys(_KEY_USAGE_OFF, False),
                digital_signature=not ca,
                key_agreement=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
            ),
            critical=True,
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def write_openvpn_pki(directory: Path) -> None:
    """A throwaway EC CA plus a server and a client certificate with their EKUs."""
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("tunneld-bench CA", ca_key, None, None)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    for role, eku in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate(f"tunneld-bench {role}", key, (ca_cert.subject, ca_key), eku)
        (directory / f"{role}.pem").write_bytes(leaf.public_bytes(pem))
        key_path = directory / f"{role}.key"
        key_path.touch(mode=0o600)
        key_bytes = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        key_path.write_bytes(key_bytes)
