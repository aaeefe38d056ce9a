"""The control socket against hostile requests (issue #9, "Hostile networks").

A running in-memory daemon pair (tests/helpers/daemon_memory.py) with its
real Unix control socket: every bad request line is answered with one JSON
error line, the connection is closed, and the daemon keeps running.
"""

from __future__ import annotations

import json
import logging
import socket

import pytest
import trio
import trio.testing

from tests.helpers.daemon_memory import Pair, wait_for_children
from tunneld import control
from tunneld.daemon import Daemon, MemoryDevices


@pytest.fixture
def clock(autojump_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """Virtual time that jumps only after 0.5 s of real idleness: between a client
    thread's connect and its send the daemon is idle, and an eager jump would run its
    5 s request timeout out before the line arrives."""
    autojump_clock.autojump_threshold = 0.5
    return autojump_clock


def exchange(path: str, line: bytes) -> tuple[bytes, bool]:
    """Send ``line`` raw, read the answer; whether the daemon then closed the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        try:
            closed = s.recv(1) == b""
        except ConnectionResetError:  # closed with the rest of an overlong line unread
            closed = True
    return data, closed


async def ask(pair: Pair, line: bytes) -> dict[str, object]:
    data, closed = await trio.to_thread.run_sync(exchange, str(pair.a.socket), line)
    assert closed and data.count(b"\n") == 1, data[:200]
    answer = json.loads(data)
    assert isinstance(answer, dict)
    return answer


async def still_serving(pair: Pair) -> None:
    st = await trio.to_thread.run_sync(control.request, str(pair.a.socket), {"cmd": "status"})
    assert st["ok"] and st["gateway"] == "gw-a"


async def test_a_deeply_nested_request_is_refused_and_the_daemon_goes_on(
    pair: Pair, clock: trio.testing.MockClock
) -> None:
    """60,000 brackets used to reach json.loads: RecursionError ended the daemon."""
    await wait_for_children(pair.a, pair.b)
    for line in (b"[" * 60_000 + b"\n", b'{"cmd": ' + b'{"a": ' * 40 + b"1" + b"}" * 41 + b"\n"):
        answer = await ask(pair, line)
        assert answer["ok"] is False and "nested deeper than 32" in str(answer["error"])
    await still_serving(pair)


async def test_an_overlong_request_is_refused(pair: Pair, clock: trio.testing.MockClock) -> None:
    line = b'{"cmd": "status", "pad": "' + b"x" * 70_000 + b'"}\n'
    answer = await ask(pair, line)
    assert answer["ok"] is False and "longer than 65536 bytes" in str(answer["error"])
    await still_serving(pair)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"{not json\n", "bad request: not JSON"),
        (b"\xff\xfe{}\n", "bad request: not JSON"),
        (b"[1, 2]\n", "bad request: a request is a JSON object, not an array"),
        (b'"status"\n', "bad request: a request is a JSON object, not a string"),
        (b"{}\n", "bad request: 'cmd' is missing"),
        (b'{"cmd": 7}\n', "bad request: 'cmd' must be a string, not a number"),
        (b'{"cmd": "frobnicate"}\n', "bad request: unknown command 'frobnicate'"),
        (b'{"cmd": "up"}\n', "bad request: 'peer' is missing"),
        (b'{"cmd": "up", "peer": ["gw-b"]}\n', "bad request: 'peer' must be a string"),
        (b'{"cmd": "rekey", "peer": "gw-b", "ike": "yes"}\n', "'ike' must be true or false"),
        (b'{"cmd": "down", "peer": "gw-b", "for": "1h"}\n', "'for' must be a positive number"),
        (b'{"cmd": "down", "peer": "gw-b", "for": -1}\n', "'for' must be a positive number"),
        (b'{"cmd": "down", "peer": "gw-b", "for": 1' + b"0" * 400 + b"}\n", "out of range"),
        (b'{"cmd": "down", "peer": "gw-b", "for": true}\n', "'for' must be a positive number"),
        (b'{"cmd": "status", "cmd": "status", "x": NaN}\n', "bad request: not JSON"),
        (b"\n", "bad request: empty request"),
    ],
    ids=lambda v: v[:40].decode("latin-1") if isinstance(v, bytes) else None,
)
async def test_bad_requests_get_a_clear_error(
    pair: Pair, clock: trio.testing.MockClock, line: bytes, error: str
) -> None:
    answer = await ask(pair, line)
    assert answer["ok"] is False and error in str(answer["error"]), answer
    await still_serving(pair)


async def test_an_exception_in_a_handler_is_answered_logged_and_survived(
    pair: Pair,
    clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("status is broken")

    monkeypatch.setattr(pair.a.daemon, "status", broken)
    secret_marker = b"do-not-log-me"
    with caplog.at_level(logging.ERROR, logger="tunneld.control"):
        answer = await ask(pair, b'{"cmd": "status", "x": "' + secret_marker + b'"}\n')
    assert answer == {"ok": False, "error": "internal error: RuntimeError: status is broken"}
    (record,) = [r for r in caplog.records if r.name == "tunneld.control"]
    assert record.__dict__.get("cmd") == "status" and record.exc_info is not None
    assert secret_marker.decode() not in caplog.text
    monkeypatch.undo()
    await still_serving(pair)


async def test_a_second_daemon_with_the_same_name_refuses_to_start(
    pair: Pair, clock: trio.testing.MockClock
) -> None:
    """Before its TUN device is touched, and the running daemon's socket stays."""
    devices = MemoryDevices(pair.network)
    second = Daemon(pair.a.daemon.config, devices=devices)
    with pytest.raises(control.ControlSocketError) as info:
        await second.run()
    assert str(info.value) == (
        f"control socket {pair.a.socket} answers: another tunneld is running with this name"
    )
    assert devices.tun is None
    await still_serving(pair)
