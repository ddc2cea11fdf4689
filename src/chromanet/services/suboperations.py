"""The C-STORE sub-operations of a C-GET or C-MOVE SCP (PS3.4 C.4.2.3,
C.4.3.3), once ``query_retrieve`` has the handler's number of them: the
loop over the handler's data sets (``run_suboperations``), their counts,
Pending responses and final response (``Retrieve``), one store
(``StoreTarget``), and, when the association that carries them negotiated
an asynchronous operations window letting us invoke more than one
operation (PS3.7 D.3.3.3), up to that many outstanding at once
(``InFlight``), each counted with its Pending response as its response
arrives.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import Any, Awaitable, Callable, Protocol

from pydicom import Dataset

from chromanet import dsutil
from chromanet._dimse import Command
from chromanet.dimse_channel import IncomingMessage
from chromanet.services import storage
from chromanet.services.answers import Exhausted, HandlerResults, apply_handler_status
from chromanet.services.base import ServiceSession, response_to
from chromanet.services.handler_threads import ThreadedResults
from chromanet.services.observe import OperationRecord
from chromanet.status import (
    STATUS_CANCEL,
    STATUS_FAILURE,
    STATUS_SUCCESS,
    STATUS_UNKNOWN,
    STATUS_WARNING,
    Status,
    code_to_category,
)

LOGGER = logging.getLogger("chromanet.services")

# C-STORE sub-operations outstanding at once on an association whose
# window lets us invoke any number (0, unlimited).
UNLIMITED_IN_FLIGHT = 64


SUCCESS, CANCEL, PENDING = int(Status.SUCCESS), int(Status.CANCEL), int(Status.PENDING)
_PENDING = (PENDING, int(Status.PENDING_WARNING))
SUBOPERATIONS_IMPOSSIBLE = int(Status.OUT_OF_RESOURCES_SUBOPERATIONS)
SUBOPERATIONS_WITH_FAILURES = int(Status.SUBOPERATIONS_COMPLETE_WITH_FAILURES)

Results = HandlerResults | ThreadedResults


class Sender(Protocol):
    """Where the responses of one retrieve go (``query_retrieve``'s)."""

    trace: OperationRecord | None

    async def send(self, response: Command, identifier: Any = None) -> None: ...

    def encode(self, dataset: Dataset) -> bytes: ...


class Retrieve:
    """Sub-operation bookkeeping shared by C-GET and C-MOVE."""

    def __init__(self, request: Command, field: int, sender: Sender, total: int) -> None:
        self.request = request
        self.field = field
        self.sender = sender
        self.total = total
        self.remaining = total
        self.completed = 0
        self.failed = 0
        self.warning = 0
        self.failed_uids: list[str] = []
        self.attempts = 0
        self.trace = sender.trace
        #: Error Comment of a final response with failures (LO: <= 64 characters).
        self.comment: str | None = None

    def _counted(self, status: int, *, remaining: bool) -> Command:
        response = response_to(self.request, self.field, status)
        if remaining:
            response.number_of_remaining_suboperations = self.remaining
        response.number_of_completed_suboperations = self.completed
        response.number_of_failed_suboperations = self.failed
        response.number_of_warning_suboperations = self.warning
        return response

    def _failed_list(self, given: Any = None) -> bytes:
        """The identifier of a final (or Cancel) response: the handler's own
        Dataset when it holds a Failed SOP Instance UID List, else the list
        of the sub-operations that failed (PS3.4 C.4.2.1.7), as pynetdicom
        does."""
        if isinstance(given, Dataset) and "FailedSOPInstanceUIDList" in given:
            try:
                return self.sender.encode(given)
            except Exception as exc:
                LOGGER.warning("the retrieve handler's Failed SOP Instance UID List failed to encode: %s", exc)
        ds = Dataset()
        ds.FailedSOPInstanceUIDList = list(self.failed_uids)
        return self.sender.encode(ds)

    def record(self, sop_instance_uid: str, store_status: int | None) -> None:
        self.remaining -= 1
        category = code_to_category(store_status) if store_status is not None else STATUS_FAILURE
        if category == STATUS_SUCCESS:
            self.completed += 1
        elif category == STATUS_WARNING:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)
        if self.trace is not None:
            self.trace.note_suboperation(sop_instance_uid, category in (STATUS_SUCCESS, STATUS_WARNING))

    async def pending(self, given: Command | None = None) -> None:
        """A Pending response with the counts; ``given`` (the handler's
        status for this sub-operation, applied to a response) lends it its
        Error Comment, Error ID and Offending Element, as in pynetdicom."""
        response = self._counted(PENDING, remaining=True)
        if given is not None:
            response.error_comment = given.error_comment
            response.error_id = given.error_id
            response.offending_element = given.offending_element
        await self.sender.send(response)

    async def unknown(self, status: int) -> None:
        """The handler yielded a status no category knows: it ends the
        operation as it is, without an identifier (pynetdicom does this)."""
        self.failed += 1
        await self.sender.send(self._counted(status, remaining=True))

    def message_id(self) -> int | None:
        """The Message ID of the next C-STORE sub-operation: the C-GET or
        C-MOVE request's plus the sub-operation's number, past 65535 from 1
        again, as pynetdicom numbers them."""
        self.attempts += 1
        if self.request.message_id is None:
            return None
        value = self.request.message_id + self.attempts
        return value - 65535 if value > 65535 else value

    async def cancelled(self, given: Any = None) -> None:
        await self.sender.send(self._counted(CANCEL, remaining=True), self._failed_list(given))

    async def stopped(self, status: int, given: Any, identifier: Any = None) -> None:
        """The handler yielded a final Failure or Warning status (``given``,
        with ``identifier`` next to it): what was not done counts as
        failed."""
        self.failed += self.remaining
        self.remaining = 0
        response = self._counted(status, remaining=False)
        apply_handler_status(given, response, "retrieve handler")
        response.status = status
        await self.sender.send(response, self._failed_list(identifier))

    async def finished(self) -> None:
        """The final response once the handler has nothing more to yield (or
        yielded Success). Sub-operations it announced but never yielded are
        not counted: they were not attempted (pynetdicom does the same);
        0xA702 when every announced one failed, 0xB000 when some failed or
        had a warning."""
        self.remaining = 0
        if not self.failed and not self.warning:
            await self.sender.send(self._counted(SUCCESS, remaining=False))
        else:
            # 0xA702 only when every announced sub-operation failed (pynetdicom).
            all_failed = self.failed == self.total
            response = self._counted(SUBOPERATIONS_IMPOSSIBLE if all_failed else SUBOPERATIONS_WITH_FAILURES, remaining=False)
            if self.comment:
                response.error_comment = self.comment[:64]
            await self.sender.send(response, self._failed_list())


async def run_suboperations(
    retrieve: Retrieve,
    results: Results,
    message: IncomingMessage,
    target: Target,
    raised_status: int,
    window: int = 1,
) -> None:
    """Iterate the handler's (status, dataset) results, storing each pending
    dataset with ``target`` (``StoreTarget``: a C-STORE sub-operation on
    an association; ``NotStored``: failed); up to ``window`` of those stores
    outstanding at once (``InFlight``, their requests held to share writes),
    one after the other when it is 1."""
    flight = InFlight(retrieve, window, target) if window > 1 else None
    try:
        await _suboperations(retrieve, results, message, target, raised_status, flight)
    finally:
        if flight is not None:
            await flight.discard()


async def _suboperations(
    retrieve: Retrieve,
    results: Results,
    message: IncomingMessage,
    target: Target,
    raised_status: int,
    flight: InFlight | None,
) -> None:
    # Whatever ends the retrieve early first waits for the sub-operations
    # still outstanding (``settled``): the final response counts them all.
    while True:
        if flight is not None:
            # Room for one more; the handler is asked for its next result
            # only then, so a lazy generator runs no further ahead.
            await flight.settle(flight.window - 1)
        if message.cancelled:
            await _settled(flight)
            await retrieve.cancelled()
            return
        try:
            status, dataset = await results.next()
        except Exhausted:
            break
        except Exception:
            LOGGER.exception("exception in the retrieve handler")
            await _settled(flight)
            await retrieve.stopped(raised_status, raised_status)
            return
        if retrieve.remaining - (len(flight) if flight is not None else 0) <= 0:
            LOGGER.warning("the retrieve handler yielded more datasets than it announced; ignored")
            break
        probe: Command | None = None
        if not (isinstance(status, int) and status in _PENDING):
            # Anything but a plain Pending code (a Dataset, another code):
            # applied to a response, whose category decides what follows and
            # whose optional elements the Pending response borrows.
            probe = response_to(retrieve.request, retrieve.field)
            apply_handler_status(status, probe, "retrieve handler")
            category = code_to_category(probe.status)
            if category == STATUS_CANCEL:
                await _settled(flight)
                await retrieve.cancelled(dataset)
                return
            if category == STATUS_UNKNOWN:
                await _settled(flight)
                await retrieve.unknown(probe.status)
                return
            if category in (STATUS_FAILURE, STATUS_WARNING):
                await _settled(flight)
                await retrieve.stopped(probe.status, status, dataset)
                return
            if category == STATUS_SUCCESS:
                break
        if flight is not None:
            flight.start(dataset, retrieve.message_id(), probe)
            continue
        uid, store_status = await target.store(dataset, retrieve.message_id())
        retrieve.record(uid, store_status)
        # A Pending response after every sub-operation, the last one
        # (Remaining 0) included, as pynetdicom sends them.
        await retrieve.pending(probe)
    await _settled(flight)
    if message.cancelled and retrieve.remaining > 0:
        await retrieve.cancelled()
        return
    await retrieve.finished()


async def _settled(flight: InFlight | None) -> None:
    if flight is not None:
        await flight.settle(0)


def suboperation_window(session: ServiceSession | None) -> int:
    """How many C-STORE sub-operations to keep outstanding at once on the
    association of ``session``: the operations we may invoke there, as
    negotiated (PS3.7 D.3.3.3; 1, synchronous, when no window was agreed),
    ``UNLIMITED_IN_FLIGHT`` when the window is unlimited (0)."""
    if session is None:
        return 1
    invoked = session.channel.max_operations_invoked
    return UNLIMITED_IN_FLIGHT if invoked == 0 else max(1, invoked)


# One sub-operation's outcome: (SOP Instance UID, response status or None).
Result = tuple[str, "int | None"]


class Target(Protocol):
    """Where the sub-operations of one retrieve go (``StoreTarget``,
    ``NotStored``)."""

    async def store(self, dataset: Any, msg_id: int | None) -> Result: ...

    def start(self, dataset: Any, msg_id: int | None, done: Callable[[Result], None]) -> Awaitable[Result] | None: ...


class InFlight:
    """The C-STORE sub-operations of one retrieve that are outstanding at
    once, at most ``window`` (the asynchronous operations window we may
    invoke on the association that carries them, PS3.7 D.3.3.3). Each one
    that completes is counted, with its Pending response, in the order the
    responses arrive.

    A sub-operation is sent where it is started, its write held with the
    Pending responses and the other requests of that pass of the loop, and
    its response calls it back (``StoreTarget.start``): no task, no future
    per sub-operation. One that cannot go at once (a large data set, a full
    write buffer, no free slot in the window) runs as a task instead."""

    __slots__ = ("retrieve", "window", "target", "running", "tasks", "done", "waiter")

    def __init__(self, retrieve: Retrieve, window: int, target: Target) -> None:
        self.retrieve = retrieve
        self.window = window
        self.target = target
        #: Started and not yet completed.
        self.running = 0
        self.tasks: set[asyncio.Future[Result]] = set()
        #: Completed and not yet counted: the outcome (or the task that has
        #: it) and the handler's status for the sub-operation.
        self.done: deque[tuple[Result | asyncio.Future[Result], Command | None]] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        """The sub-operations started and not yet counted."""
        return self.running + len(self.done)

    def start(self, dataset: Any, msg_id: int | None, probe: Command | None) -> None:
        """Start one store; ``probe``: the handler's status for it, which
        its Pending response borrows from (None: a plain Pending code)."""
        self.running += 1
        try:
            later = self.target.start(dataset, msg_id, lambda result: self._completed(result, probe))
        except BaseException:
            self.running -= 1
            raise
        if later is not None:
            task = asyncio.ensure_future(later)
            self.tasks.add(task)
            task.add_done_callback(lambda finished: self._completed(finished, probe))

    def _completed(self, outcome: Result | asyncio.Future[Result], probe: Command | None) -> None:
        self.running -= 1
        if isinstance(outcome, asyncio.Future):
            self.tasks.discard(outcome)
        self.done.append((outcome, probe))
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def settle(self, at_most: int) -> None:
        """Count the completed sub-operations (a Pending response each),
        waiting for more to complete while over ``at_most`` are running."""
        retrieve = self.retrieve
        while True:
            while self.done:
                outcome, probe = self.done.popleft()
                uid, store_status = outcome.result() if isinstance(outcome, asyncio.Future) else outcome
                retrieve.record(uid, store_status)
                await retrieve.pending(probe)
            if self.running <= at_most:
                return
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def discard(self) -> None:
        """The retrieve is over: cancel any sub-operation still running in
        a task (only when it ended by an exception) and collect them all, so
        that no task's outcome goes unread. One sent without a task ends by
        itself (its response, the association's end or the DIMSE timeout)
        and is no longer counted."""
        tasks = [*self.tasks, *(outcome for outcome, _ in self.done if isinstance(outcome, asyncio.Future))]
        self.done.clear()
        if not tasks:
            return
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sop_instance_uid(dataset: Any) -> str:
    if isinstance(dataset, Dataset):
        try:
            return dsutil.uid_of(dataset, 0x00080018)
        except KeyError:
            return ""
    if isinstance(dataset, dsutil.Part10File):
        return dataset.sop_instance_uid
    try:
        if isinstance(dataset, (bytes, bytearray, memoryview)):
            return dsutil.parse_part10(memoryview(dataset)).sop_instance_uid
        part = dsutil.open_part10(dataset)
        uid = part.sop_instance_uid
        part.close()
        return uid
    except (OSError, ValueError):
        return ""


# What makes a sub-operation impossible rather than failing the retrieve:
# no context for its SOP class, an unreadable file, or a Dataset without
# the SOP Class UID (e.g. one that names a missing instance).
_NOT_POSSIBLE = (ValueError, OSError, AttributeError, KeyError)


class StoreTarget:
    """The association the C-STORE sub-operations of one retrieve go over
    (``session``; None: gone), with the Move Originator fields of a C-MOVE
    (``originator``: AE title, Message ID) and the retrieve's ``trace``."""

    __slots__ = ("session", "originator", "trace")

    def __init__(
        self, session: ServiceSession | None, originator: tuple[str, int] | None, trace: OperationRecord | None
    ) -> None:
        self.session = session
        self.originator = originator
        self.trace = trace

    async def store(self, dataset: Any, msg_id: int | None) -> Result:
        """One C-STORE sub-operation, sent and waited for."""
        uid, prepared = self._prepare(dataset, msg_id)
        if prepared is None:
            return uid, None
        return await self._exchange(uid, prepared, False)

    def start(self, dataset: Any, msg_id: int | None, done: Callable[[Result], None]) -> Awaitable[Result] | None:
        """One of several sub-operations in flight: sent now, its write held
        with the others of this pass of the loop, and ``done`` called with
        its result once its response came (None returned). When it cannot
        go at once, the awaitable that sends it and gives its result (for a
        task; ``done`` is then not called)."""
        uid, prepared = self._prepare(dataset, msg_id)
        if prepared is None:
            done((uid, None))
            return None
        try:
            if prepared.start(lambda response: done((uid, response.status if response is not None else None)),
                              trace=self.trace):
                return None
        except _NOT_POSSIBLE as exc:
            LOGGER.warning("C-STORE sub-operation for %s not possible: %s", uid or "?", exc)
            done((uid, None))
            return None
        return self._exchange(uid, prepared, True)

    def _prepare(self, dataset: Any, msg_id: int | None) -> tuple[str, storage.PreparedStore | None]:
        """The UID and the C-STORE-RQ of a sub-operation; None in its place
        when it fails before anything is sent."""
        if isinstance(dataset, (str, os.PathLike)):
            # A file is opened once: its header gives the UID, its bytes are sent.
            try:
                dataset = dsutil.open_part10(dataset)
            except (OSError, ValueError) as exc:
                LOGGER.warning("C-STORE sub-operation for %s not possible: %s", dataset, exc)
                return "", None
        session = self.session
        if dataset is None or session is None or session.channel.end_error is not None:
            uid = sop_instance_uid(dataset)
            # Nothing to send, or the (sub-)association is gone (e.g. the move
            # destination aborted): this sub-operation fails, the others are
            # still counted, and the final response still goes out.
            if isinstance(dataset, dsutil.Part10File):
                dataset.close()
            return uid, None
        if msg_id is not None and session.channel.is_outstanding(msg_id):
            msg_id = None  # in use by another request of ours: take a free one
        originator = self.originator
        try:
            prepared = storage.PreparedStore(
                session,
                dataset,
                msg_id,
                0,
                originator[0] if originator else None,
                originator[1] if originator else None,
            )
        except _NOT_POSSIBLE as exc:
            uid = sop_instance_uid(dataset)
            LOGGER.warning("C-STORE sub-operation for %s not possible: %s", uid or "?", exc)
            return uid, None
        # The UID the request carries: what sop_instance_uid(dataset) gives
        # (read once, not again for the failed list).
        return prepared.command.affected_sop_instance_uid or "", prepared

    async def _exchange(self, uid: str, prepared: storage.PreparedStore, hold: bool) -> Result:
        try:
            response = await prepared.exchange(trace=self.trace, hold=hold)
        except _NOT_POSSIBLE as exc:
            LOGGER.warning("C-STORE sub-operation for %s not possible: %s", uid or "?", exc)
            return uid, None
        return uid, response.status if response is not None else None


class NotStored:
    """The target of a C-MOVE whose destination cannot take the instances:
    every sub-operation fails."""

    async def store(self, dataset: Any, msg_id: int | None) -> Result:
        return sop_instance_uid(dataset), None

    def start(self, dataset: Any, msg_id: int | None, done: Callable[[Result], None]) -> Awaitable[Result] | None:
        done((sop_instance_uid(dataset), None))
        return None
