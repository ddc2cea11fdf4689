"""The Storage Service Class (PS3.4 Annex B): C-STORE, SCU and SCP.

SCU: ``store`` sends a Dataset, a Part 10 file (path) or a Part 10 image in
memory. Files and bytes whose transfer syntax was accepted are sent as they
are, without decoding (a memory-mapped file goes out by scatter-gather
writes, paced for a large one); otherwise the data set is decoded and
re-encoded in an accepted transfer syntax. C-GET and C-MOVE use the same
function for their sub-operations.

SCP: ``serve_store`` runs the EVT_C_STORE handler. With none bound, the
association's ``store_directory`` (a chromanet extra) receives the instance
as <SOP Instance UID>.dcm, and without that the request fails with
0xC211, the status pynetdicom gives when no handler is bound. A data set spooled to a file (``spool.FileSink``) is removed once the
handler returned, unless the handler moved it away. A C-STORE-RQ that
comes without a data set is refused with 0xC000 (cannot understand)
before any handler runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

from pydicom import Dataset

from chromanet import _dimse, dsutil, uids
from chromanet._dimse import Command
from chromanet.dimse_channel import IncomingMessage
from chromanet.evt import EVT_C_STORE, Event
from chromanet.logutil import peer_log
from chromanet.services.base import ServiceClass, ServiceSession, answer_once
from chromanet.ul.negotiation import NegotiatedContext
from chromanet.services.observe import OperationRecord
from chromanet.status import Status

LOGGER = logging.getLogger("chromanet.services")

# pynetdicom answers a C-STORE with no EVT_C_STORE handler bound as if the
# handler had raised.
_NO_HANDLER = int(Status.STORE_HANDLER_RAISED)
_HANDLER_RAISED = int(Status.STORE_HANDLER_RAISED)
_IDENTIFIER_INVALID = int(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
_SUCCESS = int(Status.SUCCESS)
_CANNOT_UNDERSTAND = int(Status.CANNOT_UNDERSTAND)
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_TRANSFER_SYNTAX_UID = 0x00020010


# ------------------------------------------------------------------- SCU
def check_priority(priority: Any) -> None:
    """ValueError unless ``priority`` is a PS3.7 Priority: 0x0000 medium,
    0x0001 high or 0x0002 low (pynetdicom checks it as well)."""
    if isinstance(priority, bool) or priority not in (0, 1, 2):
        raise ValueError(f"priority is 0 (medium), 1 (high) or 2 (low), not {priority!r}")


def _prepare(session: ServiceSession, dataset: Any) -> tuple[int, str, str, Any, dsutil.Part10File | None]:
    """(context id, SOP class, SOP instance, payload, open file) for a
    C-STORE of a Dataset, a Part 10 file path or a Part 10 image."""
    if isinstance(dataset, Dataset):
        try:
            sop_class = dsutil.uid_of(dataset, _SOP_CLASS_UID)
            sop_instance = dsutil.uid_of(dataset, _SOP_INSTANCE_UID)
        except KeyError as exc:
            raise AttributeError(f"the data set has no {exc.args[0]}") from None
        meta = getattr(dataset, "file_meta", None)
        # By tag: a keyword lookup would cost more than the rest of this step.
        source_syntax = str(meta[_TRANSFER_SYNTAX_UID].value) if meta is not None and _TRANSFER_SYNTAX_UID in meta else None
        if source_syntax is None and dsutil.has_encapsulated_pixel_data(dataset):
            raise ValueError(
                "the data set has encapsulated (compressed) Pixel Data but no (0002,0010) Transfer Syntax UID "
                "in its file_meta: the transfer syntax to send it in is not known"
            )
        ctx = _store_context(session, sop_class, source_syntax)
        assert ctx.transfer_syntax is not None
        return ctx.context_id, sop_class, sop_instance, dsutil.encode_dataset(dataset, ctx.transfer_syntax), None
    if isinstance(dataset, dsutil.Part10File):
        part10 = dataset  # opened by the caller (a C-GET/C-MOVE sub-operation); closed once sent
    elif isinstance(dataset, (bytes, bytearray, memoryview)):
        part10 = dsutil.parse_part10(memoryview(dataset))
    else:
        part10 = dsutil.open_part10(dataset)
    try:
        ctx = _store_context(session, part10.sop_class_uid, part10.transfer_syntax)
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


def _store_context(session: ServiceSession, sop_class: str, source_syntax: str | None) -> NegotiatedContext:
    """The accepted context to send a data set in ``source_syntax`` on: one
    in that very syntax, else one whose syntax it converts to without loss
    (``dsutil.may_send_in``: native to native). A compressed data set on an
    association that accepted only native syntaxes for its class (or the
    reverse) is a ValueError, never re-labelled: the receiver would store
    encapsulated fragments as native pixels."""
    candidates = [
        ctx for ctx in session.contexts.values() if ctx.abstract_syntax == sop_class and ctx.as_scu
    ]
    if not candidates:
        raise ValueError(f"no accepted presentation context for {sop_class} with the SCU role")
    fallback = None
    for ctx in candidates:
        if ctx.transfer_syntax == source_syntax:
            return ctx
        if fallback is None and ctx.transfer_syntax is not None and dsutil.may_send_in(source_syntax, ctx.transfer_syntax):
            fallback = ctx
    if fallback is None:
        accepted = ", ".join(sorted({str(ctx.transfer_syntax) for ctx in candidates}))
        raise ValueError(
            f"no accepted presentation context for {sop_class} can carry a data set in transfer syntax "
            f"{source_syntax} without conversion loss (accepted: {accepted})"
        )
    return fallback


async def store(
    session: ServiceSession,
    dataset: Any,
    msg_id: int | None = None,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
    *,
    trace: OperationRecord | None = None,
    hold: bool = False,
) -> Command | None:
    """SCU: one C-STORE; the response command, or None if none came.
    ``trace``: the C-GET/C-MOVE whose sub-operation this is, told the size
    of the data set once it went out. ``hold``: one of several sent in this
    pass of the loop (pipelined sub-operations): they share one write.

    ValueError when no accepted context fits the SOP class or for a
    priority other than 0 (medium), 1 (high) or 2 (low); OSError for an
    unreadable file."""
    prepared = PreparedStore(session, dataset, msg_id, priority, originator_aet, originator_id)
    return await prepared.exchange(trace=trace, hold=hold)


class PreparedStore:
    """One C-STORE-RQ ready to go: its context, command and data set bytes
    (a file opened for it is closed once its response came, or none will).
    ``store`` sends it and waits; a pipelined sub-operation starts it
    (``start``) and is called back. Raises as ``store`` does."""

    __slots__ = ("session", "context_id", "command", "payload", "part10")

    def __init__(
        self,
        session: ServiceSession,
        dataset: Any,
        msg_id: int | None,
        priority: int,
        originator_aet: str | None,
        originator_id: int | None,
    ) -> None:
        check_priority(priority)
        context_id, sop_class, sop_instance, payload, part10 = _prepare(session, dataset)
        self.session = session
        self.context_id = context_id
        self.payload = payload
        self.part10 = part10
        self.command = Command(
            _dimse.C_STORE_RQ,
            affected_sop_class_uid=sop_class,
            affected_sop_instance_uid=sop_instance,
            message_id=msg_id,
            priority=priority,
            command_data_set_type=_dimse.DATASET_PRESENT,
            move_originator_application_entity_title=originator_aet,
            move_originator_message_id=originator_id,
        )

    async def exchange(self, *, trace: OperationRecord | None = None, hold: bool = False) -> Command | None:
        """Send it and wait for the response (None if none came)."""
        try:
            response = await self.session.exchange(self.context_id, self.command, self.payload, hold=hold)
            self._answered(response, trace)
            return response
        finally:
            self._close()

    def start(
        self, done: Callable[[Command | None], None], *, trace: OperationRecord | None = None, hold: bool = True
    ) -> bool:
        """Send it now, its write held with the others of this pass of the
        loop (``hold``; False: written at once, a C-STORE alone); ``done``
        gets the response (None if none came). False, with nothing sent,
        when it cannot go at once (``ServiceSession.start_exchange``):
        ``exchange`` it instead."""

        def answered(response: Command | None) -> None:
            try:
                self._answered(response, trace)
            finally:
                self._close()
            done(response)

        try:
            return self.session.start_exchange(self.context_id, self.command, self.payload, answered, hold=hold)
        except BaseException:
            self._close()
            raise

    def _answered(self, response: Command | None, trace: OperationRecord | None) -> None:
        if trace is not None and response is not None:
            trace.note_sent(memoryview(self.payload).nbytes)

    def _close(self) -> None:
        self.payload = None
        part10 = self.part10
        if part10 is not None and part10.path is not None:
            part10.close()


# ------------------------------------------------------------------- SCP
def serve_store(session: ServiceSession, message: IncomingMessage) -> Awaitable[None] | None:
    """SCP: answer one C-STORE-RQ."""
    request = message.command
    response = Command(
        _dimse.C_STORE_RSP,
        affected_sop_class_uid=request.affected_sop_class_uid,
        affected_sop_instance_uid=request.affected_sop_instance_uid,
        message_id_being_responded_to=request.message_id,
        command_data_set_type=_dimse.NO_DATASET,
    )
    if message.dataset is None:
        # PS3.7 9.3.1.1: a C-STORE-RQ carries the data set to store. Refused
        # here, before any handler: there is nothing for it to store.
        peer_log(LOGGER, logging.WARNING, session.peer_host, "C-STORE-RQ without a data set: refused with 0xC000")
        response.status = _CANNOT_UNDERSTAND
        response.error_comment = "C-STORE-RQ without a data set"
        session.respond(message, response)
        return None
    bound = session.handler(EVT_C_STORE)
    if bound is None and session.store_directory is not None:
        bound = (store_to_directory, [session.store_directory])
    if bound is None:
        remove_spool(message)
        response.status = _NO_HANDLER
        session.respond(message, response)
        return None
    return answer_once(
        session,
        message,
        EVT_C_STORE,
        bound,
        response,
        status_on_exception=_HANDLER_RAISED,
        after=lambda: remove_spool(message),
    )


def remove_spool(message: IncomingMessage) -> None:
    """A spooled data set's file is the handler's to keep or lose: once the
    handler returned, an unmoved spool file is removed."""
    cleanup = getattr(message.dataset, "cleanup", None)
    if cleanup is not None:
        cleanup()


def store_to_directory(event: Event, directory: Any) -> int:
    """The built-in C-STORE handler of ``store_directory``: the data set as
    received, behind a file meta header, in <SOP Instance UID>.dcm (written
    to a temporary name, then renamed, so no half file is ever visible)."""
    uid = event.request.AffectedSOPInstanceUID
    if not uid or "/" in uid or uid.startswith("."):
        return _IDENTIFIER_INVALID
    target = Path(directory) / f"{uid}.dcm"
    temporary = target.with_name(f".{uid}.partial")
    with open(temporary, "wb") as handle:
        handle.write(event.encoded_dataset(include_meta=True))
    os.replace(temporary, target)
    return _SUCCESS


SERVICE_CLASS = ServiceClass(
    name="Storage",
    sop_classes=(uids.ColorPaletteStorage,),
    scp={_dimse.C_STORE_RQ: serve_store},
)
