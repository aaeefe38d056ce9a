"""Prometheus metrics: a collector that reads the daemon's counters at scrape time,
and the small HTTP endpoint that serves them from the daemon's own nursery.

Theory of operation:

1. Nothing on the data path or in IKE changes for metrics. The packet pumps,
   the SA database, the Child SA sets, the dispatcher and the front door
   keep the counters they always kept; at each scrape, :class:`Collector`
   reads them (``Daemon.status()``, each peer's Child SA traffic totals and
   handshake times) and builds the metric families. A scrape costs one
   status walk; a packet costs nothing more.
2. Labels come from the configuration and from fixed sets only: ``peer`` is
   a configured ``[[peer]]`` name (the spokes of an identity-pattern entry
   are added up under the entry's name: their names carry the spoke's
   identity, and their number grows with the spokes); ``reason``,
   ``decision``, ``direction``, ``state`` and ``result`` are from tuples in
   the code. Nothing a packet or an initiator says becomes a label.
3. Counters never go backwards while the daemon runs: a Child SA that goes
   leaves its counts in its child's totals (:mod:`tunneld.childsas` rule 7),
   and a peer object that goes (an idle spoke reaped, a peer replaced) leaves
   the totals it had at the last scrape in its entry's carry. What such a
   peer counted between that scrape and its end is lost; an idle spoke, the
   usual case, counted nothing.
4. The endpoint listens on ``[metrics] listen`` (bound in :meth:`Endpoint.open`
   before privileges are dropped, served by :meth:`Endpoint.serve`, a task in
   the daemon's nursery: no thread, so the collector reads daemon state on the
   trio thread that owns it). It is anyone's on that network, so it is
   bounded: at most :data:`MAX_CONNECTIONS` at once (others are closed at
   once), a request head of at most :data:`MAX_REQUEST_HEAD` bytes, the whole
   exchange within :data:`REQUEST_TIMEOUT` seconds, one request per connection
   (``Connection: close``), GET and HEAD of ``/metrics`` only, any request
   body ignored. Every outcome is counted by a fixed ``result``
   (``tunneld_metrics_requests_total``); none is logged per request.
5. What it serves holds no secret: counters, gauges, configured peer names.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from ike.frontdoor import REASONS as FRONT_DOOR_DECISIONS
from tunneld.childsas import Traffic
from tunneld.config import Config
from tunneld.datapath import IKE_NO_HANDLER
from tunneld.dataplane.drops import DropReason
from tunneld.durations import Durations

log = logging.getLogger("tunneld.metrics")

MAX_CONNECTIONS = 8  # at once; Prometheus scrapes one at a time per target
MAX_REQUEST_HEAD = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 10.0  # seconds for one whole exchange (read, collect, send)
LISTEN_BACKLOG = 16
DRAIN_TIME, DRAIN_BYTES = 1.0, 1 << 16  # after an error answer (see _drain)
# The text format every Prometheus reads (all our names are plain [a-z_]: nothing
# needs the UTF-8 names of format 1.0.0, which newer clients announce by default).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Fixed label values (rule 2).
PEER_STATES = ("established", "connecting", "deleting", "down")  # tunneld.peer.Peer.state
DATAPLANE_DROP_REASONS = (*(r.value for r in DropReason), IKE_NO_HANDLER)
# tunneld.daemon.DispatchStats fields that count an IKE datagram dropped (the
# others are counted apart: cookies_sent, peer_task_resets)
IKE_DROP_REASONS = (
    "unparsable",
    "unknown_spi",
    "deleted_sa",
    "no_peer",
    "half_open_limit",
    "malformed_init",
    "dispatch_errors",
)
RESULTS = (
    "ok",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "too_large",
    "timeout",
    "busy",
    "error",
)


# -- what the collector reads ----------------------------------------------------------


class PeerCounters(Protocol):
    """What the collector reads of a :class:`tunneld.peer.Peer` beyond its snapshot."""

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> _HasHandshakes: ...

    @property
    def children(self) -> _HasTraffic: ...


class _HasHandshakes(Protocol):
    @property
    def handshakes(self) -> Durations: ...


class _HasTraffic(Protocol):
    def traffic(self) -> Traffic: ...


class Source(Protocol):
    """What the collector reads of the daemon (:class:`tunneld.daemon.Daemon` is one)."""

    @property
    def config(self) -> Config: ...

    @property
    def peers(self) -> Mapping[str, PeerCounters]: ...

    def status(self) -> dict[str, Any]: ...


# -- one peer's counters, and the carry of peers gone (rule 3) -----------------------------

# snapshot counter -> metric name (all counters of one peer)
PEER_COUNTERS = {
    "ike_sas_established": ("tunneld_peer_ike_sas_established", "IKE SAs established"),
    "ike_rekeys": ("tunneld_peer_ike_rekeys", "IKE SA rekeys"),
    "child_sas_installed": ("tunneld_peer_child_sas_installed", "Child SAs installed"),
    "child_rekeys": ("tunneld_peer_child_rekeys", "Child SA rekeys"),
    "dead_peer_detections": ("tunneld_peer_dead_peer_detections", "peers declared dead"),
    "refused_initiations": (
        "tunneld_peer_refused_initiations",
        "IKE_SA_INIT refused while the operator holds the peer down",
    ),
    "inbox_drops": (
        "tunneld_peer_ike_inbox_drops",
        "IKE datagrams dropped because the peer's queue was full",
    ),
}


@dataclass
class PeerTotals:
    """The counters of one peer object (or the sum of several, or a carry)."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PEER_COUNTERS, 0))
    traffic: Traffic = field(default_factory=Traffic)
    handshakes: Durations = field(default_factory=Durations)

    @classmethod
    def of(cls, peer: PeerCounters, snapshot: Mapping[str, Any]) -> PeerTotals:
        counts = snapshot.get("counters", {})
        return cls(
            {key: int(counts.get(key, 0)) for key in PEER_COUNTERS},
            peer.children.traffic(),
            peer.status.handshakes.copy(),
        )

    def add(self, other: PeerTotals) -> None:
        for key, value in other.counters.items():
            self.counters[key] += value
        self.traffic.add(other.traffic)
        self.handshakes.add(other.handshakes)


@dataclass
class Entry:
    """What the metrics say about one configured ``[[peer]]`` entry."""

    name: str
    pattern: bool
    totals: PeerTotals = field(default_factory=PeerTotals)
    states: list[str] = field(default_factory=list)  # one per peer object (spokes: several)
    ike_sas: int = 0
    child_sas: int = 0
    half_open: int = 0

    @property
    def state(self) -> str:
        """The best state of its peers (a hub's: of its spokes; none: down)."""
        return next((s for s in PEER_STATES if s in self.states), "down")


def entry_name(peer_name: str) -> str:
    """A spoke ``entry/identity`` belongs to ``entry`` (configured names hold no ``/``)."""
    return peer_name.split("/", 1)[0]


class Collector:
    """Reads the daemon's counters at scrape time (rules 1-3); a prometheus_client
    custom collector (``collect``)."""

    def __init__(self, source: Source, endpoint: EndpointStats | None = None) -> None:
        self._source = source
        self._endpoint = endpoint
        self._last: dict[str, tuple[PeerCounters, PeerTotals]] = {}  # by peer name
        self._carry: dict[str, PeerTotals] = {}  # by entry name (rule 3)

    def collect(self) -> Iterator[Metric]:
        status = self._source.status()
        entries = self.entries(status)
        yield from _peer_families(entries)
        yield from _global_families(status)
        if self._endpoint is not None:
            yield self._endpoint.family()

    def entries(self, status: Mapping[str, Any]) -> list[Entry]:
        """One :class:`Entry` per configured peer entry, from ``status`` and the peers."""
        entries = {p.name: Entry(p.name, p.is_pattern) for p in self._source.config.peers}
        current: dict[str, tuple[PeerCounters, PeerTotals]] = {}
        for snapshot in status.get("peers", []):
            peer = self._source.peers.get(snapshot.get("name", ""))
            entry = entries.get(entry_name(peer.name)) if peer is not None else None
            if peer is None or entry is None:
                continue
            totals = PeerTotals.of(peer, snapshot)
            current[peer.name] = (peer, totals)
            entry.totals.add(totals)
            entry.states.append(str(snapshot.get("state")))
            live = [s for s in snapshot.get("ike_sas", []) if s.get("state") == "established"]
            entry.ike_sas += len(live)
            entry.child_sas += len(snapshot.get("child_sas", []))
            entry.half_open += int(snapshot.get("half_open_ike_sas", 0))
        self._fold(current, entries)
        for name, carry in self._carry.items():
            entries[name].totals.add(carry)
        return list(entries.values())

    def _fold(
        self, current: dict[str, tuple[PeerCounters, PeerTotals]], entries: Mapping[str, Entry]
    ) -> None:
        """Rule 3: the last totals of peer objects gone since the last scrape join the
        carry of their entry (an entry no longer configured: forgotten)."""
        for name, (peer, totals) in self._last.items():
            now = current.get(name)
            if now is None or now[0] is not peer:
                self._carry.setdefault(entry_name(name), PeerTotals()).add(totals)
        self._carry = {name: c for name, c in self._carry.items() if name in entries}
        self._last = current


# -- the metric families -----------------------------------------------------------------


def _peer_families(entries: list[Entry]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "tunneld_peer_state",
        "1 for the peer's state, 0 for the others (a pattern entry: its best spoke's)",
        labels=["peer", "state"],
    )
    gauges = {
        "ike_sas": GaugeMetricFamily(
            "tunneld_peer_ike_sas", "established IKE SAs", labels=["peer"]
        ),
        "child_sas": GaugeMetricFamily(
            "tunneld_peer_child_sas", "Child SAs in the data plane", labels=["peer"]
        ),
        "half_open": GaugeMetricFamily(
            "tunneld_peer_half_open_ike_sas",
            "responder IKE SAs not authenticated yet, held by the peer",
            labels=["peer"],
        ),
    }
    spokes = GaugeMetricFamily(
        "tunneld_peer_spokes", "spokes of an identity-pattern entry", labels=["peer"]
    )
    counters = {
        key: CounterMetricFamily(name, text, labels=["peer"])
        for key, (name, text) in PEER_COUNTERS.items()
    }
    traffic = {
        unit: CounterMetricFamily(
            f"tunneld_peer_{unit}",
            f"{unit} of inner packets through the peer's Child SAs",
            labels=["peer", "direction"],
        )
        for unit in ("packets", "bytes")
    }
    handshakes = HistogramMetricFamily(
        "tunneld_peer_handshake_duration_seconds",
        "from IKE_SA_INIT sent or received to the IKE SA established",
        labels=["peer"],
    )
    for e in entries:
        for s in PEER_STATES:
            state.add_metric([e.name, s], 1.0 if s == e.state else 0.0)
        for key, gauge in gauges.items():
            gauge.add_metric([e.name], getattr(e, key))
        if e.pattern:
            spokes.add_metric([e.name], len(e.states))
        for key, counter in counters.items():
            counter.add_metric([e.name], e.totals.counters[key])
        t = e.totals.traffic
        traffic["packets"].add_metric([e.name, "in"], t.packets_in)
        traffic["packets"].add_metric([e.name, "out"], t.packets_out)
        traffic["bytes"].add_metric([e.name, "in"], t.bytes_in)
        traffic["bytes"].add_metric([e.name, "out"], t.bytes_out)
        h = e.totals.handshakes
        buckets = [(_le(bound), n) for bound, n in h.cumulative()]
        handshakes.add_metric([e.name], buckets, sum_value=h.total)
    yield state
    yield from gauges.values()
    yield spokes
    yield from counters.values()
    yield from traffic.values()
    yield handshakes


def _le(bound: float) -> str:
    """A bucket's bound as the exposition writes it (``0.25``, ``1.0``, ``+Inf``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _global_families(status: Mapping[str, Any]) -> Iterator[Metric]:
    pumps = status.get("dataplane", {}).get("pumps", {})
    drops = CounterMetricFamily(
        "tunneld_dataplane_drops",
        "packets the data plane dropped, by direction and reason",
        labels=["direction", "reason"],
    )
    packets = CounterMetricFamily(
        "tunneld_dataplane_packets",
        "packets the pumps read (in: UDP datagrams, out: TUN packets)",
        labels=["direction"],
    )
    for direction, key in (("in", "inbound"), ("out", "outbound")):
        pump = pumps.get(key, {})
        packets.add_metric([direction], int(pump.get("packets", 0)))
        counted = pump.get("drops", {})
        for reason in DATAPLANE_DROP_REASONS:
            drops.add_metric([direction, reason], int(counted.get(reason, 0)))
    yield packets
    yield drops
    yield from _ike_families(status)


def _ike_families(status: Mapping[str, Any]) -> Iterator[Metric]:
    dispatch = status.get("ike_dispatch", {})
    drops = CounterMetricFamily(
        "tunneld_ike_drops",
        "IKE datagrams the dispatcher dropped before any peer saw them, by reason",
        labels=["reason"],
    )
    for reason in IKE_DROP_REASONS:
        drops.add_metric([reason], int(dispatch.get(reason, 0)))
    yield drops
    yield CounterMetricFamily(
        "tunneld_ike_cookies_sent",
        "COOKIE challenges sent (no state kept, no DH)",
        value=int(dispatch.get("cookies_sent", 0)),
    )
    yield CounterMetricFamily(
        "tunneld_peer_task_resets",
        "peer tasks reset after an internal error",
        value=int(dispatch.get("peer_task_resets", 0)),
    )
    buried = status.get("deleted_ike_sas", {})
    yield GaugeMetricFamily(
        "tunneld_ike_deleted_sas",
        "deleted IKE SAs still answering a retransmitted request (tombstones)",
        value=int(buried.get("held", 0)),
    )
    yield CounterMetricFamily(
        "tunneld_ike_deleted_sa_answers",
        "retransmitted requests answered for deleted IKE SAs",
        value=int(buried.get("answered", 0)),
    )
    door = status.get("front_door", {})
    yield GaugeMetricFamily(
        "tunneld_ike_half_open",
        "responder IKE SAs not authenticated yet (all peers and the reception)",
        value=int(door.get("half_open", 0)),
    )
    decisions = CounterMetricFamily(
        "tunneld_ike_front_door_decisions",
        "what the front door decided about each new IKE_SA_INIT",
        labels=["decision"],
    )
    counted = door.get("decisions", {})
    for decision in FRONT_DOOR_DECISIONS:
        decisions.add_metric([decision], int(counted.get(decision, 0)))
    yield decisions


# -- the endpoint (rule 4) ----------------------------------------------------------------


@dataclass
class EndpointStats:
    """Requests to the endpoint, by fixed result (rule 4)."""

    results: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    active: int = 0

    def family(self) -> Metric:
        family = CounterMetricFamily(
            "tunneld_metrics_requests",
            "requests to this endpoint, by result",
            labels=["result"],
        )
        for result in RESULTS:
            family.add_metric([result], self.results[result])
        return family


class BadRequest(Exception):
    """A request the endpoint refuses; ``result`` and ``status`` say how."""

    def __init__(self, result: str, status: str) -> None:
        super().__init__(result)
        self.result = result
        self.status = status


def registry_for(source: Source, stats: EndpointStats) -> CollectorRegistry:
    """Our collector plus the process's own (CPU, memory, file descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(source, stats))
    ProcessCollector(registry=registry)
    return registry


class Endpoint:
    """``GET /metrics`` over HTTP/1.1 on one TCP socket (rule 4)."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self._sock = sock
        self.where = where
        self.stats = EndpointStats()

    @classmethod
    def open(cls, host: str, port: int) -> Endpoint:
        """Bind and listen now (before privileges are dropped); OSError naming the address."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"[metrics] listen {where}: {exc.strerror}") from None
        return cls(sock, f"{where.rsplit(':', 1)[0]}:{sock.getsockname()[1]}")

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def close(self) -> None:
        self._sock.close()

    async def serve(
        self, source: Source, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        registry = registry_for(source, self.stats)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        log.info("metrics endpoint listening", extra={"listen": self.where})
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # out of file descriptors, say: wait, go on
                    log.warning("metrics endpoint: accept failed", extra={"error": str(exc)})
                    await trio.sleep(1.0)
                    continue
                if self.stats.active >= MAX_CONNECTIONS:
                    self.stats.results["busy"] += 1
                    nursery.start_soon(_close, stream)
                    continue
                self.stats.active += 1
                nursery.start_soon(self._exchange, stream, registry)

    async def _exchange(self, stream: trio.SocketStream, registry: CollectorRegistry) -> None:
        result = "timeout"
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                result = await _answer(stream, registry)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            result = "error"
        finally:
            self.stats.active -= 1
            self.stats.results[result] += 1
            await _close(stream)


async def _close(stream: trio.SocketStream) -> None:
    with trio.move_on_after(1.0) as scope:
        scope.shield = True  # also when the daemon is being cancelled
        await stream.aclose()


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> str:
    """Read one request head, send one answer; the result's name."""
    try:
        method = _parse(await _read_head(stream))
    except BadRequest as bad:
        await stream.send_all(_response(bad.status, b"%s\n" % bad.status.encode()))
        await _drain(stream)
        return bad.result
    try:
        body = generate_latest(registry)
    except Exception:  # a bug in collecting must not end the endpoint, nor the daemon
        log.exception("metrics: collecting failed (a bug)")
        await stream.send_all(_response("500 Internal Server Error", b"collecting failed\n"))
        return "error"
    await stream.send_all(_response("200 OK", body, CONTENT_TYPE, head=method == "HEAD"))
    return "ok"


async def _drain(stream: trio.SocketStream) -> None:
    """After an error answer: send FIN, then read (and drop) what the client still sends,
    briefly and boundedly, so that closing with unread data (an RST) does not destroy
    the answer before the client reads it."""
    await stream.send_eof()
    with trio.move_on_after(DRAIN_TIME):
        left = DRAIN_BYTES
        while left > 0 and (chunk := await stream.receive_some(min(left, 16384))):
            left -= len(chunk)


async def _read_head(stream: trio.SocketStream) -> bytes:
    """The request line and headers (up to the blank line), at most MAX_REQUEST_HEAD bytes."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_REQUEST_HEAD:
            raise BadRequest("too_large", "431 Request Header Fields Too Large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise BadRequest("bad_request", "400 Bad Request")
        data += chunk
    head = bytes(data[: data.index(b"\r\n\r\n")])
    if len(head) > MAX_REQUEST_HEAD:
        raise BadRequest("too_large", "431 Request Header Fields Too Large")
    return head


def _parse(head: bytes) -> str:
    """The method of a request for /metrics; BadRequest for anything else."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest("bad_request", "400 Bad Request")
    method, target = parts[0], parts[1]
    if method not in (b"GET", b"HEAD"):
        raise BadRequest("method_not_allowed", "405 Method Not Allowed")
    if target.split(b"?", 1)[0] != b"/metrics":
        raise BadRequest("not_found", "404 Not Found")
    return method.decode()


def _response(
    status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", *, head: bool = False
) -> bytes:
    lines: Iterable[str] = (
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(("Allow: GET, HEAD",) if status.startswith("405") else ()),
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)
