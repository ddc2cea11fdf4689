"""The background event loop behind the synchronous API.

Plain scripts (and pynetdicom-style code) call blocking methods; those run
their coroutine on one shared loop in a daemon thread and wait for the
result. The loop is uvloop's when uvloop is installed.
"""

from __future__ import annotations

from _thread import allocate_lock
import asyncio
import queue
import threading
from typing import Any, AsyncIterator, Callable, Coroutine, Iterator, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop: uvloop's when available, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def get_loop() -> asyncio.AbstractEventLoop:
    """The shared background loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=run, name="chromanet-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def in_loop_thread(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """True on the thread running ``loop`` (default: the shared background
    loop)."""
    if loop is None:
        return _thread is not None and threading.current_thread() is _thread
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def target_loop(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.AbstractEventLoop:
    """The loop a blocking call hands its work to (``loop``, or the shared
    one, started on first use); RuntimeError on that loop's own thread,
    where waiting for it would wait forever."""
    if loop is None:
        if _thread is not None and threading.current_thread() is _thread:
            raise RuntimeError(
                "a blocking chromanet call was made from inside the event loop "
                "(e.g. from a handler run inline on the loop): use the async API there"
            )
        shared = _loop
        return shared if shared is not None and _thread is not None and _thread.is_alive() else get_loop()
    if in_loop_thread(loop):
        raise RuntimeError(
            "a blocking chromanet call was made from inside the event loop "
            "(e.g. from a handler run inline on the loop): use the async API there"
        )
    return loop


def run(
    coro: Coroutine[Any, Any, T], timeout: float | None = None, loop: asyncio.AbstractEventLoop | None = None
) -> T:
    """Run ``coro`` on the background loop and wait for its result.

    The hand-off is one ``call_soon_threadsafe`` there and one lock release
    back, not ``asyncio.run_coroutine_threadsafe``: that one chains an
    asyncio future to a ``concurrent.futures.Future`` whose result goes
    through a Python ``Condition``, and cost about twice as much per call
    (a no-op coroutine: ~65 against ~30 us on the 2-core machine), which a
    blocking C-ECHO pays on every call. The lock is released by the task's
    last step itself, not by a done callback, which asyncio would schedule
    for one more pass of the loop.

    ``loop``: another running loop than the shared one (the loop of a
    server started with ``start_server_async``, whose sync handlers call
    the blocking API from their worker thread).
    """
    try:
        target = target_loop(loop)
    except RuntimeError:
        coro.close()
        raise
    done = allocate_lock()
    done.acquire()
    outcome: list[Any] = [None, None]  # result, exception
    tasks: list[asyncio.Task[None]] = []

    async def body() -> None:
        try:
            outcome[0] = await coro
        except BaseException as exc:  # handed to the caller
            outcome[1] = exc
        finally:
            done.release()

    def start() -> None:
        tasks.append(target.create_task(body()))

    target.call_soon_threadsafe(start)
    try:
        if not done.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"no result within {timeout} s")
    except BaseException:
        # Timed out or interrupted (Ctrl-C): the coroutine stops too.
        target.call_soon_threadsafe(_cancel, tasks)
        raise
    error = outcome[1]
    if error is not None:
        outcome[1] = None
        raise error
    return outcome[0]  # type: ignore[no-any-return]


def run_started(
    start: Callable[..., bool], *args: Any, loop: asyncio.AbstractEventLoop | None = None
) -> tuple[bool, Any]:
    """Call ``start(*args, done)`` on the loop thread and wait until it
    called ``done(result)`` (at once or later, from the loop: a request's
    response arriving), without a task: one pass of the loop to begin,
    none to end. ``start`` returns False, without calling ``done``, when
    it cannot do the work that way (a C-STORE that must be paced, a full
    operations window): the result is then (False, None) and the caller
    goes the coroutine way (``run``); otherwise (True, result). What
    ``start`` raises is raised.

    Interrupted (Ctrl-C), the caller stops waiting; the work goes on on
    the loop (a request sent gets its response, which nobody reads)."""
    target = target_loop(loop)
    waiting = allocate_lock()
    waiting.acquire()
    outcome: list[Any] = [False, None, None]  # started, result, exception

    def done(result: Any) -> None:
        outcome[1] = result
        waiting.release()

    def begin() -> None:
        outcome[0] = True  # before ``start``: ``done`` may come from inside it
        try:
            started = start(*args, done)
        except BaseException as exc:  # handed to the caller
            outcome[0], outcome[2] = False, exc
            waiting.release()
            return
        if not started:
            outcome[0] = False
            waiting.release()

    target.call_soon_threadsafe(begin)
    waiting.acquire()
    started, result, error = outcome
    if error is not None:
        outcome[2] = None
        raise error
    return started, result


def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()


def call(function: Callable[..., T], *args: Any, loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Run a plain function on the loop thread and return its result."""

    async def wrapper() -> T:
        return function(*args)

    return run(wrapper(), loop=loop)


#: The pump of ``iterate`` lets the loop run other callbacks (and hands
#: what it has to the consumer) this often,
_PUMP_YIELD_EVERY = 64
#: and gets at most this many items ahead of the consumer. Each hand-over
#: that finds the consumer waiting wakes its thread (~20 us on a 2-core
#: VM, and the GIL changes hands), and so does each resumption of a pump
#: that waited: batches of 16 and 32 ahead made a 10,000-match C-FIND
#: cost a blocking caller ~10 us a match against ~5 for the async API.
_PUMP_AHEAD = 1024


class _Flow:
    """How far the pump of ``iterate`` is ahead of its consumer, counted
    by batch: the pump adds a batch's items when it hands the batch over,
    the consumer takes them off when it takes the batch."""

    __slots__ = ("_lock", "_ahead", "_waiter")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ahead = 0
        self._waiter: asyncio.Future[None] | None = None

    def handed(self, count: int) -> None:
        """On the loop: ``count`` more items handed to the consumer."""
        with self._lock:
            self._ahead += count

    def must_wait(self, pending: int, loop: asyncio.AbstractEventLoop) -> bool:
        """On the loop, with ``pending`` items not handed over yet: True
        (and a waiter set) when the pump is ``_PUMP_AHEAD`` ahead."""
        with self._lock:
            if self._ahead + pending < _PUMP_AHEAD:
                return False
            self._waiter = loop.create_future()
            return True

    async def resumed(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            await waiter

    def took(self, count: int, loop: asyncio.AbstractEventLoop) -> None:
        """In the consumer: a batch of ``count`` items taken; wakes the pump
        once it is back to half way."""
        with self._lock:
            self._ahead -= count
            waiter = self._waiter
            if waiter is None or self._ahead > _PUMP_AHEAD // 2:
                return
            self._waiter = None
        loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _End:
    """What the pump puts last: the async iterator ended (with ``error``
    when it raised)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def iterate(source: AsyncIterator[T], loop: asyncio.AbstractEventLoop | None = None) -> Iterator[T]:
    """A blocking generator over an async iterator running on the loop.

    Items cross threads through one queue, so a long stream (10,000 C-FIND
    matches) costs one hop per item, not a coroutine round trip each; items
    that arrive together are taken together. Closing the generator early
    closes the async iterator on the loop (a query's C-CANCEL is sent
    there) and waits up to 5 s for that.
    """
    return iterate_call(lambda: source, loop=loop)


def iterate_call(
    function: Callable[..., AsyncIterator[T]], *args: Any, loop: asyncio.AbstractEventLoop | None = None
) -> Iterator[T]:
    """Call ``function(*args)`` on the loop, wait until it returned (a
    request it sends is then on its way: pynetdicom's C-FIND sends at the
    call), and return a blocking generator over the async iterator it
    returned, as ``iterate`` does. What the call raises is raised here.
    One hand-off to the loop for both the call and the pump.

    The pump runs at most ``_PUMP_AHEAD`` items ahead of the consumer
    (decoding responses nobody reads yet takes the GIL from the consumer,
    which then reached its C-CANCEL late); past that it waits until the
    consumer has taken half of them."""
    target = target_loop(loop)
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    flow = _Flow()
    tasks: list[asyncio.Task[None]] = []
    target.call_soon_threadsafe(_start_pump, target, items, flow, tasks, True, function, args)
    first = items.get()
    if type(first) is _End:
        assert first.error is not None
        raise first.error
    return _consume(items, tasks, target, flow)


def iterate_started(
    function: Callable[..., AsyncIterator[T]], *args: Any, loop: asyncio.AbstractEventLoop | None = None
) -> Iterator[T]:
    """``iterate_call`` without waiting for the call: it returns at once.
    ``function(*args)`` still runs on the loop before anything handed to
    it after this call (a C-CANCEL, the next request), in the callback of
    this hand-off; what it raises is raised by the first ``next``. For a
    call whose checks were made in the caller's thread (a C-FIND prepared
    there: ``AsyncAssociation.prepare_query``): the caller does not wait
    for a round trip to the loop before the one for the first response."""
    target = target_loop(loop)
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    flow = _Flow()
    tasks: list[asyncio.Task[None]] = []
    target.call_soon_threadsafe(_start_pump, target, items, flow, tasks, False, function, args)
    return _consume(items, tasks, target, flow, _Unread(target, tasks))


def _start_pump(
    loop: asyncio.AbstractEventLoop,
    items: queue.SimpleQueue[Any],
    flow: _Flow,
    tasks: list[asyncio.Task[None]],
    announce: bool,
    function: Callable[..., AsyncIterator[Any]],
    args: tuple[Any, ...],
) -> None:
    """On the loop: call ``function(*args)`` now, then pump the async
    iterator it returned into ``items`` from a task (``announce``: put
    ``_STARTED`` first, once the call returned)."""
    try:
        source = function(*args)
    except BaseException as exc:  # handed to the caller
        items.put(_End(exc))
        return
    if announce:
        items.put(_STARTED)
    tasks.append(loop.create_task(_pump(loop, items, flow, source)))


class _Batch:
    """What the pump of ``iterate`` puts in one pass of the loop, handed to
    the consumer in one ``put`` at the end of that pass (a callback), or at
    once with the last item.

    Handed over one by one, each item woke the consumer while the loop
    thread, still holding the GIL, went on with the next one (the final
    response of a one-match C-FIND, the end of the iterator): the consumer
    woke, waited for the GIL, and was woken again when the loop released
    it. Each wake-up of another thread costs the waker a few
    microseconds (an inter-processor interrupt, dearer in a VM)."""

    __slots__ = ("loop", "items", "flow", "pending", "handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, items: queue.SimpleQueue[Any], flow: _Flow) -> None:
        self.loop = loop
        self.items = items
        self.flow = flow
        self.pending: list[Any] = []
        self.handle: asyncio.Handle | None = None

    def add(self, item: Any) -> None:
        self.pending.append(item)
        if self.handle is None:
            self.handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.cancel()
        if self.pending:
            batch, self.pending = self.pending, []
            self.flow.handed(len(batch))
            self.items.put(batch)


async def _pump(
    loop: asyncio.AbstractEventLoop, items: queue.SimpleQueue[Any], flow: _Flow, source: AsyncIterator[Any]
) -> None:
    out = _Batch(loop, items, flow)
    error: BaseException | None = None
    count = 0
    try:
        async for item in source:
            out.add(item)
            count += 1
            if count % _PUMP_YIELD_EVERY:
                continue
            if flow.must_wait(len(out.pending), loop):
                out.flush()
                await flow.resumed()
            else:
                # Items that were already there come without a pause:
                # let the loop run what waits meanwhile (the consumer's
                # C-CANCEL, other associations).
                await asyncio.sleep(0)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # handed to the consumer
        error = exc
    finally:
        try:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            out.add(_End(error))
            out.flush()


#: What the pump of ``iterate_call`` puts first once the call returned.
_STARTED = object()


class _Unread:
    """Held by a consumer generator from its creation: dropped unstarted
    (never iterated, so its ``finally`` never runs), the generator drops
    it, and the pump is cancelled on the loop (a C-FIND's C-CANCEL goes
    out and its place in the operations window is freed, as when the
    async API's response generator is dropped)."""

    __slots__ = ("loop", "tasks", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[None]]) -> None:
        self.loop = loop
        self.tasks = tasks
        self.started = False

    def __del__(self) -> None:
        if not self.started:
            try:
                self.loop.call_soon_threadsafe(_cancel, self.tasks)
            except RuntimeError:
                pass  # the loop is closed


def _consume(
    items: queue.SimpleQueue[Any],
    tasks: list[asyncio.Task[None]],
    loop: asyncio.AbstractEventLoop,
    flow: _Flow,
    unread: _Unread | None = None,
) -> Iterator[Any]:
    """The consumer's side: the pump's batches (``_Batch``), an item at a
    time (``_End`` is the last item of the last batch; the pump's own
    ``_End`` for a call that raised comes alone)."""
    if unread is not None:
        unread.started = True
    ended = False
    try:
        while True:
            batch = items.get()
            if type(batch) is _End:  # the call raised (``_start_pump``)
                ended = True
                assert batch.error is not None
                raise batch.error
            flow.took(len(batch), loop)
            for item in batch:
                if type(item) is _End:
                    ended = True
                    if item.error is not None:
                        raise item.error
                    return
                yield item
    finally:
        if not ended:
            # Closed early: cancel the pump on the loop; the async iterator's
            # own cleanup runs there.
            loop.call_soon_threadsafe(_cancel, tasks)
            try:
                while not _ends(items.get(timeout=5)):
                    pass
            except queue.Empty:
                pass


def _ends(batch: Any) -> bool:
    return type(batch) is _End or any(type(item) is _End for item in batch)
