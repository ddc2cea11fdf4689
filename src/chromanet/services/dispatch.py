"""The SCP side of one association: each incoming request to its service.

``ServiceDispatcher`` is the DIMSE channel's request handler. It is built
from the ``SERVICE_CLASS`` declarations of the service class modules, so the
table of who serves what is data: adding a service class is adding its
module to ``SERVICE_CLASSES``.

Before a request reaches its service, PS3.7's rule is checked: a request's
Affected SOP Class UID is the abstract syntax of the presentation context it
came on (0x0122 otherwise). A Command Field no service serves gets 0x0211.
A request whose data set was over the association's size limit (and was
dropped as it came) is refused with its service's "out of resources"
status: C-FIND 0xA700, C-GET and C-MOVE 0xA701; a C-ECHO, which takes no
data set at all, 0x0212. A request refused when its command arrived (the
AE's ``request_gate``, asked for every request) gets the gate's status.

When the session has an ``observer``, each request gets an
``OperationRecord`` (``services/observe.py``) that the observer receives
when the operation is over: answered, refused here, or cut off.
"""

from __future__ import annotations

import logging
from typing import Awaitable

from chromanet import _dimse
from chromanet.dimse_channel import DatasetRefused, DatasetTooLarge, DimseChannel, IncomingMessage
from chromanet.logutil import peer_log
from chromanet.services import color_palette_qr, storage, verification
from chromanet.services.base import ServeFunction, ServiceClass, ServiceSession
from chromanet.services.observe import OperationObserver, OperationRecord, dataset_size
from chromanet.status import Status

LOGGER = logging.getLogger("chromanet.services")

#: The service classes this engine serves, in no particular order.
SERVICE_CLASSES: tuple[ServiceClass, ...] = (
    verification.SERVICE_CLASS,
    storage.SERVICE_CLASS,
    color_palette_qr.SERVICE_CLASS,
)

_SOP_CLASS_NOT_SUPPORTED = int(Status.SOP_CLASS_NOT_SUPPORTED)
_UNRECOGNISED_OPERATION = int(Status.UNRECOGNISED_OPERATION)
_TOO_LARGE = {
    _dimse.C_FIND_RQ: int(Status.OUT_OF_RESOURCES),
    _dimse.C_GET_RQ: int(Status.OUT_OF_RESOURCES_MATCHES),
    _dimse.C_MOVE_RQ: int(Status.OUT_OF_RESOURCES_MATCHES),
}


def _serve_table(classes: tuple[ServiceClass, ...]) -> dict[int, ServeFunction]:
    table: dict[int, ServeFunction] = {}
    for service_class in classes:
        for field, serve in service_class.scp.items():
            if field in table and table[field] is not serve:
                raise ValueError(f"two service classes serve command 0x{field:04X}")
            table[field] = serve
    return table


_SERVE = _serve_table(SERVICE_CLASSES)


class ServiceDispatcher:
    """Routes the requests of one association to the services."""

    def __init__(self, session: ServiceSession) -> None:
        self.session = session

    def __call__(self, channel: DimseChannel, message: IncomingMessage) -> Awaitable[None] | None:
        observer = self.session.observer
        if observer is not None:
            return self._observed(channel, message, observer)
        return self._dispatch(channel, message)

    def _observed(
        self, channel: DimseChannel, message: IncomingMessage, observer: OperationObserver
    ) -> Awaitable[None] | None:
        """Serve the request with an OperationRecord following it; the
        observer gets the record when the operation is over, however it
        ended."""
        record = message.trace = OperationRecord(message.command, dataset_size(message.dataset))
        record.observer = observer
        record.details = getattr(observer, "wants_details", True)
        try:
            pending = self._dispatch(channel, message)
        except BaseException:
            record.deliver()
            raise
        if pending is None:
            record.deliver()
            return None
        return _deliver_after(pending, record)

    def _dispatch(self, channel: DimseChannel, message: IncomingMessage) -> Awaitable[None] | None:
        field = message.command.command_field
        if field != _dimse.C_ECHO_RQ and not self._sop_class_matches(message):
            peer_log(
                LOGGER, logging.WARNING, self.session.peer_host,
                "request for SOP class %s on a context for another: 0x0122", message.command.affected_sop_class_uid,
            )
            return self._refuse(channel, message, _SOP_CLASS_NOT_SUPPORTED)
        if type(message.dataset) is DatasetRefused:
            refusal = message.dataset
            return self._refuse(channel, message, refusal.status, refusal.comment)
        gate = self.session.request_gate
        if gate is not None and field != _dimse.C_CANCEL_RQ:
            answer = gate(self.session.event_source, message.command)
            if answer is not None:
                return self._refuse(channel, message, answer[0], answer[1])
        if type(message.dataset) is DatasetTooLarge:
            too_large = message.dataset
            peer_log(
                LOGGER, logging.WARNING, self.session.peer_host,
                "refusing command 0x%04X: its data set has %d bytes, more than the %d allowed",
                field, too_large.size, too_large.limit,
            )
            comment = f"data set of {too_large.size} bytes: at most {too_large.limit} accepted"
            return self._refuse(channel, message, _TOO_LARGE.get(field, int(Status.MISTYPED_ARGUMENT)), comment)
        serve = _SERVE.get(field)
        if serve is None:
            peer_log(LOGGER, logging.WARNING, self.session.peer_host, "no service for command 0x%04X", field)
            return self._refuse(channel, message, _UNRECOGNISED_OPERATION)
        return serve(self.session, message)

    def _sop_class_matches(self, message: IncomingMessage) -> bool:
        context = self.session.context(message.context_id)
        requested = message.command.affected_sop_class_uid
        return context is None or requested is None or requested == context.abstract_syntax

    @staticmethod
    def _refuse(channel: DimseChannel, message: IncomingMessage, status: int, comment: str | None = None) -> None:
        request = message.command
        response = _dimse.Command(
            request.command_field | 0x8000,
            affected_sop_class_uid=request.affected_sop_class_uid,
            message_id_being_responded_to=request.message_id,
            command_data_set_type=_dimse.NO_DATASET,
            status=status,
            error_comment=comment[:64] if comment else None,
        )
        if request.command_field == _dimse.C_STORE_RQ:
            response.affected_sop_instance_uid = request.affected_sop_instance_uid
            storage.remove_spool(message)  # a refused store leaves no spool file behind
        channel.send(message.context_id, response)
        if message.trace is not None:
            message.trace.note_refused(response)
        return None


async def _deliver_after(pending: Awaitable[None], record: OperationRecord) -> None:
    try:
        await pending
    finally:
        record.deliver()  # if the final response did not already
