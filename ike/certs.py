"""X.509 path validation for IKE peers, and CERTREQ hashes (RFC 7296 §3.6-§3.7).

Why not ``cryptography.x509.verification.PolicyBuilder``: its policies are
the CA/Browser Forum Web PKI profile, which (as of cryptography 48) refuses
Ed25519 keys and signatures outright, while IKE certificates are often
Ed25519 (RFC 8420) and carry no EKU. So the RFC 5280 checks an IKE peer
needs are done here, each signature through ``verify_directly_issued_by``:

1. parse the leaf and the intermediates the peer sent (CERT payloads);
2. build a path leaf -> ... -> trust anchor, matching issuer to subject and
   verifying each signature; intermediates are used at most once;
3. every certificate in the path, the anchor included, must be within its
   validity period at ``at``;
4. every issuer must have basicConstraints cA=TRUE, respect pathLenConstraint,
   and have keyCertSign if it has a keyUsage (RFC 5280 §4.2.1.3, §4.2.1.9);
5. the leaf, if it has a keyUsage, needs digitalSignature or nonRepudiation
   (RFC 4945 §5.1.3.2); extendedKeyUsage is not required (RFC 4945 §5.1.3.12
   leaves it to policy; strongSwan does not require one either);
6. a critical extension we do not process fails the path (RFC 5280 §4.2).

Not done: revocation (CRL/OCSP), name constraints and policy constraints
(a certificate marking either critical is refused by rule 6).

Caching (:class:`ChainCache`): a responder sees the same spoke certificates
again and again (reconnects, reauthentication), and rules 1-6 depend only on
the certificates sent, our intermediates, the trust anchors and the time. So a
path that verified is remembered under the SHA-256 of the DER certificates
(leaf and intermediates, in order) together with the trust anchors themselves
(certificates compare and hash by their DER): a changed trust store is a
different key, never a stale hit. The time is checked on every hit against the
path's common validity window (the latest notBefore, the earliest notAfter);
outside it the path is verified again, which raises the precise error.
Failures are not remembered. The cache holds at most ``max_entries`` paths,
least recently used first out.
Every failure is :class:`~ike.errors.AuthenticationFailed` with a reason that
names certificates by subject (written as strongSwan writes DNs); a path that
reaches no trusted CA names the issuer and every trusted CA by subject and
key identifier too (two CAs may share a name).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID

from ike.errors import AuthenticationFailed, ParseError
from ike.identity import CERT_PARSE_ERRORS, dn_string

MAX_PATH_LEN = 8  # our limit on intermediates, against loops and CPU abuse
CHAIN_CACHE_ENTRIES = 2048  # verified paths remembered (a hub's spokes, each ~2 KiB)
CERTREQ_HASH_LEN = 20  # §3.7: SHA-1 of the CA's SubjectPublicKeyInfo

# Extensions whose meaning we check or which are informational only.
_PROCESSED_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
)


def _name(cert: x509.Certificate) -> str:
    return dn_string(cert.subject) or "<empty subject>"


def load_certificate(der: bytes) -> x509.Certificate:
    """A certificate from a CERT payload (encoding 4, DER), or ParseError."""
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion):
        raise ParseError("CERT payload does not hold a DER X.509 certificate") from None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _build_path(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    anchors: list[x509.Certificate],
) -> list[x509.Certificate]:
    """[leaf, intermediates..., anchor], or AuthenticationFailed."""
    path = [leaf]
    unused = list(intermediates)
    while len(path) <= MAX_PATH_LEN + 1:
        current = path[-1]
        for anchor in anchors:
            if _issued_by(current, anchor):
                return [*path, anchor]
        nxt = next((c for c in unused if _issued_by(current, c)), None)
        if nxt is None:
            raise AuthenticationFailed(_untrusted(current, anchors))
        unused.remove(nxt)
        path.append(nxt)
    raise AuthenticationFailed(f"certificate path longer than {MAX_PATH_LEN} intermediates")


def _untrusted(cert: x509.Certificate, anchors: list[x509.Certificate]) -> str:
    """Why no trusted CA issued ``cert``, naming every CA by subject *and* key
    identifier: two CAs can share a name (a CA re-created with the same name, a
    lab CA per run), and then only the key tells them apart."""
    issuer = f"'{dn_string(cert.issuer)}' key id {_authority_key_id(cert)}"
    trusted = "; ".join(f"'{_name(a)}' key id {subject_key_id(a)}" for a in anchors)
    same_name = any(a.subject == cert.issuer for a in anchors)
    why = (
        "a trusted CA has the issuer's name but not its key"
        if same_name
        else "its issuer is not a trusted CA"
    )
    return f"no trusted CA issued '{_name(cert)}': {why} (issuer {issuer}; trusted: {trusted})"


def _key_id(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def subject_key_id(cert: x509.Certificate) -> str:
    """The certificate's subjectKeyIdentifier (computed as RFC 5280 §4.2.1.2
    method 1 if it carries none), as colon-separated hex."""
    ski = _extension(cert, x509.SubjectKeyIdentifier)
    if isinstance(ski, x509.SubjectKeyIdentifier):
        return _key_id(ski.digest)
    try:
        return _key_id(x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "unknown"


def _authority_key_id(cert: x509.Certificate) -> str:
    aki = _extension(cert, x509.AuthorityKeyIdentifier)
    if isinstance(aki, x509.AuthorityKeyIdentifier) and aki.key_identifier is not None:
        return _key_id(aki.key_identifier)
    return "not stated (no authorityKeyIdentifier)"


def _extension(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _check_common(cert: x509.Certificate, at: datetime.datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise AuthenticationFailed(f"certificate '{_name(cert)}' is not yet valid")
    if at > cert.not_valid_after_utc:
        raise AuthenticationFailed(f"certificate '{_name(cert)}' has expired")
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _PROCESSED_EXTENSIONS:
            raise AuthenticationFailed(
                f"certificate '{_name(cert)}' has an unsupported critical extension"
                f" {ext.oid.dotted_string}"
            )


def _check_issuer(cert: x509.Certificate, certs_below: int) -> None:
    """``certs_below``: intermediates between this issuer and the leaf."""
    bc = _extension(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise AuthenticationFailed(f"issuer '{_name(cert)}' is not a CA (basicConstraints)")
    if bc.path_length is not None and certs_below > bc.path_length:
        raise AuthenticationFailed(f"CA '{_name(cert)}' path length constraint exceeded")
    ku = _extension(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        raise AuthenticationFailed(f"CA '{_name(cert)}' lacks keyCertSign key usage")


def _check_leaf(cert: x509.Certificate) -> None:
    ku = _extension(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not (ku.digital_signature or ku.content_commitment):
        raise AuthenticationFailed(f"certificate '{_name(cert)}' lacks digitalSignature key usage")


def verify_chain(
    leaf_der: bytes,
    intermediates_der: list[bytes],
    trust_anchors: list[x509.Certificate],
    at: datetime.datetime,
) -> x509.Certificate:
    """Validate the peer's certificate path; returns the leaf certificate.

    ``at`` is the time to check validity against (aware; naive means UTC).
    """
    return _verify_path(leaf_der, intermediates_der, trust_anchors, _aware(at)).leaf


def _aware(at: datetime.datetime) -> datetime.datetime:
    return at.replace(tzinfo=datetime.UTC) if at.tzinfo is None else at


@dataclass(frozen=True)
class VerifiedPath:
    """A path that passed rules 1-6, and when all its certificates are valid."""

    leaf: x509.Certificate
    not_before: datetime.datetime  # the latest notBefore in the path
    not_after: datetime.datetime  # the earliest notAfter in the path


def _verify_path(
    leaf_der: bytes,
    intermediates_der: Sequence[bytes],
    trust_anchors: Sequence[x509.Certificate],
    at: datetime.datetime,
) -> VerifiedPath:
    if not trust_anchors:
        raise AuthenticationFailed("no trusted CA configured")
    with malformed_certificates_refused():
        leaf = x509.load_der_x509_certificate(leaf_der)
        intermediates = [x509.load_der_x509_certificate(d) for d in intermediates_der]
        path = _build_path(leaf, intermediates, list(trust_anchors))
        for cert in path:
            _check_common(cert, at)
        _check_leaf(leaf)
        for index, issuer in enumerate(path[1:], start=1):
            _check_issuer(issuer, certs_below=index - 1)
        return VerifiedPath(
            leaf,
            max(c.not_valid_before_utc for c in path),
            min(c.not_valid_after_utc for c in path),
        )


class ChainCache:
    """Verified certificate paths (see "Caching" in the module docstring)."""

    def __init__(self, max_entries: int = CHAIN_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("a chain cache holds at least one path")
        self.max_entries = max_entries
        self._paths: OrderedDict[tuple[bytes, tuple[x509.Certificate, ...]], VerifiedPath] = (
            OrderedDict()
        )
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._paths)

    def clear(self) -> None:
        self._paths.clear()

    def verify(
        self,
        leaf_der: bytes,
        intermediates_der: Sequence[bytes],
        trust_anchors: Sequence[x509.Certificate],
        at: datetime.datetime,
    ) -> x509.Certificate:
        """:func:`verify_chain`, answered from the cache when the same certificates
        were verified against the same trust anchors and ``at`` is inside their
        validity window."""
        at = _aware(at)
        digest = hashlib.sha256()
        for der in (leaf_der, *intermediates_der):
            digest.update(len(der).to_bytes(4, "big"))
            digest.update(der)
        key = (digest.digest(), tuple(trust_anchors))
        known = self._paths.get(key)
        if known is not None and known.not_before <= at <= known.not_after:
            self._paths.move_to_end(key)
            self.hits += 1
            return known.leaf
        self.misses += 1
        self._paths.pop(key, None)
        verified = _verify_path(leaf_der, intermediates_der, trust_anchors, at)
        self._paths[key] = verified
        if len(self._paths) > self.max_entries:
            self._paths.popitem(last=False)
        return verified.leaf


# The paths verified in this process: a pure memo (the key is every input but the
# time, which each hit checks), shared by all sessions.
CHAIN_CACHE = ChainCache()


@contextlib.contextmanager
def malformed_certificates_refused() -> Iterator[None]:
    """Turn cryptography's lazy parse errors into AuthenticationFailed (the peer's fault)."""
    try:
        yield
    except CERT_PARSE_ERRORS as err:
        raise AuthenticationFailed(
            f"peer sent a malformed certificate ({type(err).__name__})"
        ) from None


# --- CERTREQ (§3.7) --------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of a CA's SubjectPublicKeyInfo (CERTREQ, §3.7), once per certificate:
    our trust anchors' go into every IKE_SA_INIT response and IKE_AUTH request."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA1())
    digest.update(spki)
    return digest.finalize()


def certreq_data(cas: Iterable[x509.Certificate]) -> bytes:
    """Certification Authority field: SHA-1 of each CA's SubjectPublicKeyInfo."""
    return b"".join(_spki_sha1(ca) for ca in cas)


def certreq_hashes(data: bytes) -> list[bytes]:
    """The 20-octet CA hashes in a CERTREQ payload, or ParseError."""
    if len(data) % CERTREQ_HASH_LEN:
        raise ParseError("CERTREQ data is not a list of 20-octet SHA-1 hashes")
    return [data[i : i + CERTREQ_HASH_LEN] for i in range(0, len(data), CERTREQ_HASH_LEN)]


def certreq_matches(data: bytes, ca: x509.Certificate) -> bool:
    """Whether the peer's CERTREQ names ``ca``."""
    return _spki_sha1(ca) in certreq_hashes(data)
