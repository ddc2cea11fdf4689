"""C-CANCEL and the asynchronous operations window, for Color Palette Q/R.

C-CANCEL: an SCU cancels a C-FIND that would never end by itself (the SCP
answers 0xFE00 and the SCU gets control back), a handler that watches
``event.is_cancelled`` sees it become True, a C-GET cancelled half way ends
with 0xFE00 and its counts, leaving an SCU loop early cancels the request
and leaves the association usable, pynetdicom's ``send_c_cancel`` works
against a chromanet SCP, and a long C-FIND cancelled by a peer that reads
slowly stops after about what that peer's receive buffer holds (the SCP
does not write far ahead of the peer).

Window: with (4, 4) negotiated, four C-FINDs are outstanding on one
association at once (the SCP runs their handlers together) and each
consumer gets its own results; with the default (1, 1) they all complete,
one after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
import time
import warnings
from typing import Any

import pytest
from pydicom import Dataset

from chromanet import _dimse, _pdu, dsutil, evt, uids
from helpers.rawpeer import pdata, recv_raw_pdu
from helpers.qr import FIND, GET, QR_MODELS, UIDS, StoreLog, configure_qr_scp_ae, qr_association, qr_scu_ae, statuses
from helpers.waits import NETWORK_TIMEOUT, WAIT_TIMEOUT, run_async, until

pytestmark = pytest.mark.timeout(60)

ENDLESS = "ENDLESS"  # Content Label asking the test SCP for an endless C-FIND


def query(label: str = "", uid: str | list[str] = "") -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.ContentLabel = label
    return ds


def match(n: int, label: str = "MATCH") -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{n + 1}"
    ds.ContentLabel = f"{label}{n}"
    return ds


class EndlessFind:
    """EVT_C_FIND handler: Content Label ENDLESS gets matches without end
    (only a C-CANCEL stops it); anything else gets three. Records how many
    it produced and when its generator was closed by the engine."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = threading.Event()
        self.calls = 0

    def __call__(self, event: Any) -> Any:
        self.calls += 1
        endless = event.identifier.ContentLabel == ENDLESS
        return self._results(endless)

    def _results(self, endless: bool) -> Any:
        try:
            for n in itertools.count() if endless else range(3):
                self.produced += 1
                yield 0xFF00, match(n)
        finally:
            self.closed.set()


# ================================================================ C-CANCEL
def test_cancel_endless_find_blocking_api(make_qr_scp):
    handler = EndlessFind()
    scp = make_qr_scp([(evt.EVT_C_FIND, handler)])
    with qr_association(scp.port) as assoc:
        responses = []
        for status, identifier in assoc.send_c_find(query(ENDLESS), FIND, msg_id=42):
            responses.append((status, identifier))
            if len(responses) == 5:
                assoc.send_c_cancel(42)
        # the loop ended by itself: the SCP's final answer came
        assert responses[-1][0].Status == 0xFE00
        assert responses[-1][1] is None
        assert set(statuses(responses[:-1])) == {0xFF00}
        assert 5 <= len(responses) - 1 <= handler.produced
        assert handler.closed.wait(WAIT_TIMEOUT)
        # usable afterwards
        assert statuses(list(assoc.send_c_find(query("three"), FIND))) == [0xFF00] * 3 + [0x0000]
    assert handler.calls == 2


def test_cancel_seen_by_handler_through_is_cancelled(make_qr_scp):
    """An async handler that waits for ``event.is_cancelled`` (and answers
    the cancel itself): it becomes True after the SCU's C-CANCEL."""
    seen: list[bool] = []

    async def on_find(event):
        for n in range(3):
            yield 0xFF00, match(n)
        seen.append(event.is_cancelled)
        await asyncio.wait_for(until(lambda: event.is_cancelled), WAIT_TIMEOUT)
        seen.append(event.is_cancelled)
        yield 0xFE00, None

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])

    async def main() -> list[int]:
        async with qr_scu_ae().associate_async(*scp.address, ae_title="QRSCP") as assoc:
            got = []
            async for status, _ in assoc.send_c_find(query("x"), FIND, msg_id=9):
                got.append(int(status.Status))
                if len(got) == 3:
                    assoc.send_c_cancel(9)
            return got

    assert run_async(main()) == [0xFF00, 0xFF00, 0xFF00, 0xFE00]
    assert seen == [False, True]


def test_cancel_get_mid_way_reports_counts(make_qr_scp, palettes):
    """The SCU's C-STORE handler sends the C-CANCEL during the 3rd
    sub-operation: the SCP stops there, 0xFE00 with 5 remaining."""

    def on_get(event):
        yield 8
        for uid in UIDS:
            yield 0xFF00, palettes[uid].filename

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    log = StoreLog()

    def on_store(event):
        status = log(event)
        if len(log.uids) == 3:
            event.assoc.send_c_cancel(77)
        return status

    with qr_association(scp.port, store=on_store) as assoc:
        responses = list(assoc.send_c_get(query("", UIDS), GET, msg_id=77))
        again = list(assoc.send_c_get(query("", UIDS), GET))
    assert statuses(responses) == [0xFF00] * 3 + [0xFE00]
    final, identifier = responses[-1]
    assert final.NumberOfRemainingSuboperations == 5
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (3, 0)
    assert final.NumberOfWarningSuboperations == 0
    assert identifier is not None and not identifier.FailedSOPInstanceUIDList
    assert statuses(again) == [0xFF00] * 8 + [0x0000]
    assert log.uids == UIDS[:3] + UIDS


def test_leaving_blocking_loop_early_cancels(make_qr_scp):
    handler = EndlessFind()
    # a short network timeout: with the bug, the SCP aborts soon instead of after 10 s
    scp = make_qr_scp([(evt.EVT_C_FIND, handler)], network_timeout=2)
    with qr_association(scp.port) as assoc:
        for n, (status, _) in enumerate(assoc.send_c_find(query(ENDLESS), FIND)):
            assert status.Status == 0xFF00
            if n == 2:
                break
        # the C-CANCEL stopped the endless handler (the engine closed its generator)
        assert handler.closed.wait(WAIT_TIMEOUT)
        assert statuses(list(assoc.send_c_find(query("three"), FIND))) == [0xFF00] * 3 + [0x0000]
        assert len(scp.server.active_associations) == 1


@pytest.mark.parametrize("closing", ["aclosing", "plain-break"])
def test_leaving_async_loop_early_cancels(make_qr_scp, closing):
    """``async for`` left with break: with ``contextlib.aclosing`` the
    C-CANCEL goes out at once; with a plain break it goes out when the
    abandoned generator is finalized. Either way the next request on the
    (default, one-operation) window runs."""
    handler = EndlessFind()
    scp = make_qr_scp([(evt.EVT_C_FIND, handler)])

    async def main() -> list[int]:
        async with qr_scu_ae().associate_async(*scp.address, ae_title="QRSCP") as assoc:
            seen = 0
            if closing == "aclosing":
                async with contextlib.aclosing(assoc.send_c_find(query(ENDLESS), FIND)) as found:
                    async for status, _ in found:
                        seen += 1
                        if seen == 3:
                            break
            else:
                async for status, _ in assoc.send_c_find(query(ENDLESS), FIND):
                    seen += 1
                    if seen == 3:
                        break
            assert status.Status == 0xFF00
            return [int(s.Status) async for s, _ in assoc.send_c_find(query("three"), FIND)]

    assert run_async(main(), timeout=30) == [0xFF00] * 3 + [0x0000]
    assert handler.closed.wait(WAIT_TIMEOUT)


def test_an_abandoned_request_keeps_its_slot_until_its_final_response(make_qr_scp):
    """On the default window of one operation, a C-FIND left early is still
    outstanding until the SCP answers the C-CANCEL: the next request goes
    out only after that final response (one sent sooner exceeds the
    negotiated window; an SCP that then stops reading, with a C-GET's
    sub-operation answers queued behind it, waits for us as we wait for it)."""
    handler = EndlessFind()
    scp = make_qr_scp([(evt.EVT_C_FIND, handler)])
    seen: list[tuple[str, int, int | None]] = []

    def on_dimse(event: Any) -> None:
        command = event.message.command
        if event.event is evt.EVT_DIMSE_SENT:
            seen.append(("sent", command.command_field, command.message_id))
        else:
            seen.append(("recv", command.message_id_being_responded_to, command.status))

    async def main() -> list[int]:
        handlers = [(evt.EVT_DIMSE_SENT, on_dimse), (evt.EVT_DIMSE_RECV, on_dimse)]
        async with qr_scu_ae().associate_async(*scp.address, ae_title="QRSCP", evt_handlers=handlers) as assoc:
            assert assoc.acceptor.asynchronous_operations == (1, 1)
            async with contextlib.aclosing(assoc.send_c_find(query(ENDLESS), FIND, msg_id=7)) as found:
                async for status, _ in found:
                    if status.Status == 0xFF00:
                        break
            return [int(s.Status) async for s, _ in assoc.send_c_find(query("three"), FIND, msg_id=8)]

    assert run_async(main(), timeout=30) == [0xFF00] * 3 + [0x0000]
    final = next(k for k, entry in enumerate(seen) if entry[0] == "recv" and entry[1] == 7 and entry[2] != 0xFF00)
    second = seen.index(("sent", _dimse.C_FIND_RQ, 8))
    assert seen[final][2] == 0xFE00  # the C-CANCEL answered
    assert final < second, seen


def test_responses_never_asked_for_cancel_the_request(make_qr_scp):
    """A C-FIND whose response generator is dropped without being iterated
    (the request went out at the call): the engine cancels it and frees
    its place in the window, so the next request runs."""
    handler = EndlessFind()
    scp = make_qr_scp([(evt.EVT_C_FIND, handler)])

    async def main() -> list[int]:
        async with qr_scu_ae().associate_async(*scp.address, ae_title="QRSCP") as assoc:
            dropped = assoc.send_c_find(query(ENDLESS), FIND)
            del dropped
            return [int(s.Status) async for s, _ in assoc.send_c_find(query("three"), FIND)]

    assert run_async(main(), timeout=30) == [0xFF00] * 3 + [0x0000]
    assert handler.closed.wait(WAIT_TIMEOUT)
    assert handler.calls == 2


@pytest.mark.peer
def test_pynetdicom_send_c_cancel_against_chromanet(pynetdicom, make_qr_scp):
    handler = EndlessFind()
    scp = make_qr_scp([(evt.EVT_C_FIND, handler)])
    ae = pynetdicom.AE("PYQRSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    for model in QR_MODELS:
        ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="QRSCP")
    assert assoc.is_established
    try:
        responses = []
        for status, identifier in assoc.send_c_find(query(ENDLESS), FIND, msg_id=5):
            responses.append((status, identifier))
            if len(responses) == 4:
                assoc.send_c_cancel(5, query_model=FIND)
        assert responses[-1][0].Status == 0xFE00
        assert set(statuses(responses[:-1])) == {0xFF00}
        assert handler.closed.wait(WAIT_TIMEOUT)
        again = list(assoc.send_c_find(query("three"), FIND, msg_id=6))
        assert statuses(again) == [0xFF00] * 3 + [0x0000]
    finally:
        assoc.release()


class SlowReader:
    """A requestor over a plain socket with a small receive buffer, that
    sends a C-FIND and reads nothing for a while (a peer busy elsewhere),
    then sends a C-CANCEL and reads the responses to the end."""

    RECEIVE_BUFFER = 32 * 1024

    def __init__(self, port: int) -> None:
        from chromanet.ul.negotiation import ContextSpec, build_associate_rq

        rq = build_associate_rq(
            "QRSCP", "SLOWREADER", [ContextSpec(FIND, [uids.ImplicitVRLittleEndian])], max_pdu_length=16384
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RECEIVE_BUFFER)
        self.sock.settimeout(NETWORK_TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(_pdu.encode_pdu(rq))
        pdu_type, _ = recv_raw_pdu(self.sock)
        assert pdu_type == 0x02

    def send(self, command: Any, dataset: bytes | None = None) -> None:
        self.sock.sendall(pdata(1, 0x03, _dimse.encode_command(command)))
        if dataset is not None:
            self.sock.sendall(pdata(1, 0x02, dataset))

    def statuses(self) -> list[int]:
        """The Status of every response, to the final one."""
        found: list[int] = []
        while True:
            pdu_type, body = recv_raw_pdu(self.sock)
            assert pdu_type == 0x04, f"PDU type {pdu_type}"
            offset = 0
            while offset < len(body):
                (length,) = struct.unpack(">I", body[offset : offset + 4])
                control = body[offset + 5]
                if control == 0x03:  # a whole command in one PDV
                    found.append(_dimse.decode_command(body[offset + 6 : offset + 4 + length]).status)
                    if found[-1] not in (0xFF00, 0xFF01):
                        return found
                offset += 4 + length


def test_cancel_of_a_long_find_stops_near_what_the_peer_read(make_qr_scp):
    """An endless C-FIND to a peer that reads nothing for half a second and
    then cancels: the SCP has written only a bounded amount ahead of the
    peer (its write buffer kept under 32 KiB while pending responses
    stream, the kernel holding at most 16 KiB unsent: TCP_NOTSENT_LOWAT),
    so the matches that arrive after the C-CANCEL are about what the
    peer's own receive buffer holds. A pending response here is ~180
    bytes; unbounded, the kernel's send buffer (which grows to megabytes)
    and the transport's 256 KiB buffer held thousands."""
    handler = EndlessFind()
    scp = make_qr_scp([(evt.EVT_C_FIND, handler)])
    peer = SlowReader(scp.port)
    try:
        request = _dimse.Command(
            _dimse.C_FIND_RQ,
            affected_sop_class_uid=FIND,
            message_id=1,
            priority=0,
            command_data_set_type=_dimse.DATASET_PRESENT,
        )
        peer.send(request, dsutil.encode_dataset(query(ENDLESS), uids.ImplicitVRLittleEndian))
        time.sleep(0.5)
        produced_at_cancel = handler.produced
        peer.send(_dimse.Command(_dimse.C_CANCEL_RQ, message_id_being_responded_to=1,
                                 command_data_set_type=_dimse.NO_DATASET))
        found = peer.statuses()
    finally:
        peer.sock.close()
    assert found[-1] == 0xFE00
    after_cancel = len(found) - 1
    assert after_cancel <= produced_at_cancel
    # Measured on Linux loopback: ~750 (the peer's 64 KiB receive buffer,
    # 16 KiB unsent in the kernel, at most 32 KiB in the transport); 4,100 to
    # 4,800 before the bound.
    assert after_cancel < 2000, after_cancel


# ===================================================== operations window
@pytest.mark.parametrize("window", [(4, 4), None], ids=["window-4", "default"])
def test_concurrent_finds_on_one_association(window):
    """Four ``async for`` consumers share one association. With (4, 4) the
    SCP runs the four handlers together: each handler waits (bounded) until
    all four have started, which only happens if the requests really are
    outstanding at once. With the default window they run one at a time
    and still all complete with their own results."""
    state = {"running": 0, "peak": 0, "started": 0}

    async def on_find(event):
        label = str(event.identifier.ContentLabel)
        state["running"] += 1
        state["started"] += 1
        state["peak"] = max(state["peak"], state["running"])
        try:
            if window is not None:
                await asyncio.wait_for(until(lambda: state["started"] >= 4), WAIT_TIMEOUT)
            for n in range(5):
                yield 0xFF00, match(n, label)
                await asyncio.sleep(0)
        finally:
            state["running"] -= 1

    async def main() -> None:
        ae = configure_qr_scp_ae(async_ops_window=(4, 4))
        server = await ae.start_server_async(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_FIND, on_find)])
        try:
            ext = [_pdu.AsyncOperationsWindow(*window)] if window is not None else None
            async with qr_scu_ae().associate_async(*server.server_address, ae_title="QRSCP", ext_neg=ext) as assoc:

                async def consume(label: str) -> list[tuple[int, str | None]]:
                    return [
                        (int(s.Status), str(i.ContentLabel) if i is not None else None)
                        async for s, i in assoc.send_c_find(query(label), FIND)
                    ]

                labels = ["ALPHA", "BRAVO", "CHARLIE", "DELTA"]
                results = await asyncio.wait_for(asyncio.gather(*(consume(x) for x in labels)), WAIT_TIMEOUT)
                for label, got in zip(labels, results):
                    assert got == [(0xFF00, f"{label}{n}") for n in range(5)] + [(0x0000, None)]
        finally:
            await server.close()

    run_async(main(), timeout=30)
    assert state["started"] == 4
    assert state["peak"] == (4 if window is not None else 1)
