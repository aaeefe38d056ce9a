"""Crashes the fuzz profile found and reported, recognised so that a run goes on.

Each predicate takes the unexpected exception (and the input) and returns the
reason when it is that known crash, else None. A run that hits only known
crashes ends as xfail naming them; anything else still fails. Each crash also
has its own strict xfail test with a fixed input (it fails once the bug is
fixed, so that the predicate is removed with it). Fixed so far, predicates
gone: lazy certificate parse errors out of verify_chain and identity_matches
(DuplicateExtension and UnsupportedGeneralNameType too), an unsupported
critical payload out of FrontDoor.admit, the control socket's crashes. None
is open now; the helpers stay for the next finding.
"""

from __future__ import annotations

from collections.abc import Callable


def raised_in(exc: BaseException, fragment: str) -> bool:
    """Whether the traceback passes through a file whose path contains ``fragment``."""
    tb = exc.__traceback__
    while tb is not None:
        if fragment in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


Known = Callable[[BaseException, bytes], "str | None"]


def any_of(*checks: Known) -> Known:
    def check(exc: BaseException, data: bytes) -> str | None:
        for known in checks:
            reason = known(exc, data)
            if reason is not None:
                return reason
        return None

    return check
