"""Group commit: C-STOREs that arrive while a commit runs share the next one.

Making one store durable costs a few fsyncs (the file, the directory, the
index transaction), each a wait for the disk, not for the CPU. Paid once
per store and one store after another, they cap a node at a few hundred
stores a second however many associations send. Paid once per *batch*,
the cost is shared by every store that was waiting meanwhile.

How a batch forms (``GroupCommit``):

* a store that finds no commit running starts one at once, alone: a single
  association never waits for company;
* stores that arrive while commits run queue, and the queue becomes the
  next batch when a commit may start, in arrival order, at most
  ``max_batch`` of them (the rest wait for the batch after);
* up to ``max_inflight`` batches commit side by side (2: one validates
  while the other waits for the disk); a queued store waits at most
  ``max_wait`` seconds (default 0) before a commit beside a running one
  starts for it, at once for a full batch; with ``max_inflight`` commits
  running, the queue grows until one ends;
* each store's result is handed back when the batch holding it has
  committed, so a peer hears success only for a store that is durable.

Results are handed back in the order the stores arrived (so one
association's responses keep the order of its requests), whether they
were refused while validated, committed in the same batch or in two
batches that ran side by side. A store whose waiter is cancelled before
its batch begins (its association aborted) is dropped from the queue; once
its batch has begun it is committed like the others, and its result is
not delivered.

``IngestQueue`` puts a node's C-STOREs through one (spooled to a file, or
received in memory and written by the archive straight into its store). A store costs
the loop no hand-off of its own: a batch's files are validated
(``prepare_file``) and committed (``commit_batch``) together, off the loop
(``PaletteArchive``: in one of the queue's threads, where the fsyncs wait;
``PgArchive``: validated in the executor, then its one transaction
awaited). With two batches in flight one validates while the other waits
for the disk. A data set received in memory that the SQLite archive keeps
in its index is validated on the loop as it arrives instead (no I/O, tens
of microseconds), so that its batch's thread does little but the
transaction. What each archive does with a batch, and why it stays crash
safe, is in its module.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Generic, TypeVar

from chromanet.archive.validation import OUT_OF_RESOURCES, IngestResult

__all__ = ["GroupCommit", "IngestQueue", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_WAIT", "DEFAULT_MAX_INFLIGHT"]

LOGGER = logging.getLogger("chromanet.archive")

#: Stores committed together at most.
DEFAULT_MAX_BATCH = 64
#: Seconds a queued store waits at most for its batch to begin while a
#: commit runs (0: a second commit starts beside it at once).
DEFAULT_MAX_WAIT = 0.0
#: Batches committing at the same time at most.
DEFAULT_MAX_INFLIGHT = 2
#: Batches of one store in a row, each alone in flight, after which a
#: worker commits in its own threads instead of the shared committer (see
#: ``IngestQueue._worth_sharing``).
LONE_BATCHES_BEFORE_LOCAL = 8

T = TypeVar("T")
R = TypeVar("R")


class _Entry(Generic[T, R]):
    """One submitted item: ``item`` when it was ready, else ``prepared``,
    ready once its preparation is done."""

    __slots__ = ("item", "prepared", "result", "arrived")

    def __init__(self, item: T | None, prepared: asyncio.Future[T] | None, result: asyncio.Future[R], arrived: float) -> None:
        self.item = item
        self.prepared = prepared
        self.result = result
        self.arrived = arrived

    def ready(self) -> bool:
        return self.prepared is None or self.prepared.done()

    def failure(self) -> BaseException | None:
        """Why its preparation gave no item (cancelled or raised), if it did not."""
        prepared = self.prepared
        if prepared is None:
            return None
        if prepared.cancelled():
            return asyncio.CancelledError()
        return prepared.exception()

    def value(self) -> T:
        return self.item if self.prepared is None else self.prepared.result()  # type: ignore[return-value]


class GroupCommit(Generic[T, R]):
    """Batches of items for ``commit``, an awaitable that takes a list of
    items and returns one result per item, in order (see the module
    docstring for how a batch forms). Used on one event loop.

    Order: items are batched in the order they were submitted, and results
    are delivered in that order too (a batch's after the batch before it,
    even when two commit at once), so the responses of one association
    leave in the order of its requests. An item may be submitted before it
    is ready (``submit(awaitable)``, e.g. while it is validated in a
    thread): it keeps its place, and a batch takes only the ready items at
    the head of the queue.
    """

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait: float = DEFAULT_MAX_WAIT,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
    ) -> None:
        if max_batch < 1 or max_inflight < 1 or max_wait < 0:
            raise ValueError("max_batch and max_inflight must be >= 1, max_wait >= 0")
        self._commit = commit
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_inflight = max_inflight
        self._queue: collections.deque[_Entry[T, R]] = collections.deque()
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Batches are numbered as they start and delivered in that order.
        self._started = 0
        self._delivered = 0
        self._finished: dict[int, tuple[list[_Entry[T, R]], list[R] | None, BaseException | None]] = {}
        #: Batches committed so far and the items in them (for tests and logs).
        self.batches = 0
        self.items = 0

    @property
    def inflight(self) -> int:
        """Batches committing now."""
        return self._inflight

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._queue)

    async def submit(self, item: T | Awaitable[T]) -> R:
        """Commit ``item`` (or what the awaitable gives) with whatever else
        is waiting; its result, once its batch and every earlier one ended."""
        # (The type's __await__ first: inspect.isawaitable's ABC check is slow for a plain item.)
        if not (hasattr(type(item), "__await__") or inspect.isawaitable(item)):
            return await self.submit_ready(item)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        prepared: asyncio.Future[T] = asyncio.ensure_future(item)  # type: ignore[arg-type]
        entry: _Entry[T, R] = _Entry(None, prepared, loop.create_future(), loop.time())
        self._queue.append(entry)
        prepared.add_done_callback(lambda _: self._start_batches())
        try:
            return await entry.result
        except asyncio.CancelledError:
            if not prepared.done():
                prepared.cancel()
            raise

    def submit_ready(self, item: T) -> asyncio.Future[R]:
        """``submit`` for an item that is ready, without a coroutine (a
        node's C-STORE answers from a callback, not a task per store): the
        future of its result. Cancelling it before the item's batch begins
        drops the item."""
        loop = asyncio.get_running_loop()
        entry: _Entry[T, R] = _Entry(item, None, loop.create_future(), loop.time())
        self._queue.append(entry)
        self._start_batches()
        return entry.result

    def _start_batches(self) -> None:
        loop = asyncio.get_running_loop()  # called on the loop only: submit, callbacks, timer
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._inflight < self.max_inflight:
            while self._queue and self._queue[0].result.done():
                self._queue.popleft()  # its waiter was cancelled before its batch began
            ready = 0
            for entry in self._queue:
                if not entry.ready() or ready == self.max_batch:
                    break
                ready += 1
            if not ready:
                return
            if self._inflight and ready < self.max_batch:
                # A commit runs: the queue waits for it, up to max_wait.
                due = self._queue[0].arrived + self.max_wait
                if loop.time() < due:
                    self._timer = loop.call_at(due, self._start_batches)
                    return
            batch = [self._queue.popleft() for _ in range(ready)]
            self._inflight += 1
            number = self._started
            self._started += 1
            task = loop.create_task(self._run(number, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, number: int, batch: list[_Entry[T, R]]) -> None:
        """Commit one batch; entries whose preparation failed, or was
        cancelled, get that outcome and are not committed."""
        live = [e for e in batch if e.failure() is None]
        results: list[R] | None = None
        error: BaseException | None = None
        try:
            if live:
                results = await self._commit([e.value() for e in live])
                if len(results) != len(live):
                    raise RuntimeError(f"commit returned {len(results)} results for {len(live)} items")
        except Exception as exc:
            error = exc
        except BaseException as exc:
            error = RuntimeError(f"commit ended: {exc!r}")
            raise
        finally:
            self._inflight -= 1
            self.batches += 1
            self.items += len(live)
            by_entry = dict(zip(map(id, live), results or ()))
            outcomes = [by_entry.get(id(e)) for e in batch]
            self._finished[number] = (batch, outcomes, error)  # type: ignore[assignment]
            self._deliver()
            self._start_batches()

    def _deliver(self) -> None:
        """Hand out the results of finished batches, in the order they started."""
        while self._delivered in self._finished:
            batch, outcomes, error = self._finished.pop(self._delivered)
            self._delivered += 1
            for entry, outcome in zip(batch, outcomes or [None] * len(batch)):
                if entry.result.done():
                    continue
                failure = entry.failure()
                if isinstance(failure, asyncio.CancelledError):
                    entry.result.cancel()
                elif failure is not None:
                    entry.result.set_exception(failure)
                elif error is not None:
                    entry.result.set_exception(error)
                else:
                    entry.result.set_result(outcome)  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Until nothing is queued or committing."""
        while self._tasks or self._queue:
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            else:
                waiting = [e.prepared for e in self._queue if e.prepared is not None and not e.prepared.done()]
                if waiting:
                    await asyncio.wait(waiting)
                else:
                    await asyncio.sleep(0)


class _CommitThreads:
    """Threads that run the SQLite archive's batches (validation, fsyncs,
    the index), one batch each at a time. A batch is handed over through a
    ``queue.SimpleQueue`` and its outcome handed back with one
    ``call_soon_threadsafe``: about half the CPU of ``run_in_executor``
    per batch (no ``concurrent.futures.Future``, its condition variable
    and the two callbacks that chain it to an asyncio future), which a
    batch of one or two stores paid for each."""

    def __init__(self, count: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{k}", daemon=True) for k in range(count)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, function: Callable[..., R], *args: Any) -> R:
        """``function(*args)`` in one of the threads; its result or exception."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        self._jobs.put((loop, done, function, args))
        return await done

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, done, function, args = job
            try:
                outcome, failed = function(*args), False
            except BaseException as exc:  # handed to the awaiting task
                outcome, failed = exc, True
            try:
                loop.call_soon_threadsafe(_settle, done, outcome, failed)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def stop(self) -> None:
        """Let the threads end after the batches already handed over."""
        for _ in self._threads:
            self._jobs.put(None)


def _settle(done: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if done.cancelled():
        return
    if failed:
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


class IngestQueue:
    """A node's C-STOREs into ``archive`` (``PaletteArchive`` or ``PgArchive``)
    through a ``GroupCommit``; ``await ingest_file(...)`` as the archive's own."""

    def __init__(
        self,
        archive: Any,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait: float = DEFAULT_MAX_WAIT,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        remote: Any = None,
    ) -> None:
        self.archive = archive
        #: The supervisor's shared committer (``shared_commit.RemoteCommitter``),
        #: or None: the stores of a batch that are validated and kept in the
        #: index are committed there, with other workers' stores; the others here.
        self.remote = remote
        self._remote_lost = False
        self._lone_batches = 0
        #: Batches sent to the shared committer, and committed here while it was there.
        self.shared_batches = 0
        self.local_batches = 0
        # The SQLite archive's batches (validation, fsyncs, the index) run
        # in threads of their own, never on the loop; a PgArchive's files
        # are validated and read in the loop's executor, its transaction awaited.
        self._committers: _CommitThreads | None = None
        if not archive.is_async:
            self._committers = _CommitThreads(max_inflight, "chromanet-commit")
        self.group: GroupCommit[_Store | _Prepared, IngestResult] = GroupCommit(
            self._commit, max_batch=max_batch, max_wait=max_wait, max_inflight=max_inflight
        )

    async def _commit(self, batch: list[_Store | _Prepared]) -> list[IngestResult]:
        """Validate and commit one batch of spooled files, off the loop: one
        hand-off to a thread per batch, not per store."""
        loop = asyncio.get_running_loop()
        if self._committers is not None:
            if self.remote is not None and not self._remote_lost:
                if self._worth_sharing(batch):
                    self.shared_batches += 1
                    return await self._commit_shared(batch)
                self.local_batches += 1
            return await self._committers.run(self._ingest_batch, batch)
        prepared = await loop.run_in_executor(None, self._prepare_all, batch)
        stores = [item for item in prepared if not isinstance(item, IngestResult)]
        committed = iter(await self.archive.commit_batch(stores) if stores else ())
        return [item if isinstance(item, IngestResult) else next(committed) for item in prepared]

    def _worth_sharing(self, batch: list[_Store | _Prepared]) -> bool:
        """Whether this batch goes to the shared committer. Sharing pays
        when stores meet: the trip to the supervisor and back costs a store
        about half a millisecond more on a 2-core machine (two more
        processes woken), which a lone association, one store at a time,
        would pay on every store. So after LONE_BATCHES_BEFORE_LOCAL batches
        of one store in a row, each alone in flight and nothing queued
        behind it, the worker commits in its own threads; the first batch
        that meets another (more than one store, or another batch in
        flight) goes back to the shared committer, and so do the next."""
        lone = len(batch) == 1 and self.group.inflight <= 1 and not self.group.queued
        self._lone_batches = self._lone_batches + 1 if lone else 0
        return self._lone_batches <= LONE_BATCHES_BEFORE_LOCAL

    async def _commit_shared(self, batch: list[_Store | _Prepared]) -> list[IngestResult]:
        """A batch whose stores kept in the index and validated on arrival go
        to the shared committer, the rest (files, refusals) as usual; both at
        once, the results in the batch's order. Should the committer be gone,
        its stores are committed here (an index-kept store of the same
        bytes and owner replaces itself if the lost batch had committed)."""
        results: list[IngestResult | None] = [None] * len(batch)
        shared: list[int] = []
        local: list[int] = []
        for k, item in enumerate(batch):
            if type(item) is _Prepared and isinstance(item.outcome, IngestResult):
                results[k] = item.outcome
            elif type(item) is _Prepared and item.outcome.source is None:
                shared.append(k)
            else:
                local.append(k)
        waits: list[Awaitable[list[IngestResult]]] = []
        if shared:
            waits.append(self._commit_remote([batch[k].outcome for k in shared]))  # type: ignore[union-attr]
        if local:
            assert self._committers is not None
            waits.append(self._committers.run(self._ingest_batch, [batch[k] for k in local]))
        if len(waits) == 1:  # the usual case, awaited as it is: no task for gather
            outcomes = iter([await waits[0]])
        else:
            outcomes = iter(await asyncio.gather(*waits))
        for part in (shared, local):
            if part:
                for k, result in zip(part, next(outcomes)):
                    results[k] = result
        return results  # type: ignore[return-value]

    async def _commit_remote(self, stores: list[Any]) -> list[IngestResult]:
        try:
            return await self.remote.commit(stores)
        except ConnectionError as exc:
            if not self._remote_lost:
                LOGGER.warning("%s: committing in this process from now on", exc)
            self._remote_lost = True
        assert self._committers is not None
        return await self._committers.run(self.archive.commit_batch, stores)

    def _prepare_all(self, batch: list[_Store | _Prepared]) -> list[Any]:
        """Each store validated (a PreparedStore), or the IngestResult of its
        refusal (one validated on arrival as it was)."""
        return [item.outcome if type(item) is _Prepared else self._prepare(item) for item in batch]

    def _prepare(self, store: _Store) -> Any:
        """``store`` validated (a PreparedStore), or the IngestResult of its refusal."""
        archive = self.archive
        try:
            if store.data is not None:
                return archive.prepare_data(store.data, store.transfer_syntax, store.sop_class_uid,
                                            store.sop_instance_uid, owner=store.owner,
                                            may_replace_others=store.may_replace_others)  # fmt: skip
            return archive.prepare_file(store.path, owner=store.owner, may_replace_others=store.may_replace_others)
        except OSError as exc:
            return IngestResult(OUT_OF_RESOURCES, f"cannot read: {exc}"[:64])

    def _ingest_batch(self, batch: list[_Store | _Prepared]) -> list[IngestResult]:
        """The SQLite archive's batch, in a commit thread."""
        prepared = self._prepare_all(batch)
        stores = [item for item in prepared if not isinstance(item, IngestResult)]
        committed = iter(self.archive.commit_batch(stores) if stores else ())
        return [item if isinstance(item, IngestResult) else next(committed) for item in prepared]

    async def ingest_file(
        self, path: str | Path, *, owner: str | None = None, may_replace_others: bool = False
    ) -> IngestResult:
        """Store a spooled file in the next batch: validated and committed
        off the loop; the result once that batch is durable (or refused).
        Results come back in the order the stores arrived."""
        return await self.submit_file(path, owner=owner, may_replace_others=may_replace_others)

    def submit_file(
        self, path: str | Path, *, owner: str | None = None, may_replace_others: bool = False
    ) -> asyncio.Future[IngestResult]:
        """``ingest_file`` without a coroutine: the future of its result."""
        return self.group.submit_ready(_Store(Path(path), owner, may_replace_others))

    async def ingest_data(
        self,
        data: Any,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        *,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> IngestResult:
        """Store a data set received in memory (``archive.prepare_data``) in
        the next batch, as ``ingest_file`` stores a spooled one: validated
        and written off the loop, the result once its batch is durable."""
        return await self.submit_data(data, transfer_syntax, sop_class_uid, sop_instance_uid, owner=owner,
                                      may_replace_others=may_replace_others)  # fmt: skip

    def submit_data(
        self,
        data: Any,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        *,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> asyncio.Future[IngestResult]:
        """``ingest_data`` without a coroutine: the future of its result.

        A data set the SQLite archive keeps in its index
        (``prepares_in_memory``) is validated here, on the loop, as it
        arrives (tens of microseconds, no I/O), so that the commit threads
        do little but the index transaction and its fsync: a commit thread
        holding the index's write lock waits less for the GIL while another
        thread validates, and a batch commits sooner."""
        store = _Store(None, owner, may_replace_others, data, transfer_syntax, sop_class_uid, sop_instance_uid)
        if self._committers is not None and self.archive.prepares_in_memory(len(data)):
            return self.group.submit_ready(_Prepared(self._prepare(store)))
        return self.group.submit_ready(store)

    async def close(self) -> None:
        """Let the batches in flight finish, then stop the commit threads."""
        await self.group.drain()
        if self._committers is not None:
            self._committers.stop()


@dataclass(frozen=True, slots=True)
class _Store:
    """One C-STORE, its spooled file (``path``) or its data set received in
    memory (``data``, its transfer syntax and the request's UIDs), and who
    stores it."""

    path: Path | None
    owner: str | None
    may_replace_others: bool
    data: Any = None
    transfer_syntax: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A store validated on arrival: its PreparedStore, or the IngestResult
    of its refusal."""

    outcome: Any
