"""The C-STORE sub-operations of a C-GET or C-MOVE SCP (PS3.4 C.4.2.3,
C.4.3.3), as ``query_retrieve`` starts them: one store
(``store_over``), and, when the association that carries them negotiated
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
from typing import Any, Awaitable, Protocol

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


class InFlight:
    """The C-STORE sub-operations of one retrieve that are outstanding at
    once, at most ``window`` (the asynchronous operations window we may
    invoke on the association that carries them, PS3.7 D.3.3.3), each a
    task. Each one that completes is counted, with its Pending response,
    in the order the responses arrive."""

    __slots__ = ("retrieve", "window", "running", "done", "waiter")

    def __init__(self, retrieve: Counts, window: int) -> None:
        self.retrieve = retrieve
        self.window = window
        self.running: set[asyncio.Future[tuple[str, int | None]]] = set()
        self.done: deque[tuple[asyncio.Future[tuple[str, int | None]], Command]] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        """The sub-operations started and not yet counted."""
        return len(self.running) + len(self.done)

    def start(self, operation: Awaitable[tuple[str, int | None]], probe: Command) -> None:
        """Run ``operation`` (one store); ``probe``: the handler's status
        for it, which its Pending response borrows from."""
        task = asyncio.ensure_future(operation)
        self.running.add(task)
        task.add_done_callback(lambda done: self._completed(done, probe))

    def _completed(self, task: asyncio.Future[tuple[str, int | None]], probe: Command) -> None:
        self.running.discard(task)
        self.done.append((task, probe))
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def settle(self, at_most: int) -> None:
        """Count the completed sub-operations (a Pending response each),
        waiting for more to complete while over ``at_most`` are running."""
        retrieve = self.retrieve
        while True:
            while self.done:
                task, probe = self.done.popleft()
                uid, store_status = task.result()
                retrieve.record(uid, store_status)
                await retrieve.pending(probe)
            if len(self.running) <= at_most:
                return
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def discard(self) -> None:
        """The retrieve is over: cancel any sub-operation still running (only
        when it ended by an exception) and collect them all, so that no
        task's outcome goes unread."""
        tasks = [*self.running, *(task for task, _ in self.done)]
        self.done.clear()
        if not tasks:
            return
        for task in self.running:
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


async def store_over(
    session: ServiceSession | None,
    dataset: Any,
    originator: tuple[str, int] | None,
    trace: OperationRecord | None = None,
    msg_id: int | None = None,
    hold: bool = False,
) -> tuple[str, int | None]:
    """One C-STORE sub-operation; (SOP Instance UID, response status or
    None). ``hold``: one of several started together (``InFlight``), whose
    requests go out in one write."""
    if isinstance(dataset, (str, os.PathLike)):
        # A file is opened once: its header gives the UID, its bytes are sent.
        try:
            dataset = dsutil.open_part10(dataset)
        except (OSError, ValueError) as exc:
            LOGGER.warning("C-STORE sub-operation for %s not possible: %s", dataset, exc)
            return "", None
    uid = sop_instance_uid(dataset)
    if dataset is None or session is None or session.channel.end_error is not None:
        # Nothing to send, or the (sub-)association is gone (e.g. the move
        # destination aborted): this sub-operation fails, the others are
        # still counted, and the final response still goes out.
        if isinstance(dataset, dsutil.Part10File):
            dataset.close()
        return uid, None
    if msg_id is not None and session.channel.is_outstanding(msg_id):
        msg_id = None  # in use by another request of ours: take a free one
    try:
        response = await storage.store(
            session,
            dataset,
            msg_id,
            0,
            originator[0] if originator else None,
            originator[1] if originator else None,
            trace=trace,
            hold=hold,
        )
    except (ValueError, OSError, AttributeError, KeyError) as exc:
        # No context for its SOP class, an unreadable file, or a Dataset
        # without the SOP Class UID (e.g. one that names a missing instance).
        LOGGER.warning("C-STORE sub-operation for %s not possible: %s", uid or "?", exc)
        return uid, None
    return uid, response.status if response is not None else None


async def not_stored(dataset: Any, msg_id: int | None = None, hold: bool = False) -> tuple[str, int | None]:
    """The sub-operation of a C-MOVE whose destination cannot take it: failed."""
    return sop_instance_uid(dataset), None
