"""Many associations at once against one chromanet SCP: all complete, and
none is left behind in the server's association set (no leak).

No timings are asserted; the timeouts only bound a hang."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from helpers.servers import async_scp, scu_ae
from helpers.waits import WAIT_TIMEOUT, run_async

pytestmark = [pytest.mark.load, pytest.mark.timeout(180)]

N_ASYNC = 200
N_THREADS = 50


async def _echo_once(ae: Any, address: tuple[str, int]) -> tuple[bool, int | None, bool]:
    assoc = await ae.associate_async(*address, ae_title="SRV")
    if not assoc.is_established:
        return (False, None, False)
    rsp = await assoc.send_c_echo()
    await assoc.release()
    return (True, rsp.get("Status"), assoc.is_released)


def test_200_concurrent_associations_async():
    async def main() -> None:
        async with async_scp(maximum_associations=N_ASYNC + 10) as scp:
            # one requestor AE for all, as a real client would
            ae = scu_ae()
            results = await asyncio.gather(*(_echo_once(ae, scp.address) for _ in range(N_ASYNC)))
            assert results == [(True, 0x0000, True)] * N_ASYNC
            assert scp.recorder.echoes == N_ASYNC
            assert await scp.recorder.wait_event_async("EVT_CONN_CLOSE", count=N_ASYNC)
            names = scp.recorder.names()
            assert names.count("EVT_ESTABLISHED") == N_ASYNC
            assert names.count("EVT_RELEASED") == N_ASYNC
            assert "EVT_ABORTED" not in names and "EVT_REJECTED" not in names
            # every association left the server's set
            assert await scp.recorder.wait_until_async(lambda: not scp.server.associations)

    run_async(main(), timeout=150)


def test_200_concurrent_associations_hold_open_at_once():
    """All 200 are established at the same moment before any releases (the
    server really holds 200), then all release."""

    async def main() -> None:
        async with async_scp(maximum_associations=N_ASYNC) as scp:
            ae = scu_ae()
            assocs = await asyncio.gather(*(ae.associate_async(*scp.address, ae_title="SRV") for _ in range(N_ASYNC)))
            assert all(a.is_established for a in assocs)
            assert len(scp.server.active_associations) == N_ASYNC
            # one more is over the limit
            extra = await ae.associate_async(*scp.address, ae_title="SRV")
            assert extra.is_rejected
            rsps = await asyncio.gather(*(a.send_c_echo() for a in assocs))
            assert [r.Status for r in rsps] == [0] * N_ASYNC
            await asyncio.gather(*(a.release() for a in assocs))
            assert all(a.is_released for a in assocs)
            assert await scp.recorder.wait_event_async("EVT_CONN_CLOSE", count=N_ASYNC + 1)
            assert await scp.recorder.wait_until_async(lambda: not scp.server.associations)

    run_async(main(), timeout=150)


def test_50_blocking_clients_in_threads(make_scp):
    scp = make_scp(maximum_associations=N_THREADS + 10)
    ae = scu_ae()

    def client(_: int) -> tuple[bool, int | None, bool]:
        assoc = ae.associate(*scp.address, ae_title="SRV")
        if not assoc.is_established:
            return (False, None, False)
        status = assoc.send_c_echo().get("Status")
        assoc.release()
        return (True, status, assoc.is_released)

    with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
        results = list(pool.map(client, range(N_THREADS), timeout=120))
    assert results == [(True, 0, True)] * N_THREADS
    assert scp.recorder.wait_event("EVT_CONN_CLOSE", count=N_THREADS, timeout=WAIT_TIMEOUT)
    assert scp.recorder.wait_for(lambda: not scp.server._server.associations)


@pytest.mark.peer
def test_50_pynetdicom_clients_in_threads(pynetdicom, make_scp):
    """50 foreign requestors at once: associate and release.

    No DIMSE here on purpose: pynetdicom's requestor has a race between its
    reactor thread and send_c_*() (the reactor can take the response off the
    queue and drop it as "Received unexpected C-STORE service message",
    pydicom/pynetdicom#875), which a peer that answers within microseconds
    hits now and then under 50 threads. C-ECHO/C-STORE from pynetdicom are
    covered one association at a time in test_interop_pynetdicom.py."""
    scp = make_scp(maximum_associations=N_THREADS + 10)
    barrier = threading.Barrier(N_THREADS, timeout=60)

    def client(i: int) -> tuple[bool, bool]:
        ae = pynetdicom.AE(f"PY{i}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT_TIMEOUT
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="SRV")
        established = assoc.is_established
        barrier.wait()  # all 50 are open at the same time
        if established:
            assoc.release()
        return (established, assoc.is_released)

    with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
        results = list(pool.map(client, range(N_THREADS), timeout=120))
    assert results == [(True, True)] * N_THREADS
    assert scp.recorder.wait_event("EVT_CONN_CLOSE", count=N_THREADS)
    names = scp.recorder.names()
    assert names.count("EVT_RELEASED") == N_THREADS and "EVT_ABORTED" not in names
    assert scp.recorder.wait_for(lambda: not scp.server._server.associations)
