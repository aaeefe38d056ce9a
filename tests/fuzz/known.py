"""Crashes the fuzz profile found and reported, recognised so that a run goes on.

Each predicate takes the unexpected exception (and the input) and returns the
reason when it is that known crash, else None. A run that hits only known
crashes ends as xfail naming them; anything else still fails. Each crash also
has its own strict xfail test with a fixed input (it fails once the bug is
fixed, so that the predicate is removed with it). Fixed so far, predicates
gone: lazy certificate parse errors out of verify_chain, an unsupported
critical payload out of FrontDoor.admit, the control socket's crashes.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509

# Not among ike.certs.CERT_PARSE_ERRORS: cryptography raises these (plain
# Exception subclasses) when it parses a certificate's extensions lazily.
CERT_EXTENSIONS = (x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def raised_in(exc: BaseException, fragment: str) -> bool:
    """Whether the traceback passes through a file whose path contains ``fragment``."""
    tb = exc.__traceback__
    while tb is not None:
        if fragment in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def certificate_extensions(exc: BaseException, data: bytes) -> str | None:
    """identity_matches (and verify_chain, for a trusted CA's certificate) let
    DuplicateExtension and UnsupportedGeneralNameType escape."""
    if isinstance(exc, CERT_EXTENSIONS) and raised_in(exc, "/ike/"):
        return f"ike/identity.py or ike/certs.py lets {type(exc).__name__} escape"
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
