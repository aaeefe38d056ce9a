"""Layer 2 of the session: lifetimes, rekeys, collisions and liveness (RFC 7296 §1.3, §2.4, §2.8).

The timer policy of an established session, in one place. Every deadline
here is reported by :meth:`RekeyingSession._lifecycle_deadline`; at or after
it, :meth:`RekeyingSession._run_lifecycle` acts (it also runs after every
message, so that an immediate retry starts at once):

- a Child SA past its soft lifetime (or its retry time after a refusal) is
  rekeyed: CREATE_CHILD_SA with N(REKEY_SA) (:mod:`ike.exchanges.child_rekey`);
- a Child SA past its hard lifetime is dropped (ChildSaDown) and the peer
  told with a DELETE;
- the IKE SA past its soft lifetime is rekeyed (:mod:`ike.exchanges.ike_rekey`);
  past its hard lifetime it is deleted (one DELETE, no waiting) and the
  session ends;
- ``dpd_delay`` after the last authenticated message or ESP from the peer,
  with no request of ours outstanding, an empty INFORMATIONAL checks that
  the peer is alive (§2.4); when its retransmissions run out, IkeSaDown has
  ``peer_dead`` set.

What a completed or failed CREATE_CHILD_SA leads to (deletes, retries,
switching to a new IKE SA) is decided here too, including the IKE SA rekey
collision of §2.8.2: the new IKE SA created by the exchange that holds the
lowest of the four nonces is deleted by its creator; the creator of the
survivor deletes the old SA; Child SAs move to the survivor.
"""

from __future__ import annotations

import logging

from ike.constants import ExchangeType, NotifyType
from ike.errors import PeerError
from ike.events import IkeSaRekeyed, IPNetwork
from ike.exchanges.base import ResponderTask
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
    REDUNDANT_SA_TIMEOUT,
    REKEY_RETRY,
    TEMPORARY_FAILURE_GIVE_UP,
    TEMPORARY_FAILURE_RETRY,
)
from ike.sessionbase import SessionBase
from ike.states import IkeState, Input
from ike.taskmanager import Exchange
from ike.wire import Message

log = logging.getLogger("tunneld.ike")


class RekeyingSession(SessionBase):
    """Lifetimes, rekeys and liveness of an established session (see the module docstring)."""

    def __init__(self, ctx: SaContext, state: IkeState, now: float) -> None:
        super().__init__(ctx, state, now)
        self._ike_rekey: IkeRekeyInitiator | None = None
        self._temp_fail_since: float | None = None

    def _on_established(self, now: float) -> None:
        config = self._ctx.config
        lifetime = Lifetime.start(now, config.ike_lifetime, config.rekey_jitter, self._ctx.entropy)
        self._sa.lifetime = lifetime
        self._last_inbound = now

    # -- deadlines -------------------------------------------------------------

    def _child_rekey_time(self, child: ChildSa) -> float | None:
        if not child.rekeyable:
            return None
        return child.retry_at if child.retry_at is not None else child.lifetime.rekey_at

    def _ike_rekey_time(self) -> float | None:
        sa = self._sa
        if sa.lifetime is None or self._ike_rekey is not None or self._successor is not None:
            return None
        return sa.rekey_retry_at if sa.rekey_retry_at is not None else sa.lifetime.rekey_at

    def _dpd_time(self) -> float | None:
        delay = self._ctx.config.dpd_delay
        if delay <= 0 or not self._tm.idle:
            return None  # a request on the wire checks liveness by itself
        return self._last_inbound + delay

    def _lifecycle_deadline(self) -> float | None:
        if self._state is not IkeState.ESTABLISHED:
            return None
        times = [self._ike_rekey_time(), self._dpd_time()]
        if self._sa.lifetime is not None:
            times.append(self._sa.lifetime.expire_at)
        for child in self._ctx.children.values():
            times += [child.lifetime.expire_at, self._child_rekey_time(child)]
        return min((t for t in times if t is not None), default=None)

    def _run_lifecycle(self, now: float) -> None:
        """Act on every lifetime, retry and liveness deadline at or before ``now``."""
        if self._state is not IkeState.ESTABLISHED:
            return
        lifetime = self._sa.lifetime
        if lifetime is not None and now >= lifetime.expire_at:
            self._expire_ike(now)
            return
        for child in list(self._ctx.children.values()):
            rekey_at = self._child_rekey_time(child)
            if now >= child.lifetime.expire_at:
                self._expire_child(child, now)
            elif rekey_at is not None and now >= rekey_at:
                self._start_child_rekey(child, now)
        ike_rekey_at = self._ike_rekey_time()
        if ike_rekey_at is not None and now >= ike_rekey_at:
            self._start_ike_rekey(now)
        dpd_at = self._dpd_time()
        if dpd_at is not None and now >= dpd_at:
            self._tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [LivenessTask()]))
        self._pump(now)

    # -- Child SAs ----------------------------------------------------------------

    def _start_child_rekey(self, child: ChildSa, now: float) -> None:
        ke_retry = child.ke_group is not None
        group = child.ke_group if child.ke_group is not None else pfs_group(self._ctx)
        child.status, child.retry_at, child.ke_group = ChildStatus.REKEY_QUEUED, None, None
        task = ChildSaInitiator(child.inbound_spi, group, ke_retry=ke_retry)
        self._tm.enqueue(Exchange(ExchangeType.CREATE_CHILD_SA, [task], wanted=task.wanted))
        log.info("rekeying Child SA %08x", child.inbound_spi)

    def _new_child_task(
        self, ts: tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]
    ) -> ChildSaInitiator:
        return ChildSaInitiator(None, pfs_group(self._ctx), ts)

    def _create_child(self, task: ChildSaInitiator, now: float) -> None:
        """§2.25: after CHILD_SA_NOT_FOUND, create the Child SA again from scratch."""
        new = self._new_child_task(task.ts) if task.ts else None
        if new is not None:
            self._tm.enqueue(Exchange(ExchangeType.CREATE_CHILD_SA, [new]))

    def _expire_child(self, child: ChildSa, now: float) -> None:
        """Hard lifetime: the SA goes now; the peer hears it with a DELETE."""
        deleting = child.status is ChildStatus.DELETING
        self._ctx.drop_child(child.inbound_spi, "hard lifetime expired")
        if not deleting:
            task = DeleteChildTask(child.inbound_spi, "hard lifetime expired")
            self._tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [task]))

    def _delete_child(self, inbound_spi: int, reason: str) -> None:
        child = self._ctx.children.get(inbound_spi)
        if child is None or child.status is ChildStatus.DELETING:
            return
        child.status = ChildStatus.DELETING
        task = DeleteChildTask(inbound_spi, reason)
        self._tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [task]))

    def _child_done(self, task: ChildSaInitiator, now: float) -> None:
        self._temp_fail_since = None
        for spi, reason in task.deletes:
            self._delete_child(spi, reason)

    def _child_failed(self, task: ChildSaInitiator, err: PeerError, now: float) -> None:
        log.info("CREATE_CHILD_SA for a Child SA failed: %s", err)
        task.failed(self._ctx, err, now)
        if err.notify == NotifyType.TEMPORARY_FAILURE:
            self._note_temporary_failure(now)
        if task.recreate and self._state is IkeState.ESTABLISHED:
            self._create_child(task, now)

    # -- the IKE SA ---------------------------------------------------------------

    def _start_ike_rekey(self, now: float, group: int | None = None) -> None:
        task = IkeRekeyInitiator(group, ke_retry=group is not None)
        self._ike_rekey, self._sa.rekey_retry_at = task, None

        def wanted(ctx: SaContext) -> bool:  # moot once the peer rekeyed first
            return self._ike_rekey is task and self._successor is None

        self._tm.enqueue(Exchange(ExchangeType.CREATE_CHILD_SA, [task], wanted=wanted))
        log.info("rekeying IKE SA %s", self._ctx.spi_i.hex())

    def _ike_rekey_done(self, sa: IkeSa, task: IkeRekeyInitiator, now: float) -> None:
        """Our rekey of ``sa`` completed: switch to the new SA, or delete it (§2.8.2)."""
        if self._ike_rekey is task:
            self._ike_rekey = None
        self._temp_fail_since = None
        if task.successor is None:
            return
        own = IkeSa.of(task.successor)
        rival = sa.peer_rekey_nonces
        if rival is not None and lowest_nonce_in(own.nonces, rival):
            log.info("IKE SA rekey collision: ours is redundant, deleting it (§2.8.2)")
            self._delete_retired(own, now)
            return
        if sa is not self._sa:  # we moved to the peer's new SA already: ours is surplus
            self._delete_retired(own, now)
            return
        if self._successor is not None:  # the peer's new SA lost: the peer deletes it
            loser, self._successor = self._successor, None
            loser.give_up_at = now + REDUNDANT_SA_TIMEOUT
            self._retiring.append(loser)
        old = self._switch_to(own, now)
        self._delete_retired(old, now)

    def _ike_rekey_failed(
        self, sa: IkeSa, task: IkeRekeyInitiator, err: PeerError, now: float
    ) -> None:
        log.info("IKE SA rekey failed: %s", err)
        if self._ike_rekey is task:
            self._ike_rekey = None
        replaced = self._successor is not None or sa is not self._sa
        if replaced or self._state is not IkeState.ESTABLISHED:
            return  # the SA is being replaced or deleted anyway
        entropy = self._ctx.entropy
        if err.notify == NotifyType.TEMPORARY_FAILURE:
            sa.rekey_retry_at = now + random_delay(entropy, TEMPORARY_FAILURE_RETRY)
            self._note_temporary_failure(now)
        elif task.wanted_group is not None and not task.ke_retry:
            self._start_ike_rekey(now, task.wanted_group)
        else:
            sa.rekey_retry_at = now + random_delay(entropy, REKEY_RETRY)

    def _ike_rekey_answered(self, sa: IkeSa, task: IkeRekeyResponder) -> None:
        """We answered the peer's rekey of ``sa``: the new SA waits until the old one goes."""
        if task.successor is None:
            return
        successor = IkeSa.of(task.successor)
        sa.peer_rekey_nonces = successor.nonces
        self._successor = successor

    def _adopt_successor(self, now: float) -> IkeSa:
        """The peer deleted the old SA (or uses the new one): the successor becomes current."""
        successor = self._successor
        if successor is None:
            raise RuntimeError("no successor IKE SA")  # callers check first
        self._successor = None
        return self._switch_to(successor, now)

    def _switch_to(self, new: IkeSa, now: float) -> IkeSa:
        """Make ``new`` the current IKE SA; returns the old one, now retiring.

        Queued exchanges move along; one on the wire finishes on the old SA.
        """
        old = self._sa
        # A rekey of ours for the old SA is moot: dropped if still queued; one on
        # the wire is settled against the peer's nonces when (if) it completes.
        self._ike_rekey = None
        for exchange in old.tm.take_queue():
            new.tm.enqueue(exchange)
        self._sa = new
        config = new.ctx.config
        entropy = new.ctx.entropy
        new.lifetime = Lifetime.start(now, config.ike_lifetime, config.rekey_jitter, entropy)
        old.give_up_at = now + REDUNDANT_SA_TIMEOUT
        self._retiring.append(old)
        algorithms = str(new.ctx.ike_proposal) if new.ctx.ike_proposal is not None else ""
        self._emit(IkeSaRekeyed(old.local_spi, new.local_spi, new.ctx.remote_spi, algorithms))
        log.info("IKE SA %s rekeyed to %s", old.ctx.spi_i.hex(), new.ctx.spi_i.hex())
        return old

    def _expire_ike(self, now: float) -> None:
        """Hard lifetime: one DELETE (no waiting for it), then down."""
        self._tm.abandon()
        self._send_once(DeleteIkeTask(), now)
        self._go_down(Input.EXPIRED, "IKE SA hard lifetime expired", None, now)

    def _note_temporary_failure(self, now: float) -> None:
        """§2.25: TEMPORARY_FAILURE for several minutes means we are out of sync: close."""
        if self._temp_fail_since is None:
            self._temp_fail_since = now
            return
        stuck = now - self._temp_fail_since >= TEMPORARY_FAILURE_GIVE_UP
        if stuck and self._state is IkeState.ESTABLISHED:
            reason = "peer keeps answering TEMPORARY_FAILURE"
            self._start_close(reason, NotifyType.TEMPORARY_FAILURE, now)

    # -- the peer's CREATE_CHILD_SA (§2.25 decides what we can take) ----------------

    def _create_child_sa_responder(self, sa: IkeSa, message: Message) -> ResponderTask:
        if sa is not self._sa:
            busy: str | None = "this IKE SA is being replaced or deleted"
        elif self._state is not IkeState.ESTABLISHED:
            busy = "the IKE SA is being deleted"
        else:
            busy = None
        if not is_ike_rekey(message):
            if busy is None and (self._ike_rekey_on_wire() or self._successor is not None):
                busy = "the IKE SA is being rekeyed"  # §2.25.1
            return ChildSaResponder(busy)
        if busy is None and self._successor is not None:
            busy = "the IKE SA was rekeyed already"
        if busy is None and self._child_exchange_on_wire():
            busy = "a Child SA exchange is in progress"  # §2.25.2
        if busy is not None:
            return RefuseCreateChild(busy, NotifyType.TEMPORARY_FAILURE)
        return IkeRekeyResponder()

    def _ike_rekey_on_wire(self) -> bool:
        return any(isinstance(t, IkeRekeyInitiator) for t in self._tm.in_flight_tasks())

    def _child_exchange_on_wire(self) -> bool:
        kinds = (ChildSaInitiator, DeleteChildTask)
        return any(isinstance(t, kinds) for t in self._tm.in_flight_tasks())

    # -- what a finished or abandoned exchange of ours leads to ------------------------

    def _followups_done(self, sa: IkeSa, exchange: Exchange, now: float) -> None:
        for task in exchange.tasks:
            if isinstance(task, ChildSaInitiator):
                self._child_done(task, now)
            elif isinstance(task, IkeRekeyInitiator):
                self._ike_rekey_done(sa, task, now)

    def _followups_failed(self, sa: IkeSa, exchange: Exchange, err: PeerError, now: float) -> None:
        for task in exchange.tasks:
            if isinstance(task, ChildSaInitiator):
                self._child_failed(task, err, now)
            elif isinstance(task, IkeRekeyInitiator):
                self._ike_rekey_failed(sa, task, err, now)

    # -- retiring IKE SAs (rekeyed, redundant) -------------------------------------

    def _retire(self, sa: IkeSa, now: float, *, linger: bool) -> None:
        """Stop using an IKE SA; with ``linger`` it still answers retransmissions from its cache.

        Work of ours still on it (a Child SA delete, a liveness check) is not
        lost: it is redone on the current IKE SA (§2.18: requests sent on the
        old SA may go unanswered once the peer deleted it).
        """
        if sa is self._successor:
            self._successor = None
        if sa.tm.in_flight is not None:
            self._abandoned(sa, sa.tm.in_flight.exchange, now)
        for exchange in sa.tm.take_queue():
            if sa is not self._sa and not _deletes_ike(exchange):
                self._tm.enqueue(exchange)
        sa.tm.abandon()
        sa.give_up_at = None
        if linger and sa.tm.cached is not None:
            sa.linger_until = now + sa.ctx.config.retransmit.total
            if sa not in self._retiring:
                self._retiring.append(sa)
        elif sa in self._retiring:
            self._retiring.remove(sa)

    def _delete_retired(self, sa: IkeSa, now: float) -> None:
        """Send D(IKE) on an IKE SA that is no longer current (old after a rekey, or redundant)."""
        if sa not in self._retiring:
            self._retiring.append(sa)
        sa.give_up_at = None  # the retransmissions of the DELETE bound its life
        sa.tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [DeleteIkeTask()]), first=True)
        self._pump_sa(sa, now)

    def _abandoned(self, sa: IkeSa, exchange: Exchange, now: float) -> None:
        """An exchange on a retiring IKE SA got no answer: redo its work on the current one."""
        err = PeerError("no answer on a retiring IKE SA", NotifyType.TEMPORARY_FAILURE)
        for task in exchange.tasks:
            if isinstance(task, ChildSaInitiator):
                task.failed(self._ctx, err, now)  # retried after a short random delay
            elif isinstance(task, IkeRekeyInitiator) and self._ike_rekey is task:
                self._ike_rekey = None
            elif isinstance(task, DeleteChildTask) and task.inbound_spi in self._ctx.children:
                redo = DeleteChildTask(task.inbound_spi, task.reason)
                self._tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [redo]))


def _deletes_ike(exchange: Exchange) -> bool:
    return any(isinstance(t, DeleteIkeTask) for t in exchange.tasks)
