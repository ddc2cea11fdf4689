"""The typed interface between the association layer and the services.

A service (``services/verification.py``, ``storage.py``,
``color_palette_qr.py``…) sees one association only through a
``ServiceSession``: the DIMSE channel to send and receive messages on, the
negotiated presentation contexts with their roles, the handler table, the
object handed to handlers as ``event.assoc``, and a way to open a
sub-association (C-MOVE). The association layer (``chromanet.association``)
builds one per established association; services use its public names only,
never the association object's internals.

``ServiceClass`` declares what one service class module serves as an SCP
(request Command Field -> coroutine), so that the dispatcher
(``services/dispatch.py``) is built from the declarations and a new service
class is a new module.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.uid import UID

from chromanet._dimse import NO_DATASET, Command
from chromanet.dimse_channel import DimseChannel, DimseTimeout, IncomingMessage
from chromanet.evt import Event, EventType, is_coroutine_function, runs_in_thread
from chromanet.logutil import peer_log
from chromanet.presentation import PresentationContextTuple
from chromanet.services.answers import apply_handler_status
from chromanet.services.handler_threads import HandlerLane
from chromanet.services.observe import OperationObserver
from chromanet.ul.acse import AssociationAborted, AssociationClosed
from chromanet.ul.negotiation import NegotiatedContext
from chromanet.ul.upper_layer import NotEstablishedError

LOGGER = logging.getLogger("chromanet.services")

#: {event type: [(handler, extra args)…]}; intervention events hold one.
HandlerTable = dict[EventType, list[tuple[Callable[..., Any], list[Any]]]]


class SubAssociation(Protocol):
    """An association opened for sub-operations (the C-MOVE destination)."""

    @property
    def is_established(self) -> bool: ...

    @property
    def service_session(self) -> ServiceSession | None: ...

    async def release(self) -> None: ...


#: (address, port, called AE title, extra associate() keywords) -> the
#: sub-association, or None when it could not be opened.
SubAssociationOpener = Callable[[str, int, "str | None", dict[str, Any]], Awaitable["SubAssociation | None"]]


class ServiceSession:
    """What the services see of one established association."""

    def __init__(
        self,
        channel: DimseChannel,
        contexts: Mapping[int, NegotiatedContext],
        handlers: HandlerTable,
        *,
        event_source: object,
        peer_ae_title: str,
        peer_host: str = "",
        open_sub_association: SubAssociationOpener | None = None,
        store_directory: Any = None,
        request_gate: Callable[[Any, Command], tuple[int, str] | None] | None = None,
        lane: HandlerLane | None = None,
        sync_event_source: object = None,
    ) -> None:
        #: Sends and receives DIMSE messages (requests, responses, C-CANCEL).
        self.channel = channel
        #: The accepted presentation contexts by ID, with transfer syntax and roles.
        self.contexts = contexts
        #: The handlers bound on this association (replaced by bind/unbind).
        self.handlers = handlers
        #: What handlers receive as ``event.assoc`` (the public association).
        self.event_source = event_source
        #: The other side's AE title and IP address.
        self.peer_ae_title = peer_ae_title
        self.peer_host = peer_host
        #: Opens a sub-association (C-MOVE); None where not possible.
        self.open_sub_association = open_sub_association
        #: With no C-STORE handler bound, received instances are written
        #: here as <SOP Instance UID>.dcm (a chromanet extra; None: refused).
        self.store_directory = store_directory
        #: Asked (with ``event_source`` and the command) before a request is
        #: served: a (status, comment) answer refuses it (a chromanet extra).
        self.request_gate = request_gate
        #: Our outstanding Q/R requests: Message ID -> context ID (for C-CANCEL).
        self.request_contexts: dict[int, int] = {}
        #: Told of every operation served on this association when it ends
        #: (``services/observe.py``); None: nothing is recorded.
        self.observer: OperationObserver | None = None
        #: Where plain ``def`` handlers run, in order (a worker thread);
        #: None: inline on the loop (``AE.sync_handlers_inline``).
        self.lane = lane
        #: What handlers in the lane receive as ``event.assoc`` (the
        #: blocking ``Association``).
        self.sync_event_source = sync_event_source if sync_event_source is not None else event_source
        # context ID -> what handlers get as ``event.context`` (made once:
        # two UIDs validated by pydicom cost more than the rest of an event).
        self._context_tuples: dict[int, tuple[PresentationContextTuple | None, str | None]] = {}
        # handler -> ``is_inline_generator(handler)``, for the handlers bound
        # (inspect's answer costs more than a small C-FIND's dispatch).
        self._inline_generators: dict[Any, bool] = {}

    # ----------------------------------------------------------- contexts
    def respond(self, message: IncomingMessage, response: Command, dataset: Any = None) -> None:
        """Send a response to ``message``, and note it in the operation's
        record when the operations are observed."""
        self.channel.send(message.context_id, response, dataset)
        if message.trace is not None:
            message.trace.note_response(response, dataset)

    def context(self, context_id: int) -> NegotiatedContext | None:
        return self.contexts.get(context_id)

    def transfer_syntax(self, context_id: int) -> str | None:
        context = self.contexts.get(context_id)
        return context.transfer_syntax if context is not None else None

    def scu_context(self, abstract_syntax: str, transfer_syntax: str | None = None) -> NegotiatedContext:
        """An accepted context for ``abstract_syntax`` on which we may be SCU,
        preferring ``transfer_syntax`` when given; ValueError when none."""
        first = None
        for ctx in self.contexts.values():
            if ctx.abstract_syntax == abstract_syntax and ctx.as_scu:
                if transfer_syntax is None or ctx.transfer_syntax == transfer_syntax:
                    return ctx
                if first is None:
                    first = ctx
        if first is None:
            raise ValueError(f"no accepted presentation context for {abstract_syntax} with the SCU role")
        return first

    # ----------------------------------------------------------- handlers
    def handler(self, event_type: EventType) -> tuple[Callable[..., Any], list[Any]] | None:
        """The handler bound to an intervention event, with its extra args."""
        bound = self.handlers.get(event_type)
        return bound[0] if bound else None

    def in_thread(self, handler: Callable[..., Any]) -> bool:
        """True when ``handler`` runs in the lane (off the loop)."""
        return self.lane is not None and runs_in_thread(handler)

    def is_inline_generator(self, handler: Callable[..., Any]) -> bool:
        """True when ``handler`` is a plain generator function that runs on
        the loop (not in the lane): its results can be taken without a
        coroutine."""
        try:
            return self._inline_generators[handler]
        except KeyError:
            answer = not self.in_thread(handler) and inspect.isgeneratorfunction(handler)
            if len(self._inline_generators) < 16:
                self._inline_generators[handler] = answer
            return answer
        except TypeError:  # an unhashable callable
            return not self.in_thread(handler) and inspect.isgeneratorfunction(handler)

    def make_event(self, event_type: EventType, message: IncomingMessage, *, in_thread: bool = False) -> Event:
        """The Event a handler receives for an incoming request (``in_thread``:
        for a handler in the lane, whose ``event.assoc`` is the blocking one)."""
        context_id = message.context_id
        try:
            context_tuple, transfer_syntax = self._context_tuples[context_id]
        except KeyError:
            context = self.contexts.get(context_id)
            if context is None:
                context_tuple, transfer_syntax = None, None
            else:
                context_tuple = PresentationContextTuple(
                    context.context_id, UID(context.abstract_syntax), UID(context.transfer_syntax)
                )
                transfer_syntax = context.transfer_syntax
            self._context_tuples[context_id] = (context_tuple, transfer_syntax)
        return Event(
            self.sync_event_source if in_thread else self.event_source,
            event_type,
            message=message,
            context=context_tuple,
            transfer_syntax=transfer_syntax,
        )

    # --------------------------------------------------------------- SCU
    async def exchange(
        self, context_id: int, command: Command, dataset: Any = None, *, hold: bool = False
    ) -> Command | None:
        """One request, one response; None if the association ended first
        (a DIMSE timeout aborts it, as pynetdicom does). ``hold``: see
        ``DimseChannel.request``."""
        try:
            response = await self.channel.request(context_id, command, dataset, hold=hold)
        except DimseTimeout:
            peer_log(LOGGER, logging.WARNING, self.peer_host, "DIMSE timeout waiting for %s: aborting the association",
                     self.peer_host or "the peer")
            self.channel.abort()
            return None
        except (AssociationAborted, AssociationClosed, NotEstablishedError, ConnectionError):
            return None
        return response.command

    def start_exchange(
        self, context_id: int, command: Command, dataset: Any, done: Callable[[Command | None], None], *, hold: bool = False
    ) -> bool:
        """``exchange`` without a task: the request goes out now and
        ``done`` gets its response command, or None as from ``exchange``
        (a DIMSE timeout aborts the association here too). False, with
        nothing sent, when the request cannot go at once
        (``DimseChannel.start_request``): ``exchange`` it instead."""

        def answered(outcome: IncomingMessage | BaseException) -> None:
            if isinstance(outcome, IncomingMessage):
                done(outcome.command)
                return
            if isinstance(outcome, DimseTimeout):
                peer_log(LOGGER, logging.WARNING, self.peer_host,
                         "DIMSE timeout waiting for %s: aborting the association", self.peer_host or "the peer")
                self.channel.abort()
            done(None)

        return self.channel.start_request(context_id, command, dataset, answered, hold=hold)


#: An SCP operation: serve one request (sync: return None; or a coroutine).
ServeFunction = Callable[[ServiceSession, IncomingMessage], "Awaitable[None] | None"]


@dataclass(frozen=True)
class ServiceClass:
    """One PS3.4 service class as the dispatcher sees it."""

    name: str
    #: The SOP classes of the service class (documentation and presets).
    sop_classes: tuple[str, ...]
    #: Request Command Field -> the SCP function serving it.
    scp: Mapping[int, ServeFunction] = field(default_factory=dict)


def response_to(request: Command, field: int, status: int | None = None) -> Command:
    """The response command for ``request`` (no data set yet)."""
    return Command(
        field,
        affected_sop_class_uid=request.affected_sop_class_uid,
        message_id_being_responded_to=request.message_id,
        command_data_set_type=NO_DATASET,
        status=status,
    )


def answer_once(
    session: ServiceSession,
    message: IncomingMessage,
    event_type: EventType,
    bound: tuple[Callable[..., Any], list[Any]],
    response: Command,
    status_on_exception: int,
    after: Callable[[], None] | None = None,
) -> Awaitable[None] | None:
    """Serve a request that has one response (C-ECHO, C-STORE): call the
    bound handler (a plain function in the association's lane, or inline
    when there is none or it is marked so; ``async def`` as a task), put its
    status answer into ``response``, run ``after`` and send the response
    while the association lasts."""
    handler, args = bound
    if session.in_thread(handler):
        event = session.make_event(event_type, message, in_thread=True)
        return _answer_in_lane(session, message, event, bound, response, status_on_exception, after)
    event = session.make_event(event_type, message)
    if is_coroutine_function(handler):
        return _answer_async(session, message, event, bound, response, status_on_exception, after)
    try:
        result = handler(event, *args)
    except Exception:
        LOGGER.exception("exception in the handler bound to %s", event_type.name)
        response.status = status_on_exception
    else:
        if isinstance(result, asyncio.Future):
            return _answer_when_done(session, message, event_type.name, result, response, status_on_exception, after)
        apply_handler_status(result, response, event_type.name)
    _finish(session, message, response, after)
    return None


def _answer_in_lane(
    session: ServiceSession,
    message: IncomingMessage,
    event: Event,
    bound: tuple[Callable[..., Any], list[Any]],
    response: Command,
    status_on_exception: int,
    after: Callable[[], None] | None,
) -> asyncio.Future[None]:
    """``answer_once`` for a handler in the association's lane, without a
    task: the worker's outcome comes back as one callback on the loop,
    which sends the response there and then; the future returned (what
    the channel counts as the operation in progress) is done after it.
    A task awaiting a future took two more passes of the loop and a
    coroutine per request (each C-STORE sub-operation of a C-GET, for a
    blocking client's handler)."""
    handler, args = bound
    lane = session.lane
    assert lane is not None
    served: asyncio.Future[None] = lane.loop.create_future()

    def answered(result: Any, error: BaseException | None) -> None:
        if served.done():
            return  # the operation was cancelled meanwhile
        if error is not None and not isinstance(error, Exception):
            served.set_exception(error)  # as from a task: the channel aborts
            return
        _answer_with(served, session, message, event.event.name, result, error, response, status_on_exception, after)

    lane.call_back(handler, (event, *args), answered)
    return served


def _answer_when_done(
    session: ServiceSession,
    message: IncomingMessage,
    event_name: str,
    outcome: asyncio.Future[Any],
    response: Command,
    status_on_exception: int,
    after: Callable[[], None] | None,
) -> asyncio.Future[None]:
    """The answer of an inline handler that returned an ``asyncio.Future``
    of its status (a chromanet extra: e.g. the node's C-STORE, waiting for
    its group commit), sent from the future's callback: no task, no
    coroutine per request. The future returned is done once answered."""
    answered: asyncio.Future[None] = outcome.get_loop().create_future()

    def settle(_: asyncio.Future[Any]) -> None:
        if outcome.cancelled():
            error: BaseException | None = asyncio.CancelledError()
        else:
            error = outcome.exception()
        result = outcome.result() if error is None else None
        _answer_with(answered, session, message, event_name, result, error, response, status_on_exception, after)

    outcome.add_done_callback(settle)
    return answered


def _answer_with(
    served: asyncio.Future[None],
    session: ServiceSession,
    message: IncomingMessage,
    event_name: str,
    result: Any,
    error: BaseException | None,
    response: Command,
    status_on_exception: int,
    after: Callable[[], None] | None,
) -> None:
    """Answer a request from its handler's outcome (``result``, or
    ``error``: logged, the status of a handler that raised), then settle
    ``served``, the operation the channel counts (an error while
    answering is handed to it, as a task's would be)."""
    if error is not None:
        LOGGER.error("exception in the handler bound to %s", event_name, exc_info=error)
        response.status = status_on_exception
    else:
        apply_handler_status(result, response, event_name)
    try:
        _finish(session, message, response, after)
    except BaseException as exc:
        served.set_exception(exc)
        return
    served.set_result(None)


async def _answer_async(
    session: ServiceSession,
    message: IncomingMessage,
    event: Event,
    bound: tuple[Callable[..., Any], list[Any]],
    response: Command,
    status_on_exception: int,
    after: Callable[[], None] | None,
) -> None:
    handler, args = bound
    try:
        result = await handler(event, *args)
    except asyncio.CancelledError:
        raise
    except Exception:
        LOGGER.exception("exception in the handler bound to %s", event.event.name)
        response.status = status_on_exception
    else:
        apply_handler_status(result, response, event.event.name)
    _finish(session, message, response, after)


def _finish(
    session: ServiceSession, message: IncomingMessage, response: Command, after: Callable[[], None] | None
) -> None:
    if after is not None:
        after()
    if session.channel.end_error is None:
        session.respond(message, response)
