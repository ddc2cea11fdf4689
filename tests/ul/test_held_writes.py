"""Held messages (``ULConnection.send_message(..., hold=True)``): a pending
response goes out with the message that follows it, in one write, and never
waits longer than one pass of the event loop.

Correctness only (writes counted, order and delivery checked); what it saves
is measured in ``benches/e2e.py``, never timed here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop
from pydicom import Dataset

from chromanet import AE, evt, uids
from chromanet.ul.connection import HOLD_BUFFERS, ULConnection
from helpers.qr import FIND, GET, configure_qr_scp_ae, qr_scu_ae
from helpers.waits import WAIT_TIMEOUT





class CountingTransport:
    """Stands in for a connection's transport and counts its writes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes = 0

    def writelines(self, buffers: Any) -> None:
        self.writes += 1
        self.inner.writelines(buffers)

    def write(self, data: Any) -> None:
        self.writes += 1
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def match(i: int) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1410.{i + 1}"
    return ds


def identifier() -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = ""
    return ds


async def _server_transport(server: Any) -> CountingTransport:
    """The server side's connection of its one association, its transport
    swapped for a counting one."""
    for _ in range(200):
        if server.active_associations:
            break
        await asyncio.sleep(0.005)
    (assoc,) = server.active_associations
    connection: ULConnection = assoc._ul.connection
    counting = CountingTransport(connection.transport)
    connection.transport = counting  # type: ignore[assignment]
    return counting


async def _find_statuses(handler: Any, rounds: int = 1) -> tuple[list[list[int]], int]:
    """Statuses of ``rounds`` C-FINDs against a server with ``handler``,
    and how many writes the server made for them."""
    ae = configure_qr_scp_ae()
    server = await ae.start_server_async(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_FIND, handler)])
    try:
        assoc = await qr_scu_ae().associate_async("127.0.0.1", server.server_address[1], ae_title="QRSCP")
        assert assoc.is_established
        counting = await _server_transport(server)
        results = []
        for _ in range(rounds):
            statuses = []
            async for status, _found in assoc.send_c_find(identifier(), FIND):
                statuses.append(int(status.Status))
            results.append(statuses)
        writes = counting.writes
        await assoc.release()
        return results, writes
    finally:
        await asyncio.wait_for(server.close(), WAIT_TIMEOUT)


def test_one_match_find_is_one_write() -> None:
    """The pending response and the final one go out together."""

    def handler(event: Any) -> Any:
        yield 0xFF00, match(0)

    results, writes = uvloop.run(_find_statuses(handler, rounds=20))
    assert results == [[0xFF00, 0x0000]] * 20
    assert writes == 20


def test_many_matches_share_writes_in_order() -> None:
    """500 pending responses: each write carries many, none is lost or
    reordered, and held buffers never grow past the bound."""
    seen: list[str] = []

    def handler(event: Any) -> Any:
        for i in range(500):
            yield 0xFF00, match(i)

    async def body() -> tuple[list[int], int]:
        ae = configure_qr_scp_ae()
        server = await ae.start_server_async(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_FIND, handler)])
        try:
            assoc = await qr_scu_ae().associate_async("127.0.0.1", server.server_address[1], ae_title="QRSCP")
            counting = await _server_transport(server)
            statuses = []
            async for status, found in assoc.send_c_find(identifier(), FIND):
                statuses.append(int(status.Status))
                if found is not None:
                    seen.append(found.SOPInstanceUID)
            writes = counting.writes
            await assoc.release()
            return statuses, writes
        finally:
            await asyncio.wait_for(server.close(), WAIT_TIMEOUT)

    statuses, writes = uvloop.run(body())
    assert statuses == [0xFF00] * 500 + [0x0000]
    assert seen == [match(i).SOPInstanceUID for i in range(500)]
    # A pending response with a data set is a few buffers: at most
    # HOLD_BUFFERS of them go in one write, so at least ~HOLD_BUFFERS/4
    # responses per write, and far fewer writes than responses.
    assert writes <= 501 // (HOLD_BUFFERS // 4) + 2, writes


def test_held_response_goes_out_when_nothing_follows() -> None:
    """A handler that yields a match and then waits for something the
    requestor does only once it has that match: the held response must go
    out on its own (within one loop pass), or both sides wait forever."""

    async def body() -> list[int]:
        got_first = asyncio.Event()

        async def handler(event: Any) -> Any:
            yield 0xFF00, match(0)
            await asyncio.wait_for(got_first.wait(), WAIT_TIMEOUT)
            yield 0xFF00, match(1)

        ae = configure_qr_scp_ae()
        server = await ae.start_server_async(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_FIND, handler)])
        try:
            assoc = await qr_scu_ae().associate_async("127.0.0.1", server.server_address[1], ae_title="QRSCP")
            statuses = []
            async for status, _found in assoc.send_c_find(identifier(), FIND):
                statuses.append(int(status.Status))
                got_first.set()
            await assoc.release()
            return statuses
        finally:
            await asyncio.wait_for(server.close(), WAIT_TIMEOUT)

    assert asyncio.run(asyncio.wait_for(body(), 2 * WAIT_TIMEOUT)) == [0xFF00, 0xFF00, 0x0000]


def test_get_pending_response_travels_with_the_next_store() -> None:
    """C-GET: each pending C-GET-RSP goes out in the same write as the next
    sub-operation's C-STORE-RQ; the last pending goes with the final one."""
    palettes = [match(i) for i in range(10)]
    for ds in palettes:
        ds.SOPClassUID = uids.ColorPaletteStorage
        ds.ContentLabel = "X"

    def handler(event: Any) -> Any:
        yield len(palettes)
        for ds in palettes:
            yield 0xFF00, ds

    async def body() -> tuple[list[int], int, int]:
        stored: list[str] = []

        def on_store(event: Any) -> int:
            stored.append(event.request.AffectedSOPInstanceUID)
            return 0x0000

        ae = configure_qr_scp_ae()
        server = await ae.start_server_async(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_GET, handler)])
        try:
            scu = qr_scu_ae()
            assoc = await scu.associate_async("127.0.0.1", server.server_address[1], ae_title="QRSCP",
                                              evt_handlers=[(evt.EVT_C_STORE, on_store)])
            counting = await _server_transport(server)
            statuses = []
            async for status, _found in assoc.send_c_get(identifier(), GET):
                statuses.append(int(status.Status))
            writes = counting.writes
            await assoc.release()
            return statuses, writes, len(stored)
        finally:
            await asyncio.wait_for(server.close(), WAIT_TIMEOUT)

    statuses, writes, stored = uvloop.run(body())
    assert stored == 10
    assert statuses == [0xFF00] * 10 + [0x0000]
    # 10 C-STORE-RQs, 10 pending responses (the last one too), 1 final: 21
    # messages; held pendings ride with the next C-STORE-RQ, the last one
    # with the final response.
    assert writes == 11, writes


class _FakeUpper:
    """Just enough of an UpperLayer for send_message and abort."""

    state = None
    close_requested = False
    in_pdu = in_message = False
    has_data_to_send = False

    def __init__(self) -> None:
        self.outbox: list[bytes] = []

    def message_buffers(self, context_id: int, command: Any, dataset: Any = None) -> list[Any]:
        return [command]

    def abort(self, source: int = 0, reason: int = 0) -> None:
        self.outbox.append(b"ABORT")
        self.close_requested = True

    def data_to_send(self) -> list[Any]:
        out, self.outbox = self.outbox, []
        return out

    def get_timer(self) -> None:
        return None


class _ListTransport:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.closed = False

    def writelines(self, buffers: Any) -> None:
        self.writes.append([bytes(b) for b in buffers])

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_abort_after_held_message_keeps_the_order() -> None:
    """Whatever the Upper Layer writes (here an A-ABORT) goes out after the
    held messages, and the scheduled flush then finds nothing to do."""

    async def body() -> list[list[bytes]]:
        connection = ULConnection(None, requestor=False, max_receive_pdu_length=16382)  # type: ignore[arg-type]
        connection.upper_layer = _FakeUpper()  # type: ignore[assignment]
        transport = _ListTransport()
        connection.transport = transport  # type: ignore[assignment]
        connection.send_message(1, b"PENDING-1", hold=True)  # type: ignore[arg-type]
        connection.send_message(1, b"PENDING-2", hold=True)  # type: ignore[arg-type]
        assert transport.writes == []
        connection.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return transport.writes

    writes = asyncio.run(body())
    assert writes == [[b"PENDING-1", b"PENDING-2"], [b"ABORT"]]


def test_a_windows_echoes_share_writes_both_ways() -> None:
    """Eight C-ECHOs in a window of eight on one association: the requests
    sent while others are outstanding are held and leave together, and the
    answers to the requests one read brought leave together once that read
    is delivered; every request answered. (Without
    either, each side made one write per echo.)"""
    from chromanet.pdu_primitives import AsynchronousOperationsWindowNegotiation

    async def body() -> tuple[list[int], int, int]:
        scp = AE("SRV")
        scp.add_supported_context(uids.Verification)
        scp.async_ops_window = (8, 8)
        server = await scp.start_server_async(("127.0.0.1", 0))
        try:
            scu = AE("SCU")
            scu.add_requested_context(uids.Verification)
            window = AsynchronousOperationsWindowNegotiation()
            window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 8
            assoc = await scu.associate_async("127.0.0.1", server.server_address[1], ae_title="SRV", ext_neg=[window])
            assert assoc.is_established and assoc.acceptor.asynchronous_operations == (8, 8)
            server_writes = await _server_transport(server)
            connection: ULConnection = assoc._ul.connection
            client_writes = CountingTransport(connection.transport)
            connection.transport = client_writes  # type: ignore[assignment]
            responses = await asyncio.wait_for(
                asyncio.gather(*(assoc.send_c_echo(msg_id=100 + k) for k in range(8))), WAIT_TIMEOUT
            )
            statuses = [int(rsp.Status) for rsp in responses]
            writes = (client_writes.writes, server_writes.writes)
            await assoc.release()
            return statuses, *writes
        finally:
            await asyncio.wait_for(server.close(), WAIT_TIMEOUT)

    statuses, client_writes, server_writes = uvloop.run(body())
    assert statuses == [0x0000] * 8
    # The first request leaves alone (nothing else is outstanding yet), the
    # other seven in one write; the server reads them in one or two reads.
    assert client_writes == 2, client_writes
    assert server_writes <= 2, server_writes
