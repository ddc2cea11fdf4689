"""The operation observer (``services/observe.py``): one OperationRecord per
request a server served, however it ended, through the AE's
``association_observer`` (``server.AssociationObserver``).

Against PS3.7: a request whose Affected SOP Class is not its presentation
context's is refused with 0x0122 (C-FIND or C-STORE; PS3.7 C.5), an
identifier over the size limit with the service's "out of resources"
(PS3.4 C.4.1.1.4, 0xA700) — each by the dispatcher, before any service,
and each still leaves exactly one record.
The record stays bounded whatever the identifier (a hostile peer chooses
it), a failing observer never costs the peer its answer, and an operation
the association's end cuts off is recorded as interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.tag import Tag

from chromanet import _dimse, dsutil, evt, uids
from chromanet.services.observe import (
    ANSWERED,
    INTERRUPTED,
    MAX_QUERY_KEYS,
    MAX_VALUE_CHARS,
    REFUSED,
    OperationRecord,
)
from helpers.qr import FIND, GET, configure_qr_scp_ae, qr_scu_ae
from helpers.waits import WAIT_TIMEOUT, run_async, until

pytestmark = pytest.mark.timeout(60)


class Collector:
    """An AssociationObserver keeping every operation record."""

    def __init__(self, fail: bool = False) -> None:
        self.records: list[OperationRecord] = []
        self.opened: list[Any] = []
        self.closed: list[Any] = []
        self.fail = fail

    def association_opened(self, assoc: Any) -> Any:
        self.opened.append(assoc)
        return self.record

    def record(self, record: OperationRecord) -> None:
        self.records.append(record)
        if self.fail:
            raise RuntimeError("observer broken on purpose")

    def association_closed(self, assoc: Any) -> None:
        self.closed.append(assoc)


def one_match(event: Any) -> Any:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    yield 0xFF00, ds


async def serve(collector: Collector, find_handler: Any = one_match, **settings: Any) -> Any:
    ae = configure_qr_scp_ae("OBSERVED", **settings)
    ae.association_observer = collector
    return await ae.start_server_async(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_FIND, find_handler)])


def find_command(sop_class: str, field: int = _dimse.C_FIND_RQ) -> _dimse.Command:
    return _dimse.Command(
        field, affected_sop_class_uid=sop_class, priority=0, command_data_set_type=_dimse.DATASET_PRESENT
    )


def store_command() -> _dimse.Command:
    return _dimse.Command(
        _dimse.C_STORE_RQ, affected_sop_class_uid=uids.ColorPaletteStorage, affected_sop_instance_uid="1.2.3.9",
        priority=0, command_data_set_type=_dimse.DATASET_PRESENT,
    )  # fmt: skip


def encoded_query(**keys: str) -> bytes:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return dsutil.encode_dataset(ds, uids.ImplicitVRLittleEndian)


@pytest.mark.parametrize(
    "command, dataset, status, operation",
    [
        (find_command(GET), encoded_query(SOPInstanceUID=""), 0x0122, "C-FIND"),  # SOP class of another context
        (store_command(), encoded_query(SOPInstanceUID="1.2.3.9"), 0x0122, "C-STORE"),  # a store on the FIND context
        # Over max_identifier_size, and over one PDU: it arrives in fragments.
        (find_command(FIND), b"\x00" * 40_000, 0xA700, "C-FIND"),
    ],
    ids=["find-sop-class-mismatch", "store-sop-class-mismatch", "identifier-too-large"],
)
def test_a_refused_request_leaves_one_record(command, dataset, status, operation):
    async def body() -> None:
        collector = Collector()
        server = await serve(collector, max_identifier_size=1024)
        try:
            assoc = await qr_scu_ae("WATCHED").associate_async("127.0.0.1", server.server_address[1], ae_title="OBSERVED")
            assert assoc.is_established
            session = assoc.service_session
            context = session.scu_context(FIND)
            response = await session.exchange(context.context_id, command, dataset)
            assert response is not None and response.status == status
            await assoc.release()
            await asyncio.wait_for(until(lambda: collector.closed), WAIT_TIMEOUT)
        finally:
            await server.close()
        assert len(collector.opened) == 1 and collector.closed == collector.opened
        [record] = collector.records
        assert (record.operation, record.status, record.outcome) == (operation, status, REFUSED)
        assert record.message_id == command.message_id and record.sop_class_uid == command.affected_sop_class_uid
        assert record.query is None  # refused before anything decoded it
        assert record.sop_instance_uid == command.affected_sop_instance_uid  # a store's, None for a find
        assert record.bytes_in == len(dataset) and record.bytes_out == 0
        assert record.status_category == "Failure" and record.duration >= 0

    run_async(body())


def test_a_hostile_identifier_makes_a_bounded_record():
    long_value = "X" * 10_000
    ds = Dataset()
    ds.SOPInstanceUID = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # longer than LO allows: on purpose
        ds.add_new(Tag(0x0008, 0x0080), "LO", long_value)  # Institution Name, before the private tags
        for n in range(300):
            ds.add_new(Tag(0x0011, 0x1000 + n), "LO", f"private {n}")
        identifier = dsutil.encode_dataset(ds, uids.ImplicitVRLittleEndian)

    async def body() -> None:
        collector = Collector()
        server = await serve(collector)
        try:
            assoc = await qr_scu_ae("WATCHED").associate_async("127.0.0.1", server.server_address[1], ae_title="OBSERVED")
            session = assoc.service_session
            command = find_command(FIND)
            stream = session.channel.open_request(session.scu_context(FIND).context_id, command, identifier)
            responses = [await stream.next(), await stream.next()]
            session.channel.close_request(stream)
            assert [r.command.status for r in responses] == [0xFF00, 0x0000]
            await assoc.release()
        finally:
            await server.close()
        [record] = collector.records
        assert record.outcome == ANSWERED and record.status == 0x0000 and record.matches == 1
        assert len(record.query) == MAX_QUERY_KEYS and record.query_keys_omitted == 302 - MAX_QUERY_KEYS
        assert record.query["InstitutionName"] == long_value[: MAX_VALUE_CHARS - 3] + "..."
        assert all(len(value) <= MAX_VALUE_CHARS for value in record.query.values())
        assert record.bytes_in == len(identifier) and record.bytes_out > 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SCP reading the over-long value
        run_async(body())


def test_a_failing_observer_costs_the_peer_nothing(caplog):
    async def body() -> None:
        collector = Collector(fail=True)
        server = await serve(collector)
        try:
            assoc = await qr_scu_ae("WATCHED").associate_async("127.0.0.1", server.server_address[1], ae_title="OBSERVED")
            for _ in range(2):
                query = Dataset()
                query.SOPInstanceUID = ""
                answers = [status.Status async for status, _ in assoc.send_c_find(query, FIND)]
                assert answers == [0xFF00, 0x0000]
            await assoc.release()
        finally:
            await server.close()
        assert [r.status for r in collector.records] == [0x0000, 0x0000]

    with caplog.at_level(logging.ERROR, logger="chromanet.services"):
        run_async(body())
    assert sum("observer raised" in r.getMessage() for r in caplog.records) == 2


def test_an_operation_cut_off_by_an_abort_is_recorded_as_interrupted():
    started = asyncio.Event()

    async def never_ends(event: Any) -> Any:
        started.set()
        while True:
            await asyncio.sleep(0.01)
            if event.is_cancelled:
                return
        yield  # an async generator

    async def body() -> None:
        collector = Collector()
        server = await serve(collector, find_handler=never_ends)
        try:
            assoc = await qr_scu_ae("WATCHED").associate_async("127.0.0.1", server.server_address[1], ae_title="OBSERVED")
            session = assoc.service_session
            query = encoded_query(SOPInstanceUID="")
            session.channel.open_request(session.scu_context(FIND).context_id, find_command(FIND), query)
            await asyncio.wait_for(started.wait(), WAIT_TIMEOUT)
            assoc.abort()
            await asyncio.wait_for(until(lambda: collector.records and collector.closed), WAIT_TIMEOUT)
            server_assoc = collector.closed[0]
            assert server_assoc.outcome == "aborted" and server_assoc.aborted_by == "peer"
        finally:
            await server.close()
        [record] = collector.records
        assert (record.operation, record.outcome, record.status, record.status_category) == (
            "C-FIND", INTERRUPTED, None, None,
        )  # fmt: skip

    run_async(body())


def test_no_observer_no_record():
    """Off by default: an AE without an association_observer makes no
    records (the services test ``message.trace`` and find None)."""

    async def body() -> None:
        ae = configure_qr_scp_ae("PLAIN")
        assert ae.association_observer is None
        server = await ae.start_server_async(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_FIND, one_match)])
        try:
            assert server.observer is None
            assoc = await qr_scu_ae("WATCHED").associate_async("127.0.0.1", server.server_address[1], ae_title="PLAIN")
            await asyncio.wait_for(until(lambda: bool(server.active_associations)), WAIT_TIMEOUT)
            [served] = server.active_associations
            assert served.operation_observer is None and served.service_session.observer is None
            await assoc.release()
        finally:
            await server.close()

    run_async(body())
