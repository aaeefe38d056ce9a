"""The daemon: one trio nursery holding the data path, the IKE dispatcher, one
task per peer and the control socket.

Theory of operation:

1. ``Daemon.run`` opens the devices (TUN, UDP on the IKE and NAT-T ports) and
   starts, in one nursery: the packet pumps (:class:`DataPath`), the IKE
   dispatcher, one :class:`Peer` task per configured peer and the control
   server. ``task_status.started()`` is called when all of them are ready.
2. The dispatcher parses only the IKE header of each datagram and hands it to
   the peer that owns the SPI it names; a new IKE_SA_INIT (SPIr = 0) goes to
   the one peer that could serve its source address, or, when several entries
   (or an identity pattern) could, to the *reception*, which picks the peer by
   the identity the initiator proves at IKE_AUTH and hands the session over
   (:mod:`tunneld.directory`, :mod:`tunneld.peer` rule 12).
   The pumps call the dispatcher for each IKE datagram as they read it (no
   queue: see :mod:`tunneld.datapath`); it is synchronous and cheap, and a
   peer's own bounded queue takes what it hands over.
   A closed IKE SA's SPI routes to the tombstones (:mod:`ike.tombstones`):
   peers bury a closed session at once, and a retransmission of the request
   it last answered gets the cached response from there for the rest of the
   retransmission window, without the session object.
   Anything else is counted and dropped: the dispatcher never raises. The
   lookup is O(1) (dicts by our SPI, and by the initiator's SPI and address
   for a retransmitted IKE_SA_INIT; the candidate entries of a new one's
   source address by a dict of canonical addresses), never a walk over
   sessions.
3. The SA database and the routes change only through each peer's
   :class:`tunneld.childsas.ChildSet`, called by that peer's task.
4. Shutdown (SIGTERM/SIGINT or cancellation): every peer sends DELETE for its
   IKE SAs, the daemon waits briefly for the answers, then removes routes,
   closes the TUN device and the sockets. Nothing is written to disk, so a
   restart never reuses keys, SPIs or counters. (The one exception is opt-in
   and write-only: a peer with ``save_keys = true`` appends its SA keys to
   Wireshark's decryption tables, :mod:`tunneld.savekeys`; they are never read.)
5. The front door (:class:`ike.frontdoor.FrontDoor`) decides about each new
   IKE_SA_INIT before any peer sees it: above the half-open threshold (in
   all, or from one source address) a request without a valid cookie gets a
   COOKIE challenge straight from the dispatcher, with no session and no DH;
   over a cap it is dropped. Peers report the half-open sessions they open
   and close (:meth:`Daemon.half_open_changed`).
7. Every ``listen`` address is bound (IKE and NAT-T ports). IKE answers leave
   from the address the request came to (the session's local address), and
   a peer's ESP and NAT keepalives from the address its IKE SA uses
   (:meth:`Daemon.esp_source`, told by the peer when a Child SA is installed
   or the peer moves). What we initiate leaves from the first address.
6. An exception escaping one peer's task is a bug, but it must not stop the
   gateway: it is logged with the peer's name and the traceback, that peer
   is reset (its Child SAs leave the data plane, its sessions are
   forgotten) and its task starts again after :data:`PEER_RESET_DELAY`; the
   other peers, the data plane and the control socket go on.
8. ``[metrics]`` (optional): a Prometheus endpoint (:mod:`tunneld.metrics`),
   bound with the sockets, before privileges are dropped, and served by one
   task in the nursery that reads the daemon's counters at scrape time.
9. Reload (``tunneld reload``, SIGHUP; :meth:`Daemon.reload`): the file the
   daemon was started with is read and checked again; an invalid one, or one
   that changes ``[gateway]``, is refused (logged at ERROR, the verb answers
   why) and nothing changes. Otherwise :func:`tunneld.reload.plan_reload` says
   what happens to each peer: removed and restarted peers send DELETE (their
   routes go at once; the reload waits up to :data:`RELOAD_DELETE_GRACE` for
   the answers) and go; updated and reauthenticated ones take their new
   configuration in place (:mod:`tunneld.peer` rule 14); added and restarted
   ones start; the directory takes the new entries. Unchanged peers are not
   touched. systemd hears ``RELOADING=1`` before and ``READY=1`` after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import trio

from ike.auth import PrivateKey as SigningKey
from ike.cookies import starts_ike_sa
from ike.entropy import Entropy
from ike.errors import ParseError
from ike.events import Address
from ike.frontdoor import FrontDoor, Verdict
from ike.identity import Identity as IkeIdentity
from ike.policy import MAX_HALF_OPEN, MAX_HALF_OPEN_PER_PEER
from ike.session import IkeSession
from ike.sessionconfig import ChildConfig as IkeChildConfig
from ike.sessionconfig import PskAuth, PubkeyAuth, Secret, SessionConfig
from ike.tombstones import Tombstones
from ike.tombstones import Verdict as TombVerdict
from ike.wire import IkeHeader, parse_header
from tunneld import control, hardening, sdnotify
from tunneld.alarms import Alarms, next_tick
from tunneld.childsas import ChildSet, ChildSets, Limits
from tunneld.config import ChildConfig, Config, ConfigError, PeerConfig, load_config
from tunneld.datapath import DataPath, IkeDatagram, Tun, Udp
from tunneld.dataplane.sadb import SADatabase, Tunnel
from tunneld.directory import Directory, Hub
from tunneld.entropy import SystemEntropy
from tunneld.io.tun import MemoryTun, TunDevice
from tunneld.io.udp import MemoryNetwork, UdpSocket
from tunneld.log import THROTTLE_FLUSH_INTERVAL, LogThrottle, flush_throttles
from tunneld.memtrim import HeapTrimmer
from tunneld.peer import WATCH_INTERVAL, Peer, PeerPolicy
from tunneld.reload import ReloadPlan, plan_reload
from tunneld.routes import KernelRoutes, MemoryRoutes, RouteTable
from tunneld.savekeys import KeyTables

if TYPE_CHECKING:  # imported in run only with [metrics]: prometheus_client is ~10 MB
    from tunneld import metrics

log = logging.getLogger("tunneld.daemon")

RECEPTION = "(reception)"  # the reception's name in logs and the front door's counts (rule 2)
SHUTDOWN_GRACE = 1.0  # seconds to wait for DELETE answers at exit
RELOAD_DELETE_GRACE = 2.0  # seconds a reload waits for the DELETE answers of peers it removes


class Devices(Protocol):
    """Where the daemon gets its file descriptors (and names) from (real, or in-memory)."""

    def open_tun(self, name: str, mtu: int, *, tso: bool = True) -> Tun: ...
    def bind_udp(self, host: str, port: int, *, gro: bool = True) -> Udp: ...
    def routes(self, tun_name: str) -> RouteTable: ...
    async def resolve(self, name: str, family: int) -> str: ...


class KernelDevices:
    def __init__(self, *, ipv6: bool = True) -> None:
        self.ipv6 = ipv6

    def open_tun(self, name: str, mtu: int, *, tso: bool = True) -> Tun:
        tun = TunDevice.open(name, mtu, tso=tso)
        if not self.ipv6:
            # No IPv6 selectors: keep the kernel from sending router solicitations
            # and MLD reports into the tunnel (they would only be dropped, NO_POLICY).
            with contextlib.suppress(OSError):
                Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
        return tun

    def bind_udp(self, host: str, port: int, *, gro: bool = True) -> Udp:
        return UdpSocket.bind(host, port, gro=gro)

    def routes(self, tun_name: str) -> RouteTable:
        return KernelRoutes(tun_name)

    async def resolve(self, name: str, family: int) -> str:
        """The first address of ``family`` for a DNS name (``/etc/hosts`` first, as the
        system's resolver is configured); OSError if there is none."""
        found = await trio.socket.getaddrinfo(name, None, family, socket.SOCK_DGRAM)
        if not found:
            raise OSError(f"no {socket.AddressFamily(family).name} address")
        return str(found[0][4][0])


class MemoryDevices:
    """In-memory twins: daemons in one process joined by a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, hosts: dict[str, str] | None = None) -> None:
        self.network = network
        self.tun: MemoryTun | None = None
        self.route_table = MemoryRoutes()
        self.hosts = {} if hosts is None else hosts  # DNS names (an /etc/hosts of its own)

    def open_tun(self, name: str, mtu: int, *, tso: bool = True) -> Tun:
        self.tun = MemoryTun(name, mtu)  # (TSO: MemoryTun.host_send_offload feeds the cutter)
        return self.tun

    def bind_udp(self, host: str, port: int, *, gro: bool = True) -> Udp:
        return self.network.bind(host, port)

    def routes(self, tun_name: str) -> RouteTable:
        return self.route_table

    async def resolve(self, name: str, family: int) -> str:
        await trio.lowlevel.checkpoint()
        if name not in self.hosts:
            raise OSError(f"[Errno -2] Name or service not known: {name!r}")
        return self.hosts[name]


@dataclass
class DispatchStats:
    """What the dispatcher dropped, by fixed reason (rule 2)."""

    unparsable: int = 0
    unknown_spi: int = 0
    deleted_sa: int = 0  # for a deleted IKE SA, not a retransmission it answers
    no_peer: int = 0
    cookies_sent: int = 0  # COOKIE challenges: no state, no DH (rule 5)
    half_open_limit: int = 0  # new IKE_SA_INIT over a half-open cap
    malformed_init: int = 0
    peer_task_resets: int = 0  # rule 6
    dispatch_errors: int = 0  # rule 6: a bug in the dispatcher, the datagram dropped


# Unauthenticated events anyone can cause: logged once per reason per interval.
UNAUTHENTICATED_LOG = (
    "IKE_SA_INIT from an address no peer is configured for",
    "IKE_SA_INIT dropped: half-open limit",
)
PEER_RESET_DELAY = 1.0  # seconds before a peer whose task failed starts again (rule 6)


def session_config(
    cfg: Config, peer: PeerConfig, spi_in_use: Callable[[int], bool]
) -> SessionConfig:
    """The pure IKE core's view of one configured peer."""
    ident = cfg.identity
    auth: PubkeyAuth | PskAuth
    if peer.auth == "psk":
        assert peer.psk is not None
        auth = PskAuth(Secret(peer.psk.reveal()))
    else:
        assert ident.private_key is not None and ident.certificate is not None
        auth = PubkeyAuth(
            private_key=cast(SigningKey, ident.private_key.reveal()),
            certificate=ident.certificate,
            trust_anchors=tuple(ident.ca),
            intermediates=tuple(ident.intermediates),
        )
    return SessionConfig(
        local_id=IkeIdentity.from_payload(int(peer.local_id.id_type), peer.local_id.data),
        remote_id=IkeIdentity.from_payload(int(peer.id.id_type), peer.id.data),
        auth=auth,
        ike_proposals=tuple(peer.ike),
        esp_proposals=tuple(peer.esp),
        local_ts=tuple(peer.local_subnets),
        remote_ts=tuple(peer.remote_subnets),
        wall_clock=_wall_clock(),
        spi_in_use=spi_in_use,
        name=peer.name,
        ike_lifetime=peer.ike_lifetime,
        child_lifetime=peer.child_lifetime,
        rekey_jitter=peer.rekey_jitter,
        dpd_delay=peer.dpd_delay,
        children=tuple(
            IkeChildConfig(
                c.name, c.local_subnets, c.remote_subnets, tuple(c.esp), c.child_lifetime
            )
            for c in peer.children
        ),
        keep_children=peer.auto == "start",
    )


def _limits(child: ChildConfig) -> Limits:
    return Limits(
        soft_packets=child.child_packet_limit,
        soft_bytes=child.child_byte_limit,
        hard_packets=child.child_packet_hard_limit,
        hard_bytes=child.child_byte_hard_limit,
    )


def _uses_ipv6(config: Config) -> bool:
    return any(
        net.version == 6 for p in config.peers for net in (*p.local_subnets, *p.remote_subnets)
    )


def _wall_clock() -> Callable[[float], datetime]:
    """Map trio's clock to wall time for certificate validity (read once, at start)."""
    offset = datetime.now(UTC).timestamp() - trio.current_time()
    return lambda now: datetime.fromtimestamp(now + offset, UTC)


class Daemon:
    """See the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        devices: Devices | None = None,
        entropy: Entropy | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.config = config
        self.devices = devices or KernelDevices(ipv6=_uses_ipv6(config))
        self.entropy = entropy or SystemEntropy()
        self.handle_signals = handle_signals
        self.sadb = SADatabase()
        self.sadb.on_move = self._esp_moved  # peer.py rule 10
        self.peers: dict[str, Peer] = {}  # configured peers and the spokes of pattern entries
        self.directory: Directory | None = None  # made in run, with the peers
        self.reception: Peer | None = None  # rule 2: sessions whose peer IKE_AUTH names
        self._scopes: dict[Peer, trio.CancelScope] = {}  # each peer's task (spokes, reload)
        self._reload_lock = trio.Lock()  # one reload at a time (rule 9)
        self._nursery: trio.Nursery | None = None
        self.dispatch = DispatchStats()
        self._by_spi: dict[bytes, Peer] = {}
        self.tombstones = Tombstones()  # deleted IKE SAs' cached answers (rule 2)
        self._spis_of: dict[IkeSession, tuple[bytes, ...]] = {}
        self.heap = HeapTrimmer()  # freed heap back to the system (tunneld.memtrim)
        # half-open responder sessions by (initiator's SPI, its address): a
        # retransmitted IKE_SA_INIT (SPIr = 0) finds its session in O(1)
        self._by_init: dict[tuple[bytes, Address], Peer] = {}
        self.front_door: FrontDoor | None = None  # made in run (it needs the clock)
        self._unauth_log = LogThrottle(log, UNAUTHENTICATED_LOG)
        self._datapath: DataPath | None = None
        self._routes: RouteTable | None = None
        self._udp: dict[int, Udp] = {}  # the first listen address's, by port
        self._sockets: dict[tuple[str, int], Udp] = {}  # every one, by local address
        self._local_host = ""
        self._started_at = 0.0
        self._cancel = trio.CancelScope()
        self._stopping = trio.Event()
        self._key_tables: KeyTables | None = None  # shared by the peers with save_keys
        self._metrics: metrics.Endpoint | None = None  # [metrics]: bound in run, rule 8
        self.alarms: Alarms[Peer] = Alarms()  # every peer task's next deadline (alarms.py)

    # -- lifecycle -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        gw = self.config.gateway
        account = _account(gw.user, gw.group)  # [gateway] user: who we become once open
        # The control socket first: another tunneld with this name refuses the start before
        # its TUN device is touched (control.py rules 1-3).
        control_socket = control.bind(
            gw.control_socket,
            owner=os.geteuid() if account is None else account.uid,
            group=-1 if account is None else account.gid,
        )
        try:
            tun = self.devices.open_tun(gw.tun, gw.mtu, tso=gw.tso)
            try:
                self._routes = self.devices.routes(gw.tun)
                self._local_host = str(gw.listen[0])
                # every listen address, IKE and NAT-T ports (rule 7); the first one's
                # sockets are the default for what has no address of its own to leave from
                for host in dict.fromkeys(str(a) for a in gw.listen):
                    for port in (gw.port, gw.nat_t_port):
                        # no GRO on the IKE port: IKE datagrams are never coalesced, and
                        # recvmsg with room for its cmsg cost twice a recvfrom per datagram
                        gro = port != gw.port
                        self._sockets[(host, port)] = self.devices.bind_udp(host, port, gro=gro)
                self._udp = {
                    p: self._sockets[(self._local_host, p)] for p in (gw.port, gw.nat_t_port)
                }
                if self.config.metrics is not None:  # rule 8: bound before the drop
                    from tunneld import metrics

                    self._metrics = metrics.Endpoint.open(
                        str(self.config.metrics.host), self.config.metrics.port
                    )
                if account is not None:
                    _drop_privileges(account)
                await self._run_tasks(tun, control_socket, task_status)
            finally:
                if self._metrics is not None:
                    self._metrics.close()
                self._close_devices(tun)
        finally:
            control_socket.close()

    async def _run_tasks(
        self, tun: Tun, control_socket: control.ControlSocket, task_status: trio.TaskStatus[None]
    ) -> None:
        gw = self.config.gateway
        more = [u for u in self._sockets.values() if u not in self._udp.values()]
        self._datapath = DataPath(
            self.sadb,
            tun,
            self._udp,
            self._on_ike,
            esp_port=gw.nat_t_port,
            ike_port=gw.port,
            more=more,
            thread=gw.data_thread,
            busy_poll_us=gw.busy_poll_us,
        )
        self._started_at = trio.current_time()
        self.front_door = FrontDoor(
            self.entropy, self._started_at, peer_limits={RECEPTION: self._reception_cap()}
        )
        with self._cancel:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._datapath.run)
                await nursery.start(self.alarms.run)
                self._make_peers(nursery)
                await nursery.start(control.serve, control_socket, self._control)
                if self._metrics is not None:
                    await nursery.start(self._metrics.serve, self)
                nursery.start_soon(self._shutdown_watcher)
                nursery.start_soon(self._throttle_flusher)
                nursery.start_soon(self.heap.run)
                nursery.start_soon(self._watcher)
                if self.handle_signals:
                    nursery.start_soon(self._signal_watcher)
                log.info(
                    "tunneld running",
                    extra={"gateway": gw.name, "tun": gw.tun, "peers": len(self.peers)},
                )
                sdnotify.notify(f"READY=1\nSTATUS=running, {len(self.peers)} peers")
                task_status.started()

    async def _throttle_flusher(self) -> None:
        """Rate-limited log lines: the "N more" summaries when a burst has ended."""
        while True:
            await trio.sleep(THROTTLE_FLUSH_INTERVAL)
            flush_throttles(trio.current_time())

    async def _watcher(self) -> None:
        """peer.py rule 4: once a second (on whole seconds) the peers whose Child SA
        counters moved or crossed a limit are woken to look at them; a hub's idle
        spokes sleep on (waking a thousand tasks a second cost more than the look)."""
        while True:
            await trio.sleep_until(next_tick(trio.current_time(), WATCH_INTERVAL))
            now = trio.current_time()
            for peer in list(self.peers.values()):
                peer.watch_if_wanted(now)
            self.tombstones.expire(now)

    async def _run_peer(self, peer: Peer) -> None:
        """Rule 6: one peer's task; a bug in it resets that peer, nothing else."""
        while True:
            try:
                await peer.run()
                return
            except Exception:
                self.dispatch.peer_task_resets += 1
                log.exception(
                    "peer task failed (a bug): resetting this peer, the others go on",
                    extra={"peer": peer.name},
                )
                peer.reset(trio.current_time())
                await trio.sleep(PEER_RESET_DELAY)

    def _make_peers(self, nursery: trio.Nursery) -> None:
        """One peer per plain entry, a template per pattern entry, and the reception."""
        templates: dict[str, SessionConfig] = {}
        for pc in self.config.peers:
            if pc.is_pattern:  # spokes are made as they authenticate (tunneld.directory)
                config = session_config(self.config, pc, self._spi_in_use)
                templates[pc.name] = dataclasses.replace(config, remote_id=None)
                continue
            peer = self._make_peer(pc)
            self.peers[pc.name] = peer
            self._start_peer(peer)
        self.directory = Directory(
            self.config.peers,
            self.peers,
            templates,
            self._spawn_spoke,
            self._retire_spoke,
            trio.current_time,
        )
        first = self.config.peers[0]
        self.reception = self._make_peer(first, name=RECEPTION, reception=self)
        nursery.start_soon(self._run_peer, self.reception)

    def _spawn_spoke(self, hub: Hub, config: SessionConfig) -> Peer:
        """A spoke of a pattern entry authenticated: its own peer (tunneld.directory)."""
        assert self._nursery is not None
        peer = self._make_peer(hub.entry, name=config.name, config=config)
        self.peers[peer.name] = peer
        self._start_peer(peer)
        return peer

    def _start_peer(self, peer: Peer) -> None:
        """The peer's task, in a scope of its own (a spoke retires, a reload removes it)."""
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._scopes[peer] = scope
        self._nursery.start_soon(self._run_scoped, peer, scope)

    async def _run_scoped(self, peer: Peer, scope: trio.CancelScope) -> None:
        with scope:
            await self._run_peer(peer)

    def _retire_spoke(self, peer: Peer) -> None:
        """An idle spoke makes room (tunneld.directory rule 4)."""
        peer.discard(trio.current_time())
        self.peers.pop(peer.name, None)
        scope = self._scopes.pop(peer, None)
        if scope is not None:
            scope.cancel()
        log.info("idle spoke retired", extra={"peer": peer.name})

    # -- the reception (rule 2; tunneld.peer.Reception) ------------------------------

    def _reception_cap(self) -> int:
        """Half-open IKE SAs the reception may hold: a hub's spokes may all come at
        once (a restarted hub), so a pattern entry counts with its max_spokes."""
        wanted = sum(p.max_spokes if p.is_pattern else 1 for p in self.config.peers)
        return min(MAX_HALF_OPEN, max(MAX_HALF_OPEN_PER_PEER, wanted))

    def responder(self, dgram: IkeDatagram, now: float) -> IkeSession:
        assert self.directory is not None
        configs = self.directory.configs(self.directory.candidates(dgram.remote[0]))
        return IkeSession.responder(
            configs, self.entropy, now, dgram.local, dgram.remote, lookup=self.directory.lookup
        )

    def owner(self, session: IkeSession) -> Peer:
        assert self.directory is not None
        return self.directory.owner(session)

    def _make_peer(
        self,
        pc: PeerConfig,
        *,
        name: str | None = None,
        config: SessionConfig | None = None,
        reception: Daemon | None = None,
    ) -> Peer:
        """The peer of one plain entry, of a spoke (``name``, ``config``), or the reception."""
        name = name or pc.name
        remote = None if pc.address is None or name != pc.name else (str(pc.address), pc.port)
        assert self._routes is not None
        sets = [
            ChildSet(
                name if c.implicit else f"{name}/{c.name}",  # SADB tunnel names
                self.sadb,
                self._routes,
                delete_delay=pc.delete_delay,
                replay_window=pc.replay_window,
                limits=_limits(c),
            )
            for c in pc.children
        ]
        children = ChildSets(sets, [c.name for c in pc.children])
        return Peer(
            self,
            name,
            config or session_config(self.config, pc, self._spi_in_use),
            remote=remote,
            policy=PeerPolicy(
                auto="listen" if name != pc.name else pc.auto,
                dpd_action=pc.dpd_action,
                auth_failure_backoff=pc.auth_failure_backoff,
            ),
            children=children,
            local_addr=lambda: (self._local_host, self.config.gateway.port),
            alarms=self.alarms,
            key_tables=None if reception is not None else self._key_tables_for(pc),
            reception=reception,
        )

    def _key_tables_for(self, pc: PeerConfig) -> KeyTables | None:
        """``save_keys = true``: the key tables, and a warning (secrets go to disk)."""
        if not pc.save_keys:
            return None
        directory = self.config.gateway.save_keys_dir
        log.warning(
            "save_keys is on: SA keys are written to disk, whoever reads them can decrypt "
            "this peer's traffic; for debugging only",
            extra={"peer": pc.name, "dir": str(directory)},
        )
        if self._key_tables is None:
            self._key_tables = KeyTables(directory)
        return self._key_tables

    def stop(self) -> None:
        """Leave ``run`` gracefully: DELETE to every peer, then teardown (rule 4)."""
        self._stopping.set()

    async def _signal_watcher(self) -> None:
        """SIGTERM, SIGINT: shut down (rule 4); SIGHUP: reload (rule 9), as the verb does."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP received, reloading the configuration")
                    assert self._nursery is not None
                    self._nursery.start_soon(self._reload_on_signal)
                    continue
                log.info("signal received, shutting down", extra={"signal": signum})
                self.stop()
                return

    async def _shutdown_watcher(self) -> None:
        """Rule 4: on stop, DELETE every IKE SA while the pumps and peers still run,
        wait (bounded) for the answers, then cancel everything."""
        await self._stopping.wait()
        sdnotify.notify("STOPPING=1")
        for peer in self.peers.values():
            peer.down()
        with trio.move_on_after(SHUTDOWN_GRACE):
            while any(p.state in ("established", "deleting") for p in self.peers.values()):
                await trio.sleep(0.02)
        for peer in self.peers.values():
            peer.shutdown_now()
        self._cancel.cancel()

    def _close_devices(self, tun: Tun) -> None:
        if self._routes is not None:
            self._routes.close()
        for udp in self._sockets.values():
            udp.close()  # type: ignore[attr-defined]
        tun.close()  # type: ignore[attr-defined]
        log.info("tunneld stopped", extra={"gateway": self.config.gateway.name})

    # -- IKE datagrams ------------------------------------------------------------

    def _on_ike(self, dgram: IkeDatagram) -> None:
        """The pumps' IKE handler: called in the pump's task for each datagram read."""
        try:
            self._dispatch(dgram)
        except Exception:  # a bug: one datagram must never stop the gateway
            self.dispatch.dispatch_errors += 1
            log.exception("IKE dispatch failed (a bug): datagram dropped")

    def _dispatch(self, dgram: IkeDatagram) -> None:
        """Rule 2: route one IKE datagram to its peer; never raises."""
        if starts_ike_sa(dgram.data):  # SPIr = 0: no SA of ours is named (our SPIs are not 0)
            self._dispatch_init(dgram)
            return
        try:
            header = parse_header(dgram.data)
        except ParseError:
            self.dispatch.unparsable += 1
            return
        own_spi = header.spi_r if header.is_initiator else header.spi_i
        peer = self._by_spi.get(own_spi)
        if peer is None:
            self._dispatch_buried(own_spi, header, dgram)
            return
        peer.deliver(dgram, header)

    def _dispatch_buried(self, own_spi: bytes, header: IkeHeader, dgram: IkeDatagram) -> None:
        """A deleted IKE SA's retransmitted request gets its cached answer (rule 2)."""
        verdict, answer = self.tombstones.lookup(
            own_spi, header, dgram.data, dgram.remote, trio.current_time()
        )
        if verdict is TombVerdict.ANSWER:
            assert answer is not None
            self.send_ike(answer, dgram.local, dgram.remote)
        elif verdict is TombVerdict.DROP:
            self.dispatch.deleted_sa += 1
        else:
            self.dispatch.unknown_spi += 1

    def _dispatch_init(self, dgram: IkeDatagram) -> None:
        """A new IKE_SA_INIT request, told by its header's bytes: every datagram of a
        spoofed flood comes here, and most leave with a cookie before any parsing."""
        peer = self._by_init.get((dgram.data[:8], dgram.remote))  # a retransmission
        if peer is None:
            peer = self._admit(dgram)
            if peer is None:
                return
        try:
            header = parse_header(dgram.data)
        except ParseError:  # a retransmission's (the front door checked an admitted one's)
            self.dispatch.unparsable += 1
            return
        peer.deliver(dgram, header)

    def _admit(self, dgram: IkeDatagram) -> Peer | None:
        """Rule 5: a new IKE_SA_INIT; the peer to deliver it to, or None (answered or dropped)."""
        now = trio.current_time()
        assert self.directory is not None
        candidates = self.directory.candidates(dgram.remote[0])
        peer = self.directory.direct_peer(candidates) if candidates else None
        if candidates and peer is None:
            peer = self.reception
        if peer is None:
            self.dispatch.no_peer += 1
            self._unauth_log(UNAUTHENTICATED_LOG[0], now, remote=dgram.remote[0])
            return None
        assert self.front_door is not None
        admission = self.front_door.admit(dgram.data, dgram.remote, peer.name, now)
        if admission.verdict is Verdict.COOKIE:
            self.dispatch.cookies_sent += 1
            self.send_ike(admission.reply, dgram.local, dgram.remote)
            return None
        if admission.verdict is Verdict.DROP:
            if admission.reason == "malformed IKE_SA_INIT":
                self.dispatch.malformed_init += 1
            else:
                self.dispatch.half_open_limit += 1
                self._unauth_log(UNAUTHENTICATED_LOG[1], now, why=admission.reason)
            return None
        return peer

    def peer_resolved(self, peer: Peer) -> None:
        """A peer's DNS name resolved (again): new IKE_SA_INIT match the new address."""
        if self.directory is not None:
            self.directory.reindex()

    def _esp_moved(self, tunnel: Tunnel, source: Address) -> None:
        """Authenticated, newest ESP of ``tunnel`` came from a new address (sadb rule 7):
        its peer decides (peer.py rule 10). Called by the pumps, rarely (once per move)."""
        for peer in self.peers.values():
            if peer.children.owns(tunnel.name):
                peer.heard_from(source)
                return

    def register_session(self, session: IkeSession, peer: Peer) -> None:
        """Route every IKE SPI the session answers to (more than one around an IKE rekey).

        The peer calls this after every input: the set changes when an IKE SA is
        rekeyed and again when a retired one is finally dropped (which emits no
        event); routes to dropped SAs used to pile up until the next IKE rekey.
        """
        spis = tuple(session.local_spis)
        if self._spis_of.get(session) == spis:
            return
        if session not in self._spis_of:
            self.heap.churn()  # a new session: trim once the burst is over
        for spi in self._spis_of.pop(session, ()):
            self._by_spi.pop(spi, None)
        self._spis_of[session] = spis
        for spi in spis:
            self._by_spi[spi] = peer

    def bury(self, session: IkeSession) -> None:
        """Rule 2: a closed session's cached answers go to the tombstones (the
        session object goes: ike.tombstones); its SPIs route there from now on."""
        self.tombstones.bury(session.bury(), trio.current_time())

    def unregister_session(self, session: IkeSession) -> None:
        for spi in self._spis_of.pop(session, ()):
            self._by_spi.pop(spi, None)
        self.heap.churn()  # what it held is free now

    def half_open_changed(self, peer: Peer, spi_i: bytes, remote: Address, *, opened: bool) -> None:
        """Rule 5: a responder session was created (``opened``) or left the half-open
        state (established, or ended); keeps the front door's counts and the O(1)
        route of a retransmitted IKE_SA_INIT."""
        key = (spi_i, remote)
        if opened:
            self._by_init[key] = peer
        else:
            self._by_init.pop(key, None)
        if self.front_door is not None:
            if opened:
                self.front_door.opened(peer.name, remote, spi_i)
            else:
                self.front_door.closed(peer.name, remote)

    def half_open_declined(self, peer: Peer, spi_i: bytes, remote: Address) -> None:
        """Rule 5: an admitted IKE_SA_INIT the peer turned away without a session."""
        if self.front_door is not None:
            self.front_door.declined(peer.name, remote, spi_i)

    async def resolve(self, name: str) -> str:
        """A peer's DNS name, in the address family we listen on (peer.py rule 11)."""
        listen = self.config.gateway.listen[0]
        family = socket.AF_INET6 if listen.version == 6 else socket.AF_INET
        return await self.devices.resolve(name, family)

    def send_ike(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        if self._datapath is None:
            return
        port = src[1] if src[1] in self._udp else self.config.gateway.port
        try:
            self._datapath.send_ike(data, port, dst, src[0])  # from where the peer talks to
        except OSError as exc:  # unreachable network, peer's port closed: IKE retransmits
            log.debug("IKE send failed", extra={"dst": dst[0], "error": str(exc)})

    def esp_source(self, dst: tuple[str, int], src: tuple[str, int]) -> None:
        """Rule 7: a peer's ESP to ``dst`` leaves from our address ``src[0]``."""
        if self._datapath is not None:
            self._datapath.esp_source(dst, src[0])

    def send_keepalive(self, dst: tuple[str, int]) -> None:
        if self._datapath is None:
            return
        try:
            self._datapath.send_keepalive(dst)
        except OSError as exc:
            log.debug("NAT keepalive failed", extra={"dst": dst[0], "error": str(exc)})

    def _spi_in_use(self, spi: int) -> bool:
        return self.sadb.inbound(spi) is not None

    # -- reload (rule 9) ------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Read and check the configuration file again and apply what changed (rule 9);
        the control socket's answer: ``ok`` with the plan's summary, or the error."""
        async with self._reload_lock:
            path = self.config.path
            try:
                new = load_config(path)
                self._check_reloadable(new)
                plan = plan_reload(self.config, new)
            except ConfigError as exc:
                log.error(
                    "configuration reload refused, running on with the previous configuration",
                    extra={"config": str(path), "key": exc.key, "error": exc.reason},
                )
                return {"ok": False, "error": str(exc)}
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000  # systemd's clock
            sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")
            try:
                await self._apply_reload(new, plan)
            finally:
                sdnotify.notify(f"READY=1\nSTATUS=running, {len(self.peers)} peers")
            summary = plan.summary()
            fields = {k: ",".join(v) or "-" for k, v in summary.items() if k != "keys"}
            changed = "; ".join(f"{n}: {','.join(keys)}" for n, keys in summary["keys"].items())
            log.info(
                "configuration reloaded",
                extra={"config": str(path), **fields, "changed_keys": changed or "-"},
            )
            return {"ok": True, "changes": summary}

    async def _reload_on_signal(self) -> None:
        """SIGHUP: a reload whose outcome only the log tells; a bug in it (any exception
        but a refusal, which ``reload`` answers itself) must not stop the gateway."""
        try:
            await self.reload()
        except Exception:
            log.exception("configuration reload failed (a bug): see the traceback")

    def _check_reloadable(self, new: Config) -> None:
        """IPv6 subnets where the TUN device was opened without IPv6 need a restart."""
        if not isinstance(self.devices, KernelDevices) or self.devices.ipv6:
            return
        for i, peer in enumerate(new.peers):
            for key in ("local_subnets", "remote_subnets"):
                if any(net.version == 6 for net in getattr(peer, key)):
                    raise ConfigError(
                        new.path,
                        f"peer[{i}].{key}",
                        "IPv6 subnets need a restart (the TUN device runs without IPv6 "
                        "while no peer has IPv6 subnets); the reload is refused",
                    )

    async def _apply_reload(self, new: Config, plan: ReloadPlan) -> None:
        kinds = {change.name: change.kind for change in plan.peers}
        going = [p for p in self.config.peers if kinds[p.name] in ("removed", "restarted")]
        await self._retire_entries(going)
        self.config = new
        templates: dict[str, SessionConfig] = {}
        for pc in new.peers:
            kind = kinds[pc.name]
            if pc.is_pattern:
                templates[pc.name] = self._template(pc)
                if kind in ("updated", "reauthenticated"):
                    self._reconfigure_spokes(pc, templates[pc.name], kind)
            elif kind in ("added", "restarted"):
                peer = self._make_peer(pc)
                self.peers[pc.name] = peer
                self._start_peer(peer)
            elif kind in ("updated", "reauthenticated"):
                peer = self.peers[pc.name]
                self._reconfigure(peer, pc, session_config(new, pc, self._spi_in_use), kind)
        assert self.directory is not None
        self.directory.update(new.peers, templates)

    def _template(self, pc: PeerConfig) -> SessionConfig:
        """A pattern entry's configuration for its spokes (their identity comes later)."""
        config = session_config(self.config, pc, self._spi_in_use)
        return dataclasses.replace(config, remote_id=None)

    def _reconfigure(self, peer: Peer, pc: PeerConfig, config: SessionConfig, kind: str) -> None:
        """An updated or reauthenticated peer (or spoke) takes its new configuration."""
        plain = peer.name == pc.name
        remote = (str(pc.address), pc.port) if plain and pc.address is not None else None
        auto = pc.auto if plain else "listen"
        policy = PeerPolicy(auto, pc.dpd_action, auth_failure_backoff=pc.auth_failure_backoff)
        peer.reconfigure(config, policy, remote)
        for child in pc.children:
            sets = peer.children.by_child.get(child.name)
            if sets is None:
                continue
            sets.limits = _limits(child)
            sets.delete_delay = pc.delete_delay
            sets.replay_window = pc.replay_window  # for the Child SAs installed from now on
        peer.key_tables = self._key_tables_for(pc) if plain else peer.key_tables
        if kind == "reauthenticated":
            peer.reauthenticate()

    def _reconfigure_spokes(self, pc: PeerConfig, template: SessionConfig, kind: str) -> None:
        """An updated pattern entry: its spokes keep their identity and subnets."""
        assert self.directory is not None
        hub = self.directory.hubs.get(pc.name)
        for spoke in [] if hub is None else list(hub.spokes.values()):
            own = spoke.session_config
            children = tuple(
                dataclasses.replace(c, remote_ts=own.remote_ts) for c in template.children
            )
            config = dataclasses.replace(
                template, name=own.name, remote_id=own.remote_id, remote_ts=own.remote_ts,
                children=children,
            )  # fmt: skip
            self._reconfigure(spoke, pc, config, kind)

    async def _retire_entries(self, entries: list[PeerConfig]) -> None:
        """Removed or restarted entries: DELETE to their peers (a pattern entry's spokes),
        a bounded wait for the answers, then the peers go."""
        assert self.directory is not None
        peers: list[Peer] = []
        for pc in entries:
            hub = self.directory.hubs.get(pc.name) if pc.is_pattern else None
            if hub is not None:
                peers += hub.spokes.values()
                hub.spokes.clear()
            elif pc.name in self.peers:
                peers.append(self.peers[pc.name])
        for peer in peers:
            peer.down()
        with trio.move_on_after(RELOAD_DELETE_GRACE):
            while any(p.state in ("established", "deleting") for p in peers):
                await trio.sleep(0.02)
        now = trio.current_time()
        for peer in peers:
            answered = peer.state not in ("established", "deleting")
            peer.discard(now)
            self.peers.pop(peer.name, None)
            scope = self._scopes.pop(peer, None)
            if scope is not None:
                scope.cancel()
            log.info(
                "peer removed by reload", extra={"peer": peer.name, "delete_answered": answered}
            )

    # -- control socket -------------------------------------------------------------

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "reload":
            return await self.reload()
        if cmd in ("up", "down"):
            peer = self.peers.get(str(request.get("peer")))
            if peer is None:
                return {"ok": False, "error": f"no peer named {request.get('peer')!r}"}
            if cmd == "up":
                peer.up()
                return {"ok": True}
            hold = request.get("for")
            if hold is not None and not _positive_seconds(hold):
                return {"ok": False, "error": f"'for' must be a positive number, not {hold!r}"}
            peer.down(None if hold is None else float(hold))
            return {"ok": True}
        if cmd == "rekey":
            peer = self.peers.get(str(request.get("peer")))
            if peer is None:
                return {"ok": False, "error": f"no peer named {request.get('peer')!r}"}
            child = request.get("child")
            names = [c.name for c in peer.session_config.child_configs]
            if child is not None and child not in names:
                return {"ok": False, "error": f"peer {peer.name} has no child {child!r}"}
            if not peer.rekey(ike=bool(request.get("ike")), child=child):
                return {"ok": False, "error": f"peer {peer.name} has no established SA to rekey"}
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        gw = self.config.gateway
        dp = self._datapath
        return {
            "gateway": gw.name,
            "tun": gw.tun,
            "uptime": round(now - self._started_at, 3),
            "peers": [peer.snapshot(now) for peer in self.peers.values()],
            "dataplane": {
                "drops": {k.value: v for k, v in self.sadb.drops.items() if v},
                "pumps": dp.stats() if dp is not None else {},
            },
            "ike_dispatch": vars(self.dispatch).copy(),
            "deleted_ike_sas": self.tombstones.status(),
            "front_door": self.front_door.status() if self.front_door is not None else {},
            "reception": self._reception_status(now),
            "tasks": task_count(),
        }

    def _reception_status(self, now: float) -> dict[str, Any]:
        """Rule 2: what the reception holds and refused (sessions before IKE_AUTH)."""
        if self.reception is None or self.directory is None:
            return {}
        snap = self.reception.snapshot(now)
        return {
            "half_open_ike_sas": snap["half_open_ike_sas"],
            "half_open_ended": snap["counters"]["half_open_ended"],
            "last_unauthenticated_failure": snap["last_unauthenticated_failure"],
            **self.directory.status(),
        }


def _positive_seconds(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return 0 < float(value) < math.inf
    except OverflowError:  # an int beyond any float
        return False


def _account(user: str | None, group: str | None) -> hardening.Account | None:
    """``[gateway] user``/``group`` (checked by the configuration; gone since: OSError)."""
    if user is None:
        return None
    try:
        return hardening.lookup(user, group)
    except KeyError as exc:
        raise OSError(f"[gateway] user/group: {exc.args[0]}") from None


def _drop_privileges(account: hardening.Account) -> None:
    """Become ``account`` with only CAP_NET_ADMIN (routes into the TUN device, via the
    netlink socket opened before); nothing else the daemon does from here needs root."""
    hardening.drop_privileges(account)
    log.info(
        "privileges dropped",
        extra={"user": account.user, "uid": account.uid, "gid": account.gid,
               "capabilities": "CAP_NET_ADMIN"},
    )  # fmt: skip


def task_count() -> int:
    """How many trio tasks this run has (a walk of the task tree: a few dozen, cheap).

    Flat over time, or a task leaks (tests/netns/test_rekey_netns.py checks it
    across hundreds of rekeys). The control connection asking counts too.
    """
    stack = [trio.lowlevel.current_root_task()]
    count = 0
    while stack:
        task = stack.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count
