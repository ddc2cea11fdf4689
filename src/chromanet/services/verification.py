"""The Verification Service Class (PS3.4 Annex A): C-ECHO, SCU and SCP.

Every node answers C-ECHO: with no EVT_C_ECHO handler bound the answer is
Success; a bound handler's status answer is sent instead (a handler that
raises, or answers with no usable status (None, a Dataset without Status,
a value of another type), still gives Success, as in pynetdicom.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Awaitable, Callable

from pydicom import Dataset

from chromanet import _dimse, evt, uids
from chromanet._dimse import Command
from chromanet.dimse_channel import IncomingMessage
from chromanet.evt import EVT_C_ECHO
from chromanet.services.base import ServiceClass, ServiceSession, answer_once
from chromanet.status import Status

_SUCCESS = int(Status.SUCCESS)
LOGGER = logging.getLogger("chromanet.services")


def _usable(result: Any) -> Any:
    """The handler's answer, or Success when it is not a status."""
    if isinstance(result, Dataset) and "Status" in result:
        return result
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    LOGGER.error("the EVT_C_ECHO handler answered %r, not a status: responding with Success", type(result).__name__)
    return _SUCCESS


def _success_when_unusable(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` with its unusable answers made Success (kept sync or
    ``async def`` as it was, for the caller to run it the same way)."""
    if inspect.iscoroutinefunction(handler):

        async def answer_async(event: Any, *args: Any) -> Any:
            return _usable(await handler(event, *args))

        return answer_async

    def answer(event: Any, *args: Any) -> Any:
        return _usable(handler(event, *args))

    # Where it runs (a worker thread, or inline on the loop) stays the handler's.
    return answer if evt.runs_in_thread(handler) else evt.inline(answer)


def _echo_request(session: ServiceSession, msg_id: int | None) -> tuple[int, Command]:
    ctx = session.scu_context(uids.Verification)
    command = Command(
        _dimse.C_ECHO_RQ,
        affected_sop_class_uid=uids.Verification,
        message_id=msg_id,
        command_data_set_type=_dimse.NO_DATASET,
    )
    return ctx.context_id, command


async def echo(session: ServiceSession, msg_id: int | None = None) -> Command | None:
    """SCU: one C-ECHO; the response command, None if none came."""
    context_id, command = _echo_request(session, msg_id)
    return await session.exchange(context_id, command)


def start_echo(session: ServiceSession, msg_id: int | None, done: Callable[[Command | None], None]) -> bool:
    """SCU: ``echo`` without a task (the blocking API's, one hand-off to
    the loop): the C-ECHO-RQ goes out now and ``done`` gets the response
    command, or None as from ``echo``. False, with nothing sent, when it
    cannot go at once (``ServiceSession.start_exchange``): ``echo`` then."""
    context_id, command = _echo_request(session, msg_id)
    return session.start_exchange(context_id, command, None, done)


def serve_echo(session: ServiceSession, message: IncomingMessage) -> Awaitable[None] | None:
    """SCP: answer one C-ECHO-RQ."""
    request = message.command
    response = Command(
        _dimse.C_ECHO_RSP,
        affected_sop_class_uid=request.affected_sop_class_uid,
        message_id_being_responded_to=request.message_id,
        command_data_set_type=_dimse.NO_DATASET,
    )
    bound = session.handler(EVT_C_ECHO)
    if bound is None:
        response.status = _SUCCESS
        session.respond(message, response)
        return None
    handler, args = bound
    return answer_once(
        session, message, EVT_C_ECHO, (_success_when_unusable(handler), args), response, status_on_exception=_SUCCESS
    )


SERVICE_CLASS = ServiceClass(
    name="Verification",
    sop_classes=(uids.Verification,),
    scp={_dimse.C_ECHO_RQ: serve_echo},
)
