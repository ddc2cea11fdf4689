"""Query/Retrieve (PS3.4 Annex C): C-FIND, C-GET and C-MOVE, SCU and SCP,
for any information model; the Color Palette service class
(``color_palette_qr.py``) is served by it.

SCP, with pynetdicom's handler protocol:

- EVT_C_FIND: the handler is a generator (or async generator) yielding
  ``(status, identifier)``; pending statuses send the identifier, any other
  status ends the operation.
- EVT_C_GET: yields the number of sub-operations first, then
  ``(status, dataset)``; each pending dataset becomes a C-STORE
  sub-operation on the same association.
- EVT_C_MOVE: yields the destination ``(address, port)`` (or
  ``(None, None)`` for an unknown destination) first, then the number, then
  ``(status, dataset)``; the C-STOREs go over a sub-association to the
  destination, with the Move Originator fields set.

The C-STOREs go one after the other, a Pending response after each, unless
the association that carries them (the C-GET's own; the sub-association of
a C-MOVE) negotiated an asynchronous operations window that lets us invoke
more than one operation (PS3.7 D.3.3.3): then up to that many are
outstanding at once, the handler is asked for its next data set only when
there is room, and each Pending response counts the sub-operations whose
responses arrived. Whatever ends the retrieve (the handler's last status,
a C-CANCEL) waits for the outstanding ones first. The sub-operations, their
counts and responses are ``suboperations.py``'s; this module gets the
handler's destination and number.

A status is an int or a Dataset holding (0000,0900) and optional elements.
Datasets to send may be pydicom Datasets, Part 10 images (bytes) or Part 10
file paths; files and bytes whose transfer syntax was accepted go out as they
are, never decoded. The engine's own failures for bad handler answers are
named in ``chromanet.status.Status`` (0xC001, 0xC002, 0xC310-0xC312,
0xC410-0xC413, 0xC510-0xC515). More than 65535 sub-operations cannot be
counted in the US response fields: that retrieve is refused with 0xA702 and
an Error Comment saying why.

SCU: ``query`` is an async generator of ``(status, identifier)`` pairs, one
per response as it arrives (pynetdicom's shape): ``status`` is the response
as a Dataset with Status and the sub-operation counts, ``identifier`` the
decoded identifier or None (an empty Dataset for a C-GET/C-MOVE final
Cancel, Warning or Failure response that came without one, as pynetdicom
gives it). If the association ends before the final
response, one ``(Dataset(), None)`` pair is yielded, as pynetdicom does.
Leaving the loop before the final response sends a C-CANCEL and drops the
responses still coming.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from typing import Any, AsyncIterator, Awaitable

from pydicom import Dataset

from chromanet import _dimse, dsutil, uids
from chromanet._dimse import Command
from chromanet.dimse_channel import DimseChannel, DimseTimeout, IncomingMessage
from chromanet.evt import EVT_C_FIND, EVT_C_GET, EVT_C_MOVE, EventType
from chromanet.logutil import peer_log
from chromanet.services import storage
from chromanet.services.answers import Exhausted, HandlerResults, apply_handler_status, response_to_dataset
from chromanet.services.base import ServiceSession, response_to
from chromanet.services.handler_threads import ThreadedResults
from chromanet.services.observe import OperationRecord
from chromanet.services.suboperations import NotStored, Retrieve, StoreTarget, Target, run_suboperations, suboperation_window
from chromanet.status import (
    STATUS_CANCEL,
    STATUS_FAILURE,
    STATUS_WARNING,
    Status,
    code_to_category,
)
from chromanet.ul.acse import AssociationAborted, AssociationClosed

LOGGER = logging.getLogger("chromanet.services")

# The codes by name, from the one status table (plain ints on the hot path).
SUCCESS, CANCEL, PENDING = int(Status.SUCCESS), int(Status.CANCEL), int(Status.PENDING)
_PENDING = (PENDING, int(Status.PENDING_WARNING))
FIND_DECODE_FAILED = int(Status.FIND_IDENTIFIER_DECODE_FAILED)
FIND_HANDLER_RAISED = int(Status.FIND_HANDLER_RAISED)
FIND_ENCODE_FAILED = int(Status.FIND_RESPONSE_ENCODE_FAILED)
GET_DECODE_FAILED = int(Status.GET_IDENTIFIER_DECODE_FAILED)
GET_HANDLER_RAISED = int(Status.GET_HANDLER_RAISED)
GET_BAD_COUNT = int(Status.GET_SUBOPERATION_COUNT_INVALID)
MOVE_DECODE_FAILED = int(Status.MOVE_IDENTIFIER_DECODE_FAILED)
MOVE_HANDLER_RAISED = int(Status.MOVE_HANDLER_RAISED)
MOVE_BAD_COUNT = int(Status.MOVE_SUBOPERATION_COUNT_INVALID)
MOVE_NOT_YIELDED = int(Status.MOVE_DESTINATION_OR_COUNT_NOT_YIELDED)
MOVE_BAD_DESTINATION = int(Status.MOVE_DESTINATION_INVALID)
MOVE_DESTINATION_UNKNOWN = int(Status.MOVE_DESTINATION_UNKNOWN)
SUBOPERATIONS_IMPOSSIBLE = int(Status.OUT_OF_RESOURCES_SUBOPERATIONS)
SUBOPERATIONS_WITH_FAILURES = int(Status.SUBOPERATIONS_COMPLETE_WITH_FAILURES)
MAX_SUBOPERATIONS = 0xFFFF
# Yield to the loop every this many responses, so that a C-CANCEL (or any
# other association's traffic) is read while a long C-FIND streams out.
_YIELD_EVERY = 32
# A sync generator handler in a worker thread hands over at most this many
# results per hop: C-FIND identifiers are small and many; a retrieve's data
# sets may be large, and each costs a sub-operation's round trip anyway.
_FIND_BATCH = 64
# Bytes of responses a long C-FIND may have waiting to be written when it
# produces more (~200 bytes a pending response with a small identifier).
_WRITE_AHEAD = 32 * 1024
_RETRIEVE_BATCH = 8
# ... and up to this many, while a hop has taken less than _RETRIEVE_WITHIN
# seconds: a generator yielding Datasets it holds in memory (a pynetdicom
# program's list of instances) hands them over in a hop per 64, not per 8;
# one that reads a file per result makes no more than it can in that time.
_RETRIEVE_MOST = 64
_RETRIEVE_WITHIN = 0.0005

Results = HandlerResults | ThreadedResults


def _ends_operation(item: Any) -> bool:
    """True for a handler result whose status is not Pending (the last one
    the engine asks for)."""
    try:
        status = item[0]
    except (TypeError, IndexError, KeyError):
        return True
    if isinstance(status, Dataset):
        status = status.get("Status")
    return not isinstance(status, int) or status not in _PENDING


def _batched(results: Results, limit: int, most: int = 0, within: float = 0.0) -> None:
    if isinstance(results, ThreadedResults):
        results.batch(limit, _ends_operation, most=most, within=within)


_response = response_to


async def _begin(
    session: ServiceSession,
    message: IncomingMessage,
    event_type: EventType,
    response_field: int,
    decode_failed: int,
    handler_raised: int,
) -> tuple[_Sender, Results] | None:
    """The common start of C-FIND, C-GET and C-MOVE: decode the identifier
    and call the handler. None (with the failure response sent) when either
    fails or no handler is bound."""
    request = message.command
    sender = _sender(session, message)
    bound = session.handler(event_type)
    if bound is None:
        LOGGER.error("no handler is bound to %s", event_type.name)
        await sender.send(_response(request, response_field, handler_raised))
        return None
    handler, args = bound
    in_thread = session.in_thread(handler)
    event = session.make_event(event_type, message, in_thread=in_thread)
    try:
        # Decoding checks the structure first (dsutil.decode_dataset):
        # pydicom reads garbage leniently (as an empty or odd identifier,
        # which a handler could take for "match all").
        identifier = event.identifier
    except Exception as exc:
        _identifier_failed(session, event_type, exc)
        await sender.send(_response(request, response_field, decode_failed))
        return None
    if message.trace is not None and message.trace.details:
        message.trace.note_query(identifier)
    try:
        if not in_thread or inspect.isgeneratorfunction(handler):
            # Inline; or a generator function, which runs nothing when called.
            produced = handler(event, *args)
        else:
            # Anything else (a function returning a list…) runs in the lane.
            assert session.lane is not None
            produced = await session.lane.call(handler, event, *args)
        if produced is None:
            # A handler that returns nothing yields nothing: C-FIND found no
            # match (Success); C-GET/C-MOVE lack the number or destination
            # (0xC413, 0xC514), as in pynetdicom.
            produced = ()
        results: Results
        if in_thread and inspect.isgenerator(produced):
            assert session.lane is not None
            results = ThreadedResults(produced, session.lane, lambda: message.cancelled)
        else:
            results = HandlerResults(produced)
    except Exception:
        LOGGER.exception("exception in the handler bound to %s", event_type.name)
        await sender.send(_response(request, response_field, handler_raised))
        return None
    return sender, results


def _sender(session: ServiceSession, message: IncomingMessage) -> _Sender:
    return _Sender(session.channel, message, session.transfer_syntax(message.context_id) or uids.ImplicitVRLittleEndian)


def _identifier_failed(session: ServiceSession, event_type: EventType, exc: Exception) -> None:
    peer_log(LOGGER, logging.WARNING, session.peer_host, "%s request identifier from %s failed to decode: %s",
             event_type.name, session.peer_host, exc)


class _Sender:
    """Sends one operation's responses; pauses for the transport and yields
    to the loop now and then."""

    def __init__(self, channel: DimseChannel, message: IncomingMessage, transfer_syntax: str) -> None:
        self.channel = channel
        self.context_id = message.context_id
        self.transfer_syntax = transfer_syntax
        self.sent = 0
        self.trace: OperationRecord | None = message.trace
        self._pending: dict[int, Command] = {}

    def pending_response(self, request: Command, field: int, status: Any) -> Command | None:
        """The response to send for a pending ``status`` that is a plain int
        (an archive's matches), made once for the operation and sent again
        for each: every pending response of one request carries the same
        command (a C-FIND of 10,000 matches made and checked 10,000). None
        for any other status, and while something keeps the commands sent
        (the operation is traced, or EVT_DIMSE_SENT is bound): each gets
        its own then."""
        if status.__class__ is not int or status not in _PENDING:
            return None
        if self.trace is not None or self.channel.dimse_hook is not None:
            return None
        response = self._pending.get(status)
        if response is None:
            response = self._pending[status] = _response(request, field, status)
        return response

    def put(self, response: Command, identifier: Any = None) -> bool:
        """Send ``response`` now; True when the caller is to ``await
        pace()`` before it sends more (``send`` does both)."""
        channel = self.channel
        if channel.end_error is not None:
            return False
        if identifier is not None:
            response.command_data_set_type = _dimse.DATASET_PRESENT
        # A pending response is followed at once by the next one, or by the
        # next sub-operation's C-STORE-RQ: both go out in one write.
        channel.send(self.context_id, response, identifier, hold=response.status in _PENDING)
        if self.trace is not None:
            self.trace.note_response(response, identifier)
        self.sent += 1
        return self.sent % _YIELD_EVERY == 0 or channel.writing_paused

    async def pace(self) -> None:
        """Yield to the loop every ``_YIELD_EVERY`` responses, and wait while
        the peer reads slower than we write."""
        if self.sent % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
            # Pending responses go no further ahead of what the peer has
            # read than this: a C-CANCEL is answered after fewer matches.
            await self.channel.drain_below(_WRITE_AHEAD)
        await self.channel.drain()

    async def send(self, response: Command, identifier: Any = None) -> None:
        if self.put(response, identifier):
            await self.pace()

    def encode(self, dataset: Dataset) -> bytes:
        return dsutil.encode_dataset(dataset, self.transfer_syntax)


# ----------------------------------------------------------------- C-FIND
# What answering one handler result left to do (``_answer_find``).
_GO_ON, _PACE, _OVER = 0, 1, 2


def serve_find(session: ServiceSession, message: IncomingMessage) -> Awaitable[None] | None:
    """SCP: serve one C-FIND-RQ with the EVT_C_FIND handler.

    A plain generator handler that runs inline (on the loop) is served here
    and now, without a task of its own: its results are taken and answered
    one after the other as a task would, and only when something has to be
    waited for (every ``_YIELD_EVERY`` responses, or a full write buffer)
    does the rest go on in a coroutine. Any other handler is served by the
    coroutine from the start."""
    bound = session.handler(EVT_C_FIND)
    if bound is None or not session.is_inline_generator(bound[0]):
        return _serve_find(session, message)
    handler, args = bound
    request = message.command
    sender = _sender(session, message)
    event = session.make_event(EVT_C_FIND, message)
    try:
        identifier = event.identifier
    except Exception as exc:
        _identifier_failed(session, EVT_C_FIND, exc)
        sender.put(_response(request, _dimse.C_FIND_RSP, FIND_DECODE_FAILED))
        return None
    if message.trace is not None and message.trace.details:
        message.trace.note_query(identifier)
    try:
        results = HandlerResults(handler(event, *args))
    except Exception:
        LOGGER.exception("exception in the handler bound to %s", EVT_C_FIND.name)
        sender.put(_response(request, _dimse.C_FIND_RSP, FIND_HANDLER_RAISED))
        return None
    handed_on = False
    try:
        while True:
            if message.cancelled:
                sender.put(_response(request, _dimse.C_FIND_RSP, CANCEL))
                return None
            try:
                status, identifier = results.next_now()
            except Exhausted:
                break
            except Exception:
                LOGGER.exception("exception in the handler bound to EVT_C_FIND")
                sender.put(_response(request, _dimse.C_FIND_RSP, FIND_HANDLER_RAISED))
                return None
            done = _answer_find(sender, request, message, status, identifier)
            if done == _OVER:
                return None
            if done == _PACE:
                handed_on = True
                return _find_on(sender, request, message, results, paced=False)
        sender.put(_response(request, _dimse.C_FIND_RSP, SUCCESS))
        return None
    finally:
        if not handed_on:
            results.close_now()


async def _serve_find(session: ServiceSession, message: IncomingMessage) -> None:
    """``serve_find`` in a coroutine: a handler in the lane, an async one,
    or one that is not a generator."""
    request = message.command
    begun = await _begin(session, message, EVT_C_FIND, _dimse.C_FIND_RSP, FIND_DECODE_FAILED, FIND_HANDLER_RAISED)
    if begun is None:
        return
    sender, results = begun
    _batched(results, _FIND_BATCH)
    await _find_on(sender, request, message, results, paced=True)


async def _find_on(sender: _Sender, request: Command, message: IncomingMessage, results: Results, *, paced: bool) -> None:
    """Answer the handler's results from here on (``paced``: the last
    response sent needs no ``pace()`` first), then the final response; the
    handler's generator is closed however it ends."""
    try:
        if not paced:
            await sender.pace()
        while True:
            if message.cancelled:
                await sender.send(_response(request, _dimse.C_FIND_RSP, CANCEL))
                return
            try:
                status, identifier = await results.next()
            except Exhausted:
                break
            except Exception:
                LOGGER.exception("exception in the handler bound to EVT_C_FIND")
                await sender.send(_response(request, _dimse.C_FIND_RSP, FIND_HANDLER_RAISED))
                return
            done = _answer_find(sender, request, message, status, identifier)
            if done == _OVER:
                return
            if done == _PACE:
                await sender.pace()
        await sender.send(_response(request, _dimse.C_FIND_RSP, SUCCESS))
    finally:
        await results.close()


def _answer_find(sender: _Sender, request: Command, message: IncomingMessage, status: Any, identifier: Any) -> int:
    """Answer one (status, identifier) the handler yielded: a pending
    response with the identifier (``_GO_ON``, or ``_PACE`` when the sender
    asks to be paced), or the response that ends the operation (``_OVER``):
    the handler's final status, Cancel, or a failure to encode."""
    response = sender.pending_response(request, _dimse.C_FIND_RSP, status) if identifier is not None else None
    if response is None:
        response = _response(request, _dimse.C_FIND_RSP)
        apply_handler_status(status, response, "EVT_C_FIND")
        if response.status not in _PENDING:
            if response.status == CANCEL or message.cancelled:
                response = _response(request, _dimse.C_FIND_RSP, CANCEL)
            sender.put(response)
            return _OVER
    if message.cancelled:
        sender.put(_response(request, _dimse.C_FIND_RSP, CANCEL))
        return _OVER
    try:
        # Bytes are an identifier already encoded in the context's
        # transfer syntax (an archive's fast path): sent as they are.
        if isinstance(identifier, (bytes, bytearray, memoryview)):
            encoded = identifier
        else:
            encoded = sender.encode(identifier)
    except Exception as exc:
        LOGGER.error("C-FIND response identifier failed to encode: %s", exc)
        sender.put(_response(request, _dimse.C_FIND_RSP, FIND_ENCODE_FAILED))
        return _OVER
    return _PACE if sender.put(response, encoded) else _GO_ON


# ------------------------------------------------------- C-GET and C-MOVE
class _EarlyStatus(Exception):
    """The handler yielded a status Dataset where the destination or the
    number was due: the operation ends with that status (a chromanet
    extension of the protocol, for a refused identifier)."""

    def __init__(self, status: Dataset) -> None:
        self.status = status

    async def answer(self, sender: _Sender, request: Command, field: int) -> None:
        response = _response(request, field)
        apply_handler_status(self.status, response, "retrieve handler")
        await sender.send(response)


def _early_status(value: Any) -> None:
    if isinstance(value, Dataset) and "Status" in value:
        raise _EarlyStatus(value)


async def _count(results: Results) -> int:
    value = await results.next()
    _early_status(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"the number of sub-operations must be an int, not {type(value).__name__}")
    return value


async def _run_suboperations(
    retrieve: Retrieve,
    results: Results,
    message: IncomingMessage,
    target: Target,
    raised_status: int,
    window: int = 1,
) -> None:
    _batched(results, _RETRIEVE_BATCH, _RETRIEVE_MOST, _RETRIEVE_WITHIN)
    await run_suboperations(retrieve, results, message, target, raised_status, window)


async def serve_get(session: ServiceSession, message: IncomingMessage) -> None:
    """SCP: serve one C-GET-RQ with the EVT_C_GET handler."""
    request = message.command
    begun = await _begin(session, message, EVT_C_GET, _dimse.C_GET_RSP, GET_DECODE_FAILED, GET_HANDLER_RAISED)
    if begun is None:
        return
    sender, results = begun
    try:
        try:
            total = await _count(results)
        except _EarlyStatus as early:
            await early.answer(sender, request, _dimse.C_GET_RSP)
            return
        except Exception as exc:
            LOGGER.error("the C-GET handler did not yield a valid number of sub-operations: %s", exc)
            await sender.send(_response(request, _dimse.C_GET_RSP, GET_BAD_COUNT))
            return
        if not await _check_total(sender, request, _dimse.C_GET_RSP, total):
            return
        retrieve = Retrieve(request, _dimse.C_GET_RSP, sender, total)
        await _run_suboperations(
            retrieve,
            results,
            message,
            StoreTarget(session, None, message.trace),
            GET_HANDLER_RAISED,
            suboperation_window(session),
        )
    finally:
        await results.close()


async def _check_total(sender: _Sender, request: Command, field: int, total: int) -> bool:
    """False (and the final response sent) when ``total`` ends the retrieve."""
    if total < 1:
        response = _response(request, field, SUCCESS)
        response.number_of_completed_suboperations = 0
        response.number_of_failed_suboperations = 0
        response.number_of_warning_suboperations = 0
        await sender.send(response)
        return False
    if total > MAX_SUBOPERATIONS:
        response = _response(request, field, SUBOPERATIONS_IMPOSSIBLE)
        comment = f"{total} sub-operations: more than 65535 cannot be counted"
        # Error Comment is LO (64 characters at most): a huge number would
        # make the response itself fail to encode.
        response.error_comment = comment if len(comment) <= 64 else "more than 65535 sub-operations cannot be counted"
        await sender.send(response)
        return False
    return True


#: What a C-MOVE handler may give for the association to the destination
#: (``AE.associate`` keywords); anything else is an invalid destination.
_DESTINATION_KEYWORDS = frozenset({"contexts", "ae_title", "max_pdu", "ext_neg", "bind_address", "tls_args", "evt_handlers"})


def _valid_destination(value: Any) -> tuple[str | None, int | None, dict[str, Any]] | None:
    """(address, port, associate kwargs) from the handler's first yield, or
    None when it is not a valid destination."""
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        return None
    address, port = value[0], value[1]
    kwargs = value[2] if len(value) == 3 else {}
    if address is None:
        return None, None, {}
    if not isinstance(kwargs, dict) or isinstance(port, bool) or not isinstance(port, int):
        return None
    if not set(kwargs) <= _DESTINATION_KEYWORDS:
        return None
    if not 0 < port < 65536 or not isinstance(address, str) or not address:
        return None
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if any(c.isspace() for c in address) or len(address) > 253:
            return None
    return address, port, kwargs


async def serve_move(session: ServiceSession, message: IncomingMessage) -> None:
    """SCP: serve one C-MOVE-RQ with the EVT_C_MOVE handler."""
    request = message.command
    begun = await _begin(session, message, EVT_C_MOVE, _dimse.C_MOVE_RSP, MOVE_DECODE_FAILED, MOVE_HANDLER_RAISED)
    if begun is None:
        return
    sender, results = begun
    sub_assoc = None
    try:
        try:
            first = await results.next()
            _early_status(first)
            destination = _valid_destination(first)
        except _EarlyStatus as early:
            await early.answer(sender, request, _dimse.C_MOVE_RSP)
            return
        except Exhausted:
            await sender.send(_response(request, _dimse.C_MOVE_RSP, MOVE_NOT_YIELDED))
            return
        except Exception:
            # pynetdicom: no destination, whatever the reason, is 0xC514.
            LOGGER.exception("exception in the handler bound to EVT_C_MOVE where the destination was due")
            await sender.send(_response(request, _dimse.C_MOVE_RSP, MOVE_NOT_YIELDED))
            return
        if destination is None:
            await sender.send(_response(request, _dimse.C_MOVE_RSP, MOVE_BAD_DESTINATION))
            return
        address, port, kwargs = destination
        if address is None:
            LOGGER.info("unknown move destination %r", request.move_destination)
            await sender.send(_response(request, _dimse.C_MOVE_RSP, MOVE_DESTINATION_UNKNOWN))
            return
        try:
            total = await _count(results)
        except _EarlyStatus as early:
            await early.answer(sender, request, _dimse.C_MOVE_RSP)
            return
        except Exception as exc:
            # Exhausted included: no number is 0xC513, as in pynetdicom.
            LOGGER.error("the C-MOVE handler did not yield a valid number of sub-operations: %s", exc)
            await sender.send(_response(request, _dimse.C_MOVE_RSP, MOVE_BAD_COUNT))
            return
        if not await _check_total(sender, request, _dimse.C_MOVE_RSP, total):
            return
        if message.trace is not None:
            message.trace.move_destination_address = (address, port)
        opener = session.open_sub_association
        sub_assoc = await opener(address, port, request.move_destination, kwargs) if opener is not None else None
        retrieve = Retrieve(request, _dimse.C_MOVE_RSP, sender, total)
        if sub_assoc is None or not sub_assoc.is_established:
            # A known destination that cannot take the instances (unreachable,
            # the association refused, or accepted with no context for them):
            # each sub-operation fails (PS3.4 C.4.2.3.1), and the final
            # response carries the counts and the Failed SOP Instance UID List
            # (0xA702 when all failed; DCMTK's dcmqrscp answers the same).
            # 0xA801 stays for a destination the handler does not know.
            answered = sub_assoc is not None and type(sub_assoc.acse_response).__name__ == "AssociateAC"
            retrieve.comment = (
                "move destination accepted no context for the instances" if answered
                else "move destination unreachable or it refused the association"
            )
            # The one line of the failure (the request's own is at DEBUG),
            # with its reason; rate-limited per peer.
            reason = getattr(sub_assoc, "request_failure", None)
            peer_log(LOGGER, logging.WARNING, session.peer_host, "C-MOVE to %s:%d: %s%s: every sub-operation fails",
                     address, port, retrieve.comment, f" ({reason})" if reason else "")
            await _run_suboperations(retrieve, results, message, NotStored(), MOVE_HANDLER_RAISED)
            return
        originator = (session.peer_ae_title, request.message_id)
        destination_session = sub_assoc.service_session
        await _run_suboperations(
            retrieve,
            results,
            message,
            StoreTarget(destination_session, originator, message.trace),
            MOVE_HANDLER_RAISED,
            suboperation_window(destination_session),
        )
    finally:
        await results.close()
        if sub_assoc is not None and sub_assoc.is_established:
            await sub_assoc.release()


# -------------------------------------------------------------------- SCU
class QueryRequest:
    """One C-FIND/C-GET/C-MOVE request of ours: sent at once when the
    operations window has room (as pynetdicom sends at the call, so that
    "send, then C-CANCEL" works), else when its responses are first asked
    for. ``end`` is idempotent: whoever ends the request first (the
    response generator, or the finalizer of a generator never started)
    gives back its slot and, when it ended early, cancels it."""

    __slots__ = ("session", "ctx", "command", "encoded", "stream", "has_slot", "ended", "loop", "lost")

    def __init__(
        self, session: ServiceSession, ctx: Any, command: Command, encoded: bytes, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.session = session
        self.ctx = ctx
        self.command = command
        self.encoded = encoded
        self.stream: Any = None
        self.has_slot = False
        self.ended = False
        self.loop = loop
        # The association ended before the request could be sent (after the
        # blocking API's caller had checked it, in its own thread): the
        # responses are then what an abort while waiting gives.
        self.lost = False

    def __del__(self) -> None:
        # The response generator holds the request until it ends (and ends
        # it); one never started drops it unended: end it on the loop's
        # thread (we may be in any thread, or in the collector).
        if not self.ended:
            try:
                if not self.loop.is_closed():
                    self.loop.call_soon_threadsafe(self.end, False)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def responses(self) -> AsyncIterator[tuple[Dataset, Dataset | None]]:
        """On the loop: send it now when the operations window has room,
        and return the async generator of its responses (``query``)."""
        self.send_now()
        return _responses(self)

    def send_now(self) -> None:
        if self.session.channel.try_acquire_slot():
            self.has_slot = True
            self._open()

    async def send(self) -> None:
        await self.session.channel.acquire_slot()
        self.has_slot = True
        self._open()

    def _open(self) -> None:
        channel = self.session.channel
        command = self.command
        if command.message_id is not None and channel.is_outstanding(command.message_id):
            command.message_id = None  # in use: take a free one
        try:
            self.stream = channel.open_request(self.ctx.context_id, command, self.encoded)
        except (AssociationAborted, AssociationClosed, ConnectionError):
            self.lost = True
            return
        self.session.request_contexts[self.stream.message_id] = self.ctx.context_id

    def end(self, finished: bool) -> None:
        if self.ended:
            return
        self.ended = True
        channel = self.session.channel
        stream = self.stream
        if stream is not None:
            self.session.request_contexts.pop(stream.message_id, None)
            if finished:
                channel.close_request(stream)
            else:
                # Left early: ask the SCP to stop, and let the channel drop
                # what still comes for this request; its slot of the window
                # is given back at the final response.
                if channel.end_error is None:
                    _send_cancel(channel, self.ctx.context_id, stream.message_id)
                channel.abandon_request(stream, holds_slot=self.has_slot)
                self.has_slot = False
        if self.has_slot:
            self.has_slot = False
            channel.release_slot()


def query(
    session: ServiceSession,
    field: int,
    identifier: Dataset,
    query_model: str,
    msg_id: int | None,
    priority: int,
    move_destination: str | None = None,
) -> AsyncIterator[tuple[Dataset, Dataset | None]]:
    """SCU: one C-FIND, C-GET or C-MOVE request (``field``), sent now when
    the operations window has room; see the module docstring for what the
    returned async generator yields. Called on the loop's thread.
    ValueError now when no accepted context fits ``query_model`` or the
    priority is not 0, 1 or 2."""
    request = prepare_query(
        session, field, identifier, query_model, msg_id, priority, move_destination, asyncio.get_running_loop()
    )
    return request.responses()


def prepare_query(
    session: ServiceSession,
    field: int,
    identifier: Dataset,
    query_model: str,
    msg_id: int | None,
    priority: int,
    move_destination: str | None,
    loop: asyncio.AbstractEventLoop,
) -> QueryRequest:
    """``query`` up to the sending, from any thread (the blocking API's
    caller: the checks raise there, the identifier is encoded there); its
    ``responses()``, called on ``loop``, sends it."""
    storage.check_priority(priority)
    ctx = session.scu_context(str(query_model))
    assert ctx.transfer_syntax is not None
    command = Command(
        field,
        affected_sop_class_uid=ctx.abstract_syntax,
        message_id=msg_id,
        priority=priority,
        command_data_set_type=_dimse.DATASET_PRESENT,
        move_destination=move_destination,
    )
    return QueryRequest(session, ctx, command, dsutil.encode_dataset(identifier, ctx.transfer_syntax), loop)


async def _responses(request: QueryRequest) -> AsyncIterator[tuple[Dataset, Dataset | None]]:
    session = request.session
    syntax = request.ctx.transfer_syntax
    finished = False
    try:
        if request.stream is None and not request.lost:
            await request.send()
        stream = request.stream
        if stream is None:  # the association ended before the request went out
            finished = True
            yield Dataset(), None
            return
        while True:
            try:
                response = await stream.next()
            except DimseTimeout:
                LOGGER.error("DIMSE timeout: aborting the association")
                session.channel.abort()
                finished = True
                yield Dataset(), None
                return
            except (AssociationAborted, AssociationClosed, ConnectionError):
                finished = True
                yield Dataset(), None
                return
            status = response_to_dataset(response.command)
            decoded = None
            if response.dataset is not None:
                try:
                    decoded = dsutil.decode_dataset(response.dataset, syntax)
                except Exception as exc:
                    LOGGER.error("response identifier failed to decode: %s", exc)
            done = response.command.status not in _PENDING
            if decoded is None and done and request.command.command_field != _dimse.C_FIND_RQ and response.command.status != SUCCESS:
                # pynetdicom gives a C-GET/C-MOVE final Cancel, Warning or
                # Failure response that came without an identifier as an
                # empty Dataset (None only for Success and for C-FIND).
                if code_to_category(response.command.status) in (STATUS_CANCEL, STATUS_WARNING, STATUS_FAILURE):
                    decoded = Dataset()
            finished = done
            yield status, decoded
            if done:
                return
    finally:
        request.end(finished)


def _send_cancel(channel: DimseChannel, context_id: int, message_id: int) -> None:
    channel.send(
        context_id,
        Command(
            _dimse.C_CANCEL_RQ,
            message_id_being_responded_to=message_id,
            command_data_set_type=_dimse.NO_DATASET,
        ),
    )


def cancel(session: ServiceSession, msg_id: int, context_id: int | None, query_model: str | None) -> None:
    """Send C-CANCEL for the outstanding request ``msg_id``: on the context
    it was sent on when we know it, else on ``context_id`` or the context of
    ``query_model``."""
    channel = session.channel
    if context_id is None:
        context_id = session.request_contexts.get(msg_id)
    if context_id is None:
        if query_model is None:
            raise ValueError("no outstanding request with that Message ID: give context_id or query_model")
        context_id = session.scu_context(str(query_model)).context_id
    _send_cancel(channel, context_id, msg_id)
