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
from typing import TYPE_CHECKING, Any

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
from chromanet.presentation import PresentationContext
from chromanet.services import ServiceProvider
from chromanet.services.spool import FileSink, MemorySink
from chromanet.services.status import response_to_dataset
from chromanet.ul.association import AssociationAborted, AssociationClosed, ULAssociation

if TYPE_CHECKING:
    from chromanet.dimse import DatasetSink

LOGGER = logging.getLogger("chromanet.association")

Handlers = dict[EventType, list[tuple[Any, list[Any]]]]


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
    def _on_established(self, ul: ULAssociation) -> None:
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
        candidates = [
            c for c in self._ul.contexts.values() if c.abstract_syntax == abstract_syntax and c.as_scu
        ]
        if not candidates:
            raise ValueError(f"no accepted presentation context for {abstract_syntax} with the SCU role")
        for ctx in candidates:
            if transfer_syntax is not None and ctx.transfer_syntax == transfer_syntax:
                return PresentationContext.from_negotiated(ctx)
        return PresentationContext.from_negotiated(candidates[0])

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
        ctx = self.find_context(uids.Verification)
        command = Command(
            _dimse.C_ECHO_RQ,
            affected_sop_class_uid=uids.Verification,
            message_id=msg_id,
            command_data_set_type=_dimse.NO_DATASET,
        )
        assert ctx.context_id is not None
        return response_to_dataset(await self._exchange(ctx.context_id, command))

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
        decoded and re-encoded in an accepted one."""
        self._require_established()
        part10: dsutil.Part10File | None = None
        if isinstance(dataset, Dataset):
            sop_class = str(dataset.SOPClassUID)
            sop_instance = str(dataset.SOPInstanceUID)
            meta = getattr(dataset, "file_meta", None)
            source_syntax = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else None
            ctx = self.find_context(sop_class, source_syntax)
            assert ctx.transfer_syntax
            payload: Any = dsutil.encode_dataset(dataset, ctx.transfer_syntax[0])
        else:
            if isinstance(dataset, (bytes, bytearray, memoryview)):
                part10 = dsutil.parse_part10(memoryview(dataset))
            else:
                part10 = dsutil.open_part10(dataset)
            sop_class, sop_instance = part10.sop_class_uid, part10.sop_instance_uid
            ctx = self.find_context(sop_class, part10.transfer_syntax)
            assert ctx.transfer_syntax
            if ctx.transfer_syntax[0] == part10.transfer_syntax:
                payload = part10.dataset_bytes()
            else:
                decoded = dsutil.decode_dataset(part10.dataset_bytes(), part10.transfer_syntax)
                payload = dsutil.encode_dataset(decoded, ctx.transfer_syntax[0])
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
        assert ctx.context_id is not None
        try:
            return response_to_dataset(await self._exchange(ctx.context_id, command, payload))
        finally:
            if part10 is not None and part10.path is not None:
                payload = None
                part10.close()

