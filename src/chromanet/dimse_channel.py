"""The DIMSE message layer: requests, responses and their Message IDs.

A ``DimseChannel`` sits on one established association. It sends whole
messages (command + optional data set) and routes the ones that arrive:

- responses go to the ``ResponseStream`` of the request they answer (matched
  by Message ID Being Responded To), so several requests may be outstanding
  when the asynchronous operations window allows it;
- C-CANCEL-RQ marks the request it names as cancelled, at once, even while
  that request's handler is still running;
- other requests go to the service layer's ``request_handler``. It may answer
  synchronously (and return None) or return a coroutine, which the channel
  runs as a task; at most ``max_operations_performed`` such tasks run at once
  and the rest wait their turn in arrival order.

Data sets may be streamed: with a ``dataset_sink_factory`` the channel gets
the command first and gives each data set fragment to a sink (e.g. a file),
so a large C-STORE never sits whole in memory. Every data set that is not a
C-STORE's (identifiers, mostly) is capped at ``max_identifier_size`` bytes:
past it, its fragments are dropped as they come and the message arrives
with a ``DatasetTooLarge`` in place of its data set, for the service to
refuse.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from chromanet import _dimse
from chromanet._dimse import Command
from chromanet.errors import ChromanetError
from chromanet.logutil import peer_log
from chromanet.status import Status
from chromanet.ul.connection import PACING_SLICE
from chromanet.ul.upper_layer import NotEstablishedError
from chromanet.ul.acse import AssociationAborted, AssociationClosed, AssociationControl

if TYPE_CHECKING:
    from chromanet._pdata import CommandArrived, DatasetChunk, DimseMessage

LOGGER = logging.getLogger("chromanet.dimse")

_WINDOW_HOLD = "operations beyond the window"
_PENDING = (int(Status.PENDING), int(Status.PENDING_WARNING))
# How a handler task ends when the association went away under it: an
# ordinary event (the peer reset or aborted), not a failure of the handler.
_ASSOCIATION_GONE = (AssociationAborted, AssociationClosed, NotEstablishedError, ConnectionError)


def _fresh(error: BaseException) -> BaseException:
    """A new exception like ``error``, to raise in its place.

    The end of an association is one exception, kept by the channel and
    every waiting stream. Raised as it is, it would take each raise's
    traceback, and with it the frames (and their data sets: memory maps of
    files being sent) into a reference cycle that only the garbage collector
    breaks; a copy raised per waiter takes them nowhere.
    """
    return copy.copy(error)


class DimseTimeout(ChromanetError, TimeoutError):
    """No DIMSE response arrived within the DIMSE timeout."""


class IncomingMessage:
    """A received message as the service layer sees it.

    ``dataset`` is the encoded data set (bytes or memoryview), a path to a
    spooled file (streaming mode, when the sink returns one), or None.
    ``trace`` is the service layer's: what it notes about the operation
    while serving it (None unless someone observes the operations).
    """

    __slots__ = ("context_id", "command", "dataset", "cancelled", "trace")

    def __init__(self, context_id: int, command: Command, dataset: Any) -> None:
        self.context_id = context_id
        self.command = command
        self.dataset = dataset
        self.cancelled = False
        self.trace: Any = None


class DatasetTooLarge:
    """Stands for a data set that was larger than allowed (and dropped)."""

    __slots__ = ("size", "limit")

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit

    def __repr__(self) -> str:
        return f"<DatasetTooLarge {self.size} bytes, limit {self.limit}>"


class DatasetRefused:
    """Stands for a data set refused when its command arrived (read and
    dropped as it came): the request is answered with ``status``."""

    __slots__ = ("status", "comment")

    def __init__(self, status: int, comment: str) -> None:
        self.status = status
        self.comment = comment

    def __repr__(self) -> str:
        return f"<DatasetRefused 0x{self.status:04X} {self.comment!r}>"


class DiscardSink:
    """DatasetSink that keeps nothing and finishes as its refusal."""

    __slots__ = ("refusal",)

    def __init__(self, refusal: DatasetRefused) -> None:
        self.refusal = refusal

    def write(self, data: Any) -> None:
        pass

    def finish(self) -> DatasetRefused:
        return self.refusal

    def discard(self) -> None:
        pass


class MemorySink:
    """DatasetSink that keeps the fragments and joins them once; past
    ``limit`` bytes (0: none) it keeps nothing more and finishes as
    DatasetTooLarge.

    The reassembler's fragments are read-only views of the received
    ``bytes`` (``_pdata.DatasetChunk``), valid as long as they are held:
    they are kept as they are and copied once, by the join. (Copying each
    first doubled the bytes written per data set; for a 400 KB C-STORE into
    a thread's malloc arena, as on the blocking API's loop thread, the
    fresh memory of both copies was also page-faulted in again for every
    data set once glibc had trimmed the arena.)"""

    __slots__ = ("_parts", "_size", "_limit")

    def __init__(self, limit: int = 0) -> None:
        self._parts: list[Any] | None = []
        self._size = 0
        self._limit = limit

    def write(self, data: Any) -> None:
        self._size += len(data)
        if self._parts is None:
            return
        if self._limit and self._size > self._limit:
            self._parts = None  # over the limit: what came is dropped
            return
        if not (type(data) is bytes or (type(data) is memoryview and type(data.obj) is bytes)):
            data = bytes(data)  # a buffer its owner may reuse
        self._parts.append(data)

    def finish(self) -> bytes | DatasetTooLarge:
        if self._parts is None:
            return DatasetTooLarge(self._size, self._limit)
        return b"".join(self._parts)

    def discard(self) -> None:
        self._parts = []


class DatasetSink(Protocol):
    """Receives one message's data set fragments in order."""

    def write(self, data: Any) -> None: ...
    def finish(self) -> Any:
        """All fragments arrived; returns what becomes ``IncomingMessage.dataset``."""
    def discard(self) -> None:
        """The association ended before the last fragment: drop everything."""


class _WaitWatch:
    """One timer for the response waits of a channel (``ResponseStream.next``).

    Each wait has its deadline; the timer is armed for the nearest one, and
    when it fires it fails the waits that are over and re-arms for the next.
    A wait that ends in time only leaves the set: no timer is made and
    cancelled per wait (a uvloop ``call_later`` and ``cancel``: ~3 us, as
    much as the rest of a small request's wait)."""

    __slots__ = ("loop", "waits", "handle", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waits: set[ResponseStream] = set()
        self.handle: asyncio.TimerHandle | None = None
        self.at = 0.0

    def add(self, stream: ResponseStream, deadline: float) -> None:
        self.waits.add(stream)
        if self.handle is None or deadline < self.at:
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(deadline, self._fire)
            self.at = deadline

    def _fire(self) -> None:
        self.handle = None
        now = self.loop.time()
        nearest: float | None = None
        for stream in list(self.waits):
            deadline = stream.deadline
            if deadline <= now:
                self.waits.discard(stream)
                stream.time_out()
            elif nearest is None or deadline < nearest:
                nearest = deadline
        if nearest is not None:
            self.handle = self.loop.call_at(nearest, self._fire)
            self.at = nearest

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.waits.clear()


class ResponseStream:
    """The responses to one request, in arrival order.

    ``await stream.next()`` returns the next response (an IncomingMessage);
    the stream ends when a non-pending response arrived. If the association
    ends first, ``next()`` raises the association's end exception. A wait
    longer than ``timeout`` raises DimseTimeout (timed by the channel's
    ``_WaitWatch`` when given one, else by a timer of its own).
    """

    __slots__ = (
        "message_id", "_items", "_waiter", "_error", "_loop", "timeout", "abandoned", "deadline", "_watch",
        "slot_release",
    )  # fmt: skip

    def __init__(
        self, message_id: int, loop: asyncio.AbstractEventLoop, timeout: float | None, watch: _WaitWatch | None = None
    ) -> None:
        self.message_id = message_id
        self.timeout = timeout
        self._items: deque[IncomingMessage] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._loop = loop
        self.abandoned = False
        #: When the wait in progress times out (loop time).
        self.deadline = 0.0
        self._watch = watch
        #: Abandoned holding its slot of the window: what gives it back (a
        #: timer handle, or True without a DIMSE timeout); None otherwise.
        self.slot_release: Any = None

    def _push(self, message: IncomingMessage) -> None:
        self._items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> IncomingMessage:
        while not self._items:
            if self._error is not None:
                raise _fresh(self._error)
            # A timer that fails the waiter, not ``asyncio.timeout``: the
            # same limit for half the cost of every wait (a wait for a
            # ready future on uvloop: 6 against 13 us), and a cancellation
            # of the waiting task
            # still cancels the waiter and reaches the caller (a query's
            # C-CANCEL depends on it).
            waiter = self._waiter = self._loop.create_future()
            watch = self._watch if self.timeout is not None else None
            timer = None
            if watch is not None:
                self.deadline = self._loop.time() + self.timeout  # type: ignore[operator]
                watch.add(self, self.deadline)
            elif self.timeout is not None:
                timer = self._loop.call_later(self.timeout, self.time_out)
            try:
                await waiter
            finally:
                self._waiter = None
                if watch is not None:
                    watch.waits.discard(self)
                elif timer is not None:
                    timer.cancel()
        return self._items.popleft()

    def time_out(self) -> None:
        """The wait in progress is over: fail it with DimseTimeout."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                DimseTimeout(f"no response to message {self.message_id} within {self.timeout} s"))


class _OneResponse(ResponseStream):
    """The one response to a request sent by ``DimseChannel.start_request``:
    whatever ends the wait (the response, the association's end, the DIMSE
    timeout) goes to the channel's ``_answered`` at once, from the callback
    that brings it; no future and no task waits for it."""

    __slots__ = ("channel", "done")

    def __init__(
        self,
        channel: DimseChannel,
        message_id: int,
        done: Callable[[IncomingMessage | BaseException], None],
    ) -> None:
        super().__init__(message_id, channel._loop, channel.dimse_timeout, channel._wait_watch)
        self.channel = channel
        self.done: Callable[[IncomingMessage | BaseException], None] | None = done

    def _push(self, message: IncomingMessage) -> None:
        self.channel._answered(self, message)

    def _fail(self, exc: BaseException) -> None:
        self.channel._answered(self, _fresh(exc))

    def time_out(self) -> None:
        self.channel._answered(self, DimseTimeout(f"no response to message {self.message_id} within {self.timeout} s"))


RequestHandler = Callable[["DimseChannel", IncomingMessage], "Awaitable[None] | None"]


class _InvokeWindow:
    """The asynchronous operations window for our own requests: a counter
    of free slots that can also be taken without waiting (unlike
    ``asyncio.Semaphore``), first come first served. A released slot goes
    straight to the longest waiter."""

    __slots__ = ("free", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        return False

    async def take(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.try_take():
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed a slot just as we were cancelled
            else:
                try:
                    self.waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def give_back(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class DimseChannel:
    """DIMSE messaging over one association (see the module docstring)."""

    def __init__(
        self,
        ul: AssociationControl,
        request_handler: RequestHandler | None = None,
        *,
        dimse_timeout: float | None = 30.0,
        max_operations_performed: int = 1,
        max_operations_invoked: int = 1,
        dataset_sink_factory: Callable[[int, Command], DatasetSink | None] | None = None,
        max_identifier_size: int = 0,
    ) -> None:
        self.ul = ul
        self.request_handler = request_handler
        self.dimse_timeout = dimse_timeout
        self.max_operations_performed = max_operations_performed or 1 << 30
        #: How many requests of ours may be outstanding at once (the
        #: negotiated window; 0: unlimited).
        self.max_operations_invoked = max_operations_invoked
        self.dataset_sink_factory = dataset_sink_factory
        self.max_identifier_size = max_identifier_size
        #: ``hook(sent, context_id, command, dataset)`` while EVT_DIMSE_SENT /
        #: EVT_DIMSE_RECV is bound (the association sets it), else None.
        self.dimse_hook: Callable[[bool, int, Command, Any], Any] | None = None
        if dataset_sink_factory is not None:
            ul.stream_datasets()
        if max_identifier_size:
            # Larger data sets stream (into a capped sink unless a C-STORE's).
            ul.set_stream_threshold(max_identifier_size)
        self._loop = asyncio.get_running_loop()
        self._next_id = 0
        self._pending: dict[int, ResponseStream] = {}
        self._active: dict[int, IncomingMessage] = {}  # requests being served, by Message ID
        self._waiting: deque[IncomingMessage] = deque()
        self._running = 0
        self._streaming: tuple[int, Command, DatasetSink] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # The negotiated window for our own requests: callers beyond it wait
        # here for a slot (0 = unlimited).
        self._invoke_slots = _InvokeWindow(max_operations_invoked) if max_operations_invoked else None
        self._wait_watch = _WaitWatch(self._loop)
        self.end_error: Exception | None = None
        ul.message_sink = self

    # -------------------------------------------------------------- sending
    def next_message_id(self) -> int:
        """Message IDs cycle 1..65535, skipping any still outstanding."""
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise ChromanetError("65535 requests outstanding: no Message ID left")

    def send(self, context_id: int, command: Command, dataset: Any = None, *, hold: bool = False) -> None:
        """Send one message now (responses, C-CANCEL, requests); with
        ``hold``, together with the next one, within this pass of the loop
        (for a message another follows at once, e.g. a pending response)."""
        if self.end_error is not None:
            raise _fresh(self.end_error)
        self.ul.send_message(context_id, command, dataset, hold=hold)
        if self.dimse_hook is not None:  # EVT_DIMSE_SENT bound
            self.dimse_hook(True, context_id, command, dataset)

    async def send_and_drain(self, context_id: int, command: Command, dataset: Any = None) -> None:
        """Send, then wait while the transport's buffer is full, so a
        producer of many large messages is paced by the peer."""
        self.send(context_id, command, dataset)
        await self.ul.drain()

    @property
    def writing_paused(self) -> bool:
        """True while ``drain`` would wait (the peer reads slower than we write)."""
        return self.ul.writing_paused

    async def drain(self) -> None:
        """Wait while the transport's write buffer is full (a slow reader)."""
        await self.ul.drain()

    async def drain_below(self, limit: int) -> None:
        """Wait until at most ``limit`` bytes wait to be written (a producer
        of many small messages that should not run ahead of the peer)."""
        await self.ul.drain_below(limit)

    def abort(self) -> None:
        """A-ABORT the association (e.g. after a DIMSE timeout)."""
        self.ul.abort()

    def is_outstanding(self, message_id: int) -> bool:
        """True while a request of ours with this Message ID awaits responses."""
        return message_id in self._pending

    def open_request(self, context_id: int, command: Command, dataset: Any = None) -> ResponseStream:
        """Send a request and return the stream its responses arrive on.

        ``command.message_id`` is assigned here when it is None.
        """
        stream = self._register(command)
        try:
            self.send(context_id, command, dataset)
        except BaseException:
            del self._pending[command.message_id]
            raise
        return stream

    def _register(self, command: Command) -> ResponseStream:
        """The response stream of a request about to be sent (its Message ID
        assigned here when it is None)."""
        if command.message_id is None:
            command.message_id = self.next_message_id()
        stream = ResponseStream(command.message_id, self._loop, self.dimse_timeout, self._wait_watch)
        self._pending[command.message_id] = stream
        return stream

    def close_request(self, stream: ResponseStream) -> None:
        self._pending.pop(stream.message_id, None)

    def abandon_request(self, stream: ResponseStream, *, holds_slot: bool = False) -> None:
        """Nobody reads this request's responses any more: drop them as they
        come, and forget the request at its final response. ``holds_slot``:
        the request holds a slot of the window we may invoke, given back at
        that final response, not now: until the peer has answered it the
        request is still outstanding, and one more would exceed the
        negotiated window (a peer that stops reading at its limit would
        then wait for us while we wait for it). Without a final response
        the slot comes back after the DIMSE timeout, or when the
        association ends."""
        answered = any(item.command.status not in _PENDING for item in stream._items)
        stream.abandoned = True
        stream._items.clear()
        if answered or self.end_error is not None:
            self.close_request(stream)
            if holds_slot:
                self.release_slot()
            return
        if holds_slot:
            timeout = self.dimse_timeout
            stream.slot_release = (
                self._loop.call_later(timeout, self._free_slot, stream) if timeout is not None else True
            )

    def _free_slot(self, stream: ResponseStream) -> None:
        """Give back the slot an abandoned request holds (its final response
        came, its DIMSE timeout passed, or the association ended)."""
        release, stream.slot_release = stream.slot_release, None
        if release is None:
            return
        if release is not True:
            release.cancel()
        self.release_slot()

    async def acquire_slot(self) -> None:
        """Wait for room in the asynchronous operations window we may invoke."""
        if self._invoke_slots is not None:
            await self._invoke_slots.take(self._loop)

    def try_acquire_slot(self) -> bool:
        """Take room in the window now if there is some (a request sent at
        the call, as pynetdicom's C-FIND/C-GET/C-MOVE are); False otherwise."""
        return self._invoke_slots is None or self._invoke_slots.try_take()

    def release_slot(self) -> None:
        if self._invoke_slots is not None:
            self._invoke_slots.give_back()

    async def request(self, context_id: int, command: Command, dataset: Any = None, *, hold: bool = False) -> IncomingMessage:
        """Send a request that has exactly one response, and return it.
        A large data set (a C-STORE of a big file) is paced out in slices.
        ``hold``: several requests sent in one pass of the loop (operations
        in a window) go out in one write (``send``); so they do whenever
        other requests are outstanding (the answers to a window's requests
        often come in one read and wake their senders in one pass)."""
        await self.acquire_slot()
        try:
            stream = self._register(command)
            try:
                if self.end_error is not None:
                    raise _fresh(self.end_error)
                hold = hold or len(self._pending) > 1
                await self.ul.send_message_paced(context_id, command, dataset, hold=hold)
                if self.dimse_hook is not None:  # EVT_DIMSE_SENT bound
                    self.dimse_hook(True, context_id, command, dataset)
                await self.ul.drain()
                return await stream.next()
            finally:
                self.close_request(stream)
        finally:
            self.release_slot()

    def start_request(
        self,
        context_id: int,
        command: Command,
        dataset: Any,
        done: Callable[[IncomingMessage | BaseException], None],
        *,
        hold: bool = False,
    ) -> bool:
        """Send a request that has exactly one response now, and call
        ``done`` once, on the loop, with that response, or with the
        exception that ended the wait (the association's end,
        DimseTimeout): ``request`` without a task or a future per request,
        for many requests outstanding at once (C-STORE sub-operations in a
        window). ``hold``: as for ``request``.

        False, and nothing sent, when the request cannot go out at once:
        no room now in the window we may invoke, a data set large enough to
        be paced out, the transport's buffer full, or the association
        ended; ``request`` then does it (waiting for each of those)."""
        if self.end_error is not None or self.ul.writing_paused:
            return False
        if dataset is not None and memoryview(dataset).nbytes > PACING_SLICE:
            return False
        if not self.try_acquire_slot():
            return False
        if command.message_id is None:
            command.message_id = self.next_message_id()
        stream = _OneResponse(self, command.message_id, done)
        self._pending[command.message_id] = stream
        try:
            self.ul.send_message(context_id, command, dataset, hold=hold)
        except BaseException:
            del self._pending[command.message_id]
            self.release_slot()
            raise
        if self.dimse_hook is not None:  # EVT_DIMSE_SENT bound
            self.dimse_hook(True, context_id, command, dataset)
        if self.dimse_timeout is not None:
            stream.deadline = self._loop.time() + self.dimse_timeout
            self._wait_watch.add(stream, stream.deadline)
        return True

    def _answered(self, stream: _OneResponse, outcome: IncomingMessage | BaseException) -> None:
        """The wait of a ``start_request`` is over: forget the request, give
        its slot back, then tell its caller (once)."""
        done = stream.done
        if done is None:
            return
        stream.done = None
        if self._pending.get(stream.message_id) is stream:
            del self._pending[stream.message_id]
        self._wait_watch.waits.discard(stream)
        self.release_slot()
        done(outcome)

    # ------------------------------------------------------------ receiving
    def on_message(self, message: DimseMessage) -> None:
        self._dispatch(IncomingMessage(message.context_id, message.command, message.dataset))

    def on_command_arrived(self, event: CommandArrived) -> None:
        factory = self.dataset_sink_factory
        sink = factory(event.context_id, event.command) if factory is not None else None
        if sink is None:
            is_store = event.command.command_field == _dimse.C_STORE_RQ
            sink = MemorySink(0 if is_store else self.max_identifier_size)
        self._streaming = (event.context_id, event.command, sink)

    def on_dataset_chunk(self, chunk: DatasetChunk) -> None:
        assert self._streaming is not None
        context_id, command, sink = self._streaming
        sink.write(chunk.data)
        if chunk.is_last:
            self._streaming = None
            self._dispatch(IncomingMessage(context_id, command, sink.finish()))

    def _dispatch(self, message: IncomingMessage) -> None:
        if self.dimse_hook is not None:  # EVT_DIMSE_RECV bound
            # Its handlers see the message before anything acts on it (as
            # in pynetdicom); the hook returns a future when they run in
            # the association's handler lane, and routing waits for it.
            after = self.dimse_hook(False, message.context_id, message.command, message.dataset)
            if after is not None:
                after.add_done_callback(lambda _done: self._route(message))
                return
        self._route(message)

    def _route(self, message: IncomingMessage) -> None:
        command = message.command
        field = command.command_field
        if field & 0x8000:
            stream = self._pending.get(command.message_id_being_responded_to)
            if stream is None:
                peer_log(
                    LOGGER, logging.WARNING, self.ul.addresses[1][0],
                    "response to unknown message ID %s ignored", command.message_id_being_responded_to,
                )
                return
            if stream.abandoned:
                if command.status not in _PENDING:
                    del self._pending[stream.message_id]
                    self._free_slot(stream)  # type: ignore[arg-type]
                return
            stream._push(message)
            return
        if field == _dimse.C_CANCEL_RQ:
            target = self._active.get(command.message_id_being_responded_to)
            if target is not None:
                target.cancelled = True
            else:
                for queued in self._waiting:
                    if queued.command.message_id == command.message_id_being_responded_to:
                        queued.cancelled = True
            return
        if self._running >= self.max_operations_performed:
            # The peer invoked more operations than the negotiated window:
            # serve them in turn, and read nothing more until they are.
            self._waiting.append(message)
            self.ul.hold_reading(_WINDOW_HOLD)
            return
        self._serve(message)

    def _serve(self, message: IncomingMessage) -> None:
        handler = self.request_handler
        if handler is None:
            LOGGER.warning("no handler for command 0x%04X: aborting", message.command.command_field)
            self.ul.abort()
            return
        self._active[message.command.message_id] = message
        try:
            pending = handler(self, message)
        except _ASSOCIATION_GONE:
            self._active.pop(message.command.message_id, None)
            return  # the association ended under the answer: nothing to do
        except Exception:
            LOGGER.exception("request handler failed; aborting the association")
            self._active.pop(message.command.message_id, None)
            self.ul.abort()
            return
        if pending is None:
            self._active.pop(message.command.message_id, None)
            return
        self._running += 1
        if isinstance(pending, asyncio.Future):
            # Answered from a callback (``base._answer_when_done``): no task.
            pending.add_done_callback(lambda f, m=message: self._served(f, m))
            return
        task = self._loop.create_task(pending)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(lambda t, m=message: self._served(t, m))

    def _served(self, task: asyncio.Future[None], message: IncomingMessage) -> None:
        self._tasks.discard(task)  # type: ignore[arg-type]
        self._running -= 1
        self._active.pop(message.command.message_id, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, _ASSOCIATION_GONE):
                LOGGER.error("request handler failed; aborting the association", exc_info=exc)
                self.ul.abort()
        while self._waiting and self._running < self.max_operations_performed:
            self._serve(self._waiting.popleft())
        if not self._waiting:
            self.ul.release_reading(_WINDOW_HOLD)

    def on_association_end(self, exc: Exception) -> None:
        self.end_error = exc
        for stream in list(self._pending.values()):
            stream._fail(exc)
            if type(stream) is ResponseStream and stream.slot_release is not None:
                self._free_slot(stream)  # waiters for a slot see the end
        self._wait_watch.close()
        if self._streaming is not None:
            self._streaming[2].discard()
            self._streaming = None
        for message in self._active.values():
            message.cancelled = True
        for message in self._waiting:
            # Never served: a spooled data set of theirs is nobody's.
            discard = getattr(message.dataset, "cleanup", None)
            if discard is not None:
                discard()
        self._waiting.clear()
