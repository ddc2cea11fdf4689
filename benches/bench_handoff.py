"""Thread hand-offs: what one trip to another thread and back costs.

Two places in chromanet cross threads on every operation, and their cost
bounds what the blocking API and plain ``def`` handlers can reach next to
the async API (issue 13's "blocking >= 80 % of async"):

- the blocking API: the caller's thread hands each request to the event
  loop's thread and sleeps until the response comes back
  (``loopthread.run_started``, ``loopthread.run``);
- a sync handler: the loop hands the event to a handler worker and is
  called back with the answer (``HandlerLane.call_back``), e.g. a C-MOVE
  destination's ``def`` C-STORE handler.

Each benchmark makes ``TRIPS`` trips one after the other (there and back,
nothing else), so the per-trip figure is the mean divided by ``TRIPS``. Next
to each, the standard library's way of doing the same trip (the baseline
here: pynetdicom has no such hand-off, it runs a handler in the
association's own thread and its blocking calls poll a queue), and the
floor of the platform: two plain threads handing a lock back and forth.

Groups:
- ``handoff-caller-loop``: a blocking call with nothing to do on the loop:
  ``run_started`` (a callback, no task), ``run`` (a coroutine), and
  ``asyncio.run_coroutine_threadsafe(...).result()``;
- ``handoff-loop-worker``: the loop runs a trivial handler in a worker:
  ``HandlerLane.call_back``, ``HandlerLane.call`` (a future awaited), and
  ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor``;
- ``handoff-floor``: two threads, two locks, no event loop.

Run: ``.venv/bin/python -m pytest benches/bench_handoff.py --benchmark-only``.
What it showed on the 2-core VM (2026-12-01, medians per trip, the mean of
a round divided by TRIPS): the floor 49 us (its best round 12 us: the two
threads happened to share a CPU); ``run_started`` 52 us, ``run`` 55,
``run_coroutine_threadsafe`` 60; ``HandlerLane.call_back`` 52 us, ``call``
54, ``run_in_executor`` 59. With the process pinned to one CPU (``taskset
-c 0``, a script of the same trips) the floor was 14.5 us and
``call_back`` 16 us. So chromanet's Python adds ~3 us to a trip; the rest is
the kernel waking a thread on the other CPU (futex, IPI; ~0.7 s of the
1.07 s of 20,000 trips was system time under ``perf stat``). A blocking
C-ECHO makes two such wake-ups more than an async one (the loop woken by
the caller, the caller by the loop): no hand-off, however lean, brings the
blocking API to 80 % of an async C-ECHO at ~33 us here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from _thread import allocate_lock
from typing import Any

import pytest

from chromanet import loopthread
from chromanet.services.handler_threads import HandlerLane, HandlerThreads

TRIPS = 200


def _handler(value: int) -> int:
    return value


# --------------------------------------------------- caller -> loop -> caller


def _start_answered(done: Any) -> bool:
    done(None)
    return True


def _run_started_trips() -> int:
    for _ in range(TRIPS):
        loopthread.run_started(_start_answered)
    return TRIPS


async def _nothing() -> None:
    return None


def _run_trips() -> int:
    for _ in range(TRIPS):
        loopthread.run(_nothing())
    return TRIPS


def _run_coroutine_threadsafe_trips() -> int:
    loop = loopthread.get_loop()
    for _ in range(TRIPS):
        asyncio.run_coroutine_threadsafe(_nothing(), loop).result()
    return TRIPS


@pytest.mark.benchmark(group="handoff-caller-loop")
def test_caller_loop_run_started(benchmark: Any) -> None:
    assert benchmark(_run_started_trips) == TRIPS


@pytest.mark.benchmark(group="handoff-caller-loop")
def test_caller_loop_run(benchmark: Any) -> None:
    assert benchmark(_run_trips) == TRIPS


@pytest.mark.benchmark(group="handoff-caller-loop")
def test_caller_loop_asyncio_run_coroutine_threadsafe(benchmark: Any) -> None:
    assert benchmark(_run_coroutine_threadsafe_trips) == TRIPS


# --------------------------------------------------- loop -> worker -> loop


@pytest.fixture(scope="module")
def lane() -> HandlerLane:
    """A lane on the shared background loop, with its own workers."""
    loop = loopthread.get_loop()
    return loopthread.call(lambda: HandlerLane(HandlerThreads(2, name="bench-handoff"), loop))


async def _call_back_trips(lane: HandlerLane) -> int:
    finished = asyncio.get_running_loop().create_future()
    count = 0

    def then(result: Any, error: BaseException | None) -> None:
        nonlocal count
        count += 1
        if count == TRIPS:
            finished.set_result(count)
        else:
            lane.call_back(_handler, (count,), then)

    lane.call_back(_handler, (0,), then)
    return await finished


async def _call_trips(lane: HandlerLane) -> int:
    total = 0
    for i in range(TRIPS):
        total += await lane.call(_handler, 1)
    return total


async def _executor_trips(pool: concurrent.futures.ThreadPoolExecutor) -> int:
    loop = asyncio.get_running_loop()
    total = 0
    for i in range(TRIPS):
        total += await loop.run_in_executor(pool, _handler, 1)
    return total


@pytest.mark.benchmark(group="handoff-loop-worker")
def test_loop_worker_lane_call_back(benchmark: Any, lane: HandlerLane) -> None:
    assert benchmark(lambda: loopthread.run(_call_back_trips(lane))) == TRIPS


@pytest.mark.benchmark(group="handoff-loop-worker")
def test_loop_worker_lane_call(benchmark: Any, lane: HandlerLane) -> None:
    assert benchmark(lambda: loopthread.run(_call_trips(lane))) == TRIPS


@pytest.mark.benchmark(group="handoff-loop-worker")
def test_loop_worker_asyncio_run_in_executor(benchmark: Any) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert benchmark(lambda: loopthread.run(_executor_trips(pool))) == TRIPS


# --------------------------------------------------- the platform's floor


class _PingPong:
    """A thread that answers each release of ``ping`` with one of ``pong``."""

    def __init__(self) -> None:
        self.ping, self.pong = allocate_lock(), allocate_lock()
        self.ping.acquire()
        self.pong.acquire()
        self.stopping = False
        self.thread = threading.Thread(target=self._answer, name="bench-pingpong", daemon=True)
        self.thread.start()

    def _answer(self) -> None:
        while True:
            self.ping.acquire()
            if self.stopping:
                return
            self.pong.release()

    def trips(self) -> int:
        for _ in range(TRIPS):
            self.ping.release()
            self.pong.acquire()
        return TRIPS

    def stop(self) -> None:
        self.stopping = True
        self.ping.release()
        self.thread.join()


@pytest.mark.benchmark(group="handoff-floor")
def test_floor_two_threads_two_locks(benchmark: Any) -> None:
    pingpong = _PingPong()
    try:
        assert benchmark(pingpong.trips) == TRIPS
    finally:
        pingpong.stop()
