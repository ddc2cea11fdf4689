"""Every status of the Color Palette Q/R SCP (PS3.4 Annex X), through the wire.

Each test starts a chromanet Q/R SCP whose handler misbehaves in one way
(or sends it a crafted request) and checks what the SCU on the other end of
a real socket receives: the status, the sub-operation counts, the Failed SOP
Instance UID List (0008,0058) in the identifier, the Error Comment. The
chromanet SCU reads most of them; pynetdicom's SCU reads the C-FIND and
C-GET failure families, to show a foreign peer reads them the same way.

Every test runs twice: with the plain handlers in the association's worker
thread (the default) and inline on the loop (``AE.sync_handlers_inline``),
where a generator handler's C-FIND is served without a task of its own
(``query_retrieve.serve_find``): the statuses are the same.
"""

from __future__ import annotations

import logging
import struct
import warnings
from typing import Any

import pytest
from pydicom import Dataset

from chromanet import _dimse, evt, logutil, loopthread, uids
from chromanet._dimse import Command
from helpers.qr import (
    FIND,
    GET,
    MOVE,
    UIDS,
    StoreLog,
    pynetdicom_qr_association,
    qr_association,
    qr_scu_ae,
    statuses,
)
from helpers.servers import free_port
from helpers.waits import WAIT_TIMEOUT, wait_until

pytestmark = pytest.mark.timeout(60)

PENDING = (0xFF00, 0xFF01)

# An identifier that really fails to decode: pydicom reads a run of 0xFF as
# one empty element, so plain garbage is not enough. An undefined-length
# sequence (Referenced Series Sequence) followed by bytes that are no item
# tag makes read_dataset raise.
UNDECODABLE = struct.pack("<HHI", 0x0008, 0x1115, 0xFFFFFFFF) + b"\x01\x02\x03\x04" + b"\x00" * 8


@pytest.fixture(params=["thread", "inline"])
def make_qr_scp(request, make_qr_scp):
    """The conftest factory, with the handlers in a worker thread or inline."""

    def make(handlers: list[Any] | None = None, ae_title: str = "QRSCP", **settings: Any) -> Any:
        settings.setdefault("sync_handlers_inline", request.param == "inline")
        return make_qr_scp(handlers, ae_title, **settings)

    return make


def query(uid: str | list[str] = "") -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom does not know '*' is a wild card here
        ds.ContentLabel = "*" if not uid else ""
    return ds


def unencodable_identifier() -> Dataset:
    """A Dataset pydicom accepts (with a warning) but cannot write: a US
    element holding a string."""
    ds = Dataset()
    ds.SOPInstanceUID = UIDS[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.add_new(0x00280010, "US", "not a number")
    return ds


def find_match(uid: str, palettes: dict[str, Any]) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = uid
    ds.ContentLabel = palettes[uid].ContentLabel
    return ds


def counts(status: Dataset) -> tuple[Any, int, int, int]:
    """(remaining or None, completed, failed, warning) of a response."""
    return (
        status.get("NumberOfRemainingSuboperations"),
        int(status.NumberOfCompletedSuboperations),
        int(status.NumberOfFailedSuboperations),
        int(status.NumberOfWarningSuboperations),
    )


def failed_list(identifier: Dataset | None) -> list[str]:
    assert identifier is not None and "FailedSOPInstanceUIDList" in identifier
    value = identifier.FailedSOPInstanceUIDList
    if not value:
        return []
    return [str(v) for v in value] if not isinstance(value, str) else [value]


def raw_request(assoc: Any, field: int, model: str, payload: bytes, move_destination: str | None = None) -> list[Any]:
    """Send a Q/R request whose identifier bytes are ``payload`` (no
    encoding on our side) and collect the response messages."""
    inner = assoc._inner

    async def exchange() -> list[Any]:
        channel = inner.service_session.channel
        ctx = inner.find_context(model)
        command = Command(
            field,
            affected_sop_class_uid=model,
            priority=2,
            command_data_set_type=_dimse.DATASET_PRESENT,
            move_destination=move_destination,
        )
        stream = channel.open_request(ctx.context_id, command, payload)
        received = []
        try:
            while True:
                message = await stream.next()
                received.append(message)
                if message.command.status not in PENDING:
                    return received
        finally:
            channel.close_request(stream)

    return loopthread.run(exchange(), timeout=WAIT_TIMEOUT)


# ================================================================== C-FIND
def test_find_success_one_pending_per_match(make_qr_scp, palettes):
    seen = {}

    def on_find(event):
        seen["identifier"] = event.identifier
        for uid in UIDS:
            yield 0xFF00, find_match(uid, palettes)

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert [str(ident.SOPInstanceUID) for _, ident in responses[:-1]] == UIDS
    assert [ident.ContentLabel for _, ident in responses[:-1]] == [palettes[u].ContentLabel for u in UIDS]
    assert responses[-1][1] is None
    assert seen["identifier"].ContentLabel == "*"


def test_find_pending_warning_ff01(make_qr_scp, palettes):
    def on_find(event):
        yield 0xFF01, find_match(UIDS[0], palettes)
        yield 0xFF00, find_match(UIDS[1], palettes)

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xFF01, 0xFF00, 0x0000]
    assert str(responses[0][1].SOPInstanceUID) == UIDS[0]


def test_find_cancel_yielded_by_handler(make_qr_scp, palettes):
    def on_find(event):
        yield 0xFF00, find_match(UIDS[0], palettes)
        yield 0xFE00, None
        yield 0xFF00, find_match(UIDS[1], palettes)  # never reached

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xFF00, 0xFE00]
    assert responses[-1][1] is None


@pytest.mark.parametrize("code", [0xA700, 0xA900, 0xC000])
def test_find_failure_passed_through_as_final(make_qr_scp, palettes, code):
    def on_find(event):
        yield 0xFF00, find_match(UIDS[0], palettes)
        status = Dataset()
        status.Status = code
        status.ErrorComment = f"handler says {code:04X}"
        yield status, None

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xFF00, code]
    assert responses[-1][0].ErrorComment == f"handler says {code:04X}"
    assert responses[-1][1] is None


def test_find_int_failure_as_first_answer(make_qr_scp):
    def on_find(event):
        yield 0xA700, None

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xA700]
    assert "ErrorComment" not in responses[0][0]


def test_find_without_handler_is_c311_not_0122(make_qr_scp):
    """No EVT_C_FIND handler bound: answered 0xC311 (pynetdicom's answer
    too: its default handler raises NotImplementedError). The engine has no
    path that answers a C-FIND with 0x0122 (see the report)."""
    scp = make_qr_scp([])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xC311]


def test_find_unnegotiated_sop_class_is_0122(make_qr_scp):
    """A C-FIND-RQ whose Affected SOP Class UID (Patient Root FIND) is not
    the abstract syntax of the context it came on: PS3.7 wants the context's
    SOP class; the SCP should refuse it with 0x0122, not serve it."""
    called = []

    def on_find(event):
        called.append(event.request.AffectedSOPClassUID)
        yield from ()

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        inner = assoc._inner

        async def exchange() -> Any:
            channel = inner.service_session.channel
            ctx = inner.find_context(FIND)
            command = Command(
                _dimse.C_FIND_RQ,
                affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.1.1",
                priority=2,
                command_data_set_type=_dimse.DATASET_PRESENT,
            )
            from chromanet import dsutil

            stream = channel.open_request(ctx.context_id, command, dsutil.encode_dataset(query(), uids.ImplicitVRLittleEndian))
            try:
                return await stream.next()
            finally:
                channel.close_request(stream)

        message = loopthread.run(exchange(), timeout=WAIT_TIMEOUT)
    assert message.command.status == 0x0122
    assert not called


def test_find_status_dataset_without_status_c001(make_qr_scp):
    def on_find(event):
        status = Dataset()
        status.ErrorComment = "no Status here"
        yield status, None

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xC001]


def test_find_status_of_wrong_type_c002(make_qr_scp, palettes):
    def on_find(event):
        yield 0xFF00, find_match(UIDS[0], palettes)
        yield "pending", find_match(UIDS[1], palettes)

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xFF00, 0xC002]


def test_find_identifier_fails_to_decode_c310(make_qr_scp):
    called = []

    def on_find(event):
        called.append(True)
        yield from ()

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        messages = raw_request(assoc, _dimse.C_FIND_RQ, FIND, UNDECODABLE)
        # the association survives the bad request
        assert statuses(list(assoc.send_c_find(query(), FIND))) == [0x0000]
    assert [m.command.status for m in messages] == [0xC310]
    assert messages[0].command.command_field == _dimse.C_FIND_RSP
    assert messages[0].dataset is None
    assert called == [True]  # only the second, good request reached the handler


def test_find_handler_raises_at_call_c311(make_qr_scp):
    def on_find(event):  # not a generator: raises when called
        raise RuntimeError("handler broken")

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xC311]


def test_find_handler_raises_mid_iteration_c311(make_qr_scp, palettes):
    def on_find(event):
        yield 0xFF00, find_match(UIDS[0], palettes)
        yield 0xFF00, find_match(UIDS[1], palettes)
        raise RuntimeError("handler broke half way")

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xFF00, 0xFF00, 0xC311]
    assert [str(i.SOPInstanceUID) for _, i in responses[:2]] == UIDS[:2]


def test_find_identifier_fails_to_encode_c312(make_qr_scp, palettes):
    def on_find(event):
        yield 0xFF00, find_match(UIDS[0], palettes)
        yield 0xFF00, unencodable_identifier()
        yield 0xFF00, find_match(UIDS[2], palettes)

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xFF00, 0xC312]


# ---------------------------------------------- C-FIND read by pynetdicom
def _status_dataset(**elements: Any) -> Dataset:
    ds = Dataset()
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def _find_failure_handlers(palettes: dict[str, Any]) -> dict[str, Any]:
    def final(code):
        def on_find(event):
            yield 0xFF00, find_match(UIDS[0], palettes)
            yield code, None

        return on_find

    def without_status(event):
        yield _status_dataset(ErrorComment="x"), None

    def wrong_type(event):
        yield 1.5, None

    def raises_at_call(event):
        raise ValueError("no")

    def raises_later(event):
        yield 0xFF00, find_match(UIDS[0], palettes)
        raise ValueError("no")

    def unencodable(event):
        yield 0xFF00, unencodable_identifier()

    def cancel(event):
        yield 0xFF00, find_match(UIDS[0], palettes)
        yield 0xFE00, None

    return {
        "A700": (final(0xA700), [0xFF00, 0xA700]),
        "A900": (final(0xA900), [0xFF00, 0xA900]),
        "C000": (final(0xC000), [0xFF00, 0xC000]),
        "FE00": (cancel, [0xFF00, 0xFE00]),
        "C001": (without_status, [0xC001]),
        "C002": (wrong_type, [0xC002]),
        "C311-call": (raises_at_call, [0xC311]),
        "C311-iter": (raises_later, [0xFF00, 0xC311]),
        "C312": (unencodable, [0xC312]),
    }


@pytest.mark.peer
@pytest.mark.parametrize(
    "case", ["A700", "A900", "C000", "FE00", "C001", "C002", "C311-call", "C311-iter", "C312"]
)
def test_find_failures_read_by_pynetdicom(pynetdicom, make_qr_scp, palettes, case):
    handler, expected = _find_failure_handlers(palettes)[case]
    scp = make_qr_scp([(evt.EVT_C_FIND, handler)])
    with pynetdicom_qr_association(pynetdicom, scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == expected
    for status, identifier in responses:
        if status.Status in PENDING:
            assert str(identifier.SOPInstanceUID) == UIDS[0]
        else:
            assert identifier is None


@pytest.mark.peer
def test_find_success_read_by_pynetdicom(pynetdicom, make_qr_scp, palettes):
    def on_find(event):
        for uid in UIDS:
            yield 0xFF00, find_match(uid, palettes)

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with pynetdicom_qr_association(pynetdicom, scp.port) as assoc:
        responses = list(assoc.send_c_find(query(), FIND))
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert [i.ContentLabel for _, i in responses[:-1]] == [palettes[u].ContentLabel for u in UIDS]


# =================================================================== C-GET
def get_all(palettes: dict[str, Any], as_files: bool = True) -> Any:
    """An EVT_C_GET handler yielding every palette (files or Datasets)."""

    def on_get(event):
        yield len(UIDS)
        for uid in UIDS:
            yield 0xFF00, (palettes[uid].filename if as_files else palettes[uid])

    return on_get


@pytest.mark.parametrize("as_files", [True, False], ids=["files", "datasets"])
def test_get_success_counts_in_every_response(make_qr_scp, palettes, as_files):
    scp = make_qr_scp([(evt.EVT_C_GET, get_all(palettes, as_files))])
    log = StoreLog()
    with qr_association(scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert [counts(s) for s, _ in responses[:-1]] == [(8 - n, n, 0, 0) for n in range(1, 9)]
    assert counts(responses[-1][0]) == (None, 8, 0, 0)
    assert responses[-1][1] is None  # no failures: no Failed SOP Instance UID List
    assert log.uids == UIDS


def test_get_some_stores_fail_or_warn_b000(make_qr_scp, palettes):
    scp = make_qr_scp([(evt.EVT_C_GET, get_all(palettes))])
    log = StoreLog({UIDS[1]: 0xA700, UIDS[4]: 0xA700, UIDS[6]: 0xB000})
    with qr_association(scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0xFF00] * 8 + [0xB000]
    # counts as they go: after the 2nd sub-operation one failure, after the 7th one warning
    assert counts(responses[1][0]) == (6, 1, 1, 0)
    assert counts(responses[6][0]) == (1, 4, 2, 1)
    assert counts(responses[-1][0]) == (None, 5, 2, 1)
    assert failed_list(responses[-1][1]) == [UIDS[1], UIDS[4]]
    assert log.uids == UIDS


def test_get_all_stores_fail_a702(make_qr_scp, palettes):
    scp = make_qr_scp([(evt.EVT_C_GET, get_all(palettes))])
    log = StoreLog({uid: 0xA700 for uid in UIDS})
    with qr_association(scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses)[-1] == 0xA702
    assert counts(responses[-1][0]) == (None, 0, 8, 0)
    assert failed_list(responses[-1][1]) == UIDS


def test_get_cancel_yielded_by_handler_fe00(make_qr_scp, palettes):
    def on_get(event):
        yield 8
        for uid in UIDS[:3]:
            yield 0xFF00, palettes[uid].filename
        yield 0xFE00, None

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    log = StoreLog({UIDS[1]: 0xA700})
    with qr_association(scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0xFF00] * 3 + [0xFE00]
    assert counts(responses[-1][0]) == (5, 2, 1, 0)
    assert failed_list(responses[-1][1]) == [UIDS[1]]
    assert log.uids == UIDS[:3]


@pytest.mark.parametrize("field", [_dimse.C_GET_RQ, _dimse.C_MOVE_RQ], ids=["get", "move"])
@pytest.mark.parametrize(
    "bad_status, code",
    [(_status_dataset(ErrorComment="no Status"), 0xC001), ("pending", 0xC002), (None, 0xC002)],
    ids=["C001", "C002-str", "C002-None"],
)
def test_retrieve_bad_status_from_handler(make_qr_scp, make_scp, palettes, field, bad_status, code):
    """After two good sub-operations the handler yields a bad status: the
    retrieve stops with 0xC001/0xC002, the rest counted as failed."""
    dest = make_scp(ae_title="DEST", store=False, handlers=[(evt.EVT_C_STORE, StoreLog())])

    def body():
        yield 8
        yield 0xFF00, palettes[UIDS[0]].filename
        yield 0xFF00, palettes[UIDS[1]].filename
        yield bad_status, palettes[UIDS[2]].filename

    def on_get(event):
        yield from body()

    def on_move(event):
        yield "127.0.0.1", dest.port
        yield from body()

    scp = make_qr_scp([(evt.EVT_C_GET, on_get), (evt.EVT_C_MOVE, on_move)])
    with qr_association(scp.port, store=StoreLog()) as assoc:
        if field == _dimse.C_GET_RQ:
            responses = list(assoc.send_c_get(query(UIDS), GET))
        else:
            responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
    assert statuses(responses) == [0xFF00, 0xFF00, code]
    assert counts(responses[-1][0]) == (None, 2, 6, 0)
    assert failed_list(responses[-1][1]) == []


@pytest.mark.parametrize("field, code", [(_dimse.C_GET_RQ, 0xC410), (_dimse.C_MOVE_RQ, 0xC510)], ids=["get", "move"])
def test_retrieve_identifier_fails_to_decode(make_qr_scp, palettes, field, code):
    def on_get(event):
        yield 1
        yield 0xFF00, palettes[UIDS[0]].filename

    def on_move(event):
        yield "127.0.0.1", 1
        yield 0

    scp = make_qr_scp([(evt.EVT_C_GET, on_get), (evt.EVT_C_MOVE, on_move)])
    with qr_association(scp.port, store=StoreLog()) as assoc:
        model = GET if field == _dimse.C_GET_RQ else MOVE
        messages = raw_request(assoc, field, model, UNDECODABLE, "DEST" if field == _dimse.C_MOVE_RQ else None)
    assert [m.command.status for m in messages] == [code]
    assert messages[0].command.command_field == field | 0x8000


def test_get_handler_raises_at_call_c411(make_qr_scp):
    def on_get(event):
        raise RuntimeError("broken")

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    with qr_association(scp.port, store=StoreLog()) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0xC411]


def test_get_handler_raises_before_the_number_c413(make_qr_scp):
    """As pynetdicom: a raise where the number is expected is 0xC413."""

    def on_get(event):
        raise RuntimeError("broken before the number")
        yield 8  # makes on_get a generator: the raise happens at the first next()

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    with qr_association(scp.port, store=StoreLog()) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0xC413]


def test_get_handler_raises_mid_iteration_c411(make_qr_scp, palettes):
    def on_get(event):
        yield 8
        yield 0xFF00, palettes[UIDS[0]].filename
        yield 0xFF00, palettes[UIDS[1]].filename
        raise RuntimeError("broken half way")

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    log = StoreLog({UIDS[1]: 0xA700})
    with qr_association(scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0xFF00, 0xFF00, 0xC411]
    assert counts(responses[-1][0]) == (None, 1, 7, 0)
    assert failed_list(responses[-1][1]) == [UIDS[1]]


@pytest.mark.parametrize("number", ["8", 8.0, True, None, "missing"], ids=["str", "float", "bool", "None", "missing"])
def test_get_invalid_number_of_suboperations_c413(make_qr_scp, palettes, number):
    def on_get(event):
        if number != "missing":
            yield number
        # "missing": the generator ends without yielding anything

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    log = StoreLog()
    with qr_association(scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0xC413]
    assert log.uids == []


@pytest.mark.parametrize("number", [65536, 10**70], ids=["65536", "10**70"])
@pytest.mark.parametrize("field", [_dimse.C_GET_RQ, _dimse.C_MOVE_RQ], ids=["get", "move"])
def test_retrieve_more_than_65535_suboperations_a702(make_qr_scp, make_scp, palettes, field, number):
    """Refused before any sub-operation, with an Error Comment that fits in
    its LO (a 71-digit number must not make the response unencodable)."""
    dest = make_scp(ae_title="DEST", store=False, handlers=[(evt.EVT_C_STORE, StoreLog())])
    produced = []

    def items():
        yield number
        for _ in range(3):
            produced.append(1)
            yield 0xFF00, palettes[UIDS[0]].filename

    def on_get(event):
        yield from items()

    def on_move(event):
        yield "127.0.0.1", dest.port
        yield from items()

    scp = make_qr_scp([(evt.EVT_C_GET, on_get), (evt.EVT_C_MOVE, on_move)])
    log = StoreLog()
    with qr_association(scp.port, store=log) as assoc:
        if field == _dimse.C_GET_RQ:
            responses = list(assoc.send_c_get(query(UIDS), GET))
        else:
            responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
    assert statuses(responses) == [0xA702]
    assert "65535" in responses[0][0].ErrorComment
    assert produced == [] and log.uids == [] and dest.recorder.stored == []
    assert dest.recorder.count("EVT_CONN_OPEN") == 0


def test_get_zero_suboperations_is_success(make_qr_scp):
    def on_get(event):
        yield 0

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    with qr_association(scp.port, store=StoreLog()) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0x0000]
    assert counts(responses[0][0]) == (None, 0, 0, 0)


def test_get_suboperation_without_scp_role_context_fails(make_qr_scp, palettes):
    """A dataset of a SOP class with no context (CT Image Storage was never
    negotiated, let alone with the SCP role for the SCU): that sub-operation
    fails and is listed; the others go through."""
    ct = Dataset()
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ct.SOPInstanceUID = "1.2.3.4.5.6.7"
    ct.PatientName = "NO^CONTEXT"

    def on_get(event):
        yield 3
        yield 0xFF00, palettes[UIDS[0]].filename
        yield 0xFF00, ct
        yield 0xFF00, palettes[UIDS[1]].filename

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    log = StoreLog()
    with qr_association(scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0xFF00, 0xFF00, 0xFF00, 0xB000]
    assert counts(responses[-1][0]) == (None, 2, 1, 0)
    assert failed_list(responses[-1][1]) == ["1.2.3.4.5.6.7"]
    assert log.uids == UIDS[:2]


def test_get_without_scp_role_all_suboperations_fail(make_qr_scp, palettes):
    """The SCU refuses the SCP role for Color Palette Storage (role selection
    says SCU only): every sub-operation fails, 0xA702."""
    scp = make_qr_scp([(evt.EVT_C_GET, get_all(palettes))])
    from chromanet.ae import build_role

    ae = qr_scu_ae()
    assoc = ae.associate(
        "127.0.0.1",
        scp.port,
        ae_title="QRSCP",
        ext_neg=[build_role(uids.ColorPaletteStorage, scu_role=True, scp_role=False)],
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    finally:
        assoc.release()
    assert statuses(responses)[-1] == 0xA702
    assert counts(responses[-1][0]) == (None, 0, 8, 0)
    assert failed_list(responses[-1][1]) == UIDS


# ----------------------------------------------- C-GET read by pynetdicom
@pytest.mark.peer
def test_get_success_read_by_pynetdicom(pynetdicom, make_qr_scp, palettes):
    scp = make_qr_scp([(evt.EVT_C_GET, get_all(palettes))])
    log = StoreLog()
    with pynetdicom_qr_association(pynetdicom, scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert [counts(s) for s, _ in responses[:-1]] == [(8 - n, n, 0, 0) for n in range(1, 9)]
    assert counts(responses[-1][0])[1:] == (8, 0, 0)
    assert log.uids == UIDS


@pytest.mark.peer
@pytest.mark.parametrize("case", ["B000", "A702", "FE00", "C411", "C413", "A702-65536"])
def test_get_failures_read_by_pynetdicom(pynetdicom, make_qr_scp, palettes, case):
    answers: dict[str, int] = {}

    def on_get(event):
        if case == "C413":
            yield "eight"
            return
        if case == "A702-65536":
            yield 70000
            return
        yield 8
        for n, uid in enumerate(UIDS):
            if case == "FE00" and n == 3:
                yield 0xFE00, None
            if case == "C411" and n == 3:
                raise RuntimeError("broken")
            yield 0xFF00, palettes[uid].filename

    if case == "B000":
        answers = {UIDS[2]: 0xA700, UIDS[5]: 0xB000}
    elif case == "A702":
        answers = {uid: 0xA700 for uid in UIDS}
    elif case in ("FE00", "C411"):
        answers = {UIDS[0]: 0xA700}
    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    log = StoreLog(answers)
    with pynetdicom_qr_association(pynetdicom, scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query(UIDS), GET))
    final, identifier = responses[-1]
    expected = {
        "B000": (0xB000, (6, 1, 1), [UIDS[2]]),
        "A702": (0xA702, (0, 8, 0), UIDS),
        "FE00": (0xFE00, (2, 1, 0), [UIDS[0]]),
        "C411": (0xC411, (2, 6, 0), [UIDS[0]]),
        "C413": (0xC413, None, None),
        "A702-65536": (0xA702, None, None),
    }[case]
    assert final.Status == expected[0]
    if expected[1] is None:
        assert len(responses) == 1 and not identifier  # pynetdicom: None or an empty Dataset
        if case == "A702-65536":
            assert "65535" in final.ErrorComment
        return
    assert counts(final)[1:] == expected[1]
    assert failed_list(identifier) == expected[2]
    if case == "FE00":
        assert final.NumberOfRemainingSuboperations == 5


# ================================================================== C-MOVE
def move_all(palettes: dict[str, Any], destination: Any, uids_: list[str] = UIDS) -> Any:
    def on_move(event):
        yield destination
        yield len(uids_)
        for uid in uids_:
            yield 0xFF00, palettes[uid].filename

    return on_move


def assert_no_association_left(*servers: Any) -> None:
    """Every chromanet (ThreadedServer) or pynetdicom server given has no
    association, established or closing, once the sub-association ended."""
    for server in servers:
        inner = getattr(server, "_server", None)
        if inner is not None and hasattr(inner, "associations"):
            assert wait_until(lambda: not inner.associations), inner.associations
        else:
            assert wait_until(lambda: not server.active_associations), server.active_associations


def test_move_success_into_chromanet_destination(make_qr_scp, make_scp, palettes):
    log = StoreLog()
    dest = make_scp(ae_title="DEST", store=False, handlers=[(evt.EVT_C_STORE, log)])
    scp = make_qr_scp([(evt.EVT_C_MOVE, move_all(palettes, ("127.0.0.1", dest.port)))])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE, msg_id=7))
        assert_no_association_left(dest.server)
        assert len(scp.server.active_associations) == 1  # ours only
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert [counts(s) for s, _ in responses[:-1]] == [(8 - n, n, 0, 0) for n in range(1, 9)]
    assert counts(responses[-1][0]) == (None, 8, 0, 0)
    assert responses[-1][1] is None
    assert log.received == [(uid, "QRSCU", 7) for uid in UIDS]
    assert dest.recorder.wait_event("EVT_RELEASED")
    assert_no_association_left(scp.server)


@pytest.mark.peer
def test_move_success_into_pynetdicom_destination(make_qr_scp, make_pynetdicom_destination, palettes):
    dest = make_pynetdicom_destination("PYDEST")
    scp = make_qr_scp([(evt.EVT_C_MOVE, move_all(palettes, ("127.0.0.1", dest.port)))])
    with qr_association(scp.port, calling="ORIGIN") as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "PYDEST", MOVE, msg_id=321))
        assert_no_association_left(dest.server)
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert counts(responses[-1][0]) == (None, 8, 0, 0)
    assert dest.log.received == [(uid, "ORIGIN", 321) for uid in UIDS]
    assert_no_association_left(scp.server)


def test_move_unknown_destination_a801(make_qr_scp, palettes):
    seen = []

    def on_move(event):
        seen.append(event.move_destination)
        yield None, None
        yield 8  # never asked for

    scp = make_qr_scp([(evt.EVT_C_MOVE, on_move)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "NOWHERE", MOVE))
    assert statuses(responses) == [0xA801]
    assert seen == ["NOWHERE"]


@pytest.mark.parametrize("how", ["refuses", "not-listening", "no-context"])
def test_move_destination_that_cannot_take_the_instances_a702(make_qr_scp, make_scp, palettes, how, caplog):
    """A known destination that refuses the association, does not listen,
    or accepts the association but none of our contexts for the instances:
    every sub-operation fails (PS3.4 C.4.2.3.1) and the final response is
    0xA702 with the counts and the Failed SOP Instance UID List, as DCMTK's
    dcmqrscp answers. 0xA801 is for a destination the handler does not know.
    The SCP's log says so once, a WARNING with the reason; the failed
    sub-association request adds no ERROR line of its own (each C-MOVE of
    a peer to a dead destination would be one, not rate-limited)."""
    logutil.reset()
    caplog.set_level(logging.DEBUG, logger="chromanet")
    dest = None
    if how == "refuses":
        dest = make_scp(ae_title="DEST", require_calling_aet=["SOMEONE"])
        port = dest.port
    elif how == "no-context":
        dest = make_scp(ae_title="DEST", transfer_syntaxes=["1.2.840.10008.1.2.4.90"])  # JPEG 2000 only
        port = dest.port
    else:
        port = free_port()  # nothing listens there
    scp = make_qr_scp([(evt.EVT_C_MOVE, move_all(palettes, ("127.0.0.1", port)))])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
        assert assoc.is_established  # the association carries on
    final, identifier = responses[-1]
    assert final.Status == 0xA702
    assert counts(final) == (None, 0, len(UIDS), 0)
    assert sorted(failed_list(identifier)) == sorted(UIDS)
    assert "move destination" in final.ErrorComment
    assert set(statuses(responses[:-1])) <= {0xFF00}
    if dest is not None:
        assert dest.recorder.stored == []
        assert_no_association_left(dest.server)
    told = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("chromanet")]
    assert [r.name for r in told] == ["chromanet.services"], [r.getMessage() for r in told]
    line = told[0].getMessage()
    assert f"C-MOVE to 127.0.0.1:{port}: move destination" in line and "every sub-operation fails" in line
    reason = {
        "refuses": "(rejected: result 1 source 1 reason 3)",
        "not-listening": "(",  # the OS's words for a refused connection
        "no-context": "(no presentation context was accepted)",
    }[how]
    assert reason in line


def test_move_handler_raises_at_call_c511(make_qr_scp):
    def on_move(event):
        raise RuntimeError("broken")

    scp = make_qr_scp([(evt.EVT_C_MOVE, on_move)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
    assert statuses(responses) == [0xC511]


@pytest.mark.parametrize("where", ["before-destination", "before-number", "mid-suboperations"])
def test_move_handler_raises_while_iterating(make_qr_scp, make_scp, palettes, where):
    log = StoreLog()
    dest = make_scp(ae_title="DEST", store=False, handlers=[(evt.EVT_C_STORE, log)])

    def on_move(event):
        if where == "before-destination":
            raise RuntimeError("broken")
        yield "127.0.0.1", dest.port
        if where == "before-number":
            raise RuntimeError("broken")
        yield 8
        yield 0xFF00, palettes[UIDS[0]].filename
        raise RuntimeError("broken")

    scp = make_qr_scp([(evt.EVT_C_MOVE, on_move)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
    if where == "before-number":
        # A raise while the number is asked for is reported as an invalid
        # number, as pynetdicom does (its C-GET: 0xC413 likewise).
        assert statuses(responses) == [0xC513]
        assert log.uids == []
    elif where == "mid-suboperations":
        assert statuses(responses) == [0xFF00, 0xC511]
        assert counts(responses[-1][0]) == (None, 1, 7, 0)
        assert failed_list(responses[-1][1]) == []
        assert log.uids == [UIDS[0]]
    else:
        # No destination, whatever the reason: 0xC514, as pynetdicom.
        assert statuses(responses) == [0xC514]
        assert log.uids == []
    assert dest.recorder.count("EVT_CONN_OPEN") == (1 if where == "mid-suboperations" else 0)
    assert_no_association_left(dest.server)


@pytest.mark.parametrize("number", ["8", 2.5, False, None], ids=["str", "float", "bool", "None"])
def test_move_invalid_number_of_suboperations_c513(make_qr_scp, make_scp, number):
    dest = make_scp(ae_title="DEST")

    def on_move(event):
        yield "127.0.0.1", dest.port
        yield number

    scp = make_qr_scp([(evt.EVT_C_MOVE, on_move)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
    assert statuses(responses) == [0xC513]
    # no sub-association was opened for a retrieve that cannot start
    assert dest.recorder.count("EVT_CONN_OPEN") == 0


@pytest.mark.parametrize("ends", ["before-destination", "before-number"])
def test_move_generator_ends_early_c514_c513(make_qr_scp, make_scp, ends):
    """No destination yielded: 0xC514; a destination and no number: 0xC513
    (the codes pynetdicom gives)."""
    dest = make_scp(ae_title="DEST")

    def on_move(event):
        if ends == "before-number":
            yield "127.0.0.1", dest.port
        return

    scp = make_qr_scp([(evt.EVT_C_MOVE, on_move)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
    assert statuses(responses) == [0xC514 if ends == "before-destination" else 0xC513]
    assert dest.recorder.count("EVT_CONN_OPEN") == 0


@pytest.mark.parametrize(
    "destination",
    [
        ("127.0.0.1", "104"),
        (2130706433, 104),
        ("127.0.0.1", 0),
        ("127.0.0.1", 70000),
        ("127.0.0.1", -1),
        ("127.0.0.1", True),
        ("", 104),
        ("bad host name", 104),
        ("127.0.0.1",),
        "127.0.0.1:104",
        42,
    ],
    ids=[
        "port-str", "address-int", "port-0", "port-70000", "port-negative", "port-bool",
        "address-empty", "address-spaces", "one-item", "string", "int",
    ],
)
def test_move_invalid_destination_c515(make_qr_scp, destination):
    def on_move(event):
        yield destination
        yield 1
        yield 0xFF00, None

    scp = make_qr_scp([(evt.EVT_C_MOVE, on_move)])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
    assert statuses(responses) == [0xC515]


@pytest.mark.parametrize("kind", ["chromanet", "pynetdicom"])
@pytest.mark.parametrize("failing, code", [({1, 4}, 0xB000), (set(range(8)), 0xA702)], ids=["some", "all"])
def test_move_destination_failures(request, make_qr_scp, make_scp, palettes, kind, failing, code):
    answers = {UIDS[i]: 0xA700 for i in failing}
    if kind == "chromanet":
        log = StoreLog(answers)
        dest = make_scp(ae_title="DEST", store=False, handlers=[(evt.EVT_C_STORE, log)])
        port, server = dest.port, dest.server
    else:
        request.applymarker(pytest.mark.peer)
        make_pyn = request.getfixturevalue("make_pynetdicom_destination")
        pdest = make_pyn("DEST", answers)
        log, port, server = pdest.log, pdest.port, pdest.server
    scp = make_qr_scp([(evt.EVT_C_MOVE, move_all(palettes, ("127.0.0.1", port)))])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
        assert_no_association_left(server)
    assert statuses(responses) == [0xFF00] * 8 + [code]
    failed = [UIDS[i] for i in sorted(failing)]
    assert counts(responses[-1][0]) == (None, 8 - len(failed), len(failed), 0)
    assert failed_list(responses[-1][1]) == failed
    assert log.uids == UIDS
    assert_no_association_left(scp.server)


def test_move_destination_aborts_mid_way(make_qr_scp, make_scp, palettes):
    """The destination aborts the sub-association after the 3rd store: the
    rest cannot be stored and count as failed (listed with their UIDs)."""
    log = StoreLog()

    def on_store(event):
        status = log(event)
        if len(log.uids) == 3:
            event.assoc.abort()
        return status

    dest = make_scp(ae_title="DEST", store=False, handlers=[(evt.EVT_C_STORE, on_store)])
    scp = make_qr_scp([(evt.EVT_C_MOVE, move_all(palettes, ("127.0.0.1", dest.port)))])
    with qr_association(scp.port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
        # the SCU's association is unharmed: the same move again succeeds
        again = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
    assert statuses(again) == [0xFF00] * 8 + [0x0000]
    final, identifier = responses[-1]
    assert final.Status in (0xB000, 0xA702)
    remaining, completed, failed, warning = counts(final)
    assert completed + failed + warning == 8 and failed >= 5 and completed <= 3
    assert len(failed_list(identifier)) == failed
    assert_no_association_left(dest.server)
