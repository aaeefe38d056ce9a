"""A minimal client of strongSwan's vici protocol, for the handshake benchmark.

Only what ``tools.bench_handshake`` needs from one charon: commands without
waiting (``initiate``/``terminate`` with ``timeout = -1``) and the
``child-updown``/``ike-updown`` events, on one stream socket. The wire format
(strongSwan's ``src/libcharon/plugins/vici/README.md``):

- transport: a 32-bit big-endian length, then the packet;
- packet: one type octet, for named types a name (one length octet + name),
  then a message;
- message: a sequence of elements, each one type octet: SECTION_START (name),
  SECTION_END, KEY_VALUE (name, 16-bit length + value), LIST_START (name),
  LIST_ITEM (16-bit length + value), LIST_END.

Nothing here is part of the daemon.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

# packet types
CMD_REQUEST, CMD_RESPONSE, CMD_UNKNOWN = 0, 1, 2
EVENT_REGISTER, EVENT_UNREGISTER, EVENT_CONFIRM, EVENT_UNKNOWN, EVENT = 3, 4, 5, 6, 7
# message element types
SECTION_START, SECTION_END, KEY_VALUE, LIST_START, LIST_ITEM, LIST_END = 1, 2, 3, 4, 5, 6

Message = dict[str, Any]


class ViciError(Exception):
    """charon refused a command or the socket closed."""


def encode(message: Message) -> bytes:
    out = bytearray()
    for key, value in message.items():
        name = key.encode()
        if isinstance(value, dict):
            out += bytes([SECTION_START, len(name)]) + name + encode(value) + bytes([SECTION_END])
        elif isinstance(value, list):
            out += bytes([LIST_START, len(name)]) + name
            for item in value:
                data = str(item).encode()
                out += bytes([LIST_ITEM]) + struct.pack("!H", len(data)) + data
            out += bytes([LIST_END])
        else:
            data = str(value).encode()
            out += bytes([KEY_VALUE, len(name)]) + name + struct.pack("!H", len(data)) + data
    return bytes(out)


def decode(data: bytes) -> Message:
    """The message as nested dicts (sections) of str values and lists of str."""
    stack: list[Message] = [{}]
    pos = 0
    current_list: list[str] | None = None
    while pos < len(data):
        kind = data[pos]
        pos += 1
        if kind in (SECTION_START, KEY_VALUE, LIST_START):
            name = data[pos + 1 : pos + 1 + data[pos]].decode(errors="replace")
            pos += 1 + data[pos]
        if kind == SECTION_START:
            section: Message = {}
            stack[-1][name] = section
            stack.append(section)
        elif kind == SECTION_END:
            stack.pop()
        elif kind in (KEY_VALUE, LIST_ITEM):
            (length,) = struct.unpack_from("!H", data, pos)
            value = data[pos + 2 : pos + 2 + length].decode(errors="replace")
            pos += 2 + length
            if kind == KEY_VALUE:
                stack[-1][name] = value
            elif current_list is not None:
                current_list.append(value)
        elif kind == LIST_START:
            current_list = []
            stack[-1][name] = current_list
        elif kind == LIST_END:
            current_list = None
        else:
            raise ViciError(f"unknown vici element type {kind}")
    return stack[0]


class Vici:
    """One connection to charon's vici socket (blocking)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        self._buf = b""

    def close(self) -> None:
        self._sock.close()

    def _send(self, kind: int, name: str, message: Message | None = None) -> None:
        body = bytes([kind, len(name)]) + name.encode()
        if message is not None:
            body += encode(message)
        self._sock.sendall(struct.pack("!I", len(body)) + body)

    def _recv(self) -> tuple[int, bytes]:
        while len(self._buf) < 4 or len(self._buf) < 4 + struct.unpack_from("!I", self._buf)[0]:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ViciError("vici socket closed")
            self._buf += chunk
        (length,) = struct.unpack_from("!I", self._buf)
        packet, self._buf = self._buf[4 : 4 + length], self._buf[4 + length :]
        return packet[0], packet[1:]

    def send_command(self, name: str, message: Message) -> None:
        """Send a command; its answer is read with :meth:`next_answer` (pipelining)."""
        self._send(CMD_REQUEST, name, message)

    def next_answer(self, events: list[tuple[str, Message]] | None = None) -> Message:
        """The next command response; events read meanwhile go to ``events``."""
        while True:
            kind, payload = self._recv()
            if kind == CMD_RESPONSE:
                return decode(payload)
            if kind == EVENT:
                name = payload[1 : 1 + payload[0]].decode()
                if events is not None:
                    events.append((name, decode(payload[1 + payload[0] :])))
                continue
            raise ViciError(f"vici answered packet type {kind}")

    def command(self, name: str, message: Message | None = None) -> Message:
        self.send_command(name, message or {})
        return self.next_answer()

    def register(self, event: str) -> None:
        self._send(EVENT_REGISTER, event)
        kind, _ = self._recv()
        if kind != EVENT_CONFIRM:
            raise ViciError(f"registering for {event}: packet type {kind}")

    def next_event(self, timeout: float | None = None) -> tuple[str, Message] | None:
        """The next event (None on timeout); command responses are not expected here."""
        self._sock.settimeout(timeout)
        try:
            kind, payload = self._recv()
        except TimeoutError:
            return None
        if kind != EVENT:
            raise ViciError(f"expected an event, got packet type {kind}")
        name = payload[1 : 1 + payload[0]].decode()
        return name, decode(payload[1 + payload[0] :])
