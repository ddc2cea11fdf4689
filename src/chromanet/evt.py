"""Events and the objects handlers receive, with pynetdicom's names.

A handler is bound to an event type (``evt.EVT_C_STORE``…) through
``evt_handlers=[(evt.EVT_C_STORE, handler)]`` or ``(event, handler, [args])``.
Intervention events (``EVT_C_*``, ``EVT_USER_ID``…) take the handler's return
value as the answer; notification events (``EVT_ACCEPTED``…) ignore it.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
from datetime import datetime
from io import BytesIO
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset

from chromanet import dsutil

if TYPE_CHECKING:
    from chromanet.dimse_channel import IncomingMessage

LOGGER = logging.getLogger("chromanet.events")


class NotificationEvent(NamedTuple):
    name: str
    description: str
    is_intervention: bool = False
    is_notification: bool = True

    def __str__(self) -> str:
        return self.name


class InterventionEvent(NamedTuple):
    name: str
    description: str
    is_intervention: bool = True
    is_notification: bool = False

    def __str__(self) -> str:
        return self.name


EVT_ABORTED = NotificationEvent("EVT_ABORTED", "Association aborted")
EVT_ACCEPTED = NotificationEvent("EVT_ACCEPTED", "Association request accepted")
EVT_CONN_CLOSE = NotificationEvent("EVT_CONN_CLOSE", "Connection closed")
EVT_CONN_OPEN = NotificationEvent("EVT_CONN_OPEN", "Connection opened")
EVT_ESTABLISHED = NotificationEvent("EVT_ESTABLISHED", "Association established")
EVT_REJECTED = NotificationEvent("EVT_REJECTED", "Association request rejected")
EVT_RELEASED = NotificationEvent("EVT_RELEASED", "Association released")
EVT_REQUESTED = NotificationEvent("EVT_REQUESTED", "Association requested")

EVT_USER_ID = InterventionEvent("EVT_USER_ID", "User identity negotiation received")
EVT_SOP_EXTENDED = InterventionEvent("EVT_SOP_EXTENDED", "SOP class extended negotiation received")
EVT_C_ECHO = InterventionEvent("EVT_C_ECHO", "C-ECHO request received")
EVT_C_FIND = InterventionEvent("EVT_C_FIND", "C-FIND request received")
EVT_C_GET = InterventionEvent("EVT_C_GET", "C-GET request received")
EVT_C_MOVE = InterventionEvent("EVT_C_MOVE", "C-MOVE request received")
EVT_C_STORE = InterventionEvent("EVT_C_STORE", "C-STORE request received")

# The wire events: off unless a handler is bound (then the connection and
# the DIMSE channel of the association call back; see AsyncAssociation).
EVT_DATA_RECV = NotificationEvent("EVT_DATA_RECV", "Data received from the peer")
EVT_DATA_SENT = NotificationEvent("EVT_DATA_SENT", "Data sent to the peer")
EVT_DIMSE_RECV = NotificationEvent("EVT_DIMSE_RECV", "Complete DIMSE message received and decoded")
EVT_DIMSE_SENT = NotificationEvent("EVT_DIMSE_SENT", "DIMSE message encoded and sent")
WIRE_EVENTS = frozenset({EVT_DATA_RECV, EVT_DATA_SENT})
DIMSE_EVENTS = frozenset({EVT_DIMSE_RECV, EVT_DIMSE_SENT})

# pynetdicom events chromanet never triggers. The names exist so that code
# naming them imports; binding a handler to one raises NotImplementedError
# (a handler that would silently never run is worse than an error).
EVT_ACSE_RECV = NotificationEvent("EVT_ACSE_RECV", "ACSE primitive received from the DUL")
EVT_ACSE_SENT = NotificationEvent("EVT_ACSE_SENT", "ACSE primitive sent to the DUL")
EVT_FSM_TRANSITION = NotificationEvent("EVT_FSM_TRANSITION", "State machine about to transition")
EVT_PDU_RECV = NotificationEvent("EVT_PDU_RECV", "PDU received and decoded")
EVT_PDU_SENT = NotificationEvent("EVT_PDU_SENT", "PDU encoded and sent")
EVT_ASYNC_OPS = InterventionEvent("EVT_ASYNC_OPS", "Asynchronous operations negotiation requested")
EVT_SOP_COMMON = InterventionEvent("EVT_SOP_COMMON", "SOP class common extended negotiation requested")
EVT_N_ACTION = InterventionEvent("EVT_N_ACTION", "N-ACTION request received")
EVT_N_CREATE = InterventionEvent("EVT_N_CREATE", "N-CREATE request received")
EVT_N_DELETE = InterventionEvent("EVT_N_DELETE", "N-DELETE request received")
EVT_N_EVENT_REPORT = InterventionEvent("EVT_N_EVENT_REPORT", "N-EVENT-REPORT request received")
EVT_N_GET = InterventionEvent("EVT_N_GET", "N-GET request received")
EVT_N_SET = InterventionEvent("EVT_N_SET", "N-SET request received")

NOT_IMPLEMENTED_EVENTS = frozenset(
    {
        EVT_ACSE_RECV,
        EVT_ACSE_SENT,
        EVT_FSM_TRANSITION,
        EVT_PDU_RECV,
        EVT_PDU_SENT,
        EVT_ASYNC_OPS,
        EVT_N_ACTION,
        EVT_N_CREATE,
        EVT_N_DELETE,
        EVT_N_EVENT_REPORT,
        EVT_N_GET,
        EVT_N_SET,
    }
)

EventType = NotificationEvent | InterventionEvent

# The intervention events chromanet answers itself when no handler is bound
# (C-ECHO Success, C-STORE 0xC211, user identity refused...): each always
# has a handler, the bound one or that built-in answer, so each is listed by
# ``get_events()`` as pynetdicom lists its default handlers.
ANSWERED_BY_DEFAULT = (
    EVT_C_ECHO,
    EVT_C_FIND,
    EVT_C_GET,
    EVT_C_MOVE,
    EVT_C_STORE,
    EVT_SOP_COMMON,
    EVT_SOP_EXTENDED,
    EVT_USER_ID,
)


def check_implemented(event: Any) -> None:
    """NotImplementedError for a pynetdicom event chromanet never triggers."""
    if event in NOT_IMPLEMENTED_EVENTS:
        raise NotImplementedError(f"chromanet does not trigger {event.name}: a handler bound to it would never run")
HandlerSpec = tuple[EventType, Callable[..., Any]] | tuple[EventType, Callable[..., Any], list[Any]]

# pynetdicom-style request attribute names -> our Command field names.
_REQUEST_FIELDS = {
    "MessageID": "message_id",
    "MessageIDBeingRespondedTo": "message_id_being_responded_to",
    "AffectedSOPClassUID": "affected_sop_class_uid",
    "AffectedSOPInstanceUID": "affected_sop_instance_uid",
    "Priority": "priority",
    "MoveDestination": "move_destination",
    "MoveOriginatorApplicationEntityTitle": "move_originator_application_entity_title",
    "MoveOriginatorMessageID": "move_originator_message_id",
    "Status": "status",
}


class Request:
    """A received request, read like pynetdicom's DIMSE primitives
    (``event.request.MessageID``, ``.AffectedSOPInstanceUID``…)."""

    __slots__ = ("command", "_message")

    def __init__(self, message: IncomingMessage) -> None:
        self._message = message
        self.command = message.command

    def __getattr__(self, name: str) -> Any:
        field = _REQUEST_FIELDS.get(name)
        if field is None:
            raise AttributeError(name)
        return getattr(self.command, field)

    def _encoded(self) -> BytesIO | None:
        raw = self._message.dataset
        if raw is None:
            return None
        if isinstance(raw, dsutil.Part10File):
            return BytesIO(bytes(raw.dataset_bytes()))
        return BytesIO(bytes(raw))

    @property
    def DataSet(self) -> BytesIO | None:  # noqa: N802 (pynetdicom's name)
        """The C-STORE data set as received (encoded in the context's
        transfer syntax, not decoded), in a new BytesIO, as pynetdicom's
        primitive has it: programs save it without decoding."""
        return self._encoded()

    @property
    def Identifier(self) -> BytesIO | None:  # noqa: N802 (pynetdicom's name)
        """The C-FIND/C-GET/C-MOVE identifier as received, in a new BytesIO."""
        return self._encoded()


class DimseMessage:
    """``event.message`` of EVT_DIMSE_SENT / EVT_DIMSE_RECV: one DIMSE
    message. ``command`` is chromanet's Command; ``command_set`` the same
    as a pydicom Dataset and ``data_set`` the data set as encoded (bytes,
    or None), as pynetdicom's message classes name them; both are built
    on first access."""

    def __init__(self, context_id: int, command: Any, dataset: Any) -> None:
        self.context_id = context_id
        self.command = command
        self._dataset = dataset
        self._command_set: Dataset | None = None

    @property
    def command_set(self) -> Dataset:
        if self._command_set is None:
            from chromanet import _dimse

            self._command_set = dsutil.decode_dataset(
                _dimse.encode_command(self.command), dsutil.uids.ImplicitVRLittleEndian
            )
        return self._command_set

    @property
    def data_set(self) -> Any:
        data = self._dataset
        if data is None or isinstance(data, (bytes, Dataset)):
            return data
        if isinstance(data, dsutil.Part10File):
            return bytes(data.dataset_bytes())
        try:
            return bytes(data)
        except TypeError:
            return data

    def __repr__(self) -> str:
        return f"<DimseMessage 0x{self.command.command_field:04X} context {self.context_id}>"


class Event:
    """What a handler receives (pynetdicom's ``Event`` attributes).

    Data sets are decoded on first access only: a handler that stores
    ``event.encoded_dataset()`` or reads ``event.dataset_path`` never pays for
    a decode.
    """

    def __init__(
        self,
        assoc: Any,
        event: EventType,
        attrs: dict[str, Any] | None = None,
        *,
        message: IncomingMessage | None = None,
        context: Any = None,
        transfer_syntax: str | None = None,
        **extra: Any,
    ) -> None:
        self.assoc = assoc
        self.event = event
        self.timestamp = datetime.now()
        self.context = context
        self._message = message
        self._transfer_syntax = transfer_syntax
        self._decoded: Dataset | None = None
        self._file_meta: FileMetaDataset | None = None
        # ``attrs``: pynetdicom's third argument, extra attributes by name;
        # one that would replace an attribute the Event has is an error.
        for key, value in (attrs or {}).items():
            if key in self.__dict__ or hasattr(type(self), key):
                raise AttributeError(f"'Event' object already has an attribute '{key}'")
            setattr(self, key, value)
        for key, value in extra.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"<Event {self.event.name}>"

    def with_assoc(self, assoc: Any) -> Event:
        """This event as seen with another ``assoc`` (the blocking
        ``Association`` for a handler in a worker thread)."""
        twin = copy.copy(self)
        twin.assoc = assoc
        return twin

    # --------------------------------------------------------- the request
    @property
    def request(self) -> Request:
        if self._message is None:
            raise AttributeError(f"{self.event.name} has no request")
        return Request(self._message)

    @property
    def address(self) -> tuple[str, int]:
        """EVT_CONN_OPEN / EVT_CONN_CLOSE: the peer's (IP address, port)."""
        if self.event.name not in ("EVT_CONN_OPEN", "EVT_CONN_CLOSE"):
            raise AttributeError(f"{self.event.name} has no address")
        remote = self.assoc.remote
        return (remote["address"], remote["port"])

    @property
    def message_id(self) -> int:
        return self.request.MessageID

    @property
    def is_cancelled(self) -> bool:
        """True once the peer sent a C-CANCEL for this request."""
        return self._message is not None and self._message.cancelled

    @property
    def move_destination(self) -> str | None:
        return self._message.command.move_destination if self._message else None

    # ---------------------------------------------------- the data set part
    def _raw(self) -> Any:
        if self._message is None or self._message.dataset is None:
            raise AttributeError(f"{self.event.name} carries no data set")
        return self._message.dataset

    @property
    def dataset_path(self) -> Any:
        """The spooled file (streamed C-STORE); AttributeError otherwise."""
        raw = self._raw()
        if isinstance(raw, dsutil.Part10File):
            return raw.path
        raise AttributeError("the data set was received in memory, not spooled to a file")

    def _decode(self) -> Dataset:
        if self._decoded is None:
            raw = self._raw()
            if isinstance(raw, dsutil.Part10File):
                self._decoded = dsutil.decode_dataset(raw.dataset_bytes(), raw.transfer_syntax)
            else:
                assert self._transfer_syntax is not None
                self._decoded = dsutil.decode_dataset(raw, self._transfer_syntax)
        return self._decoded

    @property
    def dataset(self) -> Dataset:
        """The C-STORE data set, decoded (cached)."""
        return self._decode()

    @property
    def identifier(self) -> Dataset:
        """The C-FIND/C-GET/C-MOVE request identifier, decoded (cached)."""
        return self._decode()

    @property
    def file_meta(self) -> FileMetaDataset:
        """The file meta of the C-STORE data set; AttributeError for an
        event that carries none (as pynetdicom)."""
        if self.event.name != "EVT_C_STORE" or self._message is None:
            raise AttributeError(f"{self.event.name} carries no C-STORE data set: no file_meta")
        if self._file_meta is None:
            command = self.request.command
            syntax = self._transfer_syntax or dsutil.uids.ExplicitVRLittleEndian
            self._file_meta = dsutil.build_file_meta(
                command.affected_sop_class_uid, command.affected_sop_instance_uid, syntax
            )
        return self._file_meta

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        """The data set as received, without a decode; with ``include_meta``
        prefixed by the preamble and file meta: a complete Part 10 file."""
        raw = self._raw()
        if isinstance(raw, dsutil.Part10File):
            body = bytes(raw.dataset_bytes())
        else:
            body = bytes(raw)
        if not include_meta:
            return body
        return dsutil.encode_file_header(self.file_meta) + body


def split_handlers(handlers: list[HandlerSpec] | None) -> dict[EventType, list[tuple[Callable[..., Any], list[Any]]]]:
    """``[(event, handler[, args])…]`` -> {event: [(handler, args)…]}.

    Intervention events keep only their last handler, as in pynetdicom.
    """
    bound: dict[EventType, list[tuple[Callable[..., Any], list[Any]]]] = {}
    for spec in handlers or []:
        if len(spec) == 2:
            event, handler = spec  # type: ignore[misc]
            args: list[Any] = []
        elif len(spec) == 3:
            event, handler, args = spec  # type: ignore[misc]
        else:
            raise ValueError(f"an event handler is (event, handler) or (event, handler, args), not {spec!r}")
        check_implemented(event)
        if event.is_intervention:
            bound[event] = [(handler, list(args))]
        else:
            bound.setdefault(event, []).append((handler, list(args)))
    return bound


#: The attribute ``inline`` sets on a handler.
INLINE_ATTRIBUTE = "chromanet_inline"


def inline(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a plain ``def`` handler to run on the event loop thread, inline
    (a chromanet extra). Sync handlers otherwise run in a worker thread,
    in order per association (``services/handler_threads.py``), which costs
    a thread hand-off per call; a handler that never blocks (no I/O, no
    lock, no blocking call on ``event.assoc``) and is fast saves it. Inline,
    ``event.assoc`` is the ``AsyncAssociation``, as for ``async def``
    handlers. ``AE.sync_handlers_inline = True`` does this for every
    handler of the AE. A bound method cannot carry the mark: a marked
    wrapper of it is returned (bind that one). An inline C-ECHO or C-STORE
    handler may also return an ``asyncio.Future`` of its answer: the
    response leaves when the future is done (failed or cancelled: the
    status of a handler that raised), without a task per request."""
    try:
        setattr(handler, INLINE_ATTRIBUTE, True)
    except AttributeError:

        @functools.wraps(handler)
        def marked(*args: Any, **kwargs: Any) -> Any:
            return handler(*args, **kwargs)

        setattr(marked, INLINE_ATTRIBUTE, True)
        return marked
    return handler


def runs_in_thread(handler: Callable[..., Any]) -> bool:
    """True for a handler that runs in a worker thread when the association
    has a lane: a plain function or method not marked ``inline`` (an
    ``async def`` or async generator function runs on the loop)."""
    return _handler_kind(handler)[0]


def is_coroutine_function(handler: Callable[..., Any]) -> bool:
    """``inspect.iscoroutinefunction(handler)``, remembered per handler."""
    return _handler_kind(handler)[1]


def _handler_kind(handler: Callable[..., Any]) -> tuple[bool, bool]:
    """(runs in a thread, is a coroutine function) of a handler: asked for
    every request served, answered once per handler (``inspect`` unwraps
    partials and methods each time it is asked). A handler that is not
    hashable is inspected every time."""
    try:
        return _remembered_kind(handler)
    except TypeError:  # not hashable
        return _inspect_kind(handler)


def _inspect_kind(handler: Callable[..., Any]) -> tuple[bool, bool]:
    coroutine = inspect.iscoroutinefunction(handler)
    if getattr(handler, INLINE_ATTRIBUTE, False):
        return False, coroutine
    return not (coroutine or inspect.isasyncgenfunction(handler)), coroutine


_remembered_kind = functools.lru_cache(maxsize=256)(_inspect_kind)


def notify(
    handlers: dict[EventType, list[tuple[Callable[..., Any], list[Any]]]],
    event: Event,
    lane: Any = None,
    sync_assoc: Any = None,
) -> None:
    """Run the notification handlers; their exceptions are logged, never
    raised. With ``lane`` (the association's ``HandlerLane``), plain
    functions run there, in turn with the association's other handlers, and
    see ``sync_assoc`` (the blocking ``Association``) as ``event.assoc``;
    ``async def`` handlers run as tasks on the loop."""
    for handler, args in handlers.get(event.event, ()):
        if lane is not None and runs_in_thread(handler):
            lane.post(_notify_one, handler, event.with_assoc(sync_assoc), args)
        else:
            _notify_one(handler, event, args)


def _notify_one(handler: Callable[..., Any], event: Event, args: list[Any]) -> None:
    try:
        result = handler(event, *args)
    except Exception:
        LOGGER.exception("handler for %s raised", event.event.name)
        return
    if inspect.iscoroutine(result):
        try:
            asyncio.get_running_loop().create_task(_awaited(result, event.event.name))
        except RuntimeError:  # not on a loop: nothing can run it
            result.close()


async def _awaited(result: Any, name: str) -> None:
    try:
        await result
    except Exception:
        LOGGER.exception("handler for %s raised", name)
