"""IANA "Internet Key Exchange Version 2 (IKEv2) Parameters" used by the profile.

Only what the spec says lives here; what *we* chose (timers, limits) lives in
:mod:`ike.policy`. Section references are to RFC 7296 unless stated.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

IKE_PORT = 500  # §2
NAT_T_PORT = 4500  # RFC 3948 §2
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 §2.2 / RFC 7296 §2.23
NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3
IKE_HEADER_LEN = 28  # §3.1
GENERIC_PAYLOAD_HEADER_LEN = 4  # §3.2
IKE_MAJOR_VERSION = 2
IKE_VERSION_BYTE = 0x20  # major 2, minor 0


class ExchangeType(IntEnum):  # §3.1
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class HeaderFlag(IntFlag):  # §3.1
    NONE = 0
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(IntEnum):  # §3.2
    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    N = 41
    D = 42
    V = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53  # RFC 7383


class ProtocolId(IntEnum):  # §3.3.1
    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):  # §3.3.2
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4  # "Key Exchange Method" since RFC 9370
    ESN = 5


class EncrId(IntEnum):  # §3.3.2, RFC 4106, RFC 5282, RFC 7634
    AES_CBC = 12
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    CHACHA20_POLY1305 = 28


class PrfId(IntEnum):  # §3.3.2, RFC 4868
    HMAC_SHA1 = 2
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class IntegId(IntEnum):  # §3.3.2, RFC 4868
    NONE = 0
    HMAC_SHA1_96 = 2
    HMAC_SHA2_256_128 = 12


class DhGroup(IntEnum):  # §3.3.2, RFC 5903, RFC 8031
    NONE = 0
    MODP_2048 = 14
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31


class EsnId(IntEnum):  # §3.3.2
    NO_ESN = 0
    ESN = 1


class TransformAttr(IntEnum):  # §3.3.5
    KEY_LENGTH = 14


ATTR_FORMAT_TV = 0x8000  # §3.3.5 "AF" bit


class IdType(IntEnum):  # §3.5
    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11


class CertEncoding(IntEnum):  # §3.6
    X509_CERT_SIG = 4
    RAW_RSA_KEY = 11
    HASH_URL_X509_CERT = 12


class AuthMethod(IntEnum):  # §3.8, RFC 7427
    RSA_SIG = 1
    SHARED_KEY_MIC = 2
    DSS_SIG = 3
    ECDSA_256 = 9
    ECDSA_384 = 10
    ECDSA_521 = 11
    DIGITAL_SIGNATURE = 14


class HashAlgorithm(IntEnum):  # RFC 7427 §4, RFC 8420
    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class TsType(IntEnum):  # §3.13.1
    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


class NotifyType(IntEnum):  # §3.10.1 (errors < 16384, status >= 16384)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    MULTIPLE_AUTH_SUPPORTED = 16404
    REDIRECT_SUPPORTED = 16406
    CHILDLESS_IKEV2_SUPPORTED = 16418
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431

    @property
    def is_error(self) -> bool:
        return self < 16384


# Status notifies we do not implement but must tolerate silently (§3.10.1:
# unrecognised status types MUST be ignored); unknown *error* notifies in a
# response mean the request failed.
ERROR_NOTIFY_MAX = 16383
