"""Association establishment, release and abort (the ACSE primitives of
PS3.8 7.1-7.3) on top of one ULConnection.

``AssociationControl`` is the Upper Layer service user for one association,
either side. It turns the connection's primitives into awaitable outcomes
(``established``, ``ended``), runs presentation context negotiation (acceptor)
or checks the peer's answer (requestor), and passes P-DATA messages to the
layer above (the DIMSE channel) through ``message_sink``.

It knows nothing of DIMSE services; the DIMSE layer knows nothing of PDUs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from chromanet import _pdu
from chromanet.errors import ABORT_REASON_INVALID_PDU_PARAMETER_VALUE, ChromanetError
from chromanet.logutil import peer_log
from chromanet.ul.connection import ULConnection
from chromanet.ul.tls import TlsInfo
from chromanet.ul.negotiation import (
    AssociationRejected,
    ContextSpec,
    NegotiatedContext,
    NegotiationError,
    NegotiationResult,
    negotiate_as_acceptor,
    negotiate_as_requestor,
)

if TYPE_CHECKING:
    from chromanet._pdata import CommandArrived, DatasetChunk, DimseMessage

LOGGER = logging.getLogger("chromanet.ul")


class AssociationAborted(ChromanetError):
    """The association was aborted (by either side, or the provider)."""

    def __init__(self, source: int, reason: int, why: str | None = None) -> None:
        text = f"association aborted (source {source}, reason {reason})"
        super().__init__(f"{text}: {why}" if why else text)
        self.source = source
        self.reason = reason
        #: Why we aborted it ourselves, when we did and know.
        self.why = why

    def __reduce__(self) -> tuple[type, tuple[int, int, str | None]]:
        return (type(self), (self.source, self.reason, self.why))  # copy.copy makes a fresh one


class AssociationClosed(ChromanetError):
    """The connection went away (after release, abort, or without notice)."""


@dataclass
class Timeouts:
    """Seconds; None means no limit.

    - ``acse``: waiting for A-ASSOCIATE-AC/RJ and for A-RELEASE-RP.
    - ``dimse``: waiting for a DIMSE response (used by the DIMSE layer).
    - ``network``: no byte received for this long aborts the association.
    - ``connection``: TCP connect (requestor).
    - ``artim``: ARTIM (acceptor waiting for the RQ; both sides waiting for
      the transport to close after reject, abort or release).
    - ``pdu``: a PDU that began to arrive must be whole within this.
    - ``idle``: an established association with no DIMSE message either way
      for this long is aborted.
    """

    acse: float | None = 30.0
    dimse: float | None = 30.0
    network: float | None = 60.0
    connection: float | None = None
    artim: float | None = 30.0
    pdu: float | None = 30.0
    idle: float | None = None


class MessageSink(Protocol):
    """The DIMSE layer's side of an association."""

    def on_message(self, message: DimseMessage) -> None: ...
    def on_command_arrived(self, event: CommandArrived) -> None: ...
    def on_dataset_chunk(self, chunk: DatasetChunk) -> None: ...
    def on_association_end(self, exc: Exception) -> None: ...


@dataclass(frozen=True)
class AdmissionRequest:
    """What an admission check knows of a requestor: its A-ASSOCIATE-RQ
    (calling and called AE titles, user identity item), where it connects
    from and, on TLS, its certificate."""

    rq: _pdu.AssociateRQ
    peer_address: tuple[str, int]
    tls: TlsInfo | None


@dataclass
class Admission:
    """An admission check's answer.

    ``rejection`` (result, source, reason) refuses the association with that
    A-ASSOCIATE-RJ; ``reason`` says why, for the log. Otherwise negotiation
    goes on: ``identity_response`` is the server response sent when the RQ
    asked for a positive user identity response (None: no response item),
    and ``grant`` is kept on the association for the layers above (the
    node's per-peer permissions).
    """

    rejection: tuple[int, int, int] | None = None
    reason: str = ""
    identity_response: bytes | None = None
    grant: Any = None
    #: What the check found, for the audit trail (user, rule, verified…).
    details: dict[str, Any] = field(default_factory=dict)


#: An acceptor's asynchronous check of who may associate (identity, peer
#: rules). It may take time (a password hash off the loop, a token
#: service) without holding the event loop.
AdmissionCheck = Callable[[AdmissionRequest], Awaitable[Admission]]

# How long an admission check may take when no ACSE timeout is set.
_ADMISSION_LIMIT = 30.0
# A-ASSOCIATE-RJ when the admission check itself failed: transient, user,
# no reason given (the requestor may try again).
_ADMISSION_FAILED = (2, 1, 1)


@dataclass
class AcceptorPolicy:
    """What an acceptor accepts: given by the server for every connection."""

    ae_title: str
    supported_contexts: list[ContextSpec]
    max_pdu_length: int = 16382
    require_called_aet: bool = False
    require_calling_aet: list[str] = field(default_factory=list)
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_ops_window: tuple[int, int] = (1, 1)
    identity_handler: Callable[[Any], tuple[bool, bytes | None]] | None = None
    sop_extended_handler: Callable[[list[Any]], list[Any]] | None = None
    # "acceptor": the first of OUR transfer syntaxes that the requestor
    # offered (what pynetdicom and DCMTK do); "requestor": the first of theirs.
    transfer_syntax_order: str = "acceptor"
    # Called with the RQ and the peer's host before negotiation; returns an
    # AssociateRJ to refuse (the association limits) or None.
    gatekeeper: Callable[[_pdu.AssociateRQ, str], _pdu.AssociateRJ | None] | None = None
    # Run after the gatekeeper and before negotiation; replaces
    # ``identity_handler`` (the check verifies the user identity itself).
    admission: AdmissionCheck | None = None


class AssociationControl:
    """One association, seen from the Upper Layer's user.

    Outcome futures, resolved on the loop:
    - ``established``: result None once in Sta6; exception AssociationRejected
      (A-ASSOCIATE-RJ), AssociationAborted, or AssociationClosed otherwise.
    - ``ended``: result is "released", "aborted" or "closed" once the
      connection is gone.
    """

    def __init__(
        self,
        *,
        requestor: bool,
        timeouts: Timeouts,
        max_receive_pdu_length: int,
        acceptor_policy: AcceptorPolicy | None = None,
        tcp_quickack: bool = True,
    ) -> None:
        self.is_requestor = requestor
        self.timeouts = timeouts
        self.acceptor_policy = acceptor_policy
        self.message_sink: MessageSink | None = None
        self.connection = ULConnection(
            self,
            requestor=requestor,
            max_receive_pdu_length=max_receive_pdu_length,
            artim_timeout=timeouts.artim,
            network_timeout=timeouts.network,
            pdu_timeout=timeouts.pdu,
            idle_timeout=timeouts.idle,
            tcp_quickack=tcp_quickack,
        )
        loop = asyncio.get_running_loop()
        self.established: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[str] = loop.create_future()
        self._release_done: asyncio.Future[None] | None = None
        self.request: _pdu.AssociateRQ | None = None
        self.response: _pdu.AssociateAC | _pdu.AssociateRJ | None = None
        self.negotiation: NegotiationResult | None = None
        self.contexts: dict[int, NegotiatedContext] = {}
        self.outcome = "pending"  # established / rejected / released / aborted / closed
        self.abort_source_reason: tuple[int, int] | None = None
        # Who ended it with an abort: "local" (this side asked for the
        # A-ABORT), "peer" (its service user sent one) or "provider" (an
        # A-P-ABORT: a protocol error, a timeout, the connection lost).
        self.aborted_by: str | None = None
        #: Acceptor: called when the A-ASSOCIATE-RQ arrived; requestor: when
        #: it was sent (pynetdicom's EVT_REQUESTED on both sides).
        self.on_requested: Callable[[AssociationControl], None] | None = None
        self.on_established: Callable[[AssociationControl], None] | None = None
        self.on_release_requested: Callable[[AssociationControl], None] | None = None
        #: The acceptor's admission answer (None without an admission check).
        self.admission: Admission | None = None
        self._admission_task: asyncio.Future[None] | None = None

    @property
    def tls(self) -> TlsInfo | None:
        """The connection's TLS parameters, or None on plain TCP."""
        return self.connection.tls

    # ------------------------------------------------------------- requestor
    async def open(
        self,
        host: str,
        port: int,
        rq: _pdu.AssociateRQ,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
        local_addr: tuple[Any, ...] | None = None,
    ) -> None:
        """Requestor: connect, send the RQ and wait for the answer.
        ``local_addr``: the local (host, port) to connect from (None: any).

        With ``ssl_context`` the connection runs over TLS: the handshake is
        part of connecting (``timeouts.connection`` covers both, and
        ``handshake_timeout`` the handshake alone); the RQ goes out once it
        is done. ``server_hostname`` None checks the certificate against
        ``host``.

        Raises AssociationRejected / AssociationAborted / AssociationClosed /
        TimeoutError (after aborting) when the association is not made, and
        ssl.SSLError (an OSError) when the TLS handshake fails.
        """
        self.request = rq
        self.connection.request_association(rq)
        if self.on_requested is not None:
            requested = self.on_requested
            self.connection.on_connected = lambda: requested(self)  # once the RQ is written
        loop = asyncio.get_running_loop()
        if ssl_context is None:
            connect = loop.create_connection(lambda: self.connection, host, port, local_addr=local_addr)
        else:
            connect = loop.create_connection(
                lambda: self.connection,
                host,
                port,
                ssl=ssl_context,
                server_hostname=host if server_hostname is None else server_hostname,
                ssl_handshake_timeout=handshake_timeout,
                local_addr=local_addr,
            )
        try:
            await asyncio.wait_for(connect, self.timeouts.connection)
        except BaseException:
            # No connection: nothing reached the peer and nothing will.
            self.outcome = "closed"
            self._fail_establishment(AssociationClosed("could not connect"))
            if not self.ended.done():
                self.ended.set_result("closed")
            raise
        try:
            await asyncio.wait_for(asyncio.shield(self.established), self.timeouts.acse)
        except asyncio.TimeoutError:
            # Logged by whoever asked for the association (``AE.associate``),
            # with this reason.
            LOGGER.debug("no A-ASSOCIATE response within %s s, aborting", self.timeouts.acse)
            self.abort()
            raise asyncio.TimeoutError(f"no A-ASSOCIATE response within {self.timeouts.acse} s") from None

    def on_associate_ac(self, ac: _pdu.AssociateAC) -> None:
        assert self.request is not None
        self.response = ac
        try:
            result = negotiate_as_requestor(self.request, ac)
        except NegotiationError as exc:
            # Logged by whoever asked for the association, with ``exc``.
            LOGGER.debug("inconsistent A-ASSOCIATE-AC: %s", exc)
            self._fail_establishment(exc)
            self.connection.abort(source=2, reason=6)
            return
        self._set_negotiated(result)
        if not self.contexts:
            # Nothing can be done on an association without a context: the
            # requestor gives it up at once (pynetdicom does the same).
            LOGGER.debug("no presentation context was accepted: aborting the association")
            self.outcome = "aborted"
            self.abort_source_reason = (0, 0)
            self.aborted_by = "local"
            self._fail_establishment(AssociationAborted(0, 0, "no presentation context was accepted"))
            self.connection.abort(source=0, reason=0)
            return
        self.connection.association_accepted(result.peer_max_pdu_length, set(self.contexts))
        self._establish()

    def on_associate_rj(self, rj: _pdu.AssociateRJ) -> None:
        self.response = rj
        self.outcome = "rejected"
        self._fail_establishment(AssociationRejected(rj.result, rj.source, rj.reason))

    # -------------------------------------------------------------- acceptor
    def on_associate_rq(self, rq: _pdu.AssociateRQ) -> None:
        policy = self.acceptor_policy
        assert policy is not None, "an acceptor needs an AcceptorPolicy"
        self.request = rq
        if self.on_requested is not None:
            self.on_requested(self)
        refusal = policy.gatekeeper(rq, self.addresses[1][0]) if policy.gatekeeper is not None else None
        if refusal is not None:
            self._reject(refusal)
            return
        negotiated = self._negotiate(rq, policy)
        if negotiated is None:
            return
        if policy.admission is not None:
            # The standard's checks passed; our own (identity, peer rules)
            # may take time. Sta3 (waiting for our answer) until it is done;
            # what the peer sends meanwhile is handled by the state machine.
            self._admission_task = asyncio.ensure_future(self._admit(rq, negotiated, policy.admission))
            return
        self._accept(*negotiated)

    def _negotiate(self, rq: _pdu.AssociateRQ, policy: AcceptorPolicy) -> tuple[_pdu.AssociateAC, NegotiationResult] | None:
        """The AC for ``rq``, or None when it was rejected or aborted. With an
        admission check, the user identity is left to it (no reply yet)."""
        try:
            ac, result = negotiate_as_acceptor(
                rq,
                policy.supported_contexts,
                ae_title=policy.ae_title,
                max_pdu_length=policy.max_pdu_length,
                require_called_aet=policy.require_called_aet,
                require_calling_aet=policy.require_calling_aet,
                implementation_class_uid=policy.implementation_class_uid,
                implementation_version_name=policy.implementation_version_name,
                async_ops_window=policy.async_ops_window,
                identity_handler=None if policy.admission is not None else policy.identity_handler,
                sop_extended_handler=policy.sop_extended_handler,
                transfer_syntax_order=policy.transfer_syntax_order,
            )
        except AssociationRejected as exc:
            self._reject(_pdu.AssociateRJ(result=exc.result, source=exc.source, reason=exc.reason), str(exc))
            return None
        except NegotiationError as exc:
            # A request that breaks PS3.8's rules for its parameters (a
            # context ID used twice, more than 128 contexts): an invalid PDU
            # parameter value, answered with A-ABORT (AA-8's answer).
            peer_log(LOGGER, logging.WARNING, self.addresses[1][0], "invalid A-ASSOCIATE-RQ from %s: %s; aborting",
                     self._peer(), exc)
            self._abort_invalid_request()
            return None
        except Exception:
            LOGGER.error("could not answer the A-ASSOCIATE-RQ from %s; aborting", self._peer(), exc_info=True)
            self._abort_invalid_request(reason=0)
            return None
        return ac, result

    async def _admit(
        self, rq: _pdu.AssociateRQ, negotiated: tuple[_pdu.AssociateAC, NegotiationResult], check: AdmissionCheck
    ) -> None:
        request = AdmissionRequest(rq, self.addresses[1], self.tls)
        try:
            admission = await asyncio.wait_for(check(request), self.timeouts.acse or _ADMISSION_LIMIT)
        except asyncio.CancelledError:
            raise
        except Exception:
            LOGGER.error("the admission check of %s failed; rejecting", self._peer(), exc_info=True)
            admission = Admission(rejection=_ADMISSION_FAILED, reason="admission check failed")
        if self.established.done():
            return  # the peer aborted or went away while we checked
        self.admission = admission
        if admission.rejection is not None:
            result, source, reason = admission.rejection
            self._reject(_pdu.AssociateRJ(result=result, source=source, reason=reason), admission.reason)
            return
        ac, result = negotiated
        asked = rq.user_information.user_identity_rq
        if asked is not None and asked.positive_response_requested and admission.identity_response is not None:
            # PS3.7 D.3.3.7.2: the server response is empty for identity
            # types 1 (username) and 2 (username and passcode).
            response = b"" if asked.identity_type in (1, 2) else bytes(admission.identity_response)
            ac.user_information.user_identity_ac = _pdu.UserIdentityAC(response)
        self._accept(ac, result)

    def _accept(self, ac: _pdu.AssociateAC, result: NegotiationResult) -> None:
        self._set_negotiated(result)
        if not self.connection.accept_association(ac, result.peer_max_pdu_length, set(self.contexts)):
            # Aborted by what came right behind the RQ: nothing to establish.
            self._fail_establishment(AssociationAborted(2, 0))
            return
        self.response = ac
        self._establish()

    def _peer(self) -> str:
        host, port = self.addresses[1]
        return f"{host}:{port}" if host else "the peer"

    def _abort_invalid_request(self, reason: int = ABORT_REASON_INVALID_PDU_PARAMETER_VALUE) -> None:
        self.outcome = "aborted"
        self.abort_source_reason = (2, reason)
        self.aborted_by = "local"
        self._fail_establishment(AssociationAborted(2, reason))
        self.connection.abort(source=2, reason=reason)

    def _reject(self, rj: _pdu.AssociateRJ, why: str = "association limits") -> None:
        self.response = rj
        self.outcome = "rejected"
        peer_log(
            LOGGER, logging.INFO, self.addresses[1][0],
            "rejecting the association from %s (result %d source %d reason %d): %s",
            self._peer(), rj.result, rj.source, rj.reason, why,
        )
        self.connection.reject_association(rj)
        self._fail_establishment(AssociationRejected(rj.result, rj.source, rj.reason))

    # ---------------------------------------------------------------- common
    def _set_negotiated(self, result: NegotiationResult) -> None:
        self.negotiation = result
        self.contexts = {ctx.context_id: ctx for ctx in result.contexts if ctx.accepted}

    def _establish(self) -> None:
        self.outcome = "established"
        if not self.established.done():
            self.established.set_result(None)
        if self.on_established is not None:
            self.on_established(self)

    def _fail_establishment(self, exc: Exception) -> None:
        if not self.established.done():
            self.established.set_exception(exc)
            # Retrieved here so that an unawaited failure never logs noise.
            self.established.exception()

    @property
    def is_established(self) -> bool:
        return self.connection.is_established

    @property
    def addresses(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """(local, peer) socket addresses; ("", 0) until connected."""
        return self.connection.addresses

    def stream_datasets(self) -> None:
        """From now on, data sets arrive in fragments (``on_dataset_chunk``)."""
        self.connection.upper_layer.stream_datasets = True

    def set_stream_threshold(self, size: int) -> None:
        """Data sets larger than ``size`` bytes arrive in fragments."""
        self.connection.upper_layer.stream_threshold = size

    def send_message(self, context_id: int, command: Any, dataset: Any = None, *, hold: bool = False) -> None:
        """One DIMSE message (P-DATA request), written now, or with the next
        one when ``hold`` (``ULConnection.send_message``)."""
        self.connection.send_message(context_id, command, dataset, hold=hold)

    async def send_message_paced(self, context_id: int, command: Any, dataset: Any = None, *, hold: bool = False) -> None:
        """One DIMSE message, a large data set paced out with flow control;
        ``hold``: a small one may wait for others sent in this pass of the
        loop, to go out in one write."""
        await self.connection.send_message_paced(context_id, command, dataset, hold=hold)

    @property
    def writing_paused(self) -> bool:
        """True while ``drain`` would wait (the write buffer is full)."""
        return self.connection.writing_paused

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high mark."""
        await self.connection.drain()

    async def drain_below(self, limit: int) -> None:
        """Wait until at most ``limit`` bytes wait in the write buffer."""
        await self.connection.drain_below(limit)

    def hold_reading(self, reason: str) -> None:
        """Read nothing more from the peer until ``release_reading(reason)``."""
        self.connection.hold_reading(reason)

    def release_reading(self, reason: str) -> None:
        self.connection.release_reading(reason)

    async def release(self) -> None:
        """A-RELEASE request; returns when the peer confirmed (or the
        connection ended). Aborts after the ACSE timeout."""
        if not self.connection.is_established:
            return
        loop = asyncio.get_running_loop()
        self._release_done = loop.create_future()
        self.connection.request_release()
        try:
            await asyncio.wait_for(asyncio.shield(self.ended), self.timeouts.acse)
        except asyncio.TimeoutError:
            LOGGER.warning("no A-RELEASE-RP within %s s, aborting", self.timeouts.acse)
            self.abort()

    def abort(self) -> None:
        """A-ABORT request (service user), then the connection closes."""
        if self.outcome in ("established", "pending"):
            self.outcome = "aborted"
            self.abort_source_reason = (0, 0)
            self.aborted_by = "local"
        self.connection.abort(source=0, reason=0)
        self._notify_end(AssociationAborted(0, 0))

    def on_release_rq(self) -> None:
        # We answer at once: the DIMSE layer has nothing to flush because all
        # writes go straight to the transport in order.
        if self.outcome == "established":
            self.outcome = "released"
        if self.on_release_requested is not None:
            self.on_release_requested(self)
        self.connection.respond_release()

    def on_release_rp(self) -> None:
        if self.outcome == "established":
            self.outcome = "released"

    def on_abort(self, source: int, reason: int) -> None:
        if self.outcome in ("established", "pending"):
            self.outcome = "aborted"
            self.abort_source_reason = (source, reason)
            self.aborted_by = "provider" if source == 2 else "peer"
        exc = AssociationAborted(source, reason)
        self._fail_establishment(exc)
        self._notify_end(exc)

    def on_closed(self) -> None:
        if self.outcome in ("established", "pending"):
            self.outcome = "aborted" if self.outcome == "established" else "closed"
            self.abort_source_reason = self.abort_source_reason or (2, 0)
            self.aborted_by = self.aborted_by or "provider"
        self._fail_establishment(AssociationClosed("connection closed"))
        self._notify_end(AssociationClosed("connection closed"))
        if not self.ended.done():
            self.ended.set_result(self.outcome)

    def _notify_end(self, exc: Exception) -> None:
        sink = self.message_sink
        if sink is not None:
            self.message_sink = None
            sink.on_association_end(exc)

    # ------------------------------------------------------- P-DATA upwards
    def on_message(self, message: DimseMessage) -> None:
        if self.message_sink is not None:
            self.message_sink.on_message(message)

    def on_command_arrived(self, event: CommandArrived) -> None:
        if self.message_sink is not None:
            self.message_sink.on_command_arrived(event)

    def on_dataset_chunk(self, chunk: DatasetChunk) -> None:
        if self.message_sink is not None:
            self.message_sink.on_dataset_chunk(chunk)
