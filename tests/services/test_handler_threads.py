"""Where handlers run (``services/handler_threads.py``), chromanet's side.

- A plain ``def`` handler runs in one of the AE's worker threads, with the
  blocking ``Association`` as ``event.assoc``; ``async def`` handlers run on
  the loop with the ``AsyncAssociation``.
- The opt-in: ``AE.sync_handlers_inline`` (every handler of the AE) and
  ``evt.inline`` (one handler) run sync handlers on the loop, with the
  ``AsyncAssociation``; the archive node marks its quick handlers so.
- The bound: ``AE.max_handler_threads`` handlers at most run at once, over
  all associations; the others wait for a thread and are all served.
- A server on a program's own loop (``start_server_async``): a sync
  handler's blocking ``event.assoc`` works on that loop.
- A generator's results cross from the worker in batches, not a hop each;
  a retrieve's batch grows past its limit only while the generator is quick.
- A handler blocked on its own association (a C-GET back to the peer)
  lets the association's next handlers (the C-GET's C-STOREs) run.

The behaviours both libraries share (a handler blocking, sleeping until
``is_cancelled``, aborting, storing back to the peer; order per
association) are in ``tests/api/test_compat_dual.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from pydicom import Dataset

from chromanet import build_role, evt, loopthread
from chromanet.association import AsyncAssociation
from chromanet.blocking import Association
from chromanet.services import handler_threads
from helpers.qr import FIND, GET, UIDS, qr_association
from helpers.servers import configure_scp_ae, scu_ae
from helpers.waits import WAIT_TIMEOUT, run_async, wait_until

pytestmark = pytest.mark.timeout(60)


def uid_dataset(uid: str) -> Dataset:
    """A data set with only a SOP Instance UID ("" : a universal match key)."""
    ds = Dataset()
    ds.SOPInstanceUID = uid
    return ds


def where(event: Any) -> tuple[str, type]:
    return threading.current_thread().name, type(event.assoc)


def echo_once(port: int, ae_title: str = "CLI") -> int:
    assoc = scu_ae(ae_title).associate("127.0.0.1", port, ae_title="SRV")
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.fixture
def started() -> Any:
    servers: list[Any] = []
    yield servers
    for server in servers:
        server.shutdown()


def serve(started: list[Any], handlers: list[Any], **settings: Any) -> int:
    ae = configure_scp_ae("SRV", **settings)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    started.append(server)
    return server.server_address[1]


def test_sync_handler_in_a_worker_thread_async_on_the_loop(started):
    seen: dict[str, Any] = {}

    def on_echo(event):
        seen["echo"] = where(event)
        return 0x0000

    async def on_store(event):
        seen["store"] = where(event)
        return 0x0000

    def on_released(event):
        seen["released"] = where(event)

    port = serve(started, [(evt.EVT_C_ECHO, on_echo), (evt.EVT_C_STORE, on_store), (evt.EVT_RELEASED, on_released)])
    assoc = scu_ae().associate("127.0.0.1", port, ae_title="SRV")
    assert assoc.send_c_echo().Status == 0x0000
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.39.1"
    ds.SOPInstanceUID = "1.2.3.4"
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert wait_until(lambda: "released" in seen)
    assert seen["echo"][0].startswith("chromanet-SRV") and seen["echo"][1] is Association
    assert seen["released"][0].startswith("chromanet-SRV") and seen["released"][1] is Association
    assert seen["store"] == ("chromanet-loop", AsyncAssociation)


def test_async_notification_handler_is_awaited(started):
    seen: list[tuple[str, type]] = []

    async def on_released(event):
        await asyncio.sleep(0)
        seen.append(where(event))

    port = serve(started, [(evt.EVT_RELEASED, on_released)])
    assert echo_once(port) == 0x0000
    assert wait_until(lambda: bool(seen))
    assert seen == [("chromanet-loop", AsyncAssociation)]


def test_inline_opt_in(started):
    """``AE.sync_handlers_inline``: every sync handler on the loop; without
    it, ``evt.inline`` puts one handler there."""
    seen: list[tuple[str, type]] = []

    def on_echo(event):
        seen.append(where(event))
        return 0x0000

    port = serve(started, [(evt.EVT_C_ECHO, on_echo)], sync_handlers_inline=True)
    assert echo_once(port) == 0x0000
    port = serve(started, [(evt.EVT_C_ECHO, evt.inline(lambda event: on_echo(event)))])
    assert echo_once(port) == 0x0000
    assert seen == [("chromanet-loop", AsyncAssociation)] * 2
    assert not evt.runs_in_thread(evt.inline(lambda event: 0))
    assert evt.runs_in_thread(lambda event: 0)
    # A bound method cannot be marked: a marked wrapper is returned.
    flag = threading.Event()
    marked = evt.inline(flag.is_set)
    assert not evt.runs_in_thread(marked) and marked() is False
    assert evt.runs_in_thread(flag.is_set)


def test_node_handlers_are_inline():
    """The archive node's sync handlers are quick and never block: they
    stay on the loop (no thread hand-off per request)."""
    from chromanet.apps.node import PaletteNode

    for name in ("on_find", "on_get", "on_move", "on_get_async"):
        assert not evt.runs_in_thread(getattr(PaletteNode, name)), name


def test_threads_bounded_and_every_association_served(started):
    """Six associations block in their C-ECHO handler at once; with
    ``max_handler_threads = 2`` two run, the others wait their turn, and
    all are answered once the first ones return."""
    lock = threading.Lock()
    state = {"running": 0, "peak": 0, "done": 0}
    gate = threading.Event()

    def on_echo(event):
        with lock:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
        gate.wait(WAIT_TIMEOUT)
        with lock:
            state["running"] -= 1
            state["done"] += 1
        return 0x0000

    ae = configure_scp_ae("SRV", maximum_associations=10)
    ae.max_handler_threads = 2
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, on_echo)])
    started.append(server)
    port = server.server_address[1]
    results: list[int] = []
    clients = [threading.Thread(target=lambda n=n: results.append(echo_once(port, f"CLI{n}"))) for n in range(6)]
    for client in clients:
        client.start()
    try:
        assert wait_until(lambda: state["running"] == 2)
        assert wait_until(lambda: len(server.active_associations) == 6)
        assert state["running"] == 2  # the others wait for a thread
    finally:
        gate.set()
        for client in clients:
            client.join(WAIT_TIMEOUT)
    assert results == [0x0000] * 6
    assert state["peak"] == 2
    assert ae.handler_threads.peak_threads == 2


def test_blocking_assoc_on_a_programs_own_loop():
    """A server started with ``start_server_async`` on the program's loop:
    a sync handler's ``event.assoc`` runs its calls there (here an abort,
    which waits for the connection to close)."""
    returned = threading.Event()

    def on_echo(event):
        assert isinstance(event.assoc, Association)
        event.assoc.abort()
        returned.set()
        return 0x0000

    async def main() -> None:
        ae = configure_scp_ae("SRV")
        server = await ae.start_server_async(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_ECHO, on_echo)])
        assert asyncio.get_running_loop() is not loopthread.get_loop()
        try:
            assoc = await scu_ae().associate_async(*server.server_address, ae_title="SRV")
            status = await assoc.send_c_echo()
            assert "Status" not in status
            await asyncio.wait_for(assoc.wait_closed(), WAIT_TIMEOUT)
            assert assoc.is_aborted
        finally:
            await server.close()

    run_async(main())
    assert returned.wait(WAIT_TIMEOUT)


def test_handler_waiting_on_its_association_lets_the_next_handlers_run(started, palettes):
    """A handler of the acceptor (EVT_ESTABLISHED) sends a C-GET back to
    the requestor and waits for it: the C-GET's C-STORE sub-operations come
    to the acceptor's EVT_C_STORE handler, which is behind it in the
    association's lane; the waiting handler lets go of the lane meanwhile
    (pynetdicom runs them inside the call), so this ends, not at the DIMSE
    timeout."""
    log: list[Any] = []
    done = threading.Event()

    def on_established(event):
        query = Dataset()
        query.SOPInstanceUID = ""
        statuses = [int(status.Status) for status, _ in event.assoc.send_c_get(query, GET)]
        log.append(("C-GET", statuses[-1]))
        done.set()

    def on_store(event):
        log.append(("stored", str(event.request.AffectedSOPInstanceUID)))
        return 0x0000

    def on_get(event):
        yield 2
        for uid in UIDS[:2]:
            yield 0xFF00, palettes[uid].filename

    ae = configure_scp_ae("SRV", dimse_timeout=WAIT_TIMEOUT)
    ae.add_supported_context(GET, scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_ESTABLISHED, on_established), (evt.EVT_C_STORE, on_store)])
    started.append(server)
    requestor = scu_ae()
    requestor.add_requested_context(GET)
    assoc = requestor.associate("127.0.0.1", server.server_address[1], ae_title="SRV",
                                ext_neg=[build_role(GET, scu_role=True, scp_role=True)],
                                evt_handlers=[(evt.EVT_C_GET, on_get)])
    try:
        assert done.wait(WAIT_TIMEOUT / 2)
        assert log == [("stored", UIDS[0]), ("stored", UIDS[1]), ("C-GET", 0x0000)]
    finally:
        assoc.release()


def test_generator_results_cross_in_batches(make_qr_scp, monkeypatch):
    """2,000 C-FIND matches from a sync generator: all arrive in order, in
    far fewer hand-offs from the worker than results."""
    jobs = []
    take = handler_threads.ThreadedResults._take

    def counted(self):
        jobs.append(1)
        take(self)

    monkeypatch.setattr(handler_threads.ThreadedResults, "_take", counted)
    total = 2000

    def on_find(event):
        for n in range(total):
            yield 0xFF00, uid_dataset(f"1.2.3.{n}")

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    query = uid_dataset("")
    with qr_association(scp.port) as assoc:
        uids = [str(identifier.SOPInstanceUID) for _status, identifier in assoc.send_c_find(query, FIND)
                if identifier is not None]
    assert uids == [f"1.2.3.{n}" for n in range(total)]
    assert len(jobs) <= total // 16


class _Lane:
    """What ``ThreadedResults`` needs of a lane to run one job by hand."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop


def _one_job(generator: Any, **batch: Any) -> list[Any]:
    """The results one job of a retrieve's ``ThreadedResults`` takes from
    ``generator``, batched as ``batch`` says (limit 8, a final status ends it)."""
    loop = asyncio.new_event_loop()
    try:
        results = handler_threads.ThreadedResults(generator, _Lane(loop), lambda: False)
        results.batch(8, lambda item: item[0] != 0xFF00, **batch)
        results._take()
        return list(results._items)
    finally:
        loop.close()


def _endless(sleep: float = 0.0, after: int = 0) -> Any:
    n = 0
    while True:
        if sleep and n >= after:
            time.sleep(sleep)
        yield 0xFF00, n
        n += 1


def test_a_fast_generator_crosses_in_hops_of_up_to_most():
    """A retrieve generator yielding from memory: one job takes up to
    ``most`` results while it is quicker than ``within``; without ``most``,
    ``limit`` (8), as before."""
    assert len(_one_job(_endless(), most=64, within=60.0)) == 64
    assert len(_one_job(_endless())) == 8
    assert len(_one_job(_endless(), most=64, within=0.0)) == 8


def test_a_slow_generator_runs_no_further_ahead_than_within_allows():
    """A generator that builds each result (reads a file): past ``limit``,
    a job takes no more once ``within`` has passed."""
    assert len(_one_job(_endless(sleep=0.002), most=64, within=0.001)) == 8
    # Quick for 8 results, then slow: the 9th is taken (the time was not
    # up yet), and then no more.
    assert len(_one_job(_endless(sleep=0.01, after=8), most=64, within=0.005)) == 9


def test_a_final_status_still_ends_a_long_job():
    def results() -> Any:
        yield from ((0xFF00, n) for n in range(20))
        yield 0x0000, None
        yield 0xFF00, "never taken"

    taken = _one_job(results(), most=64, within=60.0)
    assert len(taken) == 21 and taken[-1] == (0x0000, None)


def test_slow_generator_hands_each_result_over_at_once(make_qr_scp):
    """A generator that blocks after its first result (until the test lets
    it go): the first response reaches the SCU meanwhile."""
    go_on = threading.Event()

    def on_find(event):
        ds = Dataset()
        ds.SOPInstanceUID = "1.2.3.1"
        yield 0xFF00, ds
        go_on.wait(WAIT_TIMEOUT)

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    query = uid_dataset("")
    with qr_association(scp.port) as assoc:
        responses = assoc.send_c_find(query, FIND)
        first, _ = next(responses)
        assert first.Status == 0xFF00
        assert not go_on.is_set()
        go_on.set()
        assert [int(status.Status) for status, _ in responses] == [0x0000]


def test_handler_threads_end_when_idle(monkeypatch):
    monkeypatch.setattr(handler_threads, "IDLE_SECONDS", 0.05)
    threads = handler_threads.HandlerThreads(3, "test-idle")

    async def main() -> list[int]:
        lane = handler_threads.HandlerLane(threads, asyncio.get_running_loop())
        return list(await asyncio.gather(*(lane.call(lambda n=n: n) for n in range(20))))

    assert run_async(main()) == list(range(20))
    assert wait_until(lambda: threads.threads == 0)
    assert threads.peak_threads == 1  # one lane: its jobs run one after another
    # used again after its threads ended
    assert run_async(main()) == list(range(20))


def test_workers_woken_while_their_idle_time_runs_out(monkeypatch):
    """Idle workers whose wait ends as work arrives (an idle time of 1 ms,
    bursts from 6 lanes with pauses around it): every job runs, none is
    left in the queue with no worker, and the pool stays within its
    bound."""
    monkeypatch.setattr(handler_threads, "IDLE_SECONDS", 0.001)
    threads = handler_threads.HandlerThreads(3, "test-race")

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        lanes = [handler_threads.HandlerLane(threads, loop) for _ in range(6)]
        got: list[int] = []
        for burst in range(60):
            calls = [lanes[n % 6].call(lambda v=burst * 10 + n: v) for n in range(10)]
            got += await asyncio.wait_for(asyncio.gather(*calls), WAIT_TIMEOUT)
            await asyncio.sleep(0.001 * (burst % 3))
        return got

    assert run_async(main(), timeout=60) == list(range(600))
    assert threads.peak_threads <= 3
    assert wait_until(lambda: threads.threads == 0)


def test_abort_between_yields_comes_after_the_results_yielded_before(make_qr_scp):
    """A generator yields 100 matches (the second batch is being taken) and
    aborts its association: the SCU receives the 100, then the A-ABORT; the
    batch stops at the abort (the generator runs at most one yield on)."""
    after_abort: list[int] = []

    def on_find(event):
        for n in range(300):
            if n == 100:
                event.assoc.abort()
            if n >= 100:
                after_abort.append(n)
            yield 0xFF00, uid_dataset(f"1.2.3.{n}")

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    query = uid_dataset("")
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query, FIND))
        assert [str(identifier.SOPInstanceUID) for _status, identifier in responses[:-1]] == [
            f"1.2.3.{n}" for n in range(100)
        ]
        assert "Status" not in responses[-1][0]
        assert wait_until(lambda: assoc.is_aborted)
    assert len(after_abort) <= 1


def test_release_between_yields_comes_after_the_results_yielded_before(make_qr_scp):
    """The same with ``event.assoc.release()``: the matches, then the
    A-RELEASE."""

    def on_find(event):
        for n in range(3):
            yield 0xFF00, uid_dataset(f"1.2.3.{n}")
        event.assoc.release()

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    query = uid_dataset("")
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query, FIND))
        assert [str(identifier.SOPInstanceUID) for _status, identifier in responses[:3]] == [
            f"1.2.3.{n}" for n in range(3)
        ]
        assert wait_until(lambda: not assoc.is_established)
