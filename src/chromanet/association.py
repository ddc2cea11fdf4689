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
from typing import TYPE_CHECKING, Any, AsyncIterator

from pydicom import Dataset

from chromanet import _dimse, dsutil, uids
from chromanet._dimse import Command
from chromanet.dimse import DimseChannel, DimseTimeout
from chromanet.evt import (
    EVT_ABORTED,
    EVT_ACCEPTED,
    EVT_CONN_CLOSE,
    EVT_ESTABLISHED,
    EVT_REJECTED,
    EVT_RELEASED,
    Event,
    EventType,
    notify,
)
from chromanet.presentation import PresentationContext, build_context
from chromanet.services import ServiceProvider, qr_scu
from chromanet.services.spool import FileSink, MemorySink
from chromanet.services.status import response_to_dataset
from chromanet.ul.association import AssociationAborted, AssociationClosed, ULAssociation
from chromanet.ul.negotiation import NegotiatedContext

if TYPE_CHECKING:
    from chromanet.dimse import DatasetSink

LOGGER = logging.getLogger("chromanet.association")

Handlers = dict[EventType, list[tuple[Any, list[Any]]]]


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
        return self._assoc._addresses[0 if self._is_local else 1]

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
    def info(self) -> dict[str, Any]:
        return {"ae_title": self.ae_title, "address": self.address, "port": self.port, "mode": self.mode}

    def __repr__(self) -> str:
        return f"<ServiceUser {self.mode} {self.ae_title!r} {self.address}:{self.port}>"


class AsyncAssociation:
    """One association, requestor or acceptor side, driven on the loop."""

    def __init__(
        self,
        ae: Any,
        ul: ULAssociation,
        handlers: Handlers,
        *,
        spool_directory: Path | None = None,
    ) -> None:
        self.ae = ae
        self._ul = ul
        self._handlers = handlers
        self._channel: DimseChannel | None = None
        self._spool_directory = spool_directory
        self.is_requestor = ul.is_requestor
        self.is_acceptor = not ul.is_requestor
        # chromanet extra: with no EVT_C_STORE handler bound, C-STORE
        # sub-operations of a C-GET are written here as <SOP Instance UID>.dcm.
        self.store_directory: Path | None = None
        self._request_contexts: dict[int, int] = {}  # outstanding Q/R requests: message ID -> context ID
        # (local, peer) socket addresses, kept once known (the transport goes
        # away when the connection closes).
        self._addresses: tuple[tuple[str, int], tuple[str, int]] = (("", 0), ("", 0))
        # Acceptors share their server's handler table until bind/unbind
        # gives this association its own copy.
        self._own_handlers = ul.is_requestor
        self.requestor = ServiceUser(self, "requestor")
        self.acceptor = ServiceUser(self, "acceptor")
        ul.on_established = self._on_established
        ul.ended.add_done_callback(self._on_ended)

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

    def _public_context(self, context_id: int) -> PresentationContext | None:
        ctx = self._ul.contexts.get(context_id)
        return PresentationContext.from_negotiated(ctx) if ctx is not None else None

    def __repr__(self) -> str:
        side = "requestor" if self.is_requestor else "acceptor"
        return f"<AsyncAssociation {side} {self._ul.outcome}>"

    # ------------------------------------------------------------ lifecycle
    def _remember_addresses(self) -> None:
        transport = getattr(self._ul.connection, "transport", None)
        if transport is None:
            return
        local = transport.get_extra_info("sockname") or ("", 0)
        peer = transport.get_extra_info("peername") or ("", 0)
        self._addresses = ((str(local[0]), int(local[1])), (str(peer[0]), int(peer[1])))

    def _on_established(self, ul: ULAssociation) -> None:
        self._remember_addresses()
        result = ul.negotiation
        assert result is not None
        sink_factory = self._spool_factory if self._spool_directory is not None else None
        self._channel = DimseChannel(
            ul,
            ServiceProvider(self, self._handlers),
            dimse_timeout=ul.timeouts.dimse,
            max_operations_performed=result.max_operations_performed,
            max_operations_invoked=result.max_operations_invoked,
            dataset_sink_factory=sink_factory,
        )
        notify(self._handlers, Event(self, EVT_ACCEPTED))
        notify(self._handlers, Event(self, EVT_ESTABLISHED))

    def _spool_factory(self, context_id: int, command: Command) -> DatasetSink:
        # Only C-STORE data sets go to disk; identifiers and responses are small.
        ctx = self._ul.contexts.get(context_id)
        if command.command_field == _dimse.C_STORE_RQ and ctx is not None and self._spool_directory is not None:
            return FileSink(self._spool_directory, command, ctx.transfer_syntax or uids.ImplicitVRLittleEndian)
        return MemorySink()

    def _on_ended(self, future: asyncio.Future[str]) -> None:
        outcome = self._ul.outcome
        if outcome == "rejected":
            notify(self._handlers, Event(self, EVT_REJECTED))
        elif outcome == "released":
            notify(self._handlers, Event(self, EVT_RELEASED))
        elif outcome in ("aborted", "closed") and self._ul.negotiation is not None:
            notify(self._handlers, Event(self, EVT_ABORTED))
        notify(self._handlers, Event(self, EVT_CONN_CLOSE))

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

    def unbind(self, event: EventType, handler: Any) -> None:
        """Unbind ``handler`` from ``event`` on this association."""
        handlers = self._private_handlers()
        kept = [(h, a) for h, a in handlers.get(event, []) if h is not handler]
        if kept:
            handlers[event] = kept
        else:
            handlers.pop(event, None)

    def get_events(self) -> list[EventType]:
        """The events that have a handler bound, by name."""
        return sorted(self._handlers, key=lambda event: event.name)

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
            if self._channel is not None:
                provider = self._channel.request_handler
                if isinstance(provider, ServiceProvider):
                    provider.handlers = self._handlers
        return self._handlers

    # -------------------------------------------- pynetdicom's other names
    @property
    def mode(self) -> str:
        return "requestor" if self.is_requestor else "acceptor"

    @property
    def acse_timeout(self) -> float | None:
        return self._ul.timeouts.acse

    @property
    def dimse_timeout(self) -> float | None:
        return self._ul.timeouts.dimse

    @property
    def network_timeout(self) -> float | None:
        return self._ul.timeouts.network

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
        """A-RELEASE; returns once released (or aborted after the ACSE timeout)."""
        await self._ul.release()

    def abort(self) -> None:
        """A-ABORT (service user); the connection closes."""
        self._ul.abort()

    async def wait_closed(self) -> str:
        """Wait until the connection is gone; returns how it ended."""
        return await asyncio.shield(self._ul.ended)

    # ----------------------------------------------------------------- SCU
    def _require_established(self) -> DimseChannel:
        if not self.is_established or self._channel is None:
            raise RuntimeError("the association is not established")
        return self._channel

    def find_context(self, abstract_syntax: str, transfer_syntax: str | None = None) -> PresentationContext:
        """An accepted context for ``abstract_syntax`` on which we may be SCU,
        preferring ``transfer_syntax`` when given. ValueError when none."""
        return PresentationContext.from_negotiated(self._scu_context(abstract_syntax, transfer_syntax))

    def _scu_context(self, abstract_syntax: str, transfer_syntax: str | None = None) -> NegotiatedContext:
        """find_context's lookup, without building a public object: the send
        paths call it once per request."""
        first = None
        for ctx in self._ul.contexts.values():
            if ctx.abstract_syntax == abstract_syntax and ctx.as_scu:
                if transfer_syntax is None or ctx.transfer_syntax == transfer_syntax:
                    return ctx
                if first is None:
                    first = ctx
        if first is None:
            raise ValueError(f"no accepted presentation context for {abstract_syntax} with the SCU role")
        return first

    async def _exchange(self, context_id: int, command: Command, dataset: Any = None) -> Command | None:
        """One request, one response; None if the association ended first."""
        channel = self._require_established()
        try:
            response = await channel.request(context_id, command, dataset)
        except DimseTimeout:
            LOGGER.error("DIMSE timeout: aborting the association")
            self.abort()
            return None
        except (AssociationAborted, AssociationClosed, ConnectionError):
            return None
        return response.command

    async def send_c_echo(self, msg_id: int | None = None) -> Dataset:
        """C-ECHO; the response as a Dataset (empty if none came)."""
        ctx = self._scu_context(uids.Verification)
        command = Command(
            _dimse.C_ECHO_RQ,
            affected_sop_class_uid=uids.Verification,
            message_id=msg_id,
            command_data_set_type=_dimse.NO_DATASET,
        )
        return response_to_dataset(await self._exchange(ctx.context_id, command))

    def _prepare_store(self, dataset: Any) -> tuple[int, str, str, Any, dsutil.Part10File | None]:
        """(context id, SOP class, SOP instance, payload, open file) for a
        C-STORE of a Dataset, a Part 10 file path or a Part 10 image."""
        part10: dsutil.Part10File | None = None
        if isinstance(dataset, Dataset):
            sop_class = str(dataset.SOPClassUID)
            sop_instance = str(dataset.SOPInstanceUID)
            meta = getattr(dataset, "file_meta", None)
            source_syntax = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else None
            ctx = self._scu_context(sop_class, source_syntax)
            assert ctx.transfer_syntax is not None
            return ctx.context_id, sop_class, sop_instance, dsutil.encode_dataset(dataset, ctx.transfer_syntax), None
        if isinstance(dataset, (bytes, bytearray, memoryview)):
            part10 = dsutil.parse_part10(memoryview(dataset))
        else:
            part10 = dsutil.open_part10(dataset)
        try:
            ctx = self._scu_context(part10.sop_class_uid, part10.transfer_syntax)
            assert ctx.transfer_syntax is not None
            if ctx.transfer_syntax == part10.transfer_syntax:
                payload: Any = part10.dataset_bytes()
            else:
                decoded = dsutil.decode_dataset(part10.dataset_bytes(), part10.transfer_syntax)
                payload = dsutil.encode_dataset(decoded, ctx.transfer_syntax)
        except BaseException:
            part10.close()
            raise
        return ctx.context_id, part10.sop_class_uid, part10.sop_instance_uid, payload, part10

    async def _store(
        self,
        dataset: Any,
        msg_id: int | None,
        priority: int,
        originator_aet: str | None,
        originator_id: int | None,
    ) -> Command | None:
        """One C-STORE; the response command, or None if none came."""
        self._require_established()
        context_id, sop_class, sop_instance, payload, part10 = self._prepare_store(dataset)
        command = Command(
            _dimse.C_STORE_RQ,
            affected_sop_class_uid=sop_class,
            affected_sop_instance_uid=sop_instance,
            message_id=msg_id,
            priority=priority,
            command_data_set_type=_dimse.DATASET_PRESENT,
            move_originator_application_entity_title=originator_aet,
            move_originator_message_id=originator_id,
        )
        try:
            return await self._exchange(context_id, command, payload)
        finally:
            del payload
            if part10 is not None and part10.path is not None:
                part10.close()

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
        return response_to_dataset(await self._store(dataset, msg_id, priority, originator_aet, originator_id))

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
        return qr_scu.query(self, _dimse.C_FIND_RQ, identifier, query_model, msg_id, priority)

    def send_c_get(
        self, identifier: Dataset, query_model: str, msg_id: int | None = None, priority: int = 2
    ) -> AsyncIterator[tuple[Dataset, Dataset | None]]:
        """C-GET: (status, identifier) per response. The C-STORE
        sub-operations arrive on this association and go to the EVT_C_STORE
        handler bound at associate() (or to ``store_directory`` if set)."""
        return qr_scu.query(self, _dimse.C_GET_RQ, identifier, query_model, msg_id, priority)

    def send_c_move(
        self, identifier: Dataset, move_aet: str, query_model: str, msg_id: int | None = None, priority: int = 2
    ) -> AsyncIterator[tuple[Dataset, Dataset | None]]:
        """C-MOVE to the AE ``move_aet``: (status, identifier) per response."""
        return qr_scu.query(self, _dimse.C_MOVE_RQ, identifier, query_model, msg_id, priority, move_aet)

    def send_c_cancel(self, msg_id: int, context_id: int | None = None, query_model: str | None = None) -> None:
        """C-CANCEL of the outstanding request ``msg_id``."""
        qr_scu.cancel(self, msg_id, context_id, query_model)

    async def _open_move_destination(
        self, address: str, port: int, ae_title: str | None, kwargs: dict[str, Any]
    ) -> AsyncAssociation | None:
        """The sub-association of a C-MOVE (requested contexts: the AE's, or
        Color Palette Storage when it requests none)."""
        contexts = kwargs.pop("contexts", None) or self.ae.requested_contexts or [
            build_context(uids.ColorPaletteStorage)
        ]
        try:
            return await self.ae._associate(
                address,
                port,
                contexts,
                ae_title or "ANY-SCP",
                kwargs.pop("max_pdu", 16382),
                kwargs.pop("ext_neg", None),
                kwargs.pop("evt_handlers", None),
            )
        except (OSError, ValueError) as exc:
            LOGGER.warning("cannot open the move destination %s:%s: %s", address, port, exc)
            return None
