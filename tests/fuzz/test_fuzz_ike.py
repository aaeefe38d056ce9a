"""Fuzz profile: the IKE codec and the stateless front door.

Decoders: the IKE header, whole messages (every payload type), single
payload bodies, RFC 7427 AUTH data and SIGNATURE_HASH_ALGORITHMS, SK
decryption with a real key, cookies and FrontDoor.admit. Allowed outcome:
a result, or the project's own PeerError (ParseError and its kin,
IntegrityError, UnsupportedCriticalPayload, AuthenticationFailed).
"""

from __future__ import annotations

import random
import time

import pytest
from fuzzing import Target, mutate, profile
from genuine import (
    SK_PREFIX,
    auth_data_corpus,
    check_sk_corpus,
    cookie_requests,
    every_payload,
    fuzz_cipher,
    ike_corpus,
    initiator_first_messages,
    reference_pair_wire,
    seal,
    sk_plain_forms,
)

from ike.auth import parse_auth_data, parse_signature_hash_algorithms
from ike.constants import ExchangeType, HashAlgorithm
from ike.cookies import CookieJar, cookie_challenge, request_cookie
from ike.entropy import DeterministicEntropy
from ike.errors import ParseError, PeerError
from ike.frontdoor import FrontDoor, Verdict
from ike.payloads import CertReqPayload, UnknownPayload, decode_payload
from ike.wire import (
    IKE_HEADER_LEN,
    MAX_PAYLOAD_LEN,
    build_payloads,
    decrypt_message,
    parse_header,
    parse_message,
)

pytestmark = pytest.mark.fuzz

T0 = 1000.0
HOST = "192.0.2.10"


def fix_ike_length(rng: random.Random, data: bytearray) -> bytearray:
    """Half the time the header's Length is made right (parsing gets past it)."""
    if len(data) >= IKE_HEADER_LEN and rng.random() < 0.5:
        data[24:28] = len(data).to_bytes(4, "big")
    return data


# -- the header and whole messages ---------------------------------------------------


def header_target() -> Target:
    return Target("ike_header", ike_corpus(), parse_header, (ParseError,), fix_ike_length)


def _parse_round_trip(data: bytes) -> bool:
    msg = parse_message(data)
    # Whatever parses rebuilds and parses to the same thing (our own builder).
    again = parse_message(msg.build())
    assert again == msg, f"round trip changed the message: {msg!r} -> {again!r}"
    return True


def message_target() -> Target:
    return Target("ike_message", ike_corpus(), _parse_round_trip, (PeerError,), fix_ike_length)


def payload_corpus() -> list[bytes]:
    """Type, flags, body: every payload we build, and every one the pair exchanged."""
    out = []
    payloads = list(every_payload())
    cipher = fuzz_cipher()
    for d in reference_pair_wire():
        if d.plain is None:
            payloads += parse_message(d.data).payloads
        else:
            payloads += decrypt_message(seal(d.plain, cipher, True), cipher).payloads
    for payload in payloads:
        out.append(bytes([payload.payload_type, 0]) + payload.body())
    return out


def _decode_one(data: bytes) -> bool:
    if len(data) < 2:
        raise ParseError("fuzz harness: no type and flags")  # not a decoder input
    payload = decode_payload(data[0], data[2:], bool(data[1] & 0x80))
    if isinstance(payload, CertReqPayload):
        payload.ca_hashes()
    first, chain = build_payloads([payload])  # decoded payloads build again
    assert first == payload.payload_type and len(chain) == 2 + len(data)
    return True


def _payload_sized(rng: random.Random, data: bytearray) -> bytearray:
    del data[2 + MAX_PAYLOAD_LEN - 4 :]  # a generic header's Length cannot say more
    return data


def payloads_target() -> Target:
    return Target("ike_payloads", payload_corpus(), _decode_one, (PeerError,), _payload_sized)


def _auth_data(data: bytes) -> bool:
    parse_auth_data(data)
    return True


def auth_data_target() -> Target:
    return Target("auth_data", auth_data_corpus(), _auth_data, (PeerError,))


def _hashes(data: bytes) -> bool:
    parse_signature_hash_algorithms(data)
    return True


def signature_hashes_target() -> Target:
    return Target("signature_hashes", auth_data_corpus(), _hashes, (PeerError,))


# -- SK decryption with a real key -----------------------------------------------------


def sk_target() -> Target:
    cipher = fuzz_cipher()
    check_sk_corpus(cipher)
    plain = list(sk_plain_forms())
    sealed = [seal(p, cipher, True) for p in plain]

    def generate(rng: random.Random) -> bytes:
        if rng.random() < 0.5:  # the ciphertext mutated: mostly refused before the ICV
            return bytes(fix_ike_length(rng, mutate(rng, sealed, rng.choice(sealed))))
        # the plaintext mutated, then sealed with the key: past the ICV
        return seal(mutate(rng, plain), cipher, fix_lengths=rng.random() < 0.9)

    def run(data: bytes) -> bool:
        decrypt_message(data, cipher)
        return True

    assert len(plain[0]) > SK_PREFIX
    return Target("sk_decrypt", sealed, run, (PeerError,), generate=generate)


# -- cookies and the front door -----------------------------------------------------------


def cookies_target() -> Target:
    jar = CookieJar(bytes(range(32)))
    corpus = cookie_requests(jar, HOST) + initiator_first_messages()

    def run(data: bytes) -> bool:
        request = parse_message(data)
        request_cookie(request)
        valid = jar.valid(request, HOST)
        if request.exchange_type == ExchangeType.IKE_SA_INIT and not request.is_response:
            cookie_challenge(request, jar.cookie(request, HOST))
        return valid

    assert run(corpus[1]) and not run(corpus[0])
    return Target("cookies", corpus, run, (PeerError,), fix_ike_length)


def frontdoor_target() -> Target:
    """FrontDoor.admit on what the daemon routes to it: IKE_SA_INIT requests, SPIr 0.

    Two doors: one below its COOKIE threshold (admits), one that always asks
    for a cookie (cookies it made itself are in the corpus). admit documents
    that it never raises: no exception is allowed.
    """
    relaxed = FrontDoor(DeterministicEntropy(b"door-a"), T0)
    strict = FrontDoor(DeterministicEntropy(b"door-b"), T0, cookie_threshold=0)
    corpus = initiator_first_messages()
    requests = [m for m in corpus if not parse_header(m).is_response and not any(m[8:16])]
    for request in requests[:3]:
        challenge = strict.admit(request, (HOST, 500), "gw-b", T0)
        corpus += cookie_requests_from(challenge.reply, request)
    admitted: list[FrontDoor] = []

    def run(data: bytes) -> bool:
        try:
            header = parse_header(data)
        except ParseError:
            return False  # the router drops it before the front door
        if header.exchange_type != ExchangeType.IKE_SA_INIT or header.is_response:
            return False
        if any(header.spi_r):
            return False
        verdicts = []
        for door in (relaxed, strict):  # no time passes: the corpus's cookies stay valid
            admission = door.admit(data, (HOST, 500), "gw-b", T0)
            if admission.verdict is Verdict.COOKIE:
                parse_message(admission.reply)
            if admission.verdict is Verdict.ADMIT:
                door.opened("gw-b", (HOST, 500), data[:8])
                admitted.append(door)
            verdicts.append(admission.verdict)
        if len(admitted) >= 3:  # half-open SAs end (at 2 from one source: cookies)
            for door in admitted:
                door.closed("gw-b", (HOST, 500))
            admitted.clear()
        return Verdict.ADMIT in verdicts

    return Target("frontdoor", corpus, run, (), fix_ike_length)


def cookie_requests_from(challenge: bytes, request: bytes) -> list[bytes]:
    """The request again with the COOKIE of ``challenge`` first (as an initiator does)."""
    msg = parse_message(request)
    cookie = parse_message(challenge).payloads[0]
    msg.payloads.insert(0, cookie)  # type: ignore[arg-type]
    return [msg.build(), challenge]


TARGETS = {
    "ike_header": header_target,
    "ike_message": message_target,
    "ike_payloads": payloads_target,
    "auth_data": auth_data_target,
    "signature_hashes": signature_hashes_target,
    "sk_decrypt": sk_target,
    "cookies": cookies_target,
    "frontdoor": frontdoor_target,
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name: str) -> None:
    profile(name, TARGETS[name])


def test_frontdoor_admit_with_an_unknown_critical_payload() -> None:
    """Found by this profile: UnsupportedCriticalPayload escaped FrontDoor.admit."""
    request = initiator_first_messages()[0]
    msg = parse_message(request)
    msg.payloads.append(UnknownPayload(200, b"x", critical=True))
    door = FrontDoor(DeterministicEntropy(b"door"), T0)
    admission = door.admit(msg.build(), (HOST, 500), "gw-b", T0)
    assert admission.verdict is Verdict.DROP


# Found by this profile (a ValueError per unknown value made 64 KiB take ~130 ms): fixed.
def test_signature_hash_algorithms_of_64_kib_take_under_50_ms() -> None:
    size = (MAX_PAYLOAD_LEN - 8 - IKE_HEADER_LEN) & ~1  # a Notify filling an IKE message
    data = bytes(range(256)) * (size // 256) + bytes([0, 2, 0, 3])  # SHA-256, SHA-384
    start = time.thread_time()
    found = parse_signature_hash_algorithms(data[-size:])
    assert time.thread_time() - start < 0.05
    assert {HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384} <= found
