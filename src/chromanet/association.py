"""The asyncio association: what ``await ae.associate_async(...)`` returns and
what server handlers see as ``event.assoc``.

Method names and return values follow pynetdicom (``send_c_echo`` returns
the response as a Dataset with ``Status``, an empty Dataset when the
association ended first); the methods are coroutines. The synchronous
facade (``chromanet.ae.Association``) wraps this class.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from pydicom import Dataset

from chromanet import _dimse, _pdu, uids
from chromanet._dimse import Command
from chromanet.dimse_channel import DatasetRefused, DimseChannel, DiscardSink
from chromanet.evt import (
    ANSWERED_BY_DEFAULT,
    DIMSE_EVENTS,
    EVT_DATA_RECV,
    EVT_DATA_SENT,
    EVT_DIMSE_RECV,
    EVT_DIMSE_SENT,
    WIRE_EVENTS,
    DimseMessage,
    EVT_ABORTED,
    EVT_ACCEPTED,
    EVT_CONN_CLOSE,
    EVT_CONN_OPEN,
    EVT_ESTABLISHED,
    EVT_REJECTED,
    EVT_RELEASED,
    EVT_REQUESTED,
    Event,
    EventType,
    notify,
)
from chromanet.pdu_primitives import AsynchronousOperationsWindowNegotiation
from chromanet.presentation import PresentationContext, build_context
from chromanet.services import query_retrieve, storage, verification
from chromanet.services.answers import response_to_dataset
from chromanet.services.base import HandlerTable, ServiceSession
from chromanet.services.dispatch import ServiceDispatcher
from chromanet.services.handler_threads import HandlerLane
from chromanet.services.observe import AuditContext, OperationObserver
from chromanet.services.spool import FileSink
from chromanet.ul.acse import Admission, AssociationControl
from chromanet.ul.connection import WireHook
from chromanet.ul.tls import TlsInfo

if TYPE_CHECKING:
    from chromanet.dimse_channel import DatasetSink

LOGGER = logging.getLogger("chromanet.association")

Handlers = HandlerTable


class ServiceUser:
    """One side of an association as pynetdicom's ``assoc.requestor`` /
    ``assoc.acceptor`` show it (read-only here): AE title, address, port,
    maximum PDU length and implementation identifiers, from the
    A-ASSOCIATE-RQ/-AC as sent or received."""

    def __init__(self, assoc: AsyncAssociation, mode: str) -> None:
        self._assoc = assoc
        self.mode = mode

    @property
    def is_requestor(self) -> bool:
        return self.mode == "requestor"

    @property
    def is_acceptor(self) -> bool:
        return self.mode == "acceptor"

    @property
    def _is_local(self) -> bool:
        return self.is_requestor == self._assoc.is_requestor

    @property
    def _pdu(self) -> Any:
        ul = self._assoc._ul
        return ul.request if self.is_requestor else ul.response

    @property
    def ae_title(self) -> str:
        rq = self._assoc._ul.request
        if rq is not None:
            return rq.calling_ae_title if self.is_requestor else rq.called_ae_title
        return self._assoc.ae.ae_title if self._is_local else ""

    @property
    def _sockaddr(self) -> tuple[str, int]:
        return self._assoc._ul.addresses[0 if self._is_local else 1]

    @property
    def address(self) -> str:
        return self._sockaddr[0]

    @property
    def port(self) -> int:
        return self._sockaddr[1]

    def _user_info(self, name: str) -> Any:
        pdu = self._pdu
        info = getattr(pdu, "user_information", None)
        return getattr(info, name, None) if info is not None else None

    @property
    def maximum_length(self) -> int | None:
        return self._user_info("max_length")

    @property
    def implementation_class_uid(self) -> str | None:
        return self._user_info("implementation_class_uid")

    @property
    def implementation_version_name(self) -> str | None:
        return self._user_info("implementation_version_name")

    @property
    def requested_contexts(self) -> list[PresentationContext]:
        """The requestor's presentation contexts as proposed in the
        A-ASSOCIATE-RQ (ValueError for the acceptor, as in pynetdicom)."""
        if not self.is_requestor:
            raise ValueError("only the requestor has requested_contexts")
        rq = self._assoc._ul.request
        if rq is None:
            return []
        return [
            PresentationContext(abstract_syntax=item.abstract_syntax, transfer_syntax=list(item.transfer_syntaxes),
                                context_id=item.context_id)
            for item in rq.presentation_contexts
        ]

    @property
    def sop_class_extended(self) -> dict[str, bytes]:
        """SOP Class Extended Negotiation items of this side's PDU:
        {SOP Class UID: service class application information}."""
        items = self._user_info("sop_class_extended") or []
        return {item.sop_class_uid: bytes(item.application_information) for item in items}

    @property
    def sop_class_common_extended(self) -> dict[str, Any]:
        """SOP Class Common Extended Negotiation items (the requestor's):
        {SOP Class UID: item}."""
        if not self.is_requestor:
            raise ValueError("only the requestor sends SOP Class Common Extended Negotiation")
        items = self._user_info("sop_class_common_extended") or []
        return {item.sop_class_uid: item for item in items}

    @property
    def role_selection(self) -> dict[str, Any]:
        """SCP/SCU Role Selection items of this side's PDU: {SOP Class UID: item}."""
        items = self._user_info("role_selections") or []
        return {item.sop_class_uid: item for item in items}

    @property
    def asynchronous_operations(self) -> tuple[int, int]:
        """(maximum invoked, maximum performed) of this side's PDU;
        (1, 1), the default, when it has no such item."""
        window = self._user_info("async_ops_window")
        if window is None:
            return (1, 1)
        return (window.max_operations_invoked, window.max_operations_performed)

    @property
    def user_identity(self) -> Any:
        """The User Identity item of this side's PDU, or None."""
        return self._user_info("user_identity_rq" if self.is_requestor else "user_identity_ac")

    @property
    def info(self) -> dict[str, Any]:
        return {"ae_title": self.ae_title, "address": self.address, "port": self.port, "mode": self.mode}

    def __repr__(self) -> str:
        return f"<ServiceUser {self.mode} {self.ae_title!r} {self.address}:{self.port}>"


def _nothing() -> None:
    return None


class AsyncAssociation:
    """One association, requestor or acceptor side, driven on the loop."""

    def __init__(
        self,
        ae: Any,
        ul: AssociationControl,
        handlers: Handlers,
        *,
        spool_directory: Path | None = None,
    ) -> None:
        self.ae = ae
        self._ul = ul
        self._handlers = handlers
        self._session: ServiceSession | None = None
        self._spool_directory = spool_directory
        self.is_requestor = ul.is_requestor
        self.is_acceptor = not ul.is_requestor
        self._store_directory: Path | None = None
        # Acceptors share their server's handler table until bind/unbind
        # gives this association its own copy.
        self._own_handlers = ul.is_requestor
        self.requestor = ServiceUser(self, "requestor")
        self.acceptor = ServiceUser(self, "acceptor")
        #: chromanet extra: what the audit trail records of this association
        #: beyond the protocol (e.g. whether its user identity was verified).
        self.audit = AuditContext()
        #: chromanet extra, requestor side: why the association request
        #: failed (refused connection, A-ASSOCIATE-RJ, timeout, TLS...),
        #: None while it has not failed.
        self.request_failure: str | None = None
        self._operation_observer: OperationObserver | None = None
        # Plain ``def`` handlers run in this lane, in order, off the loop
        # (services/handler_threads.py), unless the AE runs them inline;
        # there they see ``sync_facade`` (the blocking Association) as
        # ``event.assoc``.
        try:
            self._home_loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # made outside a loop (tests)
            self._home_loop = None
        pool = None if getattr(ae, "sync_handlers_inline", True) else ae.handler_threads
        self._lane = HandlerLane(pool, self._home_loop) if pool is not None and self._home_loop is not None else None
        self._sync_facade: Any = None
        ul.on_established = self._on_established
        ul.ended.add_done_callback(self._on_ended)
        if ul.is_requestor:
            ul.on_requested = self._on_request_sent
        # Wire/DIMSE notifications still waiting in the lane; an acceptor
        # stays in its server's active_associations until they ran (as a
        # pynetdicom association thread lives until its handlers returned).
        self._watch_pending = 0
        self.on_watch_idle: Any = None
        self.refresh_watchers()

    # --------------------------------------------------------------- state
    @property
    def is_established(self) -> bool:
        return self._ul.is_established

    @property
    def is_rejected(self) -> bool:
        return self._ul.outcome == "rejected"

    @property
    def is_aborted(self) -> bool:
        return self._ul.outcome in ("aborted", "closed")

    @property
    def is_released(self) -> bool:
        return self._ul.outcome == "released"

    @property
    def accepted_contexts(self) -> list[PresentationContext]:
        return [PresentationContext.from_negotiated(c) for c in self._ul.contexts.values()]

    @property
    def rejected_contexts(self) -> list[PresentationContext]:
        result = self._ul.negotiation
        if result is None:
            return []
        return [PresentationContext.from_negotiated(c) for c in result.contexts if not c.accepted]

    @property
    def acse_request(self) -> Any:
        """The A-ASSOCIATE-RQ as sent or received."""
        return self._ul.request

    @property
    def acse_response(self) -> Any:
        """The A-ASSOCIATE-AC or -RJ as sent or received."""
        return self._ul.response

    @property
    def store_directory(self) -> Path | None:
        """chromanet extra: with no EVT_C_STORE handler bound, received
        C-STOREs (e.g. a C-GET's sub-operations) are written here as
        <SOP Instance UID>.dcm."""
        return self._store_directory

    @store_directory.setter
    def store_directory(self, value: Path | None) -> None:
        self._store_directory = value
        if self._session is not None:
            self._session.store_directory = value

    @property
    def remote_host(self) -> str:
        """The peer's IP address ('' before the connection is made)."""
        return self._ul.addresses[1][0]

    @property
    def admission(self) -> Admission | None:
        """The acceptor's admission answer (its ``grant``: what this peer may
        do), or None when the server has no admission check."""
        return self._ul.admission

    @property
    def tls(self) -> TlsInfo | None:
        """The TLS parameters (version, cipher, peer certificate subject) of
        the connection, or None when it is plain TCP."""
        return self._ul.tls

    @property
    def outcome(self) -> str:
        """chromanet extra: "pending" or "established" while it lasts, then
        how it ended: "released", "rejected", "aborted", or "closed" (the
        connection went away before an association was made)."""
        return self._ul.outcome

    @property
    def abort_source_reason(self) -> tuple[int, int] | None:
        """The (source, reason) of the A-ABORT or A-P-ABORT that ended the
        association, None when it did not end so."""
        return self._ul.abort_source_reason

    @property
    def aborted_by(self) -> str | None:
        """Who aborted: "local" (this side), "peer" (the other side's user)
        or "provider" (a protocol error, a timeout, the connection lost)."""
        return self._ul.aborted_by

    @property
    def operation_observer(self) -> OperationObserver | None:
        """chromanet extra: told of each operation served on this association
        when it ends (``chromanet.services.observe``); None: off."""
        return self._operation_observer

    @operation_observer.setter
    def operation_observer(self, observer: OperationObserver | None) -> None:
        self._operation_observer = observer
        if self._session is not None:
            self._session.observer = observer

    @property
    def sync_facade(self) -> Any:
        """The blocking ``Association`` over this one: ``event.assoc`` for
        the plain ``def`` handlers that run in a worker thread."""
        if self._sync_facade is None:
            make = getattr(self.ae, "blocking_association", None)
            self._sync_facade = make(self, self._home_loop) if make is not None else self
        return self._sync_facade

    # ------------------------------------------------------ wire watching
    def refresh_watchers(self) -> None:
        """Hook the connection and the DIMSE channel while EVT_DATA_* /
        EVT_DIMSE_* handlers are bound, unhook them when none is (unhooked,
        they cost one attribute check per receive / message). Call after
        the handlers changed; from another thread it runs on the loop."""
        loop = self._home_loop
        if loop is not None and not loop.is_closed():
            try:
                here = asyncio.get_running_loop() is loop
            except RuntimeError:
                here = False
            if not here:
                loop.call_soon_threadsafe(self.refresh_watchers)
                return
        bound = self._handlers
        connection = getattr(self._ul, "connection", None)
        if connection is not None:
            watched = any(event in bound for event in WIRE_EVENTS)
            if not watched:
                connection.set_wire_hook(None)
            elif connection.wire_hook is None:
                connection.set_wire_hook(WireHook(self._on_wire))
        channel = self._session.channel if self._session is not None else None
        if channel is not None:
            channel.dimse_hook = self._on_dimse if any(event in bound for event in DIMSE_EVENTS) else None

    def _on_wire(self, sent: bool, pdu: bytes) -> None:
        event_type = EVT_DATA_SENT if sent else EVT_DATA_RECV
        if event_type in self._handlers:
            self._watch_notify(Event(self, event_type, data=pdu))

    def _watch_notify(self, event: Event) -> None:
        lane = self._lane
        notify(self._handlers, event, lane, self.sync_facade if lane else None)
        if lane is not None:
            self._watch_pending += 1
            lane.post(self._watch_ran)

    def _watch_ran(self) -> None:  # in the lane, after the handlers
        loop = self._home_loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._watch_settled)

    def _watch_settled(self) -> None:
        self._watch_pending -= 1
        if self._watch_pending == 0 and self.on_watch_idle is not None:
            idle, self.on_watch_idle = self.on_watch_idle, None
            idle()

    @property
    def watch_busy(self) -> bool:
        """True while wire/DIMSE notifications wait in the handler lane."""
        return self._watch_pending > 0

    def _on_dimse(self, sent: bool, context_id: int, command: Command, dataset: Any) -> Any:
        event_type = EVT_DIMSE_SENT if sent else EVT_DIMSE_RECV
        if event_type not in self._handlers:
            return None
        message = DimseMessage(context_id, command, dataset)
        lane = self._lane
        self._watch_notify(Event(self, event_type, {"message": message}))
        if sent or lane is None:
            return None
        # A received message is acted on once its handlers in the lane ran.
        return lane.call(_nothing)

    def notify(self, event_type: EventType) -> None:
        """Run the handlers of a notification event, in turn with this
        association's other handlers."""
        notify(self._handlers, Event(self, event_type), self._lane, self.sync_facade if self._lane else None)

    @property
    def service_session(self) -> ServiceSession | None:
        """What the services see of this association, once established."""
        return self._session

    def __repr__(self) -> str:
        side = "requestor" if self.is_requestor else "acceptor"
        return f"<AsyncAssociation {side} {self._ul.outcome}>"

    # ------------------------------------------------------------ lifecycle
    def _on_established(self, ul: AssociationControl) -> None:
        result = ul.negotiation
        assert result is not None
        sink_factory = self._spool_factory if self._spool_directory is not None or self.ae.request_gate else None
        channel = DimseChannel(
            ul,
            dimse_timeout=ul.timeouts.dimse,
            max_operations_performed=result.max_operations_performed,
            max_operations_invoked=result.max_operations_invoked,
            dataset_sink_factory=sink_factory,
            max_identifier_size=self.ae.max_identifier_size,
        )
        self._session = ServiceSession(
            channel,
            ul.contexts,
            self._handlers,
            event_source=self,
            request_gate=self.ae.request_gate,
            peer_ae_title=self.peer_ae_title,
            peer_host=self.remote_host,
            open_sub_association=self._open_sub_association,
            store_directory=self._store_directory,
            lane=self._lane,
            sync_event_source=self.sync_facade if self._lane is not None else None,
        )
        self._session.observer = self._operation_observer
        channel.request_handler = ServiceDispatcher(self._session)
        self.refresh_watchers()
        self.notify(EVT_ACCEPTED)
        self.notify(EVT_ESTABLISHED)

    def _on_request_sent(self, ul: AssociationControl) -> None:
        """Requestor: the connection is up and the A-ASSOCIATE-RQ written
        (pynetdicom's requestor notifies EVT_REQUESTED, then EVT_CONN_OPEN)."""
        self.notify(EVT_REQUESTED)
        self.notify(EVT_CONN_OPEN)

    def _spool_factory(self, context_id: int, command: Command) -> DatasetSink | None:
        gate = self.ae.request_gate
        if gate is not None and command.command_field == _dimse.C_STORE_RQ:
            refusal = gate(self, command)
            if refusal is not None:
                # Refused on its command: the data set is read and dropped as it comes.
                return DiscardSink(DatasetRefused(*refusal))
        # Only C-STORE data sets go to disk; identifiers and responses are small.
        ctx = self._ul.contexts.get(context_id)
        if command.command_field == _dimse.C_STORE_RQ and ctx is not None and self._spool_directory is not None:
            return FileSink(
                self._spool_directory, command, ctx.transfer_syntax or uids.ImplicitVRLittleEndian,
                self.ae.store_spool_memory_limit,
            )
        return None  # the channel's own (capped) sink

    def _on_ended(self, future: asyncio.Future[str]) -> None:
        outcome = self._ul.outcome
        if outcome == "rejected":
            self.notify(EVT_REJECTED)
        elif outcome == "released":
            self.notify(EVT_RELEASED)
        elif outcome in ("aborted", "closed") and self._ul.negotiation is not None:
            self.notify(EVT_ABORTED)
        self.notify(EVT_CONN_CLOSE)

    # ------------------------------------------------ handlers (pynetdicom)
    def bind(self, event: EventType, handler: Any, args: list[Any] | None = None) -> None:
        """Bind ``handler`` to ``event`` on this association only (an
        intervention event keeps one handler: the new one replaces it)."""
        from chromanet.evt import check_implemented

        check_implemented(event)
        handlers = self._private_handlers()
        entry = (handler, list(args or []))
        if event.is_intervention:
            handlers[event] = [entry]
        elif all(bound is not handler for bound, _ in handlers.get(event, [])):
            handlers.setdefault(event, []).append(entry)
        self.refresh_watchers()

    def unbind(self, event: EventType, handler: Any) -> None:
        """Unbind ``handler`` from ``event`` on this association."""
        handlers = self._private_handlers()
        kept = [(h, a) for h, a in handlers.get(event, []) if h is not handler]
        if kept:
            handlers[event] = kept
        else:
            handlers.pop(event, None)
        self.refresh_watchers()

    def get_events(self) -> list[EventType]:
        """The events that have a handler, by name: those bound, and the
        intervention events answered by default when nothing is bound."""
        return sorted(set(self._handlers).union(ANSWERED_BY_DEFAULT), key=lambda event: event.name)

    def get_handlers(self, event: EventType) -> Any:
        """Notification events: [(handler, args)…]; intervention events:
        (handler, args), or (None, None) when nothing is bound."""
        bound = self._handlers.get(event, [])
        if event.is_intervention:
            return (bound[0][0], bound[0][1] or None) if bound else (None, None)
        return [(h, a or None) for h, a in bound]

    def _private_handlers(self) -> Handlers:
        if not self._own_handlers:
            self._handlers = {event: list(bound) for event, bound in self._handlers.items()}
            self._own_handlers = True
            if self._session is not None:
                self._session.handlers = self._handlers
        return self._handlers

    # -------------------------------------------- pynetdicom's other names
    @property
    def mode(self) -> str:
        return "requestor" if self.is_requestor else "acceptor"

    # The timeouts apply from the next wait on: set here, or on the AE (which
    # sets them on every association it runs, as pynetdicom's AE does).
    @property
    def acse_timeout(self) -> float | None:
        return self._ul.timeouts.acse

    @acse_timeout.setter
    def acse_timeout(self, value: float | None) -> None:
        self._ul.timeouts.acse = value

    @property
    def dimse_timeout(self) -> float | None:
        return self._ul.timeouts.dimse

    @dimse_timeout.setter
    def dimse_timeout(self, value: float | None) -> None:
        self._ul.timeouts.dimse = value
        if self._session is not None:
            self._session.channel.dimse_timeout = value

    @property
    def connection_timeout(self) -> float | None:
        return self._ul.timeouts.connection

    @connection_timeout.setter
    def connection_timeout(self, value: float | None) -> None:
        self._ul.timeouts.connection = value

    @property
    def network_timeout(self) -> float | None:
        return self._ul.timeouts.network

    @network_timeout.setter
    def network_timeout(self, value: float | None) -> None:
        self._ul.timeouts.network = value
        self._ul.connection.set_network_timeout(value)

    @property
    def local(self) -> dict[str, Any]:
        return (self.requestor if self.is_requestor else self.acceptor).info

    @property
    def remote(self) -> dict[str, Any]:
        return (self.acceptor if self.is_requestor else self.requestor).info

    def is_alive(self) -> bool:
        """True until the connection is gone (pynetdicom's Association is a
        thread; this answers the same question)."""
        return not self._ul.ended.done()

    def _n_service(self, name: str) -> Any:
        raise NotImplementedError(f"chromanet does not implement the DIMSE-N services ({name})")

    def send_n_action(self, *args: Any, **kwargs: Any) -> Any:
        self._n_service("send_n_action")

    def send_n_create(self, *args: Any, **kwargs: Any) -> Any:
        self._n_service("send_n_create")

    def send_n_delete(self, *args: Any, **kwargs: Any) -> Any:
        self._n_service("send_n_delete")

    def send_n_event_report(self, *args: Any, **kwargs: Any) -> Any:
        self._n_service("send_n_event_report")

    def send_n_get(self, *args: Any, **kwargs: Any) -> Any:
        self._n_service("send_n_get")

    def send_n_set(self, *args: Any, **kwargs: Any) -> Any:
        self._n_service("send_n_set")

    async def release(self) -> None:
        """A-RELEASE; returns once released (or aborted after the ACSE timeout),
        and the wire/DIMSE notifications of the release ran (their handlers
        saw the A-RELEASE PDUs, as pynetdicom's have by then)."""
        await self._ul.release()
        if self._watch_pending:
            await self._watch_idle()

    async def _watch_idle(self, limit: float = 5.0) -> None:
        settled = asyncio.get_running_loop().create_future()
        earlier = self.on_watch_idle

        def idle() -> None:
            if earlier is not None:
                earlier()
            if not settled.done():
                settled.set_result(None)

        self.on_watch_idle = idle
        try:
            await asyncio.wait_for(settled, limit)
        except asyncio.TimeoutError:
            LOGGER.warning("wire event handlers still running %s s after the release", limit)

    def abort(self) -> None:
        """A-ABORT (service user); the connection closes."""
        self._ul.abort()

    async def wait_closed(self) -> str:
        """Wait until the connection is gone; returns how it ended."""
        return await asyncio.shield(self._ul.ended)

    # ----------------------------------------------------------------- SCU
    def _require_established(self) -> ServiceSession:
        if not self.is_established or self._session is None:
            raise RuntimeError("the association is not established")
        return self._session

    def find_context(self, abstract_syntax: str, transfer_syntax: str | None = None) -> PresentationContext:
        """An accepted context for ``abstract_syntax`` on which we may be SCU,
        preferring ``transfer_syntax`` when given. ValueError when none."""
        if self._session is None:
            raise ValueError(f"no accepted presentation context for {abstract_syntax}: not established")
        return PresentationContext.from_negotiated(self._session.scu_context(abstract_syntax, transfer_syntax))

    async def send_c_echo(self, msg_id: int | None = None) -> Dataset:
        """C-ECHO; the response as a Dataset (empty if none came)."""
        return response_to_dataset(await verification.echo(self._require_established(), msg_id))

    async def send_c_store(
        self,
        dataset: Dataset | str | os.PathLike[str] | bytes | bytearray | memoryview,
        msg_id: int | None = None,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        """C-STORE of a Dataset, a Part 10 file (path) or a Part 10 image in
        memory (bytes). Files and bytes whose transfer syntax was accepted are
        sent as they are, without decoding; otherwise the data set is
        decoded and re-encoded in an accepted one. Returns the response as
        a Dataset (empty if the association ended first)."""
        session = self._require_established()
        response = await storage.store(session, dataset, msg_id, priority, originator_aet, originator_id)
        return response_to_dataset(response)

    def start_c_echo(self, msg_id: int | None, done: Callable[[Command | None], None]) -> bool:
        """chromanet extra, on the loop (the blocking facade's C-ECHO, one
        hand-off and no task): send the C-ECHO-RQ now; ``done`` gets the
        response command, None if none came. False, with nothing sent,
        when it cannot go at once: ``send_c_echo`` then."""
        return verification.start_echo(self._require_established(), msg_id, done)

    def prepare_c_store(
        self,
        dataset: Dataset | str | os.PathLike[str] | bytes | bytearray | memoryview,
        msg_id: int | None = None,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> storage.PreparedStore:
        """chromanet extra (the blocking facade's C-STORE): the request of
        ``send_c_store``, data set encoded, ready to go; callable from any
        thread (the negotiated contexts no longer change). On the loop,
        ``start`` sends it without a task, or ``exchange`` it. Raises what
        ``send_c_store`` raises before sending."""
        session = self._require_established()
        return storage.PreparedStore(session, dataset, msg_id, priority, originator_aet, originator_id)

    # ------------------------------------------------- query/retrieve SCU
    @property
    def peer_ae_title(self) -> str:
        """The other side's AE title, as sent in the A-ASSOCIATE-RQ."""
        rq = self._ul.request
        if rq is None:
            return ""
        return rq.called_ae_title if self.is_requestor else rq.calling_ae_title

    def send_c_find(
        self, identifier: Dataset, query_model: str, msg_id: int | None = None, priority: int = 2
    ) -> AsyncIterator[tuple[Dataset, Dataset | None]]:
        """C-FIND: an async iterator of (status, identifier) per response;
        the last one is the final status with identifier None. Leaving the
        loop early sends a C-CANCEL."""
        session = self._require_established()
        return query_retrieve.query(session, _dimse.C_FIND_RQ, identifier, query_model, msg_id, priority)

    def send_c_get(
        self, identifier: Dataset, query_model: str, msg_id: int | None = None, priority: int = 2
    ) -> AsyncIterator[tuple[Dataset, Dataset | None]]:
        """C-GET: (status, identifier) per response. The C-STORE
        sub-operations arrive on this association and go to the EVT_C_STORE
        handler bound at associate() (or to ``store_directory`` if set)."""
        session = self._require_established()
        return query_retrieve.query(session, _dimse.C_GET_RQ, identifier, query_model, msg_id, priority)

    def send_c_move(
        self, identifier: Dataset, move_aet: str, query_model: str, msg_id: int | None = None, priority: int = 2
    ) -> AsyncIterator[tuple[Dataset, Dataset | None]]:
        """C-MOVE to the AE ``move_aet``: (status, identifier) per response."""
        session = self._require_established()
        return query_retrieve.query(session, _dimse.C_MOVE_RQ, identifier, query_model, msg_id, priority, move_aet)

    def prepare_query(
        self,
        field: int,
        identifier: Dataset,
        query_model: str,
        msg_id: int | None,
        priority: int,
        move_aet: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> query_retrieve.QueryRequest:
        """chromanet extra (the blocking facade's C-FIND/C-GET/C-MOVE,
        ``field`` their request's Command Field): the request, checked and
        its identifier encoded, from any thread; its ``responses()``, on
        ``loop``, sends it and returns what ``send_c_find`` … return.
        Raises what they raise at the call."""
        session = self._require_established()
        return query_retrieve.prepare_query(session, field, identifier, query_model, msg_id, priority, move_aet, loop)

    def send_c_cancel(self, msg_id: int, context_id: int | None = None, query_model: str | None = None) -> None:
        """C-CANCEL of the outstanding request ``msg_id``."""
        query_retrieve.cancel(self._require_established(), msg_id, context_id, query_model)

    async def _open_sub_association(
        self, address: str, port: int, ae_title: str | None, kwargs: dict[str, Any]
    ) -> AsyncAssociation | None:
        """The sub-association of a C-MOVE (requested contexts: the AE's, or
        Color Palette Storage when it requests none; over TLS when the
        handler's keywords carry ``tls_args``)."""
        contexts = kwargs.pop("contexts", None) or self.ae.requested_contexts or [
            build_context(uids.ColorPaletteStorage)
        ]
        ext_neg = _with_move_window(kwargs.pop("ext_neg", None), self.ae.async_ops_window[0])
        try:
            # A failure is logged once, by the C-MOVE it fails, rate-limited
            # per peer (a peer's every C-MOVE to a dead destination would
            # otherwise be one more ERROR line): here at DEBUG only.
            return await self.ae.associate_async(
                address,
                port,
                contexts,
                ae_title or "ANY-SCP",
                kwargs.pop("max_pdu", 16382),
                ext_neg,
                kwargs.pop("evt_handlers", None),
                tls_args=kwargs.pop("tls_args", None),
                failure_level=logging.DEBUG,
            )
        except (OSError, ValueError) as exc:
            LOGGER.warning("cannot open the move destination %s:%s: %s", address, port, exc)
            return None


def _with_move_window(ext_neg: list[Any] | None, invoked: int) -> list[Any] | None:
    """The C-MOVE sub-association's extended negotiation: the handler's
    items, plus an Asynchronous Operations Window item proposing that we
    invoke ``invoked`` operations (the AE's ``async_ops_window`` invoked
    value) and perform one, when that is not 1 and the handler proposed no
    window itself. A destination that grants it takes several C-STORE
    sub-operations at once; one that answers (1, 1) or nothing (pynetdicom,
    DCMTK) gets them one after the other (PS3.7 D.3.3.3)."""
    if invoked == 1:
        return ext_neg
    items = list(ext_neg or ())
    if any(isinstance(item, (_pdu.AsyncOperationsWindow, AsynchronousOperationsWindowNegotiation)) for item in items):
        return ext_neg
    items.append(_pdu.AsyncOperationsWindow(invoked, 1))
    return items
