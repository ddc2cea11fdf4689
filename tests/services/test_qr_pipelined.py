"""Pipelined C-STORE sub-operations of C-GET and C-MOVE (PS3.7 D.3.3.3,
the Asynchronous Operations Window; PS3.4 C.4.2.3 and C.4.3.3 on the
sub-operation counts).

When the association carrying the sub-operations negotiated a window that
lets the SCP invoke more than one operation, the SCP keeps up to that many
C-STORE-RQs outstanding: a raw C-GET SCU that holds its answers sees more
than one and never more than the window; a chromanet SCU and a chromanet
move destination perform them at once. Whatever the window, the final
response is the same: status, Completed/Failed/Warning counts and the
Failed SOP Instance UID List, for all stores succeeding, some failing, a
warning, the handler raising half-way, a C-CANCEL half-way and a move
destination that aborts half-way; every Pending response adds up to the
announced number. A lazy handler is asked for no more data sets than the
window has room for. Without a window (what pynetdicom and DCMTK propose)
the SCP sends one sub-operation at a time, as before.
"""

from __future__ import annotations

import asyncio
from copy import deepcopy
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom import Dataset

from chromanet import _dimse, _pdu, dsutil, evt, uids
from chromanet.association import _with_move_window
from chromanet.pdu_primitives import AsynchronousOperationsWindowNegotiation
from chromanet.status import STATUS_FAILURE, Status, code_to_category
from helpers.qr import GET, MOVE, UIDS, StoreLog, qr_association, qr_scu_ae, statuses
from helpers.rawpeer import RawRetrieveScu, recv_raw_pdu
from helpers.waits import WAIT_TIMEOUT

pytestmark = pytest.mark.timeout(120)

WINDOW = 4
# What the SCP's AE offers: (max invoked, max performed).
PIPELINED = (WINDOW, WINDOW)
SEQUENTIAL = (1, 1)
# A raw SCU that performs any number: the SCP's own window is the bound.
RAW_WINDOW = (1, 16)
# Seconds the raw SCU waits for one more C-STORE-RQ once it holds all it
# expects (a bound on the wait, to see an SCP that sends too many).
EXTRA_WAIT = 0.3


def query(wanted: list[str]) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = wanted
    return ds


def get_handler(palettes: dict[str, Any], raise_after: int | None = None) -> Any:
    """A pynetdicom-style EVT_C_GET handler (a plain generator, run in the
    association's worker thread) yielding the eight palettes' files; with
    ``raise_after`` it raises after that many."""

    def on_get(event: Any) -> Any:
        yield len(UIDS)
        for n, uid in enumerate(UIDS):
            if n == raise_after:
                raise RuntimeError("the archive went away")
            yield 0xFF00, palettes[uid].filename

    return on_get


@dataclass
class Outcome:
    final: Any  # the final C-GET-RSP command
    failed_uids: list[str]
    pendings: list[Any] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)  # SOP Instance UIDs in the order the RQs came
    most_outstanding: int = 0

    def summary(self) -> tuple[Any, ...]:
        final = self.final
        return (
            final.status,
            final.number_of_completed_suboperations,
            final.number_of_failed_suboperations,
            final.number_of_warning_suboperations,
            final.number_of_remaining_suboperations,
            sorted(self.failed_uids),
            len(self.pendings),
        )


def raw_get(
    port: int,
    window: tuple[int, int] | None,
    expected: int,
    answers: dict[str, int] | None = None,
    cancel: bool = False,
    seen: Any = None,
) -> Outcome:
    """One C-GET of the eight palettes by a raw SCU that proposes
    ``window``; it holds its answers until it has as many C-STORE-RQs
    outstanding as the SCP should send (``expected`` sub-operations in all,
    at most ``WINDOW`` at a time when windowed), waits a little for any
    extra, then answers all it holds (from ``answers``, else Success).
    ``cancel``: a C-CANCEL-RQ goes out before the first answers.
    ``seen()`` is called each time the SCU holds what it expects."""
    answers = answers or {}
    per_batch = WINDOW if window is not None else 1
    scu = RawRetrieveScu(port, window)
    outcome = Outcome(final=None, failed_uids=[])
    try:
        command = _dimse.Command(
            _dimse.C_GET_RQ,
            affected_sop_class_uid=GET,
            message_id=7,
            priority=2,
            command_data_set_type=_dimse.DATASET_PRESENT,
        )
        scu.send(1, command, dsutil.encode_dataset(query(UIDS), uids.ExplicitVRLittleEndian))
        held: list[Any] = []
        answered = 0
        while outcome.final is None:
            want = min(per_batch, expected - answered)
            message = scu.next_message(EXTRA_WAIT if len(held) >= want else WAIT_TIMEOUT)
            if message is None:
                assert held, "no message from the SCP"
                if seen is not None:
                    seen()
                if cancel:
                    scu.send(
                        1,
                        _dimse.Command(
                            _dimse.C_CANCEL_RQ, message_id_being_responded_to=7, command_data_set_type=_dimse.NO_DATASET
                        ),
                    )
                    cancel = False
                for request in held:
                    scu.answer_store(request, answers.get(request.command.affected_sop_instance_uid, 0x0000))
                answered += len(held)
                held = []
                continue
            command = message.command
            if command.command_field == _dimse.C_STORE_RQ:
                held.append(message)
                outcome.stores.append(command.affected_sop_instance_uid)
                outcome.most_outstanding = max(outcome.most_outstanding, len(held))
            elif command.status in (0xFF00, 0xFF01):
                outcome.pendings.append(command)
            else:
                outcome.final = command
                if message.dataset is not None:
                    decoded = dsutil.decode_dataset(message.dataset, uids.ExplicitVRLittleEndian)
                    listed = decoded.get("FailedSOPInstanceUIDList", [])
                    outcome.failed_uids = uid_list(listed)
    finally:
        scu.close()
    return outcome


def uid_list(value: Any) -> list[str]:
    """A UI value as a list (pydicom gives one UID as a str, none as '')."""
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


def check_pendings(outcome: Outcome) -> None:
    for pending in outcome.pendings:
        counted = (
            pending.number_of_completed_suboperations
            + pending.number_of_failed_suboperations
            + pending.number_of_warning_suboperations
            + pending.number_of_remaining_suboperations
        )
        assert counted == len(UIDS)


# ================================================================ C-GET
SCENARIOS = {
    "all-succeed": ({}, None),
    "some-fail": ({UIDS[1]: 0xA700, UIDS[5]: 0xC000, UIDS[6]: 0xA700}, None),
    "a-warning": ({UIDS[2]: 0xB000}, None),
    "handler-raises": ({UIDS[0]: 0xA700}, 5),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_get_pipelined_gives_the_sequential_result(make_qr_scp, palettes, scenario):
    answers, raise_after = SCENARIOS[scenario]
    expected = raise_after if raise_after is not None else len(UIDS)
    handler = get_handler(palettes, raise_after)
    sequential = make_qr_scp([(evt.EVT_C_GET, handler)], async_ops_window=SEQUENTIAL)
    pipelined = make_qr_scp([(evt.EVT_C_GET, handler)], async_ops_window=PIPELINED)
    before = raw_get(sequential.port, None, expected, answers)
    after = raw_get(pipelined.port, RAW_WINDOW, expected, answers)
    assert before.most_outstanding == 1
    assert 1 < after.most_outstanding <= WINDOW
    assert after.summary() == before.summary()
    assert after.stores == before.stores == UIDS[:expected]
    check_pendings(before)
    check_pendings(after)
    if scenario == "handler-raises":
        assert before.final.status == int(Status.GET_HANDLER_RAISED)
        assert before.final.number_of_failed_suboperations == len(UIDS) - expected + 1
    elif answers:
        assert before.final.status == int(Status.SUBOPERATIONS_COMPLETE_WITH_FAILURES)
        failed = [uid for uid, status in answers.items() if code_to_category(status) == STATUS_FAILURE]
        assert sorted(before.failed_uids) == sorted(failed)
    else:
        assert before.final.status == 0x0000


def test_get_without_a_window_item_is_one_at_a_time(make_qr_scp, palettes):
    """An SCU that proposes no window (pynetdicom, DCMTK) gets one C-STORE
    at a time from an SCP that offers one."""
    scp = make_qr_scp([(evt.EVT_C_GET, get_handler(palettes))], async_ops_window=PIPELINED)
    outcome = raw_get(scp.port, None, len(UIDS))
    assert outcome.most_outstanding == 1
    assert outcome.final.status == 0x0000
    assert outcome.final.number_of_completed_suboperations == len(UIDS)


def test_get_cancel_waits_for_the_outstanding(make_qr_scp, palettes):
    """A C-CANCEL while WINDOW sub-operations are outstanding: no new one
    is sent, those are answered and counted, then 0xFE00."""
    scp = make_qr_scp([(evt.EVT_C_GET, get_handler(palettes))], async_ops_window=PIPELINED)
    outcome = raw_get(scp.port, RAW_WINDOW, len(UIDS), answers={UIDS[1]: 0xA700}, cancel=True)
    assert outcome.stores == UIDS[:WINDOW]
    final = outcome.final
    assert final.status == 0xFE00
    assert final.number_of_completed_suboperations == WINDOW - 1
    assert final.number_of_failed_suboperations == 1
    assert final.number_of_remaining_suboperations == len(UIDS) - WINDOW
    assert outcome.failed_uids == [UIDS[1]]
    check_pendings(outcome)


def test_get_lazy_handler_is_read_no_further_than_the_window(make_qr_scp, palettes):
    """An async generator handler is asked for the next data set only when
    a sub-operation may start: while WINDOW are outstanding, it has given
    exactly WINDOW."""
    given: list[str] = []

    async def on_get(event: Any) -> Any:
        yield len(UIDS)
        for uid in UIDS:
            given.append(uid)
            yield 0xFF00, palettes[uid].filename

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)], async_ops_window=PIPELINED)
    counts: list[int] = []
    outcome = raw_get(scp.port, RAW_WINDOW, len(UIDS), seen=lambda: counts.append(len(given)))
    assert outcome.final.status == 0x0000
    assert counts[0] == WINDOW
    assert counts == [WINDOW, len(UIDS)]


def _get_performing_a_window(port: int, overlap: "Overlap") -> list:
    """A chromanet C-GET of UIDS from the SCP at ``port``, proposing to
    perform up to 2 x WINDOW operations (its C-STORE handler ``overlap``
    counts how many run at once); every response."""
    proposed = AsynchronousOperationsWindowNegotiation()
    proposed.maximum_number_operations_invoked = 1
    proposed.maximum_number_operations_performed = 2 * WINDOW
    assoc = qr_scu_ae().associate(
        "127.0.0.1", port, ae_title="QRSCP", ext_neg=[proposed], evt_handlers=[(evt.EVT_C_STORE, overlap.handle)]
    )
    assert assoc.is_established
    try:
        return list(assoc.send_c_get(query(UIDS), GET))
    finally:
        assoc.release()


def test_get_pipelined_dimse_timeout_aborts(make_qr_scp, palettes):
    """Sub-operations outstanding that the SCU never answers: once the
    DIMSE timeout has passed the SCP aborts the association (A-ABORT), as
    one at a time."""
    scp = make_qr_scp([(evt.EVT_C_GET, get_handler(palettes))], async_ops_window=PIPELINED, dimse_timeout=0.5)
    scu = RawRetrieveScu(scp.port, RAW_WINDOW)
    try:
        command = _dimse.Command(
            _dimse.C_GET_RQ, affected_sop_class_uid=GET, message_id=7, priority=2,
            command_data_set_type=_dimse.DATASET_PRESENT,
        )  # fmt: skip
        scu.send(1, command, dsutil.encode_dataset(query(UIDS), uids.ExplicitVRLittleEndian))
        stores = []
        while len(stores) < WINDOW:
            message = scu.next_message(WAIT_TIMEOUT)
            assert message is not None, "fewer C-STORE-RQs than the window"
            if message.command.command_field == _dimse.C_STORE_RQ:
                stores.append(message.command.affected_sop_instance_uid)
        assert stores == UIDS[:WINDOW]
        scu.sock.settimeout(WAIT_TIMEOUT)
        pdu_type, _ = recv_raw_pdu(scu.sock)
        assert pdu_type == 0x07  # A-ABORT, nothing more sent before it
    finally:
        scu.close()


def test_get_pipelined_large_files_give_the_sequential_result(make_qr_scp, palettes, tmp_path):
    """Data sets over a MiB (mapped, paced out in slices): pipelined, the
    same result as one at a time, with the chromanet SCU."""
    big = {}
    for uid, ds in palettes.items():
        # A deep copy: ``Dataset.copy()`` is shallow (the element dict and
        # the file meta shared), and these are the session's palettes.
        copy = deepcopy(ds)
        copy.private_block(0x0009, "CHROMANET TEST", create=True).add_new(0x10, "OB", bytes(3 << 19))
        path = tmp_path / f"{uid}.dcm"
        copy.save_as(path, enforce_file_format=True)
        big[uid] = SimpleNamespace(filename=str(path))
    results = {}
    for name, window in (("sequential", SEQUENTIAL), ("pipelined", PIPELINED)):
        scp = make_qr_scp([(evt.EVT_C_GET, get_handler(big))], async_ops_window=window)
        overlap = Overlap(WINDOW if window == PIPELINED else 1)
        responses = _get_performing_a_window(scp.port, overlap)
        results[name] = (statuses(responses), sorted(overlap.uids), int(responses[-1][0].NumberOfCompletedSuboperations))
        if window == PIPELINED:
            assert 1 < overlap.most <= WINDOW
    assert results["pipelined"] == results["sequential"] == ([0xFF00] * len(UIDS) + [0x0000], UIDS, len(UIDS))


class Overlap:
    """An async EVT_C_STORE handler (``handle``) that counts how many of its calls run at
    once: each waits until ``want`` are running or one call saw that many
    (bounded by WAIT_TIMEOUT), so that sub-operations sent together are
    seen together. Answers from ``answers`` (else Success)."""

    def __init__(self, want: int, answers: dict[str, int] | None = None) -> None:
        self.want = want
        self.answers = answers or {}
        self.running = 0
        self.most = 0
        self.uids: list[str] = []
        self.full: asyncio.Event | None = None

    async def handle(self, event: Any) -> int:
        if self.full is None:
            self.full = asyncio.Event()
        uid = str(event.request.AffectedSOPInstanceUID)
        self.running += 1
        self.most = max(self.most, self.running)
        if self.running >= self.want:
            self.full.set()
        try:
            await asyncio.wait_for(self.full.wait(), WAIT_TIMEOUT)
        except asyncio.TimeoutError:
            self.full.set()
        finally:
            self.running -= 1
        self.uids.append(uid)
        return self.answers.get(uid, 0x0000)


def test_get_scu_performs_within_its_window(make_qr_scp, palettes):
    """A chromanet C-GET SCU that proposes a window runs that many C-STORE
    handlers at once."""
    scp = make_qr_scp([(evt.EVT_C_GET, get_handler(palettes))], async_ops_window=PIPELINED)
    overlap = Overlap(WINDOW)
    responses = _get_performing_a_window(scp.port, overlap)
    assert statuses(responses) == [0xFF00] * len(UIDS) + [0x0000]
    assert 1 < overlap.most <= WINDOW
    assert sorted(overlap.uids) == UIDS


# ================================================================ C-MOVE
def move_handler(palettes: dict[str, Any], port: int) -> Any:
    def on_move(event: Any) -> Any:
        yield "127.0.0.1", port
        yield len(UIDS)
        for uid in UIDS:
            yield 0xFF00, palettes[uid].filename

    return on_move


def move(scp_port: int) -> tuple[list[Any], Dataset | None]:
    with qr_association(scp_port) as assoc:
        responses = list(assoc.send_c_move(query(UIDS), "DEST", MOVE))
    return responses, responses[-1][1]


def move_summary(responses: list[Any]) -> tuple[Any, ...]:
    final, identifier = responses[-1]
    failed = uid_list(identifier.get("FailedSOPInstanceUIDList", []) if identifier is not None else [])
    for status, _ in responses[:-1]:
        counted = sum(
            int(status.get(keyword, 0))
            for keyword in (
                "NumberOfCompletedSuboperations",
                "NumberOfFailedSuboperations",
                "NumberOfWarningSuboperations",
                "NumberOfRemainingSuboperations",
            )
        )
        assert counted == len(UIDS)
    return (
        int(final.Status),
        int(final.NumberOfCompletedSuboperations),
        int(final.NumberOfFailedSuboperations),
        int(final.NumberOfWarningSuboperations),
        sorted(failed),
        len(responses),
    )


MOVE_ANSWERS = {
    "all-succeed": {},
    "some-fail": {UIDS[0]: 0xA700, UIDS[4]: 0xC000},
    "a-warning": {UIDS[7]: 0xB007},
}


@pytest.mark.parametrize("scenario", sorted(MOVE_ANSWERS))
def test_move_pipelined_gives_the_sequential_result(make_qr_scp, make_scp, palettes, scenario):
    answers = MOVE_ANSWERS[scenario]
    results = {}
    for name, window in (("sequential", SEQUENTIAL), ("pipelined", PIPELINED)):
        # One at a time needs no waiting for company.
        overlap = Overlap(WINDOW if window == PIPELINED else 1, answers)
        destination = make_scp(
            ae_title="DEST", handlers=[(evt.EVT_C_STORE, overlap.handle)], store=False, async_ops_window=(8, 8)
        )
        scp = make_qr_scp([(evt.EVT_C_MOVE, move_handler(palettes, destination.port))], async_ops_window=window)
        responses, _ = move(scp.port)
        results[name] = (move_summary(responses), overlap)
    (before, sequential), (after, pipelined) = results["sequential"], results["pipelined"]
    assert after == before
    assert sequential.most == 1
    assert 1 < pipelined.most <= WINDOW
    assert sorted(pipelined.uids) == sorted(sequential.uids) == UIDS


def test_move_destination_abort_fails_the_rest(make_qr_scp, make_scp, palettes):
    """The destination aborts at the third C-STORE: two completed, the
    other six failed and listed, with or without a window."""
    results = {}
    for name, window in (("sequential", SEQUENTIAL), ("pipelined", PIPELINED)):
        log = StoreLog()

        # Inline, on the destination's loop: each C-STORE is answered (or
        # the association aborted) as it arrives, in order.
        @evt.inline
        def on_store(event: Any, log: StoreLog = log) -> int:
            log(event)
            if len(log.uids) == 3:
                event.assoc.abort()
            return 0x0000

        destination = make_scp(
            ae_title="DEST", handlers=[(evt.EVT_C_STORE, on_store)], store=False, async_ops_window=(8, 8)
        )
        scp = make_qr_scp([(evt.EVT_C_MOVE, move_handler(palettes, destination.port))], async_ops_window=window)
        responses, _ = move(scp.port)
        results[name] = move_summary(responses)
    assert results["pipelined"] == results["sequential"]
    status, completed, failed, warning, failed_uids, _ = results["sequential"]
    assert (status, completed, failed, warning) == (0xB000, 2, 6, 0)
    assert failed_uids == sorted(UIDS[2:])


# ==================================================== the sub-association
def test_the_move_window_proposal():
    """The sub-association proposes (invoked, 1) from the AE's window,
    nothing when it is 1, and keeps a window the handler gave."""
    assert _with_move_window(None, 1) is None
    (item,) = _with_move_window(None, 8)
    assert (item.max_operations_invoked, item.max_operations_performed) == (8, 1)
    own = _pdu.AsyncOperationsWindow(2, 2)
    assert _with_move_window([own], 8) == [own]
    role = _pdu.RoleSelection(uids.ColorPaletteStorage, True, False)
    extended = _with_move_window([role], 8)
    assert extended[0] is role and len(extended) == 2


def test_move_to_pynetdicom_destination_with_a_window_proposed(make_qr_scp, make_pynetdicom_destination, palettes):
    """pynetdicom answers the sub-association's window proposal with (1, 1)
    or not at all: the eight C-STOREs go one at a time and all arrive."""
    destination = make_pynetdicom_destination(ae_title="DEST")
    scp = make_qr_scp([(evt.EVT_C_MOVE, move_handler(palettes, destination.port))], async_ops_window=PIPELINED)
    responses, _ = move(scp.port)
    assert statuses(responses) == [0xFF00] * len(UIDS) + [0x0000]
    assert destination.log.uids == UIDS
