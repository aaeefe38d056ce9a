"""Fuzz profile: the control socket's request decoding (tunneld/control.py).

``_serve_one`` reads one request line, decodes the JSON object and answers
one JSON line; a bad request must be answered ``{"ok": false, ...}``, never
raise (an exception would end the server's nursery). An exception in the
handler is answered ``internal error: ...`` (control.py rule 5) so that the
daemon goes on: here that answer fails the input, a bug found all the same. It runs here on an
in-memory stream, stepped synchronously inside one trio.run (the stream
never blocks), with two handlers: one that reads the fields as the daemon
does, and the daemon's own ``Daemon._control`` over stub peers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from fuzzing import Target, profile

from tunneld import control

pytestmark = pytest.mark.fuzz

REQUESTS = [
    b'{"cmd": "status"}\n',
    b'{"cmd": "up", "peer": "site-b"}\n',
    b'{"cmd": "down", "peer": "site-b", "for": 30}\n',
    b'{"cmd": "down", "peer": "site-b", "for": 0.5}\n',
    b'{"cmd": "rekey", "peer": "site-b", "ike": true}\n',
    b'{"cmd": "rekey", "peer": "site-\\u00e9", "ike": false, "extra": [1, 2, {"a": null}]}\n',
    b'{"cmd": "status"}\n{"cmd": "up"}\n',
    b'{"cmd": "status"}',  # no newline: the client closed
    b"[1, 2, 3]\n",
    b'"status"\n',
    b"\n",
    b"",
    b"\xff\xfe{}\n",
]


class MemoryStream:
    """A trio Stream over bytes that never blocks."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = b""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        chunk, self.data = self.data[:4096], self.data[4096:]
        return chunk

    async def send_all(self, data: bytes) -> None:
        self.sent += data

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> MemoryStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


Handler = Callable[[dict[str, Any]], Any]


def serve(data: bytes, handler: Handler) -> dict[str, Any]:
    """One connection through control._serve_one; the decoded answer."""
    stream = MemoryStream(data)
    step = control._serve_one(stream, handler)  # type: ignore[arg-type]
    try:
        step.send(None)
    except StopIteration:
        pass
    else:
        step.close()
        raise AssertionError("_serve_one waited on a stream that never blocks")
    assert stream.sent.endswith(b"\n") and stream.sent.count(b"\n") == 1, stream.sent
    answer = json.loads(stream.sent)
    assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), answer
    assert not str(answer.get("error", "")).startswith("internal error"), answer
    return answer


async def fields_handler(request: dict[str, Any]) -> dict[str, Any]:
    """Reads a request the way the daemon does (get, str, bool, repr)."""
    cmd = request.get("cmd")
    peer = str(request.get("peer"))
    if cmd not in ("status", "up", "down", "rekey"):
        return {"ok": False, "error": f"unknown command {cmd!r}"}
    return {"ok": True, "peer": peer, "ike": bool(request.get("ike")), "for": request.get("for")}


class StubPeer:
    name = "site-b"
    session_config = SimpleNamespace(child_configs=(SimpleNamespace(name="net"),))

    def up(self) -> None:
        pass

    def down(self, hold: float | None) -> None:
        assert hold is None or hold > 0

    def rekey(self, ike: bool, child: str | None = None) -> bool:
        assert child is None or child == "net"
        return ike


def daemon_handler() -> Handler:
    from tunneld.daemon import Daemon

    async def reload() -> dict[str, Any]:
        return {"ok": False, "error": "stub: no configuration file"}

    stub = SimpleNamespace(
        peers={"site-b": StubPeer()}, status=lambda: {"peers": []}, reload=reload
    )

    async def handler(request: dict[str, Any]) -> dict[str, Any]:
        return await Daemon._control(stub, request)  # type: ignore[arg-type]

    return handler


def in_trio(work: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return work()

    return trio.run(main)


def control_target(name: str, make_handler: Callable[[], Handler]) -> Target:
    handler = make_handler()

    def run(data: bytes) -> bool:
        return bool(serve(data, handler)["ok"])

    return Target(name, REQUESTS, run, (), runner=in_trio)


TARGETS = {
    "control_request": lambda: control_target("control_request", lambda: fields_handler),
    "control_daemon": lambda: control_target("control_daemon", daemon_handler),
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name: str) -> None:
    profile(name, TARGETS[name])


def test_a_deeply_nested_request_is_answered() -> None:
    """Found by this profile: RecursionError in json.loads ended the control server."""
    answer = in_trio(lambda: serve(b"[" * 60_000 + b"\n", fields_handler))
    assert answer["ok"] is False and "nested deeper" in answer["error"]


def test_a_huge_down_for_is_refused() -> None:
    """Found by this profile: float() of an int above 1.8e308 raised OverflowError."""
    line = b'{"cmd": "down", "peer": "site-b", "for": 1' + b"0" * 400 + b"}\n"
    answer = in_trio(lambda: serve(line, daemon_handler()))
    assert answer["ok"] is False and "'for'" in answer["error"]
    handler = daemon_handler()  # the daemon's own check, without the protocol's in front
    reply = trio.run(handler, {"cmd": "down", "peer": "site-b", "for": 10**400})
    assert reply["ok"] is False
