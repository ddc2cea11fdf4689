"""The blocking API's hand-off to the background loop (``chromanet.loopthread``):
results, exceptions, time limits, interruptions and early-closed iterators
behave as a blocking caller expects, and nothing keeps running on the loop
after the caller gave up."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator

import pytest

from chromanet import loopthread
from helpers.waits import wait_until


async def _value(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


async def _raise() -> None:
    await asyncio.sleep(0)
    raise KeyError("inside")


def test_result_and_exception_cross_threads() -> None:
    assert loopthread.run(_value(42)) == 42
    with pytest.raises(KeyError, match="inside"):
        loopthread.run(_raise())
    assert loopthread.call(lambda a, b: a + b, 2, 3) == 5


def test_runs_on_the_loop_thread() -> None:
    async def where() -> bool:
        return loopthread.in_loop_thread()

    assert loopthread.run(where()) is True
    assert loopthread.in_loop_thread() is False


def test_timeout_cancels_the_coroutine() -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        loopthread.run(forever(), timeout=0.05)
    assert cancelled.wait(5)


def test_refused_from_the_loop_thread() -> None:
    async def nested() -> str:
        coro = _value(1)
        try:
            loopthread.run(coro)
        except RuntimeError as exc:
            return str(exc)
        return "ran"

    assert "inside the event loop" in loopthread.run(nested())


def test_many_callers_from_threads() -> None:
    """Hand-offs from several threads at once each get their own result."""
    results: dict[int, list[int]] = {}

    def worker(k: int) -> None:
        results[k] = [loopthread.run(_value(k * 1000 + i)) for i in range(200)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {k: [k * 1000 + i for i in range(200)] for k in range(6)}


def test_iterate_items_error_and_early_close() -> None:
    closed = threading.Event()

    async def numbers(n: int, fail: bool = False) -> AsyncIterator[int]:
        try:
            for i in range(n):
                await asyncio.sleep(0)
                yield i
            if fail:
                raise ValueError("stream broke")
        finally:
            closed.set()

    assert list(loopthread.iterate(numbers(50))) == list(range(50))
    assert closed.is_set()

    closed.clear()
    got = []
    with pytest.raises(ValueError, match="stream broke"):
        for item in loopthread.iterate(numbers(3, fail=True)):
            got.append(item)
    assert got == [0, 1, 2]

    closed.clear()
    endless = loopthread.iterate(numbers(10**9))
    assert [next(endless) for _ in range(3)] == [0, 1, 2]
    endless.close()  # returns once the async iterator was closed on the loop
    assert closed.is_set()


def test_iterate_runs_a_bounded_way_ahead_of_its_consumer() -> None:
    """A source that has every item at once (a long C-FIND's responses
    already read) is pumped in batches, at most about ``_PUMP_AHEAD`` items
    ahead of a consumer that stopped taking them; the pump resumes as the
    consumer goes on, and every item comes, in order, once."""
    made = [0]
    total = loopthread._PUMP_AHEAD * 4

    async def ready(n: int) -> AsyncIterator[int]:
        for i in range(n):
            made[0] += 1
            yield i  # no await: everything is there at once

    consumer = loopthread.iterate(ready(total))
    assert next(consumer) == 0

    def made_so_far() -> int:
        return loopthread.call(lambda: made[0])  # read on the loop, between two of its passes

    # It runs ahead (what the batches are for), then stops once it is
    # _PUMP_AHEAD ahead (checked every _PUMP_YIELD_EVERY items; one batch
    # may be in the consumer's hands): unbounded, it would have made all
    # ``total`` in a few milliseconds.
    assert wait_until(lambda: made_so_far() >= loopthread._PUMP_AHEAD)
    threading.Event().wait(0.3)
    assert made_so_far() <= 2 * loopthread._PUMP_AHEAD + 2 * loopthread._PUMP_YIELD_EVERY < total
    assert list(consumer) == list(range(1, total))
    assert made[0] == total


def test_run_hands_back_what_the_coroutine_raised_and_leaves_no_task() -> None:
    """The result crosses without a done callback: the task has finished
    (nothing left on the loop) and an exception keeps its type."""

    async def tasks_left() -> int:
        return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    for _ in range(20):
        assert loopthread.run(_value(7)) == 7
        with pytest.raises(KeyError):
            loopthread.run(_raise())
    assert loopthread.run(tasks_left()) == 0

    async def cancelled_inside() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        loopthread.run(cancelled_inside())


def test_run_started_results_now_later_refused_and_raised() -> None:
    """``run_started``: ``done`` called inside ``start`` or later from the
    loop; ``start`` declining (False: the caller takes the coroutine way);
    what ``start`` raises; and the refusal on the loop's own thread."""
    on_loop: list[bool] = []

    def now(value: int, done: Any) -> bool:
        on_loop.append(loopthread.in_loop_thread())
        done(value)
        return True

    def later(value: int, done: Any) -> bool:
        asyncio.get_running_loop().call_later(0.01, done, value)
        return True

    def declined(done: Any) -> bool:
        return False

    def broken(done: Any) -> bool:
        raise LookupError("no context")

    assert loopthread.run_started(now, 5) == (True, 5)
    assert on_loop == [True]
    assert loopthread.run_started(later, 6) == (True, 6)
    assert loopthread.run_started(declined) == (False, None)
    with pytest.raises(LookupError, match="no context"):
        loopthread.run_started(broken)

    async def nested() -> str:
        try:
            loopthread.run_started(now, 1)
        except RuntimeError as exc:
            return str(exc)
        return "ran"

    assert "inside the event loop" in loopthread.run(nested())


def test_run_started_from_many_threads() -> None:
    results: dict[int, list[Any]] = {}

    def later(value: int, done: Any) -> bool:
        asyncio.get_running_loop().call_soon(done, value)
        return True

    def worker(k: int) -> None:
        results[k] = [loopthread.run_started(later, k * 1000 + i)[1] for i in range(200)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {k: [k * 1000 + i for i in range(200)] for k in range(6)}
