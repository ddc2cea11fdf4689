"""The background event loop behind the synchronous API.

Plain scripts (and pynetdicom-style code) call blocking methods; those run
their coroutine on one shared loop in a daemon thread and wait for the
result. The loop is uvloop's when uvloop is installed.
"""

from __future__ import annotations

import asyncio
import threading
import queue
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


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the background loop and wait for its result."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError(
            "a blocking chromanet call was made from inside the event loop "
            "(e.g. from a handler): use the async API there"
        )
    future = asyncio.run_coroutine_threadsafe(coro, get_loop())
    return future.result(timeout)


def call(function: Callable[..., T], *args: Any) -> T:
    """Run a plain function on the loop thread and return its result."""

    async def wrapper() -> T:
        return function(*args)

    return run(wrapper())


_DONE = object()


def iterate(source: AsyncIterator[T]) -> Iterator[T]:
    """A blocking generator over an async iterator running on the loop.

    Items cross threads through one queue, so a long stream (10,000 C-FIND
    matches) costs one hop per item, not a coroutine round trip each.
    Closing the generator early closes the async iterator on the loop.
    """
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    finished = threading.Event()

    async def pump() -> None:
        try:
            async for item in source:
                items.put(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer
            items.put((_DONE, exc))
            return
        finally:
            try:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                finished.set()
        items.put((_DONE, None))

    if in_loop_thread():
        raise RuntimeError("a blocking chromanet call was made from inside the event loop: use the async API")
    future = asyncio.run_coroutine_threadsafe(pump(), get_loop())
    try:
        while True:
            item = items.get()
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _DONE:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        if not future.done():
            # Closed early: cancel the pump on the loop; the async iterator's
            # own cleanup (a C-CANCEL for a query) runs there.
            future.cancel()
            finished.wait(5)
