"""The two error families of the IKE core (see rule 3 in :mod:`ike`)."""

from __future__ import annotations

from ike.constants import NotifyType


class IkeError(Exception):
    """Base of every error the IKE core raises on purpose."""


class PeerError(IkeError):
    """The peer sent something we must refuse.

    ``notify`` is the Notify type to answer with (``None``: drop silently).
    Messages never include key material.
    """

    notify: NotifyType | None = None

    def __init__(self, message: str, notify: NotifyType | None = None) -> None:
        super().__init__(message)
        if notify is not None:
            self.notify = notify


class ParseError(PeerError):
    """Bytes on the wire are not a well-formed IKE message or payload."""

    notify = NotifyType.INVALID_SYNTAX


class UnsupportedCriticalPayload(PeerError):
    notify = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD

    def __init__(self, payload_type: int) -> None:
        super().__init__(f"unsupported critical payload type {payload_type}")
        self.payload_type = payload_type


class NoProposalChosen(PeerError):
    notify = NotifyType.NO_PROPOSAL_CHOSEN


class InvalidKePayload(PeerError):
    notify = NotifyType.INVALID_KE_PAYLOAD

    def __init__(self, message: str, wanted_group: int) -> None:
        super().__init__(message)
        self.wanted_group = wanted_group


class AuthenticationFailed(PeerError):
    notify = NotifyType.AUTHENTICATION_FAILED


class TsUnacceptable(PeerError):
    notify = NotifyType.TS_UNACCEPTABLE


class IntegrityError(PeerError):
    """An SK payload failed to decrypt/verify: drop silently (RFC 7296 §2.21.2)."""

    notify = None


class LocalError(IkeError):
    """We were misused or misconfigured (not the peer's fault)."""
