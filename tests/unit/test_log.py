"""tunneld/log.py: hostile strings cannot forge lines; unauthenticated events are throttled."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tunneld.log import (
    THROTTLE_FLUSH_INTERVAL,
    ContextFilter,
    JsonFormatter,
    LogThrottle,
    TextFormatter,
    escape,
    flush_throttles,
    log_context,
    setup_logging,
)

EVIL_DN = "CN=gw-b\nFAKE 2026-12-03 ERROR tunneld.peer: peer dead peer=gw-a\x1b[2J\u2028"


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "tunneld.peer", "levelno": 20, "levelname": "INFO"})
    rec.msg = msg
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_escape_writes_every_control_character_visibly() -> None:
    assert escape("a\nb\r\tc\x00\x7f\x9b\u2028\u2029") == (
        "a\\x0ab\\x0d\\x09c\\x00\\x7f\\x9b\\u2028\\u2029"
    )
    assert escape("CN=gw-b, O=Example, ünïcode") == "CN=gw-b, O=Example, ünïcode"


def test_a_text_line_stays_one_line_whatever_the_peer_sends() -> None:
    line = TextFormatter().format(record(EVIL_DN, remote_id=EVIL_DN, peer="gw-b"))
    assert "\n" not in line and "\x1b" not in line and "\u2028" not in line
    # A field value with spaces or '=' is quoted: it cannot pose as another field.
    assert " peer=gw-b" in line and 'remote_id="CN=gw-b\\\\x0aFAKE' in line


def test_a_json_line_is_one_valid_object() -> None:
    line = JsonFormatter().format(record("x", remote_id=EVIL_DN))
    assert "\n" not in line and json.loads(line)["remote_id"] == EVIL_DN


def test_the_throttle_logs_once_per_interval_and_summarises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("tunneld.test.throttle")
    throttle = LogThrottle(log, ("IKE_SA_INIT from unknown address",), interval=10.0)
    with caplog.at_level(logging.INFO, logger="tunneld.test.throttle"):
        for i in range(10_000):
            throttle(
                "IKE_SA_INIT from unknown address", 100.0 + i / 2000, remote=f"2001:db8::{i:x}"
            )
        throttle.flush(200.0)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "IKE_SA_INIT from unknown address",
        "IKE_SA_INIT from unknown address: 9999 more in the last 10 s",
    ]
    assert throttle.counts == {"IKE_SA_INIT from unknown address": 10_000}


def test_the_throttle_refuses_a_reason_outside_its_fixed_set() -> None:
    throttle = LogThrottle(logging.getLogger("x"), ("known",))
    with pytest.raises(ValueError):
        throttle("request with message ID 12345 out of window", 0.0)


def test_the_peer_context_names_the_peer_on_lines_that_do_not() -> None:
    """log_context fields reach records that lack them (tunneld.ike knows no peer names),
    never override a field a line sets itself, and end with their block."""
    handler = logging.Handler()
    handler.addFilter(ContextFilter())
    with log_context(peer="gw-b", remote="192.0.2.2:4500"):
        core = record("sent IKE_AUTH request 1 [ IDi AUTH ]")
        own = record("x", remote="192.0.2.9:500")
        assert handler.filter(core) and handler.filter(own)
    after = record("y")
    handler.filter(after)
    assert (vars(core)["peer"], vars(core)["remote"]) == ("gw-b", "192.0.2.2:4500")
    assert vars(own)["remote"] == "192.0.2.9:500"
    assert "peer" not in vars(after)
    line = TextFormatter().format(core)
    expected = "tunneld.peer: peer=gw-b sent IKE_AUTH request 1 [ IDi AUTH ] remote=192.0.2.2:4500"
    assert line.endswith(expected), line
    assert json.loads(JsonFormatter().format(core))["peer"] == "gw-b"


def test_an_evil_peer_name_in_the_context_is_escaped() -> None:
    line = TextFormatter().format(record("x", peer=EVIL_DN))
    assert "\n" not in line and "\x1b" not in line and ': peer="CN=gw-b\\\\x0aFAKE' in line


def test_debug_opens_tunneld_loggers_only() -> None:
    root, own = logging.getLogger(), logging.getLogger("tunneld")
    saved = root.handlers[:], root.level, own.level
    stream = io.StringIO()
    try:
        setup_logging("text", "debug", stream)
        assert (root.level, own.level) == (logging.WARNING, logging.DEBUG)
        logging.getLogger("tunneld.ike").debug("ours")
        logging.getLogger("pyroute2.ndb").debug("theirs")
        chatty = logging.getLogger("chatty.library")
        chatty.setLevel(logging.DEBUG)  # a library that sets its own level
        chatty.info("theirs, even so")
        chatty.setLevel(logging.NOTSET)
        logging.getLogger("tunneldish").warning("a warning of theirs passes")
        logging.getLogger("asyncio").info("theirs too")
        setup_logging("text", "error", stream)
        assert (root.level, own.level) == (logging.ERROR, logging.ERROR)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        own.setLevel(saved[2])
    text = stream.getvalue()
    assert "tunneld.ike: ours" in text and "theirs" not in text.replace("of theirs passes", "")
    assert "tunneldish: a warning of theirs passes" in text


def test_the_daemon_summarises_a_burst_once_it_ended_without_a_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """flush_throttles (the daemon calls it every THROTTLE_FLUSH_INTERVAL s) writes the
    "N more" line of a burst that has stopped: no further event is needed."""
    log = logging.getLogger("tunneld.test.flush")
    throttle = LogThrottle(log, ("spoofed",), interval=10.0)
    with caplog.at_level(logging.INFO, logger="tunneld.test.flush"):
        for i in range(50):
            throttle("spoofed", 100.0 + i / 100)
        flush_throttles(105.0)  # the window is still open: nothing yet
        assert [r.getMessage() for r in caplog.records] == ["spoofed"]
        flush_throttles(100.0 + THROTTLE_FLUSH_INTERVAL)
    assert [r.getMessage() for r in caplog.records][1:] == ["spoofed: 49 more in the last 10 s"]


async def test_the_daemon_flushes_throttles_on_its_own(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Daemon._throttle_flusher, on trio's clock."""
    import trio

    from tunneld.daemon import Daemon

    log = logging.getLogger("tunneld.test.flusher")
    throttle = LogThrottle(log, ("spoofed",), interval=5.0)
    with caplog.at_level(logging.INFO, logger="tunneld.test.flusher"):
        throttle("spoofed", trio.current_time())
        throttle("spoofed", trio.current_time())
        with trio.move_on_after(THROTTLE_FLUSH_INTERVAL + 1):
            await Daemon._throttle_flusher(None)  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "spoofed",
        "spoofed: 1 more in the last 5 s",
    ]
