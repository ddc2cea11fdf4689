"""Plain ``def`` handlers, run off the event loop, in order per association.

pynetdicom programs block in their handlers (a database, a file, a
``send_c_store`` back to the peer). On the loop thread such a handler would
stall every association of the process, and could never see what it waits
for (``event.is_cancelled``, a response to its own request): the loop that
would deliver it is the thread it blocks. So a sync handler runs in a
worker thread, and the loop awaits it like any other future.

- ``HandlerThreads``: one bounded set of daemon worker threads (an AE's),
  started as needed, up to ``max_threads``; a thread idle for a while ends.
  A thousand associations are not a thousand threads: a handler waits for
  a free thread when ``max_threads`` handlers are running.
- ``HandlerLane``: one association's queue. Its jobs (intervention handlers,
  notification handlers, a generator's next batch) run one at a time, in
  the order they were given, on whichever worker is free; so an
  association's handlers see its events in order, as they did on the loop
  and as pynetdicom's one thread per association gives them.

A generator handler (C-FIND, C-GET, C-MOVE) is advanced in the worker a
batch at a time (``ThreadedResults``): the loop takes the results from a
shared buffer without a hop per yield, the generator runs at most about a
batch ahead of what was sent, and a thread is never held waiting for the
loop.

A handler that aborts or releases its own association between two yields
(``event.assoc.abort()`` in a generator) does so after the results it
yielded before were sent, as in pynetdicom, whose generator runs in step
with the sending: the blocking ``Association`` first awaits
``ThreadedResults.caught_up`` of the results its worker is taking
(``taking_results``), and the job stops taking results after it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from _thread import allocate_lock
from collections import deque
from typing import Any, Callable

from chromanet.services.answers import Exhausted

LOGGER = logging.getLogger("chromanet.services")

#: A worker thread with nothing to do for this long ends (every AE has its
#: own workers: a process with many short-lived AEs keeps few threads).
IDLE_SECONDS = 5.0


class HandlerThreads:
    """At most ``max_threads`` daemon threads running lanes' jobs.

    An idle worker waits on a lock of its own, which ``schedule`` releases
    to wake it: one lock operation each way, where a ``threading.Condition``
    made a new lock per wait and ran its bookkeeping in Python (~12 % of
    the GIL's time of a blocking C-GET client whose C-STORE handler runs
    here)."""

    def __init__(self, max_threads: int, name: str = "chromanet-handler") -> None:
        if max_threads < 1:
            raise ValueError("at least one handler thread is needed")
        self.max_threads = max_threads
        self._name = name
        self._lock = threading.Lock()
        self._ready: deque[HandlerLane] = deque()
        self._parked: list[Any] = []  # the wake-up locks of idle workers (the last parked first)
        self._threads = 0
        self._started = 0
        #: The most threads that ever ran at once (for tests and metrics).
        self.peak_threads = 0

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        return self._threads

    def schedule(self, lane: HandlerLane) -> None:
        """``lane`` has jobs: a free worker takes it, or a new one is
        started while fewer than ``max_threads`` exist."""
        with self._lock:
            self._ready.append(lane)
            if self._parked:
                wake = self._parked.pop()
            else:
                if self._threads >= self.max_threads:
                    return  # it waits its turn
                wake = None
                self._threads += 1
                self._started += 1
                self.peak_threads = max(self.peak_threads, self._threads)
                number = self._started
        if wake is not None:
            wake.release()
            return
        thread = threading.Thread(target=self._run, name=f"{self._name}-{number}", daemon=True)
        thread.start()

    def _run(self) -> None:
        wake = allocate_lock()
        wake.acquire()
        while True:
            with self._lock:
                lane = self._ready.popleft() if self._ready else None
                if lane is None:
                    self._parked.append(wake)
            if lane is None:
                if not wake.acquire(timeout=IDLE_SECONDS):
                    with self._lock:
                        if wake in self._parked:  # nobody woke it: the thread ends
                            self._parked.remove(wake)
                            self._threads -= 1
                            return
                    wake.acquire()  # taken off the list just now: the release comes
                continue
            if lane.run_one():
                # More jobs: back in the queue, behind the lanes waiting.
                with self._lock:
                    self._ready.append(lane)


#: In a worker: the lane whose job it runs (``lane``) and whether it still
#: holds the lane (``holds``), see ``blocking_call``.
_worker = threading.local()


class HandlerLane:
    """One association's sync handler calls, in order, on ``threads``.

    One worker at a time holds the lane and runs its jobs. A job that
    blocks on its own association (``blocking_call``: a handler calling
    ``event.assoc.send_c_get`` whose C-STORE sub-operations come back to
    this association's EVT_C_STORE handler) lets go of the lane meanwhile,
    so the jobs behind it run on another worker, as pynetdicom runs them
    inside the call; it takes the lane back afterwards when it is free."""

    def __init__(self, threads: HandlerThreads, loop: asyncio.AbstractEventLoop) -> None:
        self.threads = threads
        self.loop = loop
        self._lock = threading.Lock()
        # (function, args, what gets the outcome: a future, a callback, or None)
        self._jobs: deque[tuple[Callable[..., Any], tuple[Any, ...], Any]] = deque()
        self._scheduled = False  # a worker holds the lane (or will: it is in the ready queue)

    def call(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``function(*args)`` in turn (called on the loop); a future
        of its result or exception."""
        future = self.loop.create_future()
        self._add((function, args, future))
        return future

    def call_back(
        self, function: Callable[..., Any], args: tuple[Any, ...], then: Callable[[Any, BaseException | None], None]
    ) -> None:
        """Run ``function(*args)`` in turn (called on the loop); then, on
        the loop, ``then(result, None)`` or ``then(None, exception)``: one
        callback handed to the loop, no future to wake a task with (a sync
        C-STORE handler's answer: ``base.answer_once``)."""
        self._add((function, args, then))

    def post(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` in turn, nobody waiting for it (its
        exception is logged)."""
        self._add((function, args, None))

    def _add(self, job: tuple[Callable[..., Any], tuple[Any, ...], Any]) -> None:
        with self._lock:
            self._jobs.append(job)
            if self._scheduled:
                return
            self._scheduled = True
        self.threads.schedule(self)

    def run_one(self) -> bool:
        """Run the next job (in a worker); True when more are waiting and
        this worker still holds the lane."""
        with self._lock:
            function, args, future = self._jobs.popleft()
        _worker.lane, _worker.holds = self, True
        try:
            result = function(*args)
        except BaseException as exc:  # handed to the loop, or logged
            if future is None:
                LOGGER.exception("handler raised")
            else:
                self._settle(future, None, exc)
        else:
            if future is not None:
                self._settle(future, result, None)
        finally:
            holds, _worker.lane = _worker.holds, None
        with self._lock:
            if not holds:
                return False  # another worker holds the lane now
            if self._jobs:
                return True
            self._scheduled = False
            return False

    def let_go(self) -> None:
        """In the worker running a job of this lane, before it blocks on
        the association: the jobs behind it may run on another worker."""
        _worker.holds = False
        with self._lock:
            if not self._jobs:
                self._scheduled = False
                return
        self.threads.schedule(self)  # still "scheduled": now for another worker

    def take_back(self) -> None:
        """After the blocking call: hold the lane again if nobody does (if
        someone does, this job goes on beside its jobs)."""
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        _worker.holds = True

    def _settle(self, outcome: Any, result: Any, error: BaseException | None) -> None:
        """Hand the outcome to the loop: set the future, or call back."""
        try:
            if isinstance(outcome, asyncio.Future):
                self.loop.call_soon_threadsafe(_set, outcome, result, error)
            else:
                self.loop.call_soon_threadsafe(outcome, result, error)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


class _LettingGo:
    """``blocking_call`` in a worker holding ``lane``."""

    __slots__ = ("lane",)

    def __init__(self, lane: HandlerLane) -> None:
        self.lane = lane

    def __enter__(self) -> None:
        self.lane.let_go()

    def __exit__(self, *exc_info: Any) -> None:
        self.lane.take_back()


class _Nothing:
    """``blocking_call`` anywhere else: nothing to do."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: Any) -> None:
        return None


_NOTHING = _Nothing()


def blocking_call() -> _LettingGo | _Nothing:
    """A context manager around a blocking call on an association (the
    blocking ``Association``'s methods): in a handler's worker, the
    handler's lane is let go meanwhile (``HandlerLane.let_go``); anywhere
    else, nothing (a shared object: the blocking API's every call and
    response passes here, ``contextlib``'s generator cost ~3 us)."""
    lane = getattr(_worker, "lane", None)
    if lane is None or not _worker.holds:
        return _NOTHING
    return _LettingGo(lane)


def in_worker() -> bool:
    """True in a handler's worker thread (running one of its jobs)."""
    return getattr(_worker, "lane", None) is not None


def taking_results(lane: HandlerLane | None) -> ThreadedResults | None:
    """In a worker taking the results of a generator handler of ``lane``'s
    association (the handler's code runs between two yields): those
    results; else None."""
    results: ThreadedResults | None = getattr(_worker, "results", None)
    if results is None or lane is None or results._lane is not lane:
        return None
    return results


def _set(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the waiter was cancelled (the association ended)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ThreadedResults:
    """A sync generator handler's results (C-FIND, C-GET, C-MOVE) behind
    the same ``await next()`` / ``await close()`` as ``answers.HandlerResults``,
    with the generator advanced in the association's lane.

    A job in the lane takes up to ``limit`` results, each put in a shared
    buffer at once; the loop takes them from there without a hop, and is
    woken (one ``call_soon_threadsafe``) only when it found the buffer
    empty and waits. So a fast generator costs a hop per batch (a batch
    grows past ``limit`` while the generator yields fast, see ``batch``),
    and a slow one (a database cursor, a handler sleeping until ``event.is_cancelled``)
    hands each result over as soon as it is yielded. A job ends after
    ``limit`` results (freeing its thread), after a result that ends the
    operation, or once the request is cancelled; the next job is posted
    when the loop has taken half of what is buffered: the generator runs
    at most about a batch ahead of what was sent (back-pressure), and a
    slow reader holds no thread.

    Until ``batch`` is called, one result is taken per job and none ahead
    (the C-GET count, the C-MOVE destination: the engine decides what comes
    next from each)."""

    def __init__(self, generator: Any, lane: HandlerLane, cancelled: Callable[[], bool]) -> None:
        self._gen = generator
        self._lane = lane
        self._loop = lane.loop
        self._cancelled = cancelled
        self._lock = threading.Lock()
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._running = False  # a job is taking results
        self._ended = False  # the generator is exhausted or raised
        self._error: BaseException | None = None
        self._limit = 1
        self._most = 1
        self._within = 0.0
        self._is_final: Callable[[Any], bool] | None = None
        #: Loop futures set once the loop has sent every buffered result
        #: (``caught_up``); the loop's side only.
        self._catching_up: list[asyncio.Future[None]] = []
        self._closed = False  # the loop reads no more results
        self._stop = False  # the handler aborted/released: no more results are taken

    def batch(self, limit: int, is_final: Callable[[Any], bool], *, most: int = 0, within: float = 0.0) -> None:
        """From now on take up to ``limit`` results per job, stopping after
        one that ``is_final`` says ends the operation. With ``most`` (>
        ``limit``): a job goes on taking results, up to ``most``, while it
        has run less than ``within`` seconds: a generator that yields from
        memory crosses in a few hops (each a thread wake-up and two GIL
        switches, ~50 us of CPU), one that reads or builds each result
        (a file, a database row) still runs only ``limit`` ahead, or what
        it can make in ``within``."""
        self._limit = limit
        self._most = max(limit, most)
        self._within = within
        self._is_final = is_final

    async def next(self) -> Any:
        while True:
            start = False
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    # Keep the handler about a batch ahead of the sender.
                    refill = (
                        self._limit > 1
                        and not self._running
                        and not self._ended
                        and len(self._items) <= self._limit // 2
                    )
                    if refill:
                        self._running = True
                    break
                # Every result taken before was sent: the loop asks for
                # one more.
                self._caught_up()
                if self._stop and not self._running:
                    # The handler aborted or released its association: the
                    # loop gets nothing more (the generator is closed).
                    raise Exhausted
                if self._ended and not self._running:
                    error, self._error = self._error, None
                    if error is not None:
                        raise error
                    raise Exhausted
                if not self._running:
                    self._running = start = True
                waiter = self._waiter = self._loop.create_future()
            if start:
                self._lane.post(self._take)
            await waiter
        if refill:
            self._lane.post(self._take)
        return item

    def _caught_up(self) -> None:
        waiting, self._catching_up = self._catching_up, []
        for future in waiting:
            if not future.done():
                future.set_result(None)

    async def caught_up(self) -> None:
        """On the loop: return once every result buffered so far was sent
        (the loop asks for the next one, or reads no more); no more
        results are taken after the one the handler is yielding.
        ``Association.abort``/``release`` called by the handler between two
        yields await it first."""
        self._stop = True
        with self._lock:
            if self._closed or (not self._items and self._waiter is not None):
                return
            future = self._loop.create_future()
            self._catching_up.append(future)
        await future

    def _take(self) -> None:
        """One job (in a worker): up to ``limit`` results into the buffer
        (or more, see ``batch``)."""
        final = self._is_final
        taken = 0
        ended = False
        error: BaseException | None = None
        _worker.results = self
        try:
            limit, until = self._limit, 0.0
            if self._most > limit:
                until = time.monotonic() + self._within
            while not self._stop:
                if taken >= limit:
                    if taken >= self._most or time.monotonic() >= until:
                        break
                item = next(self._gen)
                taken += 1
                with self._lock:
                    self._items.append(item)
                    waiter, self._waiter = self._waiter, None
                if waiter is not None:
                    self._wake(waiter)
                if (final is not None and final(item)) or self._cancelled():
                    break
        except StopIteration:
            ended = True
        except Exception as exc:
            ended, error = True, exc
        finally:
            _worker.results = None
        with self._lock:
            self._running = False
            if ended:
                self._ended, self._error = True, error
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._wake(waiter)

    def _wake(self, waiter: asyncio.Future[None]) -> None:
        try:
            self._loop.call_soon_threadsafe(_set, waiter, None, None)
        except RuntimeError:
            pass  # the loop is closed

    async def close(self) -> None:
        """Close the generator in the lane, after the job still taking
        results, if any (its ``finally`` runs in the worker); not waited
        for: the lane runs the association's next handler only after it."""
        with self._lock:
            finished = self._ended and not self._running
            self._closed = True
        self._caught_up()
        close = getattr(self._gen, "close", None)
        if close is not None and not finished:  # an exhausted generator has nothing to close
            self._lane.post(close)
