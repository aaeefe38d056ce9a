"""One line per IKE message, as charon writes it: what an operator reads at debug.

``sent IKE_AUTH request 1 [ IDi CERT AUTH SA TSi TSr ]``: direction, exchange,
request or response, message ID, and the payload types inside (the SK
payload's inner ones), a notify with its type. Nothing else of a payload is
shown: no nonce, KE value, AUTH data or key material ever reaches this line.

The line is logged on ``tunneld.ike`` at DEBUG from the one place messages are
framed and unframed (:mod:`ike.exchanges.context`); the daemon's peer task
adds ``peer=`` and ``remote=`` (:func:`tunneld.log.log_context`). It is built
only when DEBUG is enabled for that logger.
"""

from __future__ import annotations

import logging

from ike.constants import ExchangeType, NotifyType, PayloadType
from ike.events import Address
from ike.payloads import NotifyPayload, Payload
from ike.wire import Message

log = logging.getLogger("tunneld.ike")

# charon's abbreviations (src/libcharon/encoding/payloads/payload.c), ours where it has none
_SHORT = {
    PayloadType.SA: "SA",
    PayloadType.KE: "KE",
    PayloadType.IDi: "IDi",
    PayloadType.IDr: "IDr",
    PayloadType.CERT: "CERT",
    PayloadType.CERTREQ: "CERTREQ",
    PayloadType.AUTH: "AUTH",
    PayloadType.NONCE: "No",
    PayloadType.D: "D",
    PayloadType.V: "V",
    PayloadType.TSi: "TSi",
    PayloadType.TSr: "TSr",
    PayloadType.SK: "SK",
    PayloadType.CP: "CP",
    PayloadType.EAP: "EAP",
    PayloadType.SKF: "EF",
}


def payload_name(payload: Payload) -> str:
    if isinstance(payload, NotifyPayload):
        try:
            return f"N({NotifyType(payload.notify_type).name})"
        except ValueError:
            return f"N({int(payload.notify_type)})"
    kind = int(payload.payload_type)
    try:
        return _SHORT[PayloadType(kind)]
    except (ValueError, KeyError):
        return f"U({kind})"


def summary(message: Message) -> str:
    """``IKE_AUTH request 1 [ IDi CERT AUTH SA TSi TSr ]`` for ``message``."""
    try:
        exchange = ExchangeType(message.exchange_type).name
    except ValueError:
        exchange = f"exchange {int(message.exchange_type)}"
    kind = "response" if message.is_response else "request"
    names = "".join(f"{payload_name(p)} " for p in message.payloads)
    return f"{exchange} {kind} {message.message_id} [ {names}]"


def trace(direction: str, message: Message, to: Address | None = None) -> None:
    """Log ``direction`` ("sent" or "parsed") and the message's summary at DEBUG;
    ``to``: where a message we send goes (else the daemon's context says where the
    message being handled came from)."""
    if log.isEnabledFor(logging.DEBUG):
        extra: dict[str, object] = {"event": "ike_message", "message_id": message.message_id}
        if to is not None:
            host, port = to
            extra["remote"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.debug("%s %s", direction, summary(message), extra=extra)
