"""The C-STORE sub-operations of a C-GET or C-MOVE SCP (PS3.4 C.4.2.3,
C.4.3.3), as ``query_retrieve`` starts them: one store
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
from chromanet.services import storage
from chromanet.services.base import ServiceSession
from chromanet.services.observe import OperationRecord

LOGGER = logging.getLogger("chromanet.services")

# C-STORE sub-operations outstanding at once on an association whose
# window lets us invoke any number (0, unlimited).
UNLIMITED_IN_FLIGHT = 64


class Counts(Protocol):
    """What counts the sub-operations of one retrieve (``query_retrieve``'s
    bookkeeping): each one that ended, then its Pending response."""

    def record(self, sop_instance_uid: str, store_status: int | None) -> None: ...

    async def pending(self, given: Command | None = None) -> None: ...


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

    def __init__(self, retrieve: Counts, window: int, target: Target) -> None:
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
        uid = sop_instance_uid(dataset)
        session = self.session
        if dataset is None or session is None or session.channel.end_error is not None:
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
            LOGGER.warning("C-STORE sub-operation for %s not possible: %s", uid or "?", exc)
            return uid, None
        return uid, prepared

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
