"""Lifetimes, rekeys, collisions and liveness of a session (RFC 7296 §1.3, §2.4, §2.8).

The timer policy of an established session, in one place. Every deadline
here is reported by :meth:`Rekeying.deadline`; at or after it,
:meth:`Rekeying.run` acts (it also runs after every message, so that an
immediate retry starts at once):

- a Child SA past its soft lifetime (or its retry time after a refusal) is
  rekeyed: CREATE_CHILD_SA with N(REKEY_SA) (:mod:`ike.exchanges.child_rekey`);
- a Child SA past its hard lifetime is dropped (ChildSaDown) and the peer
  told with a DELETE;
- the IKE SA past its soft lifetime is rekeyed (:mod:`ike.exchanges.ike_rekey`);
  past its hard lifetime it is deleted (one DELETE, no waiting) and the
  session ends;
- with ``keep_children``, a configured Child SA the IKE SA lacks (never
  created, or deleted) is created with CREATE_CHILD_SA: at once by the IKE
  SA's initiator, after ``CHILD_START_GRACE`` by its responder; a failed
  creation is tried again after a delay doubling within
  ``CHILD_CREATE_RETRY`` (:class:`MissingChild`); when both sides created
  the same child at once, the IKE SA's responder deletes the copy it made;
- ``dpd_delay`` after the last authenticated message or ESP from the peer,
  with no request of ours outstanding, an empty INFORMATIONAL checks that
  the peer is alive (§2.4); when its retransmissions run out, IkeSaDown has
  ``peer_dead`` set.

:class:`Rekeying` is also the session's side of the tasks' follow-ups
(:class:`ike.exchanges.base.FollowUps`): a task that finished, failed or was
abandoned says what it needs (delete a Child SA, switch to a new IKE SA...),
and the IKE SA rekey collision of §2.8.2 is settled here: the new IKE SA
created by the exchange that holds the lowest of the four nonces is deleted
by its creator; the creator of the survivor deletes the old SA; Child SAs
move to the survivor.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ike.constants import ExchangeType, NotifyType
from ike.errors import PeerError
from ike.events import IkeSaRekeyed
from ike.exchanges.base import ResponderTask, Selectors
from ike.exchanges.child_create import RefuseCreateChild
from ike.exchanges.child_rekey import (
    ChildSaInitiator,
    ChildSaResponder,
    lowest_nonce_in,
    pfs_group,
)
from ike.exchanges.context import ChildSa, ChildStatus, SaContext
from ike.exchanges.ike_rekey import IkeRekeyInitiator, IkeRekeyResponder, is_ike_rekey
from ike.exchanges.informational import DeleteChildTask, DeleteIkeTask, LivenessTask
from ike.ikesa import IkeSa
from ike.lifetimes import Lifetime, random_delay
from ike.policy import (
    CHILD_CREATE_RETRY,
    CHILD_START_GRACE,
    REDUNDANT_SA_TIMEOUT,
    REKEY_RETRY,
    TEMPORARY_FAILURE_GIVE_UP,
    TEMPORARY_FAILURE_RETRY,
)
from ike.sessioncore import SessionCore
from ike.states import IkeState, Input
from ike.taskmanager import Exchange
from ike.wire import Message

log = logging.getLogger("tunneld.ike")


@dataclass
class MissingChild:
    """A configured Child SA the IKE SA lacks: when to create it, and the attempt under way."""

    due: float
    delay: float = CHILD_CREATE_RETRY[0]
    task: ChildSaInitiator | None = None


class Rekeying:
    """Lifetimes, rekeys, liveness and task follow-ups (see the module docstring)."""

    def __init__(self, core: SessionCore) -> None:
        self.core = core
        self.ike_rekey: IkeRekeyInitiator | None = None  # ours, queued or on the wire
        self._temp_fail_since: float | None = None
        self._missing: dict[str, MissingChild] = {}  # keep_children, by child name

    # -- FollowUps: what tasks see ------------------------------------------------

    @property
    def ctx(self) -> SaContext:
        return self.core.ctx

    @property
    def established(self) -> bool:
        return self.core.state is IkeState.ESTABLISHED

    def on_established(self, now: float) -> None:
        config = self.ctx.config
        lifetime = Lifetime.start(now, config.ike_lifetime, config.rekey_jitter, self.ctx.entropy)
        self.core.sas.current.lifetime = lifetime
        self.core.last_inbound = now
        # The IKE_SA_INIT messages were only for the AUTH payloads (§2.15), which are
        # done: ~1 KB less per IKE SA (a retransmitted IKE_AUTH is answered from the cache).
        self.ctx.init_request = self.ctx.init_response = b""

    # -- deadlines -------------------------------------------------------------

    def _child_rekey_time(self, child: ChildSa) -> float | None:
        if not child.rekeyable:
            return None
        return child.retry_at if child.retry_at is not None else child.lifetime.rekey_at

    def _ike_rekey_time(self) -> float | None:
        sa = self.core.sas.current
        if sa.lifetime is None or self.ike_rekey is not None or self.core.sas.successor:
            return None
        return sa.rekey_retry_at if sa.rekey_retry_at is not None else sa.lifetime.rekey_at

    def _dpd_time(self) -> float | None:
        delay = self.ctx.config.dpd_delay
        if delay <= 0 or not self.core.tm.idle:
            return None  # a request on the wire checks liveness by itself
        return self.core.last_inbound + delay

    def deadline(self) -> float | None:
        if self.core.state is not IkeState.ESTABLISHED:
            return None
        times = [self._ike_rekey_time(), self._dpd_time()]
        lifetime = self.core.sas.current.lifetime
        if lifetime is not None:
            times.append(lifetime.expire_at)
        for child in self.ctx.children.values():
            times += [child.lifetime.expire_at, self._child_rekey_time(child)]
        times += [m.due for m in self._missing.values() if m.task is None]
        return min((t for t in times if t is not None), default=None)

    def run(self, now: float) -> None:
        """Act on every lifetime, retry and liveness deadline at or before ``now``."""
        if self.core.state is not IkeState.ESTABLISHED:
            return
        lifetime = self.core.sas.current.lifetime
        if lifetime is not None and now >= lifetime.expire_at:
            self._expire_ike(now)
            return
        for child in list(self.ctx.children.values()):
            rekey_at = self._child_rekey_time(child)
            if now >= child.lifetime.expire_at:
                self._expire_child(child)
            elif rekey_at is not None and now >= rekey_at:
                self.start_child_rekey(child)
        self._keep_children(now)
        ike_rekey_at = self._ike_rekey_time()
        if ike_rekey_at is not None and now >= ike_rekey_at:
            self.start_ike_rekey()
        dpd_at = self._dpd_time()
        if dpd_at is not None and now >= dpd_at:
            self.core.tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [LivenessTask()]))
        self.core.pump(now)

    # -- Child SAs ----------------------------------------------------------------

    def start_child_rekey(self, child: ChildSa) -> None:
        ke_retry = child.ke_group is not None
        config = self.ctx.config.child_config(child.name)
        group = child.ke_group if child.ke_group is not None else pfs_group(config)
        child.status, child.retry_at, child.ke_group = ChildStatus.REKEY_QUEUED, None, None
        task = ChildSaInitiator(child.inbound_spi, group, ke_retry=ke_retry, child=child.name)
        self.core.tm.enqueue(Exchange(ExchangeType.CREATE_CHILD_SA, [task], wanted=task.wanted))
        log.info("rekeying Child SA %08x", child.inbound_spi)

    def create_child(self, ts: Selectors | None, child: str = "") -> ChildSaInitiator:
        """A new Child SA of the configured ``child`` (also again from scratch after
        CHILD_SA_NOT_FOUND, §2.25); ``ts`` None: the child's selectors."""
        config = self.ctx.config.child_config(child)
        task = ChildSaInitiator(None, pfs_group(config), ts, child=config.name)
        self.core.tm.enqueue(Exchange(ExchangeType.CREATE_CHILD_SA, [task]))
        if self.ctx.config.keep_children:  # one creation at a time per child, whoever asked
            missing = self._missing.setdefault(config.name, MissingChild(math.inf))
            missing.task = task
        return task

    def _keep_children(self, now: float) -> None:
        """keep_children: create the configured Child SAs the IKE SA lacks (see module doc)."""
        config = self.ctx.config
        if not config.keep_children:
            return
        self._drop_duplicates()
        present = {c.name for c in self.ctx.children.values()}
        for child in config.child_configs:
            if child.name in present:
                self._missing.pop(child.name, None)
                continue
            missing = self._missing.get(child.name)
            if missing is None:
                grace = 0.0 if self.ctx.is_initiator else CHILD_START_GRACE
                missing = self._missing[child.name] = MissingChild(now + grace)
            if missing.task is not None:
                if not missing.task.finished:
                    continue
                missing.task = None  # it failed (a success would make the child present)
                missing.due = now + missing.delay
                missing.delay = min(missing.delay * 2, CHILD_CREATE_RETRY[1])
            if now >= missing.due:
                log.info("creating Child SA %r", child.name)
                self.create_child(None, child.name)

    def _drop_duplicates(self) -> None:
        """Both sides created one child at once (the initiator's creation took longer
        than the responder's grace): the IKE SA's responder deletes the Child SA it
        created, so one remains. Only copies we made from scratch are touched."""
        if self.ctx.is_initiator:
            return
        by_name: dict[str, list[ChildSa]] = {}
        for child in self.ctx.children.values():
            if child.status is ChildStatus.INSTALLED and not child.redundant:
                by_name.setdefault(child.name, []).append(child)
        for copies in by_name.values():
            if len(copies) < 2 or all(c.created_by_us for c in copies):
                continue
            for child in copies:
                if child.created_by_us and child.rekey_of is None:
                    log.info("deleting duplicate Child SA %08x (%r)", child.inbound_spi, child.name)
                    self.delete_child(child.inbound_spi, "duplicate of the peer's Child SA")

    def _expire_child(self, child: ChildSa) -> None:
        """Hard lifetime: the SA goes now; the peer hears it with a DELETE."""
        deleting = child.status is ChildStatus.DELETING
        self.ctx.drop_child(child.inbound_spi, "hard lifetime expired")
        if not deleting:
            self.delete_child_again(child.inbound_spi, "hard lifetime expired")

    def delete_child(self, inbound_spi: int, reason: str) -> None:
        child = self.ctx.children.get(inbound_spi)
        if child is None or child.status is ChildStatus.DELETING:
            return
        child.status = ChildStatus.DELETING
        self.delete_child_again(inbound_spi, reason)

    def delete_child_again(self, inbound_spi: int, reason: str) -> None:
        task = DeleteChildTask(inbound_spi, reason)
        self.core.tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [task]))

    def exchange_succeeded(self) -> None:
        self._temp_fail_since = None

    def note_temporary_failure(self, now: float) -> None:
        """§2.25: TEMPORARY_FAILURE for several minutes means we are out of sync: close."""
        if self._temp_fail_since is None:
            self._temp_fail_since = now
            return
        stuck = now - self._temp_fail_since >= TEMPORARY_FAILURE_GIVE_UP
        if stuck and self.core.state is IkeState.ESTABLISHED:
            reason = "peer keeps answering TEMPORARY_FAILURE"
            self.core.start_close(reason, NotifyType.TEMPORARY_FAILURE, now)

    # -- the IKE SA ---------------------------------------------------------------

    def start_ike_rekey(self, group: int | None = None) -> None:
        task = IkeRekeyInitiator(group, ke_retry=group is not None)
        self.ike_rekey, self.core.sas.current.rekey_retry_at = task, None

        def wanted(ctx: SaContext) -> bool:  # moot once the peer rekeyed first
            return self.ike_rekey is task and self.core.sas.successor is None

        self.core.tm.enqueue(Exchange(ExchangeType.CREATE_CHILD_SA, [task], wanted=wanted))
        log.info("rekeying IKE SA %s", self.ctx.spi_i.hex())

    def ike_rekey_done(
        self, sa: IkeSa, task: object, successor: SaContext | None, now: float
    ) -> None:
        """Our rekey of ``sa`` completed: switch to the new SA, or delete it (§2.8.2)."""
        if self.ike_rekey is task:
            self.ike_rekey = None
        self._temp_fail_since = None
        if successor is None:
            return
        sas = self.core.sas
        own = IkeSa.of(successor)
        rival = sa.peer_rekey_nonces
        if rival is not None and lowest_nonce_in(own.nonces, rival):
            log.info("IKE SA rekey collision: ours is redundant, deleting it (§2.8.2)")
            self.delete_retired(own, now)
            return
        if sa is not sas.current:  # we moved to the peer's new SA already: ours is surplus
            self.delete_retired(own, now)
            return
        loser = sas.take_successor()
        if loser is not None:  # the peer's new SA lost: the peer deletes it
            loser.give_up_at = now + REDUNDANT_SA_TIMEOUT
            sas.keep_retiring(loser)
        old = self.switch_to(own, now)
        self.delete_retired(old, now)

    def ike_rekey_failed(
        self, sa: IkeSa, task: object, err: PeerError, wanted_group: int | None, now: float
    ) -> None:
        if self.ike_rekey is task:
            self.ike_rekey = None
        replaced = self.core.sas.successor is not None or sa is not self.core.sas.current
        if replaced or self.core.state is not IkeState.ESTABLISHED:
            return  # the SA is being replaced or deleted anyway
        entropy = self.ctx.entropy
        if err.notify == NotifyType.TEMPORARY_FAILURE:
            sa.rekey_retry_at = now + random_delay(entropy, TEMPORARY_FAILURE_RETRY)
            self.note_temporary_failure(now)
        elif wanted_group is not None:
            self.start_ike_rekey(wanted_group)
        else:
            sa.rekey_retry_at = now + random_delay(entropy, REKEY_RETRY)

    def ike_rekey_abandoned(self, task: object) -> None:
        if self.ike_rekey is task:
            self.ike_rekey = None

    def ike_rekey_answered(self, sa: IkeSa, successor: SaContext | None) -> None:
        """We answered the peer's rekey of ``sa``: the new SA waits until the old one goes."""
        if successor is None:
            return
        new = IkeSa.of(successor)
        sa.peer_rekey_nonces = new.nonces
        self.core.sas.offer_successor(new)

    def adopt_successor(self, now: float) -> IkeSa:
        """The peer deleted the old SA (or uses the new one): the successor becomes current."""
        successor = self.core.sas.take_successor()
        if successor is None:
            raise RuntimeError("no successor IKE SA")  # callers check first
        return self.switch_to(successor, now)

    def switch_to(self, new: IkeSa, now: float) -> IkeSa:
        """Make ``new`` the current IKE SA; returns the old one, now retiring.

        Queued exchanges move along; one on the wire finishes on the old SA.
        """
        # A rekey of ours for the old SA is moot: dropped if still queued; one on
        # the wire is settled against the peer's nonces when (if) it completes.
        self.ike_rekey = None
        old = self.core.sas.switch_to(new, now + REDUNDANT_SA_TIMEOUT)
        config, entropy = new.ctx.config, new.ctx.entropy
        new.lifetime = Lifetime.start(now, config.ike_lifetime, config.rekey_jitter, entropy)
        algorithms = str(new.ctx.ike_proposal) if new.ctx.ike_proposal is not None else ""
        self.core.emit(IkeSaRekeyed(old.local_spi, new.local_spi, new.ctx.remote_spi, algorithms))
        log.info("IKE SA %s rekeyed to %s", old.ctx.spi_i.hex(), new.ctx.spi_i.hex())
        return old

    def _expire_ike(self, now: float) -> None:
        """Hard lifetime: one DELETE (no waiting for it), then down."""
        self.core.tm.abandon()
        self.core.send_once(DeleteIkeTask(), now)
        self.core.go_down(Input.EXPIRED, "IKE SA hard lifetime expired", None, now)

    # -- the peer's requests (§2.25 decides what we can take) -------------------------

    def create_child_sa_responder(self, sa: IkeSa, message: Message) -> ResponderTask:
        sas = self.core.sas
        if sa is not sas.current:
            busy: str | None = "this IKE SA is being replaced or deleted"
        elif self.core.state is not IkeState.ESTABLISHED:
            busy = "the IKE SA is being deleted"
        else:
            busy = None
        in_flight = self.core.tm.in_flight_tasks()
        if not is_ike_rekey(message):
            rekeying = any(t.rekeys_ike for t in in_flight) or sas.successor is not None
            if busy is None and rekeying:
                busy = "the IKE SA is being rekeyed"  # §2.25.1
            return ChildSaResponder(busy)
        if busy is None and sas.successor is not None:
            busy = "the IKE SA was rekeyed already"
        if busy is None and any(t.changes_child_sas for t in in_flight):
            busy = "a Child SA exchange is in progress"  # §2.25.2
        if busy is not None:
            return RefuseCreateChild(busy, NotifyType.TEMPORARY_FAILURE)
        return IkeRekeyResponder()

    def peer_informational(
        self, sa: IkeSa, ike_deleted: bool, fatal: NotifyType | None, now: float
    ) -> None:
        """The peer's INFORMATIONAL request on ``sa`` was answered: what it did to the SA."""
        core = self.core
        if sa is not core.sas.current:  # a retiring SA, or a successor deleted by its creator
            if ike_deleted:
                self.retire(sa, now, linger=True)
            return
        if ike_deleted and core.sas.successor is not None and self.established:
            # §2.18: the rekey initiator deletes the old IKE SA; the new one takes over.
            core.fire(Input.INFORMATIONAL_REQUEST)
            self.retire(self.adopt_successor(now), now, linger=True)
        elif ike_deleted:
            core.go_down(Input.DELETED_BY_PEER, "deleted by peer", None, now, linger=True)
        elif fatal is not None:
            reason = f"peer reported {fatal.name}"
            core.go_down(Input.FATAL_NOTIFY, reason, fatal, now, linger=True)
        else:
            core.fire(Input.INFORMATIONAL_REQUEST)

    # -- retiring IKE SAs (rekeyed, redundant) -------------------------------------

    def retire(self, sa: IkeSa, now: float, *, linger: bool) -> None:
        """Stop using an IKE SA; with ``linger`` it still answers retransmissions from its cache.

        Work of ours still on it (a Child SA delete, a liveness check) is not
        lost: it is redone on the current IKE SA (§2.18: requests sent on the
        old SA may go unanswered once the peer deleted it).
        """
        sas = self.core.sas
        if sa is sas.successor:
            sas.take_successor()
        if sa.tm.in_flight is not None:
            self.abandoned(sa, sa.tm.in_flight.exchange, now)
        for exchange in sa.tm.take_queue():
            if sa is not sas.current and not any(t.deletes_ike for t in exchange.tasks):
                self.core.tm.enqueue(exchange)
        sa.tm.abandon()
        sa.give_up_at = None
        if linger and sa.tm.cached is not None:
            sa.linger_until = now + sa.ctx.config.retransmit.total
            sas.keep_retiring(sa)
        else:
            sas.remove(sa)

    def delete_retired(self, sa: IkeSa, now: float) -> None:
        """Send D(IKE) on an IKE SA that is no longer current (old after a rekey, or redundant)."""
        self.core.sas.keep_retiring(sa)
        sa.give_up_at = None  # the retransmissions of the DELETE bound its life
        sa.tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [DeleteIkeTask()]), first=True)
        self.core.pump_sa(sa, now)

    def abandoned(self, sa: IkeSa, exchange: Exchange, now: float) -> None:
        """An exchange on a retiring IKE SA got no answer: its tasks redo their work."""
        for task in exchange.tasks:
            task.on_abandoned(self, sa, now)
