"""ike/trace.py: charon-like one-line message summaries, payload types only."""

from __future__ import annotations

from ike.constants import AuthMethod, ExchangeType, HeaderFlag, IdType, NotifyType, PayloadType
from ike.payloads import AuthPayload, IdPayload, NotifyPayload, UnknownPayload
from ike.trace import summary
from ike.wire import Message


def test_a_summary_names_exchange_direction_id_and_payload_types() -> None:
    secret = bytes(range(32))
    message = Message(
        spi_i=bytes(8),
        exchange_type=ExchangeType.IKE_AUTH,
        flags=HeaderFlag.INITIATOR | HeaderFlag.RESPONSE,
        message_id=1,
        payloads=[
            IdPayload(PayloadType.IDr, IdType.ID_FQDN, b"gw-b.example.org"),
            AuthPayload(AuthMethod.SHARED_KEY_MIC, secret),
            NotifyPayload(NotifyType.TS_UNACCEPTABLE),
            NotifyPayload(40000),
            UnknownPayload(200, b"x", False),
        ],
    )
    text = summary(message)
    assert text == "IKE_AUTH response 1 [ IDr AUTH N(TS_UNACCEPTABLE) N(40000) U(200) ]"
    assert secret.hex() not in text and "gw-b" not in text


def test_an_empty_request_and_an_unknown_exchange() -> None:
    message = Message(spi_i=bytes(8), exchange_type=99, message_id=7)
    assert summary(message) == "exchange 99 request 7 [ ]"
