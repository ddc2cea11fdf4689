"""The SCP side: serve each incoming request with the bound handler."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable

from chromanet import _dimse
from chromanet._dimse import Command
from chromanet.evt import EVT_C_ECHO, EVT_C_STORE, Event, EventType
from chromanet.services import qr_scp
from chromanet.services.status import apply_handler_status

if TYPE_CHECKING:
    from chromanet.dimse import DimseChannel, IncomingMessage

LOGGER = logging.getLogger("chromanet.services")

# Statuses sent when a handler raises (as pynetdicom does).
ECHO_STATUS_ON_EXCEPTION = 0x0000
STORE_STATUS_ON_EXCEPTION = 0xC211
STORE_STATUS_NO_HANDLER = 0x0122  # no C-STORE handler bound: SOP class not supported
UNRECOGNISED_OPERATION = 0x0211
SOP_CLASS_NOT_SUPPORTED = 0x0122


class ServiceProvider:
    """Runs the handlers bound on one association for incoming requests.

    ``assoc`` is the public association object handed to handlers as
    ``event.assoc``; ``handlers`` maps event types to [(handler, args)].
    Sync handlers run inline on the loop (keep them short); async ones
    (``async def``) run as tasks.
    """

    def __init__(self, assoc: Any, handlers: dict[EventType, list[tuple[Callable[..., Any], list[Any]]]]) -> None:
        self.assoc = assoc
        self.handlers = handlers

    def transfer_syntax(self, context_id: int) -> str | None:
        context = self.assoc._ul.contexts.get(context_id)
        return context.transfer_syntax if context is not None else None

    def __call__(self, channel: DimseChannel, message: IncomingMessage) -> Any:
        field = message.command.command_field
        if field == _dimse.C_ECHO_RQ:
            return self._serve_simple(channel, message, EVT_C_ECHO, _dimse.C_ECHO_RSP)
        if field != _dimse.C_ECHO_RQ and not self._sop_class_matches(message):
            return self._refuse(channel, message, SOP_CLASS_NOT_SUPPORTED)
        if field == _dimse.C_STORE_RQ:
            return self._serve_simple(channel, message, EVT_C_STORE, _dimse.C_STORE_RSP)
        if field == _dimse.C_FIND_RQ:
            return qr_scp.serve_find(self, channel, message)
        if field == _dimse.C_GET_RQ:
            return qr_scp.serve_get(self, channel, message)
        if field == _dimse.C_MOVE_RQ:
            return qr_scp.serve_move(self, channel, message)
        LOGGER.warning("no service for command 0x%04X", field)
        return self._refuse(channel, message, UNRECOGNISED_OPERATION)

    def _sop_class_matches(self, message: IncomingMessage) -> bool:
        """PS3.7: a request's Affected SOP Class UID is the abstract syntax
        of the presentation context it came on."""
        context = self.assoc._ul.contexts.get(message.context_id)
        requested = message.command.affected_sop_class_uid
        return context is None or requested is None or requested == context.abstract_syntax

    def _refuse(self, channel: DimseChannel, message: IncomingMessage, status: int) -> None:
        request = message.command
        if status == SOP_CLASS_NOT_SUPPORTED:
            LOGGER.warning(
                "request for SOP class %s on a context for another: 0x0122", request.affected_sop_class_uid
            )
        response = Command(
            request.command_field | 0x8000,
            affected_sop_class_uid=request.affected_sop_class_uid,
            message_id_being_responded_to=request.message_id,
            command_data_set_type=_dimse.NO_DATASET,
            status=status,
        )
        if request.command_field == _dimse.C_STORE_RQ:
            response.affected_sop_instance_uid = request.affected_sop_instance_uid
        channel.send(message.context_id, response)
        return None

    def _event(self, event_type: EventType, message: IncomingMessage) -> Event:
        context = self.assoc._public_context(message.context_id)
        return Event(
            self.assoc,
            event_type,
            message=message,
            context=context,
            transfer_syntax=self.transfer_syntax(message.context_id),
        )

    def _serve_simple(
        self, channel: DimseChannel, message: IncomingMessage, event_type: EventType, response_field: int
    ) -> Any:
        """C-ECHO and C-STORE: one handler call, one response."""
        request = message.command
        response = Command(
            response_field,
            affected_sop_class_uid=request.affected_sop_class_uid,
            message_id_being_responded_to=request.message_id,
            command_data_set_type=_dimse.NO_DATASET,
        )
        if response_field == _dimse.C_STORE_RSP:
            response.affected_sop_instance_uid = request.affected_sop_instance_uid
        bound = self.handlers.get(event_type)
        directory = getattr(self.assoc, "store_directory", None)
        if not bound and event_type is EVT_C_STORE and directory is not None:
            bound = [(_store_to_directory, [directory])]
        if not bound:
            response.status = 0x0000 if event_type is EVT_C_ECHO else STORE_STATUS_NO_HANDLER
            channel.send(message.context_id, response)
            return None
        handler, args = bound[0]
        event = self._event(event_type, message)
        failure = ECHO_STATUS_ON_EXCEPTION if event_type is EVT_C_ECHO else STORE_STATUS_ON_EXCEPTION
        if inspect.iscoroutinefunction(handler):
            return self._serve_async(channel, message, handler, args, event, response, failure)
        try:
            result = handler(event, *args)
        except Exception:
            LOGGER.exception("exception in the handler bound to %s", event_type.name)
            response.status = failure
        else:
            apply_handler_status(result, response, event_type.name)
        self._finish_store(message)
        if channel.end_error is None:
            channel.send(message.context_id, response)
        return None

    async def _serve_async(
        self,
        channel: DimseChannel,
        message: IncomingMessage,
        handler: Callable[..., Any],
        args: list[Any],
        event: Event,
        response: Command,
        failure: int,
    ) -> None:
        try:
            result = await handler(event, *args)
        except asyncio.CancelledError:
            raise
        except Exception:
            LOGGER.exception("exception in the handler bound to %s", event.event.name)
            response.status = failure
        else:
            apply_handler_status(result, response, event.event.name)
        self._finish_store(message)
        if channel.end_error is None:
            channel.send(message.context_id, response)

    @staticmethod
    def _finish_store(message: IncomingMessage) -> None:
        """A spooled data set's file is the handler's to keep or lose: once
        the handler returned, an unmoved spool file is removed."""
        spool = message.dataset
        cleanup = getattr(spool, "cleanup", None)
        if cleanup is not None:
            cleanup()


def _store_to_directory(event: Event, directory: Any) -> int:
    """The built-in C-STORE handler of ``store_directory``: the data set as
    received, behind a file meta header, in <SOP Instance UID>.dcm (written
    to a temporary name, then renamed, so no half file is ever visible)."""
    import os
    from pathlib import Path

    uid = event.request.AffectedSOPInstanceUID
    if not uid or "/" in uid or uid.startswith("."):
        return 0xA900
    target = Path(directory) / f"{uid}.dcm"
    temporary = target.with_name(f".{uid}.partial")
    with open(temporary, "wb") as handle:
        handle.write(event.encoded_dataset(include_meta=True))
    os.replace(temporary, target)
    return 0x0000
