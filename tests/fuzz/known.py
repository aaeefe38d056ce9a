"""Crashes the fuzz profile found and reported, recognised so that a run goes on.

Each predicate takes the unexpected exception (and the input) and returns the
reason when it is that known crash, else None. A run that hits only known
crashes ends as xfail naming them; anything else still fails. Each crash also
has its own strict xfail test with a fixed input (it fails once the bug is
fixed, so that the predicate is removed with it).
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509

CERT_PARSING = {
    KeyError: "KeyError: a Name attribute with an unknown string tag",
    ValueError: "ValueError: a Name attribute whose string does not decode",
    x509.InvalidVersion: "InvalidVersion: a certificate version other than v1/v3",
}


def raised_in(exc: BaseException, fragment: str) -> bool:
    """Whether the traceback passes through a file whose path contains ``fragment``."""
    tb = exc.__traceback__
    while tb is not None:
        if fragment in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def certificate_parsing(exc: BaseException, data: bytes) -> str | None:
    """cryptography parses names lazily: ike/certs.py lets its errors escape."""
    for kind, what in CERT_PARSING.items():
        if type(exc) is kind and raised_in(exc, "/ike/certs.py"):
            return f"ike/certs.py lets {what} escape (cryptography parses lazily)"
    return None


def critical_payload_at_the_front_door(exc: BaseException, data: bytes) -> str | None:
    from ike.errors import UnsupportedCriticalPayload

    if isinstance(exc, UnsupportedCriticalPayload) and raised_in(exc, "/ike/frontdoor.py"):
        return "FrontDoor.admit lets UnsupportedCriticalPayload (a PeerError) escape"
    return None


Known = Callable[[BaseException, bytes], "str | None"]


def any_of(*checks: Known) -> Known:
    def check(exc: BaseException, data: bytes) -> str | None:
        for known in checks:
            reason = known(exc, data)
            if reason is not None:
                return reason
        return None

    return check
