"""Failures an operator can cause or suffer, each logged once at WARNING (peer rule 13).

A handshake that fails is put in one of a few classes (:class:`Failure`) by
the error notify that ended it (sent or received) or, for silence, by its
reason. :class:`FailureLog` writes the line:

- authenticated failures (our own attempt, or a refusal of an authenticated
  peer): WARNING the first time a class occurs in a row, INFO with a repeat
  count while the same class keeps recurring (an initiator retries; the
  operator needs one line, not one per attempt), again WARNING once the
  class changes or after the tunnel was up;
- unauthenticated refusals (a responder that refused an IKE_SA_INIT or an
  IKE_AUTH it could not authenticate: anyone can send those) go through a
  :class:`tunneld.log.LogThrottle` at WARNING, once per class per interval.

Every line carries ``peer``, ``remote`` and ``event`` as fields, the cause in
its message (authenticated) or in ``error`` (unauthenticated, throttled).
"""

from __future__ import annotations

import enum
import logging

from ike.constants import NotifyType
from tunneld.log import LogThrottle

UNAUTHENTICATED_INTERVAL = 10.0  # seconds between two throttled lines of one class


class Failure(enum.Enum):
    """What went wrong, in the words of the log line; ``event`` is its JSON tag."""

    AUTHENTICATION = "authentication failed"
    PROPOSAL = "proposal mismatch"
    SELECTORS = "traffic selector mismatch"
    UNREACHABLE = "peer unreachable"
    OTHER = "IKE SA failed"

    @property
    def event(self) -> str:
        return _EVENTS[self]


_EVENTS = {
    Failure.AUTHENTICATION: "auth_failed",
    Failure.PROPOSAL: "proposal_mismatch",
    Failure.SELECTORS: "ts_mismatch",
    Failure.UNREACHABLE: "unreachable",
    Failure.OTHER: "ike_failed",
}

_BY_NOTIFY = {
    NotifyType.AUTHENTICATION_FAILED: Failure.AUTHENTICATION,
    NotifyType.NO_PROPOSAL_CHOSEN: Failure.PROPOSAL,
    NotifyType.INVALID_KE_PAYLOAD: Failure.PROPOSAL,  # no DH group in common
    NotifyType.TS_UNACCEPTABLE: Failure.SELECTORS,
}


def classify(notify: NotifyType | None, reason: str) -> Failure | None:
    """The class of a failure, or None when it names no mismatch and no silence."""
    if notify is not None and notify in _BY_NOTIFY:
        return _BY_NOTIFY[notify]
    if reason.startswith(Failure.UNREACHABLE.value):
        return Failure.UNREACHABLE
    return None


class FailureLog:
    """One peer's failure lines (see the module docstring)."""

    def __init__(self, logger: logging.Logger, peer: str) -> None:
        self._log = logger
        self._peer = peer
        self._last: Failure | None = None
        self._repeats = 0
        reasons = tuple(f"refused the peer's IKE SA: {f.value}" for f in Failure)
        self._throttle = LogThrottle(
            logger, reasons, interval=UNAUTHENTICATED_INTERVAL, level=logging.WARNING
        )

    def cleared(self) -> None:
        """The tunnel came up: the next failure is news again."""
        self._last, self._repeats = None, 0

    def report(self, failure: Failure, reason: str, remote: str) -> None:
        """An authenticated failure, ``reason`` naming its cause."""
        if failure is self._last:
            self._repeats += 1
        else:
            self._last, self._repeats = failure, 0
        message = reason if reason.startswith(failure.value) else f"{failure.value}: {reason}"
        fields: dict[str, object] = {"peer": self._peer, "remote": remote, "event": failure.event}
        if self._repeats:
            fields["repeated"] = self._repeats
            self._log.info(f"{message} (again)", extra=fields)
        else:
            self._log.warning(message, extra=fields)

    def report_unauthenticated(
        self, failure: Failure, reason: str, remote: str, now: float
    ) -> None:
        """A refusal of a peer we could not authenticate (throttled)."""
        self._throttle(
            f"refused the peer's IKE SA: {failure.value}",
            now,
            peer=self._peer,
            remote=remote,
            event=failure.event,
            error=reason,
        )
