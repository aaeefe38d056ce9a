"""IKE identities (the ID payload, RFC 7296 §3.5) and matching them to certificates.

An :class:`Identity` is the (ID Type, Identification Data) pair as on the
wire. Equality is by exactly those bytes; policy decisions use
:meth:`Identity.matches`, which compares the way strongSwan does (FQDN and
e-mail case-insensitively, DNs attribute by attribute regardless of string
type). :func:`identity_matches` checks an ID against the certificate that
authenticated it (RFC 4945 §3.1: SAN for addresses and names, subject for DNs).

DN strings are written as strongSwan writes them, *most significant RDN
first*: ``"C=CH, O=Example, CN=gw-a"`` is the DER sequence C, O, CN. RFC 4514
strings run the other way (CN first); we never use that order for IDs, and
``cryptography``'s RFC 4514 parser refuses the spaces strongSwan puts after
commas, hence the small parser here.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ike import der
from ike.constants import IdType
from ike.errors import LocalError, ParseError

# cryptography parses a certificate lazily: a malformed name, extension or
# version surfaces as one of these when a field is first read, anywhere.
# DuplicateExtension and UnsupportedGeneralNameType are plain Exception subclasses
# (an extension twice; an ediPartyName or x400Address SAN, legal in RFC 5280).
CERT_PARSE_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)

_ID_RESERVED = b"\x00\x00\x00"  # §3.5: three RESERVED octets after ID Type

# Short names as strongSwan prints and parses them (keys matched case-insensitively).
_DN_NAMES: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "SN": NameOID.SURNAME,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "T": NameOID.TITLE,
    "G": NameOID.GIVEN_NAME,
    "I": NameOID.INITIALS,
    "DNQUALIFIER": NameOID.DN_QUALIFIER,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "E": NameOID.EMAIL_ADDRESS,
    "EMAIL": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
}
_DN_PRINT_NAMES: dict[str, str] = {
    oid.dotted_string: name
    for name, oid in _DN_NAMES.items()
    if name not in {"EMAIL", "EMAILADDRESS", "SERIALNUMBER", "DNQUALIFIER"}
} | {"2.5.4.5": "serialNumber", "2.5.4.46": "dnQualifier"}

# A DN as a list of RDNs, each a list of (OID dotted string, value).
_Rdns = list[list[tuple[str, str]]]

# Ours, not the RFC's: an identity is a name, not a document. Real DNs are a few
# hundred bytes; 2 KiB leaves room for long ones and keeps a peer's ID payload,
# parsed before its AUTH is verified, from costing more than a few milliseconds.
MAX_ID_LEN = 2048


@dataclass(frozen=True, slots=True)
class Identity:
    """One IKE identity; ``data`` is the Identification Data as on the wire."""

    id_type: IdType
    data: bytes

    def __post_init__(self) -> None:
        _validate(self.id_type, self.data)

    @classmethod
    def from_payload(cls, id_type: int, data: bytes) -> Identity:
        """From a received ID payload; ParseError if malformed, unknown or too long."""
        try:
            kind = IdType(id_type)
        except ValueError:
            raise ParseError(f"unknown ID type {id_type}") from None
        if len(data) > MAX_ID_LEN:  # read before AUTH is verified: bound the work
            raise ParseError(f"ID payload of {len(data)} bytes (at most {MAX_ID_LEN})")
        return cls(kind, bytes(data))

    @classmethod
    def parse(cls, text: str) -> Identity:
        """From a configuration string, as strongSwan reads them.

        ``192.0.2.1`` / ``2001:db8::1`` -> address, ``C=CH, O=Ex, CN=gw`` ->
        DER DN, ``user@example.org`` -> RFC 822, ``@gw.example.org`` or any
        other name -> FQDN; ``fqdn:``, ``email:``, ``dn:``/``asn1dn:`` and
        ``keyid:`` (``keyid:#hex`` for binary) force the type.
        """
        text = text.strip()
        if not text:
            raise LocalError("empty identity")
        kind, _, rest = text.partition(":")
        forced = _FORCED.get(kind.lower()) if rest else None
        try:
            if forced is not None:
                return forced(rest)
            return _guess(text)
        except ParseError as exc:
            raise LocalError(f"invalid identity {text!r}: {exc}") from None

    @classmethod
    def from_certificate_subject(cls, cert: x509.Certificate) -> Identity:
        """ID_DER_ASN1_DN of the certificate's subject (strongSwan's default ID)."""
        return cls(IdType.ID_DER_ASN1_DN, cert.subject.public_bytes())

    def payload_body(self) -> bytes:
        """IDx' for the AUTH octets (§2.15): ID Type | RESERVED | data."""
        return bytes([self.id_type]) + _ID_RESERVED + self.data

    def matches(self, other: Identity) -> bool:
        """Whether two IDs name the same peer (case and string type do not count)."""
        if self.id_type != other.id_type:
            return False
        if self.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            return _fold(self.data.decode("ascii")) == _fold(other.data.decode("ascii"))
        if self.id_type == IdType.ID_DER_ASN1_DN:
            return _normalize(_parse_dn(self.data)) == _normalize(_parse_dn(other.data))
        return self.data == other.data

    def __str__(self) -> str:
        if len(self.data) > _TEXT_CACHED_LEN:
            return _text(self.id_type, self.data)
        return _cached_text(self.id_type, self.data)


# A hub names each spoke by its identity several times per handshake (spoke name,
# log lines, status); the text of the identities seen lately is kept (short ones
# only: an ID payload may be 2 KiB).
_TEXT_CACHED_LEN = 255
_TEXT_CACHE_SIZE = 4096


def _text(id_type: IdType, data: bytes) -> str:
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        return str(ipaddress.ip_address(data))
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        text = data.decode("ascii")
        try:
            plain = _guess(text) == Identity(id_type, data)
        except ParseError:
            plain = False
        # Keep str() readable by parse(): "fqdn:192.0.2.1", "email:ops".
        return text if plain else f"{_PREFIXES[id_type]}:{text}"
    if id_type == IdType.ID_DER_ASN1_DN:
        return _format_dn(_parse_dn(data))
    prefix = "keyid" if id_type == IdType.ID_KEY_ID else "asn1gn"
    return f"{prefix}:#{data.hex()}"


_cached_text = functools.lru_cache(maxsize=_TEXT_CACHE_SIZE)(_text)


def _validate(id_type: IdType, data: bytes) -> None:
    if id_type == IdType.ID_IPV4_ADDR and len(data) != 4:
        raise ParseError("ID_IPV4_ADDR data is not 4 octets")
    if id_type == IdType.ID_IPV6_ADDR and len(data) != 16:
        raise ParseError("ID_IPV6_ADDR data is not 16 octets")
    if not data:
        raise ParseError(f"empty {id_type.name} identity")
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR) and not all(
        0x21 <= b <= 0x7E for b in data
    ):
        # §3.5: an ASCII string with no terminator; spaces and controls are not names.
        raise ParseError(f"{id_type.name} is not printable ASCII without spaces")
    if id_type == IdType.ID_DER_ASN1_DN:
        _parse_dn(data)


def _guess(text: str) -> Identity:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        kind = IdType.ID_IPV4_ADDR if address.version == 4 else IdType.ID_IPV6_ADDR
        return Identity(kind, address.packed)
    if "=" in text:
        return _dn_identity(text)
    if text.startswith("@"):
        return _ascii_identity(IdType.ID_FQDN, text[1:])
    if "@" in text:
        return _ascii_identity(IdType.ID_RFC822_ADDR, text)
    return _ascii_identity(IdType.ID_FQDN, text)


def _ascii_identity(kind: IdType, text: str) -> Identity:
    try:
        return Identity(kind, text.encode("ascii"))
    except UnicodeEncodeError:
        raise ParseError("not ASCII (use the IDNA A-label form)") from None


def _key_id(text: str) -> Identity:
    if text.startswith("#"):
        try:
            return Identity(IdType.ID_KEY_ID, bytes.fromhex(text[1:]))
        except ValueError:
            raise ParseError("keyid:# needs hex digits") from None
    return Identity(IdType.ID_KEY_ID, text.encode())


_PREFIXES = {IdType.ID_FQDN: "fqdn", IdType.ID_RFC822_ADDR: "email"}

_FORCED: dict[str, Callable[[str], Identity]] = {
    "fqdn": lambda t: _ascii_identity(IdType.ID_FQDN, t),
    "email": lambda t: _ascii_identity(IdType.ID_RFC822_ADDR, t),
    "rfc822": lambda t: _ascii_identity(IdType.ID_RFC822_ADDR, t),
    "dn": lambda t: _dn_identity(t),
    "asn1dn": lambda t: _dn_identity(t),
    "keyid": _key_id,
}


# --- DN strings (strongSwan order) ------------------------------------------------


def _split_unescaped(text: str, separators: str) -> list[str]:
    """Split at separators outside quotes and backslash escapes (kept verbatim)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch in separators and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted or escaped:
        raise ParseError("unterminated quote or escape in DN")
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    """Resolve backslash escapes and quotes; drop unescaped outer spaces."""
    chars: list[tuple[str, bool]] = []  # (character, was escaped)
    i = 0
    while i < len(value):
        escaped = value[i] == "\\" and i + 1 < len(value)
        i += escaped
        chars.append((value[i], escaped))
        i += 1
    while chars and chars[0] == (" ", False):
        chars.pop(0)
    while chars and chars[-1] == (" ", False):
        chars.pop()
    if len(chars) >= 2 and chars[0] == chars[-1] == ('"', False):
        chars = chars[1:-1]
    return "".join(ch for ch, _ in chars)


def _attribute(text: str) -> x509.NameAttribute[str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParseError(f"DN component {text.strip()!r} is not KEY=value")
    oid = _DN_NAMES.get(key.upper())
    if oid is None:
        try:
            oid = ObjectIdentifier(key)
        except ValueError:
            raise ParseError(f"unknown DN attribute {key!r}") from None
    try:
        return x509.NameAttribute(oid, _unescape(value))
    except ValueError as exc:
        raise ParseError(str(exc)) from None


def _dn_identity(text: str) -> Identity:
    rdns = []
    for rdn_text in _split_unescaped(text, ","):
        attrs = [_attribute(a) for a in _split_unescaped(rdn_text, "+")]
        try:
            rdns.append(x509.RelativeDistinguishedName(attrs))
        except ValueError as exc:  # e.g. the same attribute twice in one RDN
            raise ParseError(str(exc)) from None
    return Identity(IdType.ID_DER_ASN1_DN, x509.Name(rdns).public_bytes())


def _parse_dn(data: bytes) -> _Rdns:
    """RDNs of a DER Name (RFC 5280 §4.1.2.4), in DER order."""
    rdns: _Rdns = []
    for rdn in der.read_all(der.read_one(data, der.SEQUENCE).value):
        if rdn.tag != der.SET:
            raise ParseError("DN: RDN is not a SET")
        attrs: list[tuple[str, str]] = []
        for atv in der.read_all(rdn.value):
            fields = der.read_all(der.read_one(atv.raw, der.SEQUENCE).value)
            if len(fields) != 2 or fields[0].tag != der.OID:
                raise ParseError("DN: attribute is not SEQUENCE { OID, value }")
            attrs.append((der.decode_oid(fields[0].value), der.decode_string(fields[1])))
        if not attrs:
            raise ParseError("DN: empty RDN")
        rdns.append(attrs)
    if not rdns:
        raise ParseError("DN: no RDN")
    return rdns


def _escape(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;' else ch for ch in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def _format_dn(rdns: _Rdns) -> str:
    return ", ".join(
        "+".join(f"{_DN_PRINT_NAMES.get(oid, oid)}={_escape(value)}" for oid, value in rdn)
        for rdn in rdns
    )


def dn_string(name: x509.Name) -> str:
    """A certificate name written the strongSwan way (most significant RDN first)."""
    return _format_dn(_name_rdns(name))


def _fold(value: str) -> str:
    return " ".join(value.split()).casefold()


def _normalize(rdns: _Rdns) -> list[frozenset[tuple[str, str]]]:
    return [frozenset((oid, _fold(value)) for oid, value in rdn) for rdn in rdns]


def _name_rdns(name: x509.Name) -> _Rdns:
    return [
        [(a.oid.dotted_string, a.value if isinstance(a.value, str) else a.value.hex()) for a in rdn]
        for rdn in name.rdns
    ]


# --- matching against a certificate -----------------------------------------------


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def identity_matches(id_type: IdType, id_data: bytes, cert: x509.Certificate) -> bool:
    """Whether the certificate vouches for this ID (RFC 4945 §3.1).

    ID_FQDN / ID_RFC822_ADDR / ID_IPV4_ADDR / ID_IPV6_ADDR match a SAN of the
    same kind; ID_DER_ASN1_DN matches the subject (or a directoryName SAN).
    A malformed ID or certificate never matches.
    """
    try:
        ident = Identity(IdType(id_type), bytes(id_data))
        return _matches_cert(ident, cert)
    except (ParseError, *CERT_PARSE_ERRORS):
        return False


def _matches_cert(ident: Identity, cert: x509.Certificate) -> bool:
    san = _san(cert)
    kind = ident.id_type
    if kind == IdType.ID_DER_ASN1_DN:
        wanted = _normalize(_parse_dn(ident.data))
        names = [cert.subject, *(san.get_values_for_type(x509.DirectoryName) if san else [])]
        return any(_normalize(_name_rdns(n)) == wanted for n in names)
    if san is None:
        return False
    if kind in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        return ipaddress.ip_address(ident.data) in san.get_values_for_type(x509.IPAddress)
    if kind in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        general = x509.DNSName if kind == IdType.ID_FQDN else x509.RFC822Name
        wanted_name = _fold(ident.data.decode("ascii"))
        return any(_fold(v) == wanted_name for v in san.get_values_for_type(general))
    return False


# -- patterns (a hub's peer entry for many spokes) -------------------------------
#
# ``*.branch.example.org`` (ID_FQDN) matches any name of one or more labels under
# branch.example.org; ``*@example.org`` (ID_RFC822_ADDR) any mailbox at exactly
# that domain; a DN with ``*`` as whole attribute values (``C=CH, O=Example,
# OU=branches, CN=*``) any DN with the same attributes in the same RDNs and the
# others equal. Matching ignores case like Identity.matches. An identity that
# itself contains ``*`` never matches a pattern (a wildcard certificate names no
# one spoke). Patterns are policy only: the identity is still proven by AUTH.

_PATTERN_HEADS = {IdType.ID_FQDN: "*.", IdType.ID_RFC822_ADDR: "*@"}
_ANY = "*"
_Attrs = list[list[tuple[str, str]]]


def is_pattern(identity: Identity) -> bool:
    """Whether ``identity`` is a pattern (see above)."""
    if identity.id_type == IdType.ID_DER_ASN1_DN:
        return any(v == _ANY for rdn in _dn_attrs(identity) for _, v in rdn)
    head = _PATTERN_HEADS.get(identity.id_type)
    if head is None:
        return False
    text = identity.data.decode("ascii")
    return text.startswith(head) and len(text) > 2 and "*" not in text[2:]


def pattern_matches(pattern: Identity, identity: Identity) -> bool:
    """Whether ``identity`` is one the entry ``pattern`` (a pattern or exact ID) accepts."""
    if not is_pattern(pattern):
        return pattern.matches(identity)
    if pattern.id_type != identity.id_type:
        return False
    if pattern.id_type == IdType.ID_DER_ASN1_DN:
        theirs = _dn_attrs(identity)
        wild = any("*" in v for rdn in theirs for _, v in rdn)
        return not wild and _dn_fit(_dn_attrs(pattern), theirs)
    text = _fold(identity.data.decode("ascii"))
    suffix = _fold(pattern.data.decode("ascii"))[1:]  # ".branch.example.org" | "@example.org"
    head = text[: len(text) - len(suffix)]
    return text.endswith(suffix) and bool(head) and "*" not in text


def patterns_overlap(a: Identity, b: Identity) -> bool:
    """Whether some identity could match both ``a`` and ``b`` (patterns or exact IDs)."""
    if is_pattern(a) and is_pattern(b):
        if a.id_type != b.id_type:
            return False
        if a.id_type == IdType.ID_DER_ASN1_DN:
            return _dn_fit(_dn_attrs(a), _dn_attrs(b))
        sa, sb = (_fold(x.data.decode("ascii"))[1:] for x in (a, b))
        if a.id_type == IdType.ID_RFC822_ADDR:
            return sa == sb
        return sa.endswith(sb) or sb.endswith(sa)
    if is_pattern(b):
        a, b = b, a
    return pattern_matches(a, b)


def _dn_attrs(identity: Identity) -> _Attrs:
    """The DN's RDNs, each its (OID, folded value) pairs in a fixed order."""
    return [sorted((oid, _fold(v)) for oid, v in rdn) for rdn in _parse_dn(identity.data)]


def _dn_fit(a: _Attrs, b: _Attrs) -> bool:
    """Same shape (RDNs, attribute types), every value equal or ``*`` on either side."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        if [oid for oid, _ in ra] != [oid for oid, _ in rb]:
            return False
        if any(va != vb and _ANY not in (va, vb) for (_, va), (_, vb) in zip(ra, rb, strict=True)):
            return False
    return True
