"""IKE_AUTH (RFC 7296 §1.2, §2.15): authenticate both peers.

::

    HDR, SK { IDi, [CERT+], [CERTREQ], [N(INITIAL_CONTACT)], [IDr], AUTH,
              SAi2, TSi, TSr }  -->
                             <--  HDR, SK { IDr, [CERT+], AUTH, SAr2, TSi, TSr }

This task owns the ID/CERT/CERTREQ/AUTH part; the SA/TS part is the Child SA
task (:mod:`ike.exchanges.child_create`) that runs in the same exchange. The
responder checks the initiator completely before the Child SA task runs
(rule order of the exchange), so nothing is installed for an impostor; the
initiator likewise checks the responder before its ChildSaUp.
"""

from __future__ import annotations

from ike.constants import NotifyType, PayloadType
from ike.errors import ParseError
from ike.events import IkeSaUp, InitialContact
from ike.exchanges.authn import (
    build_auth,
    cert_payloads,
    certreq_payloads,
    choose_config,
    id_payload,
    look_up_config,
    peer_identity,
    verify_peer,
)
from ike.exchanges.base import Answer, Outcome, Received, Task
from ike.exchanges.context import SaContext, notify, refuse_on_error_notify
from ike.payloads import AuthPayload, Payload


def ike_sa_up(ctx: SaContext) -> IkeSaUp:
    proposal = ctx.ike_proposal
    return IkeSaUp(
        local_spi=ctx.local_spi,
        remote_spi=ctx.remote_spi,
        algorithms=str(proposal) if proposal is not None else "",
        remote_id=str(ctx.remote_identity),
        local_addr=ctx.local_addr,
        remote_addr=ctx.remote_addr,
    )


def note_initial_contact(ctx: SaContext, received: Received) -> None:
    """§2.4: the authenticated peer holds no other IKE SA with us; tell the daemon."""
    if received.message.notifies(NotifyType.INITIAL_CONTACT):
        ctx.emit(InitialContact(str(ctx.remote_identity)))


class IkeAuthInitiator(Task):
    """Our IDi/AUTH and the check of the responder's IDr/AUTH.

    ``initial_contact``: add N(INITIAL_CONTACT) (§2.4). The session decides it
    when the exchange is built, from what the daemon knows at that moment: we
    hold no other IKE SA with this peer, established or being set up.
    """

    critical = True

    def __init__(self, initial_contact: bool = False) -> None:
        self.initial_contact = initial_contact

    def build_i(self, ctx: SaContext) -> list[Payload]:
        config = ctx.config
        idi = id_payload(config.local_id, PayloadType.IDi)
        payloads: list[Payload] = [idi, *cert_payloads(config), *certreq_payloads(config)]
        if self.initial_contact:  # §2.4: we hold no other IKE SA with this peer
            payloads.append(notify(NotifyType.INITIAL_CONTACT))
        if config.remote_id is not None:  # §3.5: the responder we want to talk to
            payloads.append(id_payload(config.remote_id, PayloadType.IDr))
        payloads.append(build_auth(ctx, idi))
        return payloads

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        auth = response.message.find(AuthPayload)
        if auth is None:
            refuse_on_error_notify(response.message, "IKE_AUTH")
            raise ParseError("IKE_AUTH response without AUTH payload")
        idr, identity = peer_identity(response, PayloadType.IDr)
        choose_config(ctx, identity, auth.method)
        verify_peer(ctx, response, idr, identity)
        ctx.remote_identity = identity
        ctx.emit(ike_sa_up(ctx))
        note_initial_contact(ctx, response)
        return Outcome.DONE


class IkeAuthResponder(Answer):
    """The check of the initiator's IDi/AUTH, then our IDr/AUTH."""

    critical = True

    def __init__(self) -> None:
        self._answer: list[Payload] = []

    def process_r(self, ctx: SaContext, request: Received) -> None:
        idi, identity = peer_identity(request, PayloadType.IDi)
        auth = request.message.find(AuthPayload)
        method = auth.method if auth is not None else 0
        ctx.configs = (look_up_config(ctx, request, identity, method),)
        verify_peer(ctx, request, idi, identity)
        # Our AUTH is computed here, before the Child SA task installs anything:
        # if we cannot sign for this peer, nothing is up yet.
        idr = id_payload(ctx.config.local_id, PayloadType.IDr)
        self._answer = [idr, *cert_payloads(ctx.config), build_auth(ctx, idr)]
        ctx.remote_identity = identity
        ctx.emit(ike_sa_up(ctx))
        note_initial_contact(ctx, request)

    def build_r(self, ctx: SaContext) -> list[Payload]:
        return self._answer
