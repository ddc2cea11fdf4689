"""The DIMSE timeout of response waits (``dimse_channel.ResponseStream``).

PS3.7 leaves the DIMSE timeout to the implementation; ours, as pynetdicom's:
a wait for a response longer than ``dimse_timeout`` raises DimseTimeout
(the association is then aborted by the caller, see
``test_engine_features.py``). The waits of one channel share one timer
(``_WaitWatch``): checked here on a real loop, without sockets, that each
wait times out at its own deadline and no sooner, whatever the others do;
that a wait answered in time never times out later; that a shorter timeout
arriving later is honoured; and that a stream without a watch times its
waits itself.
"""

from __future__ import annotations

import asyncio

import pytest

from chromanet._dimse import Command
from chromanet.dimse_channel import DimseTimeout, IncomingMessage, ResponseStream, _WaitWatch
from helpers.waits import run_async

pytestmark = pytest.mark.timeout(30)


def response(message_id: int) -> IncomingMessage:
    return IncomingMessage(1, Command(0x8030, message_id_being_responded_to=message_id, status=0), None)


async def outcome(stream: ResponseStream) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        await stream.next()
        result = "answered"
    except DimseTimeout:
        result = "timed out"
    return result, loop.time() - start


def test_each_wait_times_out_at_its_own_deadline():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        watch = _WaitWatch(loop)
        slow = ResponseStream(1, loop, 0.4, watch)
        answered = ResponseStream(2, loop, 0.2, watch)
        late = ResponseStream(3, loop, 0.2, watch)
        waits = [asyncio.ensure_future(outcome(s)) for s in (slow, answered)]
        await asyncio.sleep(0.1)
        answered._push(response(2))
        waits.append(asyncio.ensure_future(outcome(late)))  # starts 0.1 s later: due at 0.3 s
        (r1, t1), (r2, t2), (r3, t3) = await asyncio.gather(*waits)
        assert (r1, r2, r3) == ("timed out", "answered", "timed out")
        assert 0.38 <= t1 < 1.0
        assert t2 < 0.2
        assert 0.18 <= t3 < 0.8
        assert not watch.waits

    run_async(main())


def test_a_wait_answered_in_time_never_times_out_later():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        watch = _WaitWatch(loop)
        stream = ResponseStream(1, loop, 0.2, watch)
        for _ in range(3):
            waiting = asyncio.ensure_future(stream.next())
            await asyncio.sleep(0.05)
            stream._push(response(1))
            await waiting
        # The timer armed by the first wait fires with nothing left to fail.
        await asyncio.sleep(0.3)
        stream._push(response(1))
        assert (await stream.next()).command.message_id_being_responded_to == 1
        assert not watch.waits

    run_async(main())


def test_a_shorter_timeout_after_a_longer_one():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        watch = _WaitWatch(loop)
        long = asyncio.ensure_future(outcome(ResponseStream(1, loop, 5.0, watch)))
        await asyncio.sleep(0)
        result, waited = await outcome(ResponseStream(2, loop, 0.2, watch))
        assert result == "timed out" and waited < 2.0
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        watch.close()

    run_async(main())


def test_a_stream_without_a_watch_times_itself():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        result, waited = await outcome(ResponseStream(1, loop, 0.2))
        assert result == "timed out" and 0.18 <= waited < 1.0

    run_async(main())
