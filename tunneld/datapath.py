"""The packet pumps: trio tasks moving packets between the TUN and UDP sockets.

Pipeline, outbound (one task):
  1. wait until the TUN is readable; read the queued packets (up to a batch)
     back to back into one buffer (``tun.read_batch_into``); a TCP
     super-packet (TSO) arrives already cut into its segments, each with its
     own headers and checksums (tunneld.io.segment), so a 64 KiB read becomes
     ~48 packets here;
  2. ``sadb.encapsulate_batch`` them in one call (selector lookup, ESP,
     AES-GCM), which seals them straight into the send buffer, laid out in
     runs: consecutive packets toward one peer, of equal size but the last;
  3. each run leaves in one GSO ``sendmsg`` (``udp.send_run``). Nothing is
     allocated per packet: no bytes objects, no join.

Inbound (one task per UDP socket):
  1. wait until the socket is readable, read every queued datagram;
  2. demultiplex (RFC 3948 §2.2 on the NAT-T port): four zero bytes, the
     non-ESP marker, start an IKE message (marker stripped, handed to the IKE
     handler); a single 0xFF byte is a NAT keepalive (RFC 3948 §2.3, counted);
     anything else is ESP. On port 500 every datagram is IKE (RFC 7296 §2.23);
  3. ``sadb.decapsulate_batch`` the ESP packets in one call (SPI lookup,
     replay, AES-GCM, selector check), which decrypts them back to back into
     one reusable buffer, and write the inner packets (views into it) to the
     TUN in one ``write_batch`` (which may merge TCP segments,
     tunneld.io.offload). The packets' sources go along: authenticated ESP
     from a new address is reported to the SA's owner (sadb rule 7), at the
     cost of one tuple compare per run of packets of one SA.

A packet the data plane refuses raises :class:`EspDrop`; the pumps count it
by reason and go on. Nothing is logged per packet.

IKE datagrams go to the IKE handler (the daemon's dispatcher) in the pump's
own task, as they are read: the handler is synchronous, cheap (an IKE
header, a dict lookup, a hand-over to a peer's queue, or the front door's
cookie) and never raises. There is no queue in between: a queue cost a task
switch per datagram, and under a spoofed IKE_SA_INIT flood it filled up and
dropped the flood and the genuine peers' messages alike. Without one, a
flood costs what the handler costs, one batch per wakeup (the other pumps
run in between), and what the gateway cannot read waits in (or overflows)
the kernel's socket buffer. The data plane comes first: while ESP moves,
the IKE port's pump takes at most a share of the thread (20%,
:mod:`tunneld.ikeshare`) and waits out the rest; with the tunnels idle it
reads flat out. (Trio pumps only: in the data thread the bounded hand-over
queue below is the limit.)

Two ways to run the pumps (rule: the same batch functions either way):

- **Data thread** (kernel devices; the daemon with ``[gateway] data_thread = true``,
  off by default: it cut a lone packet's crossing by ~0.25-0.4 ms, but its p99
  tails came out worse than the trio pumps' in some runs on the shared test
  machine, better in others, docs/performance.md "Latency"): one thread of its
  own blocks in ``epoll_wait`` on the TUN and every UDP socket (level-triggered,
  registered once) and runs the pipeline above for each ready fd, one batch
  each per wakeup. A lone packet is a straight line: epoll -> read -> seal -> sendmsg
  (or recvmsg -> open -> writev), no trio run loop, no task switch, no epoll
  re-arm. Trio's wakeup cost, ~150 us of CPU per lone packet on a 2-vCPU VM
  (docs/performance.md, "Latency"), was most of a gateway crossing.
  Mutual exclusion with trio, one lock: the trio thread holds it except while
  it waits for I/O (a trio instrument), the data thread holds it while it
  handles one wakeup's batches. So everything trio runs (a task step, a
  ``run_sync_soon`` callback) is as atomic against the pumps as when the pumps
  were trio tasks: the SA database's rule 4 holds as before. (Neither side
  starves the other: a plain lock, with the GIL, measured fair enough; a
  fair turnstile made no difference.)
  What the data thread hands to trio goes through ``run_sync_soon``: the IKE
  datagrams (a bounded queue, drained in one callback; beyond it dropped and
  counted as ``ike_queue_full``, the peers retransmit) and the SA database's
  ``on_move`` reports. An exception in the data thread ends :meth:`DataPath.run`
  with it, as an exception in a pump task did.
- **Trio tasks** (the daemon's default; in-memory devices always: tests on a
  virtual clock): one task per direction and socket, ``await wait_readable()``
  per batch.

**Busy polling** (data thread only; ``[gateway] busy_poll_us``, 0 = off), as the
kernel's ``busy_poll``/NAPI do: after a wakeup that found a device ready, the data
thread does not go back to sleep at once but polls (``epoll_wait`` with timeout 0,
without the lock) until ``busy_poll_us`` have passed without traffic. The crossings
that follow closely (the reply to the packet just written to the TUN, the answer to
the packet just sent) then find a running thread instead of waking a sleeping one.
With no traffic the thread sleeps in ``epoll_wait`` as before; the cost is up to one
window of a core's time after every burst of traffic. Between two empty polls the
thread calls ``sched_yield``: a plain spin took the CPU from whatever else was
runnable (the other gateway, the hosts of the lab) and made a ping *slower* on a
loaded 2-vCPU machine (docs/performance.md, "Busy polling").
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, NamedTuple, Protocol, cast

import trio

from ike.constants import IKE_PORT, NAT_KEEPALIVE, NAT_T_PORT, NON_ESP_MARKER
from tunneld.dataplane.drops import DropReason, EspDrop
from tunneld.dataplane.esp import MIN_ESP_LEN, OVERHEAD, TRAILER_MAX
from tunneld.dataplane.udpencap import UdpKind, classify
from tunneld.ikeshare import IkeShare
from tunneld.io.segment import read_room
from tunneld.io.udp import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, Address, Buffer, Datagram, arena

DEFAULT_BATCH = 64  # packets per wakeup: one full GSO run (UDP_MAX_SEGMENTS)
IKE_NO_HANDLER = "ike_no_handler"  # a DataPath without an IKE handler (tests)
IKE_QUEUE_FULL = "ike_queue_full"  # the data thread's hand-over to trio is full
# What we chose: IKE datagrams read by the data thread and not yet handed to the
# dispatcher (one trio callback takes them all); a flood beyond waits in the kernel.
IKE_QUEUE_DATAGRAMS = 1024
IKE_QUEUE_BYTES = 1 << 20
_MAX_PACKET = 65535  # the largest inner packet (IPv4 total length) read from the TUN
# Inner packets read from the TUN per batch: 64 of 4 KiB, or 256 KiB of TSO segments,
# plus the room the TUN keeps free before each read (a super-packet cut into segments).
_PLAIN_ROOM = (256 << 10) + read_room(True, TRAILER_MAX)
# At most this many spans fit the plain buffer (a segment: 40 bytes of headers, one of
# payload, the gap); each takes at most OVERHEAD bytes more once sealed.
_MAX_SPANS = _PLAIN_ROOM // (41 + TRAILER_MAX)
_INNER_ROOM = (1 << 20) + _MAX_PACKET  # decrypted inner packets of one received batch

Handlers = dict[int, Callable[[], object] | None]  # the data thread's: fd -> its pipeline


class Tun(Protocol):
    async def wait_readable(self) -> None: ...
    def read_batch_into(
        self, arena: memoryview, max_packets: int, gap: int
    ) -> list[tuple[int, int]]: ...
    def write(self, packet: Buffer) -> None: ...
    def write_batch(self, packets: Sequence[Buffer]) -> None: ...


class Udp(Protocol):
    local_address: Address

    async def wait_readable(self) -> None: ...
    def recv_batch(self, max_datagrams: int = ...) -> list[Datagram]: ...
    def sendto(self, data: Buffer, addr: Address) -> None: ...
    def send_run(self, addr: Address, data: Buffer, segment: int) -> None: ...


class Sadb(Protocol):
    """What the pumps need from :class:`tunneld.dataplane.sadb.SADatabase`."""

    def encapsulate_batch(
        self,
        plain: memoryview,
        spans: Iterable[tuple[int, int]],
        out: memoryview,
        max_count: int,
        max_bytes: int,
    ) -> tuple[list[tuple[Any, int, int, int]], list[DropReason]]: ...
    def decapsulate_batch(
        self,
        packets: Sequence[Buffer],
        out: memoryview,
        sources: Sequence[Address] | None = None,
    ) -> tuple[list[memoryview], list[DropReason]]: ...


class IkeDatagram(NamedTuple):
    """One IKE message for the IKE task: marker already stripped. (A tuple: one is made
    for every datagram of a flood, and a frozen dataclass cost a microsecond more.)"""

    data: bytes
    remote: Address  # the peer's (host, port)
    local: Address  # our (host, port) it arrived on


@dataclass
class PumpStats:
    """Counters of one direction; ``drops`` is keyed by DropReason value."""

    packets: int = 0
    batches: int = 0
    largest_batch: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    ike_datagrams: int = 0  # inbound only
    keepalives: int = 0  # inbound only

    def batch(self, n: int) -> None:
        self.packets += n
        self.batches += 1
        if n > self.largest_batch:
            self.largest_batch = n

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


class DataPath:
    """Two-way packet pumps between one TUN and the gateway's UDP sockets."""

    def __init__(
        self,
        sadb: Sadb,
        tun: Tun,
        udp_by_port: Mapping[int, Udp],
        on_ike: Callable[[IkeDatagram], None] | None,
        *,
        esp_port: int = NAT_T_PORT,
        ike_port: int = IKE_PORT,
        batch: int = DEFAULT_BATCH,
        more: Sequence[Udp] = (),
        thread: bool | None = None,
        busy_poll_us: int = 0,
    ) -> None:
        """``udp_by_port``: the sockets of the first listen address; ``more``: those of
        the others (each pumped too; its ``local_address`` port says ESP or IKE).
        ``thread``: run the pumps in a data thread (None: when every device has a
        file descriptor, see the module docstring). ``busy_poll_us``: how long the data
        thread keeps polling after a wakeup that moved packets (0: never; the module
        docstring, "Busy polling")."""
        if busy_poll_us < 0:
            raise ValueError("busy_poll_us must not be negative")
        if esp_port not in udp_by_port:
            raise ValueError(f"no UDP socket for the ESP port {esp_port}")
        self._sadb = sadb
        self._tun = tun
        self._udp = dict(udp_by_port)
        self._esp_udp = self._udp[esp_port]
        self._on_ike = on_ike  # synchronous, never raises (see the module docstring)
        # every socket by its local address: replies and ESP leave from the address
        # the peer talks to (esp_source)
        self._more = list(more)
        self._by_local: dict[Address, Udp] = {u.local_address: u for u in self._more}
        self._by_local.update({u.local_address: u for u in self._udp.values()})
        self._esp_from: dict[Address, Udp] = {}  # peer address -> our ESP socket for it
        self._esp_port = esp_port
        self._ike_port = ike_port
        self._batch = batch
        self._dest_cache: dict[Any, tuple[Address, Any]] = {}  # peer -> (dest, send_run)
        # Outbound: inner packets read from the TUN (with room for each ESP
        # trailer), and the send buffer they are sealed into (32 bytes more each).
        self._plain = arena(_PLAIN_ROOM)
        self._out = arena(_PLAIN_ROOM + OVERHEAD * (batch + _MAX_SPANS))
        # Inbound: decrypted inner packets of one batch, until the TUN write.
        self._inner = arena(_INNER_ROOM)
        self.outbound = PumpStats()
        self.inbound = PumpStats()
        self.ike_share = IkeShare()  # the IKE port's share of the trio pumps' thread
        devices = [tun, *self._udp.values(), *self._more]
        self.threaded = all(hasattr(d, "fileno") for d in devices) if thread is None else thread
        self._busy_poll_ns = busy_poll_us * 1000
        self.busy_polls = 0  # wakeups that found packets while polling (data thread)
        self._deliver_ike: Callable[[IkeDatagram], None] | None = on_ike
        self._ike_queue: deque[IkeDatagram] = deque()
        self._ike_queued_bytes = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._stopping = False
        self._failure: BaseException | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run both directions until cancelled."""
        if self.threaded:
            await self._run_thread(task_status)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_out)
            for port, udp in self._udp.items():
                nursery.start_soon(self._pump_in, port, udp)
            for udp in self._more:
                nursery.start_soon(self._pump_in, udp.local_address[1], udp)
            task_status.started()

    def send_ike(
        self, data: bytes, src_port: int, dst_addr: Address, src_host: str | None = None
    ) -> None:
        """Send one IKE message from our ``src_port`` (on ``src_host`` if we listen there,
        else the first listen address); the NAT-T port adds the marker."""
        udp = self._by_local.get((src_host, src_port)) if src_host else None
        udp = udp or self._udp[src_port]
        udp.sendto(data if src_port == self._ike_port else NON_ESP_MARKER + data, dst_addr)

    def esp_source(self, dst_addr: Address, src_host: str) -> None:
        """ESP (and NAT keepalives) to ``dst_addr`` leave from our ESP port on ``src_host``
        (the address the peer talks to), if we listen there."""
        udp = self._by_local.get((src_host, self._esp_port))
        if udp is None or self._esp_from.get(dst_addr) is udp:
            return
        if len(self._esp_from) > 4096:  # peers come and go; keep it bounded
            self._esp_from.clear()
        self._esp_from[dst_addr] = udp
        self._dest_cache.clear()

    def send_keepalive(self, dst_addr: Address) -> None:
        """A NAT keepalive (RFC 3948 §2.3) from the ESP port."""
        self._esp_from.get(dst_addr, self._esp_udp).sendto(NAT_KEEPALIVE, dst_addr)

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters of the pumps and the devices under them."""
        return {
            "outbound": asdict(self.outbound),
            "inbound": asdict(self.inbound),
            "busy_polls": self.busy_polls,
            "ike_share": self.ike_share.status(),
            "tun": _device_stats(self._tun),
            "udp": {
                **{str(port): _device_stats(udp) for port, udp in self._udp.items()},
                **{
                    f"{u.local_address[0]}:{u.local_address[1]}": _device_stats(u)
                    for u in self._more
                },
            },
        }

    # -- outbound: TUN -> ESP -> UDP ------------------------------------------------

    async def _pump_out(self) -> None:
        tun = self._tun
        while True:
            await tun.wait_readable()
            while self._seal_and_send() >= self._batch:  # a full batch: more may be queued
                await trio.lowlevel.checkpoint()

    def _seal_and_send(self) -> int:
        """Read, seal and send about one batch; returns the packets read (a TSO
        super-packet counts as its segments, so one read may pass the batch)."""
        spans = self._tun.read_batch_into(self._plain, self._batch, TRAILER_MAX)
        if not spans:
            return 0
        self.outbound.batch(len(spans))
        runs, dropped = self._sadb.encapsulate_batch(
            self._plain, spans, self._out, GSO_MAX_SEGMENTS, GSO_MAX_BYTES
        )
        for reason in dropped:
            self.outbound.drop(reason.value)
        out, dests = self._out, self._dest_cache
        for peer, start, end, segment in runs:
            dest, send = dests.get(peer) or self._learn_dest(peer)
            send(dest, out[start:end], segment)
        return len(spans)

    def _learn_dest(self, peer: Any) -> tuple[Address, Any]:
        """The UDP destination of a tunnel's peer (an address, port 4500, or (host,
        port)) and the ``send_run`` of the socket its ESP leaves from."""
        dest = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else (str(peer), NAT_T_PORT)
        if len(self._dest_cache) > 4096:  # peers come and go; keep it bounded
            self._dest_cache.clear()
        entry = (dest, self._esp_from.get(dest, self._esp_udp).send_run)
        self._dest_cache[peer] = entry
        return entry

    # -- inbound: UDP -> demux -> ESP -> TUN ------------------------------------------

    async def _pump_in(self, port: int, udp: Udp) -> None:
        if port == self._ike_port:
            await self._pump_ike(udp)
            return
        while True:
            await udp.wait_readable()
            self._receive(udp, True)

    async def _pump_ike(self, udp: Udp) -> None:
        """The IKE port's pump: the data plane first (tunneld.ikeshare): while ESP moves,
        this pump takes at most a share of the thread; the rest waits in the kernel."""
        share, clock = self.ike_share, trio.current_time
        while True:
            await udp.wait_readable()
            wait = share.delay(clock(), self._esp_packets())
            if wait > 0:
                await trio.sleep(wait)
            started = clock()
            self._receive(udp, False)
            ended = clock()
            share.charge(ended - started, ended)

    def _esp_packets(self) -> int:
        """ESP packets both ways so far (what moves while the tunnels carry traffic)."""
        inbound = self.inbound
        return self.outbound.packets + inbound.packets - inbound.ike_datagrams

    def _receive(self, udp: Udp, nat_t: bool) -> None:
        """Read one batch from ``udp`` and take it through the inbound pipeline."""
        batch = udp.recv_batch(self._batch)
        if not batch:
            return
        self.inbound.batch(len(batch))
        if nat_t:
            self._demux(batch, udp)
        else:
            for data, src in batch:
                self._to_ike(data, src, udp)

    def _demux(self, batch: list[Datagram], udp: Udp) -> None:
        stats, room = self.inbound, len(self._inner)
        esp: list[Buffer] = []
        sources: list[Address] = []  # esp's sources, in order (sadb rule 7)
        size = 0  # what the ESP packets so far need in the decrypt buffer (at most)
        for data, src in batch:
            length = len(data)
            # ESP unless the first four bytes are the non-ESP marker (RFC 3948 §2.2);
            # anything else (IKE, keepalive, runts) takes the classify() path.
            if length >= MIN_ESP_LEN and (data[0] or data[1] or data[2] or data[3]):
                if size + length > room:  # not with UdpSocket's 1 MiB arena
                    self._open_and_write(esp, sources)
                    esp, sources, size = [], [], 0
                esp.append(data)
                sources.append(src)
                size += length
                continue
            try:
                kind, payload = classify(data)
            except EspDrop as drop:
                stats.drop(drop.reason.value)
                continue
            if kind is UdpKind.IKE:
                self._to_ike(payload, src, udp)
            elif kind is UdpKind.KEEPALIVE:
                stats.keepalives += 1
        if esp:
            self._open_and_write(esp, sources)

    def _open_and_write(self, esp: list[Buffer], sources: list[Address]) -> None:
        inner, dropped = self._sadb.decapsulate_batch(esp, self._inner, sources)
        for reason in dropped:
            self.inbound.drop(reason.value)
        if inner:  # one call: the TUN may merge TCP segments (tunneld.io.offload)
            self._tun.write_batch(inner)

    def _to_ike(self, data: Buffer, src: Address, udp: Udp) -> None:
        self.inbound.ike_datagrams += 1
        if self._deliver_ike is None:
            self.inbound.drop(IKE_NO_HANDLER)
            return
        self._deliver_ike(IkeDatagram(bytes(data), src, udp.local_address))

    # -- the data thread (module docstring) ---------------------------------------------

    async def _run_thread(self, task_status: trio.TaskStatus[None]) -> None:
        token = trio.lowlevel.current_trio_token()
        lock = threading.Lock()
        instrument = _TrioHoldsLock(lock)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        done = trio.Event()
        on_move = getattr(self._sadb, "on_move", None)
        self._token, self._stopping, self._failure = token, False, None
        if self._on_ike is not None:
            self._deliver_ike = self._queue_ike
        if on_move is not None:  # sadb rule 7, for the peer tasks: in trio
            self._sadb.on_move = lambda tunnel, src: self._call_soon(on_move, tunnel, src)  # type: ignore[attr-defined]
        thread = threading.Thread(
            target=self._thread_main, args=(lock, wake_r, done), name="tunneld-data"
        )
        trio.lowlevel.add_instrument(instrument)
        lock.acquire()  # from now on trio holds it but while waiting for I/O
        try:
            thread.start()
            task_status.started()
            await done.wait()
            if self._failure is not None:
                raise self._failure
            raise RuntimeError("the data thread stopped")
        finally:
            self._stopping = True
            os.write(wake_w, b"\0")
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
            trio.lowlevel.remove_instrument(instrument)
            lock.release()
            os.close(wake_r)
            os.close(wake_w)
            self._deliver_ike = self._on_ike
            if on_move is not None:
                self._sadb.on_move = on_move  # type: ignore[attr-defined]

    def _thread_main(self, lock: threading.Lock, wake_fd: int, done: trio.Event) -> None:
        """The data thread: one epoll over every device, the pipeline per ready fd."""
        handlers: Handlers = {wake_fd: None}
        handlers[_fileno(self._tun)] = self._seal_and_send
        sockets = [*self._udp.items(), *((u.local_address[1], u) for u in self._more)]
        for port, udp in sockets:
            handlers[_fileno(udp)] = functools.partial(self._receive, udp, port != self._ike_port)
        poller = select.epoll()
        try:
            for fd in handlers:
                poller.register(fd, select.EPOLLIN)
            if self._busy_poll_ns:
                self._busy_loop(poller, handlers, lock)
            else:
                self._sleepy_loop(poller, handlers, lock)
        except BaseException as exc:  # handed to DataPath.run, which raises it
            self._failure = exc
        finally:
            poller.close()
            self._call_soon(done.set)

    def _sleepy_loop(self, poller: select.epoll, handlers: Handlers, lock: threading.Lock) -> None:
        """Block in ``epoll_wait`` until a device is ready, every time."""
        while not self._stopping:
            ready = poller.poll()
            with lock:
                self._handle(ready, handlers)

    def _busy_loop(self, poller: select.epoll, handlers: Handlers, lock: threading.Lock) -> None:
        """Block until a device is ready; after a wakeup, keep polling without
        blocking for ``busy_poll_us`` (module docstring, "Busy polling")."""
        poll, clock, window = poller.poll, time.monotonic_ns, self._busy_poll_ns
        yield_cpu = os.sched_yield
        hot_until = 0  # while polling: when to go back to sleep
        while not self._stopping:
            ready = poll(0) if hot_until else poll()
            if not ready:
                if clock() >= hot_until:
                    hot_until = 0
                else:
                    yield_cpu()  # whoever else is runnable first (module docstring)
                continue
            if hot_until:
                self.busy_polls += 1
            with lock:
                self._handle(ready, handlers)
            hot_until = clock() + window

    def _handle(self, ready: list[tuple[int, int]], handlers: Handlers) -> None:
        """One batch from each ready device (the caller holds the lock)."""
        for fd, _events in ready:
            handler = handlers[fd]
            if handler is not None and not self._stopping:
                handler()

    def _call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` in the trio thread (from the data thread)."""
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def _queue_ike(self, dgram: IkeDatagram) -> None:
        """The data thread's IKE hand-over: bounded; one trio callback drains it."""
        queue = self._ike_queue
        size = len(dgram.data)
        if len(queue) >= IKE_QUEUE_DATAGRAMS or self._ike_queued_bytes + size > IKE_QUEUE_BYTES:
            self.inbound.drop(IKE_QUEUE_FULL)
            return
        queue.append(dgram)
        self._ike_queued_bytes += size
        if len(queue) == 1:
            self._call_soon(self._drain_ike)

    def _drain_ike(self) -> None:
        """In trio (holding the lock): every queued IKE datagram to the handler."""
        queue, handler = self._ike_queue, self._on_ike
        while queue:
            dgram = queue.popleft()
            self._ike_queued_bytes -= len(dgram.data)
            if handler is not None:
                handler(dgram)


class _TrioHoldsLock(trio.abc.Instrument):
    """The trio thread holds the data path's lock except while it waits for I/O."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def before_io_wait(self, timeout: float) -> None:
        self._lock.release()

    def after_io_wait(self, timeout: float) -> None:
        self._lock.acquire()


class _HasFd(Protocol):
    def fileno(self) -> int: ...


def _fileno(device: object) -> int:
    return cast(_HasFd, device).fileno()


def _device_stats(device: object) -> dict[str, Any]:
    refresh = getattr(device, "refresh_stats", None)
    if refresh is not None:  # what the kernel counts (UdpSocket: its receive-buffer drops)
        refresh()
    stats = getattr(device, "stats", None)
    if stats is not None and is_dataclass(stats) and not isinstance(stats, type):
        return asdict(stats)
    return {}
