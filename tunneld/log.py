"""Logging setup: human text or one JSON object per line, to stderr.

Nothing secret is ever passed to a logger: key-holding objects redact their
repr, and log calls name SPIs, identities and reasons only.

Two defences against hostile input reaching the log:

- :func:`escape`: every string a line carries (message and fields) has its
  control characters escaped, so an identity with a newline or a terminal
  escape sequence (a DN is the peer's choice) cannot forge log lines or
  repaint an operator's terminal; the JSON format escapes them by itself.
- :class:`LogThrottle`: events anyone can cause without keys (an IKE_SA_INIT
  from an unknown address, a refused or dropped datagram) are logged at most
  once per reason per interval; the rest are counted and summarised in one
  line ("N more in the last S s"). The reasons are a fixed set, so neither
  the log volume nor the throttle's memory grows with what attackers send.

Which peer a line is about: a peer's task sets :func:`log_context` (its name,
and the remote address of the input it handles), and :class:`ContextFilter`
adds those as ``peer`` / ``remote`` fields to every record logged meanwhile
that does not name them itself, so that the lines of the sans-I/O core
(``tunneld.ike``), which knows no peer names, carry them too. In the text
format ``peer=`` comes first (as charon's ``<gw-b|1>``); in JSON every field
is a key of its own.

Levels: ``--log-level debug`` opens tunneld's own loggers (``tunneld.*``)
only; every other logger (pyroute2, asyncio, trio, ...) stays at WARNING.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import re
import sys
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


_PLAIN = (int, float, str, bool, type(None))
# one encoder for every line; a line holds plain values only (no cycle to look for)
_ENCODE = json.JSONEncoder(check_circular=False).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra= fields become keys."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1  # the timestamp's seconds, formatted once per second
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        out: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key[0] == "_":
                continue
            out[key] = value if isinstance(value, _PLAIN) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _ENCODE(out)


@functools.lru_cache(maxsize=4096)
def _network_text(net: object) -> str:
    return str(net)


def networks_text(nets: Iterable[object]) -> str:
    """Networks for a log field, comma-separated; each network's text is made once
    (a hub logs its own site and each spoke's subnets at every handshake, and an
    IPv6 network's ``str`` is ~3 us of Python)."""
    return ",".join(map(_network_text, nets))


# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """``text`` with every control character written as ``\\xNN`` / ``\\uNNNN``."""

    def one(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(one, text)


def _field(value: object) -> str:
    text = escape(str(value))
    if not text or any(c in text for c in ' "='):
        return json.dumps(text)  # quoted, so a value cannot pose as another field
    return text


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: peer=NAME message key=value ...`` (``peer=`` first, if any)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = {
            k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        }
        peer = extras.pop("peer", None)
        if peer is not None:
            saved = record.msg, record.args
            record.msg, record.args = f"peer={_field(peer)} {record.getMessage()}", None
            try:
                base = escape(super().format(record))
            finally:
                record.msg, record.args = saved
        else:
            base = escape(super().format(record))
        if extras:
            base += " " + " ".join(f"{k}={_field(v)}" for k, v in extras.items())
        return base


# -- which peer a line is about -------------------------------------------------

_CONTEXT: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "tunneld_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Fields (``peer``, ``remote``) added to every record logged inside the block
    by this task (trio tasks each have their own context), the outer ones kept."""
    outer = _CONTEXT.get() or {}
    token = _CONTEXT.set({**outer, **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def set_log_context(**fields: object) -> None:
    """Like :func:`log_context` for the rest of the current task (a peer's task, once)."""
    outer = _CONTEXT.get() or {}
    _CONTEXT.set({**outer, **{k: v for k, v in fields.items() if v is not None}})


class ContextFilter(logging.Filter):
    """Adds the :func:`log_context` fields a record does not carry itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _CONTEXT.get()
        if fields:
            for key, value in fields.items():
                if key not in vars(record):
                    setattr(record, key, value)
        return True


@dataclass
class _Window:
    until: float
    suppressed: int = 0


_THROTTLES: weakref.WeakSet[LogThrottle] = weakref.WeakSet()
THROTTLE_FLUSH_INTERVAL = 10.0  # seconds between the daemon's flush_throttles() calls


def flush_throttles(now: float) -> None:
    """Summarise every throttle's ended windows: the daemon calls this every
    :data:`THROTTLE_FLUSH_INTERVAL` seconds, so that the count of a flood's
    suppressed lines is logged when the flood stops, not with the next one."""
    for throttle in list(_THROTTLES):
        throttle.flush(now)


class LogThrottle:
    """At most one line per reason per ``interval`` seconds; the rest summarised.

    ``reasons`` is the fixed set of reasons this throttle accepts (a reason
    outside it is a bug: attacker-controlled detail goes into a field, never
    into the reason). Time comes from the caller (``now``), so tests run it
    on a virtual clock.
    """

    def __init__(
        self,
        logger: logging.Logger,
        reasons: tuple[str, ...],
        *,
        interval: float = 10.0,
        level: int = logging.INFO,
    ) -> None:
        self._log = logger
        self._reasons = frozenset(reasons)
        self._interval = interval
        self._level = level
        self._windows: dict[str, _Window] = {}
        self.counts: dict[str, int] = dict.fromkeys(reasons, 0)
        _THROTTLES.add(self)

    def __call__(self, reason: str, now: float, **fields: object) -> None:
        if reason not in self._reasons:
            raise ValueError(f"bug: {reason!r} is not one of this throttle's reasons")
        self.counts[reason] += 1
        window = self._windows.get(reason)
        if window is not None and now < window.until:
            window.suppressed += 1
            return
        self._summarise(reason, window)
        self._windows[reason] = _Window(now + self._interval)
        self._log.log(self._level, reason, extra=fields)

    def flush(self, now: float) -> None:
        """Summarise the windows that have ended (call it now and then)."""
        for reason, window in list(self._windows.items()):
            if now >= window.until:
                self._summarise(reason, window)
                del self._windows[reason]

    def _summarise(self, reason: str, window: _Window | None) -> None:
        if window is not None and window.suppressed:
            self._log.log(
                self._level,
                f"{reason}: {window.suppressed} more in the last {self._interval:g} s",
                extra={"suppressed": window.suppressed},
            )


OWN_LOGGER = "tunneld"  # every logger of ours is tunneld.* (the sans-I/O core: tunneld.ike)
OTHERS_LEAST = logging.WARNING  # third-party loggers never go below this


class OthersAtWarning(logging.Filter):
    """Lets through any record of tunneld's loggers, and the others' from WARNING up.

    The root logger's level alone would not do: a library that sets its own
    logger's level (or a caller that does) would still reach the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        own = name == OWN_LOGGER or name.startswith(OWN_LOGGER + ".")
        return own or record.levelno >= OTHERS_LEAST


def make_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``fmt`` lines (text or JSON) to ``stream`` (stderr), with
    the peer context of :func:`log_context` on every record, and other libraries'
    records only from WARNING up."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(OthersAtWarning())
    handler.addFilter(ContextFilter())
    return handler


def setup_logging(fmt: str = "text", level: str = "info", stream: IO[str] | None = None) -> None:
    """Log ``fmt`` lines to ``stream`` (stderr): tunneld's loggers from ``level`` up,
    the others (pyroute2, asyncio, trio, ...) from WARNING up whatever ``level`` says."""
    wanted = logging.getLevelName(level.upper())
    if not isinstance(wanted, int):
        raise ValueError(f"unknown log level {level!r}")
    # Neither format shows where a call was made, nor the thread or process: the
    # logging module then need not find them out for every record (the logging
    # HOWTO's "Optimization"; a third of the cost of a line).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt, stream)]
    root.setLevel(max(wanted, OTHERS_LEAST))
    logging.getLogger(OWN_LOGGER).setLevel(wanted)
