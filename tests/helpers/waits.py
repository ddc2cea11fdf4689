"""Timeouts and bounded waits.

Every wait in the tests is bounded: the AEs get short ACSE/DIMSE/network
timeouts, waits for events take a timeout, subprocesses run with one, and
pytest-timeout (pyproject) is the last resort.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

# Seconds. Generous for a loaded CI machine, short enough that a hang shows.
NETWORK_TIMEOUT = 10.0
WAIT_TIMEOUT = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_TIMEOUT) -> bool:
    """Poll ``predicate`` from a test thread (never the loop) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def until(predicate: Callable[[], bool]) -> None:
    """On the loop: yield to it until ``predicate()``. Unbounded by itself:
    wrap it in ``asyncio.wait_for(until(...), WAIT_TIMEOUT)``."""
    while not predicate():
        await asyncio.sleep(0.005)


def run_async(coro: Any, timeout: float = 60.0) -> Any:
    """Run a test coroutine on a fresh uvloop loop, bounded."""
    import uvloop

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return uvloop.run(bounded())
