"""The PS3.8 Upper Layer state machine, checked against the standard.

The expectations here are written out from PS3.8 section 9.2 independently of
the implementation: ``TABLE_9_10`` below is our own transcription of Table
9-10, and ``expected_outputs`` our own reading of the action definitions of
Tables 9-6 to 9-9. Nothing here reads ``statemachine.TRANSITIONS`` to decide
what to expect; the table test compares the two transcriptions.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from chromanet.errors import ChromanetError, InvalidPDUParameterError, UnrecognizedPDUError
from chromanet.ul.statemachine import (
    TRANSITIONS,
    WIRE_EVENTS,
    CloseTransport,
    Event,
    Indicate,
    InvalidEventError,
    MissingPDUError,
    OpenTransport,
    SendPDU,
    StartARTIM,
    State,
    StopARTIM,
    UpperLayerMachine,
)

# --------------------------------------------------------------------------
# Table 9-10, transcribed from PS3.8. Rows: events 1-19; columns: Sta1-Sta13.
# A cell is ACTION>NEXT, "." when empty; AE-6 and AR-8 have two next states:
# AE-6>3|13 (RQ acceptable | not), AR-8>9|10 (requestor | acceptor).

TABLE_9_10 = """
#       Sta1    Sta2       Sta3    Sta4    Sta5    Sta6    Sta7      Sta8    Sta9    Sta10    Sta11   Sta12   Sta13
Evt1    AE-1>4  .          .       .       .       .       .         .       .       .        .       .       .
Evt2    .       .          .       AE-2>5  .       .       .         .       .       .        .       .       .
Evt3    .       AA-1>13    AA-8>13 .       AE-3>6  AA-8>13 AA-8>13   AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-6>13
Evt4    .       AA-1>13    AA-8>13 .       AE-4>1  AA-8>13 AA-8>13   AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-6>13
Evt5    AE-5>2  .          .       .       .       .       .         .       .       .        .       .       .
Evt6    .       AE-6>3|13  AA-8>13 .       AA-8>13 AA-8>13 AA-8>13   AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-7>13
Evt7    .       .          AE-7>6  .       .       .       .         .       .       .        .       .       .
Evt8    .       .          AE-8>13 .       .       .       .         .       .       .        .       .       .
Evt9    .       .          .       .       .       DT-1>6  .         AR-7>8  .       .        .       .       .
Evt10   .       AA-1>13    AA-8>13 .       AA-8>13 DT-2>6  AR-6>7    AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-6>13
Evt11   .       .          .       .       .       AR-1>7  .         .       .       .        .       .       .
Evt12   .       AA-1>13    AA-8>13 .       AA-8>13 AR-2>8  AR-8>9|10 AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-6>13
Evt13   .       AA-1>13    AA-8>13 .       AA-8>13 AA-8>13 AR-3>1    AA-8>13 AA-8>13 AR-10>12 AR-3>1  AA-8>13 AA-6>13
Evt14   .       .          .       .       .       .       .         AR-4>13 AR-9>11 .        .       AR-4>13 .
Evt15   .       .          AA-1>13 AA-2>1  AA-1>13 AA-1>13 AA-1>13   AA-1>13 AA-1>13 AA-1>13  AA-1>13 AA-1>13 .
Evt16   .       AA-2>1     AA-3>1  .       AA-3>1  AA-3>1  AA-3>1    AA-3>1  AA-3>1  AA-3>1   AA-3>1  AA-3>1  AA-2>1
Evt17   .       AA-5>1     AA-4>1  AA-4>1  AA-4>1  AA-4>1  AA-4>1    AA-4>1  AA-4>1  AA-4>1   AA-4>1  AA-4>1  AR-5>1
Evt18   .       AA-2>1     .       .       .       .       .         .       .       .        .       .       AA-2>1
Evt19   .       AA-1>13    AA-8>13 .       AA-8>13 AA-8>13 AA-8>13   AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-7>13
"""


def _parse_table() -> dict[tuple[int, int], tuple[str, tuple[int, ...]]]:
    cells = {}
    rows = [line.split() for line in TABLE_9_10.strip().splitlines() if not line.startswith("#")]
    assert len(rows) == 19
    for row in rows:
        event = int(row[0].removeprefix("Evt"))
        assert len(row) == 14, row[0]
        for state, text in enumerate(row[1:], start=1):
            if text != ".":
                action, _, nexts = text.partition(">")
                cells[(state, event)] = (action, tuple(int(n) for n in nexts.split("|")))
    return cells


STANDARD = _parse_table()
EMPTY = [(s, e) for s in range(1, 14) for e in range(1, 20) if (s, e) not in STANDARD]


# --------------------------------------------------------------------------
# A fake PDU factory (the constructor names of chromanet._pdu) and fake PDUs


class FakePDUs:
    @dataclass(frozen=True)
    class Abort:
        source: int = 0
        reason: int = 0

    @dataclass(frozen=True)
    class AssociateRJ:
        result: int
        source: int
        reason: int

    @dataclass(frozen=True)
    class ReleaseRQ:
        pass

    @dataclass(frozen=True)
    class ReleaseRP:
        pass


F = FakePDUs


class Fake:
    """A stand-in PDU given with an event; equal only to itself."""

    def __init__(self, name: str, **attrs: Any) -> None:
        self.name = name
        self.__dict__.update(attrs)

    def __repr__(self) -> str:
        return f"<{self.name}>"


RQ_LOCAL = Fake("A-ASSOCIATE-RQ to send", protocol_version=1)
RQ_RECEIVED = Fake("A-ASSOCIATE-RQ received", protocol_version=1)
AC_LOCAL = Fake("A-ASSOCIATE-AC to send")
AC_RECEIVED = Fake("A-ASSOCIATE-AC received")
RJ_LOCAL = Fake("A-ASSOCIATE-RJ to send")
RJ_RECEIVED = Fake("A-ASSOCIATE-RJ received")
PDATA_LOCAL = Fake("P-DATA-TF to send")
PDATA_RECEIVED = Fake("P-DATA-TF received")
RELEASE_RQ_RECEIVED = Fake("A-RELEASE-RQ received")
RELEASE_RP_RECEIVED = Fake("A-RELEASE-RP received")
ABORT_FROM_USER = Fake("A-ABORT received, user source", source=0, reason=0)
ABORT_FROM_PROVIDER = Fake("A-ABORT received, provider source", source=2, reason=5)

# What each event carries in the walk over the table.
EVENT_DATA: dict[int, Any] = {
    1: RQ_LOCAL,
    2: None,  # AE-2 sends the RQ of Evt1
    3: AC_RECEIVED,
    4: RJ_RECEIVED,
    5: None,
    6: RQ_RECEIVED,
    7: AC_LOCAL,
    8: RJ_LOCAL,
    9: PDATA_LOCAL,
    10: PDATA_RECEIVED,
    11: None,  # the machine builds the A-RELEASE-RQ
    12: RELEASE_RQ_RECEIVED,
    13: RELEASE_RP_RECEIVED,
    14: None,  # the machine builds the A-RELEASE-RP
    15: None,  # the machine builds A-ABORT source 0 reason 0
    16: ABORT_FROM_USER,
    17: None,
    18: None,
    19: 4,  # A-ABORT reason: unrecognized PDU parameter
}


# --------------------------------------------------------------------------
# Getting into each state by events from Sta1, as the standard allows

REQUESTOR_PATHS: dict[int, list[tuple[int, Any]]] = {
    1: [],
    4: [(1, RQ_LOCAL)],
    5: [(1, RQ_LOCAL), (2, None)],
    6: [(1, RQ_LOCAL), (2, None), (3, AC_RECEIVED)],
    7: [(1, RQ_LOCAL), (2, None), (3, AC_RECEIVED), (11, None)],
    8: [(1, RQ_LOCAL), (2, None), (3, AC_RECEIVED), (12, RELEASE_RQ_RECEIVED)],
    9: [(1, RQ_LOCAL), (2, None), (3, AC_RECEIVED), (11, None), (12, RELEASE_RQ_RECEIVED)],
    11: [(1, RQ_LOCAL), (2, None), (3, AC_RECEIVED), (11, None), (12, RELEASE_RQ_RECEIVED), (14, None)],
    13: [(1, RQ_LOCAL), (2, None), (3, AC_RECEIVED), (12, RELEASE_RQ_RECEIVED), (14, None)],
}
ACCEPTOR_PATHS: dict[int, list[tuple[int, Any]]] = {
    1: [],
    2: [(5, None)],
    3: [(5, None), (6, RQ_RECEIVED)],
    6: [(5, None), (6, RQ_RECEIVED), (7, AC_LOCAL)],
    7: [(5, None), (6, RQ_RECEIVED), (7, AC_LOCAL), (11, None)],
    8: [(5, None), (6, RQ_RECEIVED), (7, AC_LOCAL), (12, RELEASE_RQ_RECEIVED)],
    10: [(5, None), (6, RQ_RECEIVED), (7, AC_LOCAL), (11, None), (12, RELEASE_RQ_RECEIVED)],
    12: [(5, None), (6, RQ_RECEIVED), (7, AC_LOCAL), (11, None), (12, RELEASE_RQ_RECEIVED), (13, RELEASE_RP_RECEIVED)],
    13: [(5, None), (6, RQ_RECEIVED), (8, RJ_LOCAL)],
}


def machine_in(state: int, requestor: bool) -> UpperLayerMachine:
    machine = UpperLayerMachine(requestor, pdu_factory=FakePDUs)
    for event, data in (REQUESTOR_PATHS if requestor else ACCEPTOR_PATHS)[state]:
        machine.handle(Event(event), data)
    assert machine.state == State(state)
    return machine


# --------------------------------------------------------------------------
# The actions of PS3.8 Tables 9-6 to 9-9, as this project models them


def expected_outputs(action: str, state: int, event: int, data: Any, requestor: bool) -> tuple[list[Any], int]:
    """The outputs and next state the standard's action prescribes, for
    data that AE-6 finds acceptable. Next state only for the two-way actions."""
    user_abort = F.Abort(source=0, reason=0)
    reason = data if event == 19 else 2  # Evt19: the caller's reason; else "unexpected PDU"
    if action == "AE-1":
        return [OpenTransport()], 4
    if action == "AE-2":
        return [SendPDU(RQ_LOCAL)], 5
    if action == "AE-3":
        return [Indicate("associate-ac", data)], 6
    if action == "AE-4":
        return [Indicate("associate-rj", data), CloseTransport()], 1
    if action == "AE-5":
        return [StartARTIM()], 2
    if action == "AE-6":
        return [StopARTIM(), Indicate("associate-rq", data)], 3
    if action == "AE-7":
        return [SendPDU(data)], 6
    if action == "AE-8":
        return [SendPDU(data), StartARTIM()], 13
    if action == "DT-1":
        return [SendPDU(data)], 6
    if action == "DT-2":
        return [Indicate("p-data", data)], 6
    if action == "AR-1":
        return [SendPDU(F.ReleaseRQ())], 7
    if action == "AR-2":
        return [Indicate("release-rq", data)], 8
    if action == "AR-3":
        return [Indicate("release-rp", data), CloseTransport()], 1
    if action == "AR-4":
        return [SendPDU(F.ReleaseRP()), StartARTIM()], 13
    if action == "AR-5":
        return [StopARTIM()], 1
    if action == "AR-6":
        return [Indicate("p-data", data)], 7
    if action == "AR-7":
        return [SendPDU(data)], 8
    if action == "AR-8":
        return [Indicate("release-collision", data)], 9 if requestor else 10
    if action == "AR-9":
        return [SendPDU(F.ReleaseRP())], 11
    if action == "AR-10":
        return [Indicate("release-rp", data)], 12
    if action == "AA-1":
        if event == 15:
            return [SendPDU(user_abort), StartARTIM()], 13
        assert state == 2
        return [SendPDU(F.Abort(source=2, reason=reason)), StartARTIM()], 13
    if action == "AA-2":
        return [StopARTIM(), CloseTransport()], 1
    if action == "AA-3":
        if data.source == 0:
            return [Indicate("abort", (0, data.reason)), CloseTransport()], 1
        return [Indicate("provider-abort", data.reason), CloseTransport()], 1
    if action == "AA-4":
        return [Indicate("provider-abort", data)], 1
    if action == "AA-5":
        return [StopARTIM()], 1
    if action == "AA-6":
        return [], 13
    if action == "AA-7":
        return [SendPDU(F.Abort(source=2, reason=reason))], 13
    if action == "AA-8":
        return [SendPDU(F.Abort(source=2, reason=reason)), Indicate("provider-abort", reason), StartARTIM()], 13
    raise AssertionError(f"no such action {action}")


def _walk_cases() -> list[Any]:
    cases = []
    for (state, event), (action, _) in sorted(STANDARD.items()):
        for requestor in (True, False):
            if state in (REQUESTOR_PATHS if requestor else ACCEPTOR_PATHS):
                side = "requestor" if requestor else "acceptor"
                cases.append(pytest.param(state, event, requestor, id=f"Sta{state}-Evt{event}-{action}-{side}"))
    return cases


WALK_CASES = _walk_cases()


# --------------------------------------------------------------------------
# Every cell of the table


def test_walk_covers_every_cell() -> None:
    assert {(p.values[0], p.values[1]) for p in WALK_CASES} == set(STANDARD)


@pytest.mark.parametrize(("state", "event", "requestor"), WALK_CASES)
def test_every_cell(state: int, event: int, requestor: bool) -> None:
    machine = machine_in(state, requestor)
    action, nexts = STANDARD[(state, event)]
    data = EVENT_DATA[event]
    outputs, next_state = expected_outputs(action, state, event, data, requestor)
    assert next_state in nexts  # the action's definition agrees with the table cell
    assert machine.handle(Event(event), data) == outputs
    assert machine.state == State(next_state)


def test_table_has_exactly_the_standard_cells() -> None:
    ours = {
        (int(s), int(e)): (cell.action.value, cell.next_state, cell.otherwise) for (s, e), cell in TRANSITIONS.items()
    }
    theirs = {
        key: (action, nexts[0], nexts[1] if len(nexts) == 2 else None) for key, (action, nexts) in STANDARD.items()
    }
    assert ours == theirs
    assert len(TRANSITIONS) == 123
    per_event = Counter(int(e) for _, e in TRANSITIONS)
    assert per_event == {
        1: 1, 2: 1, 3: 11, 4: 11, 5: 1, 6: 11, 7: 1, 8: 1, 9: 2, 10: 11,
        11: 1, 12: 11, 13: 11, 14: 3, 15: 10, 16: 11, 17: 12, 18: 2, 19: 11,
    }  # fmt: skip


# States in which each wire event can happen, from the standard: a PDU needs
# an open transport (not Sta1, not Sta4 where it is still being opened); the
# transport can close in any state but Sta1; ARTIM runs only in Sta2 and Sta13.
_ANY_PDU = set(range(2, 14)) - {4}
WIRE_EVENT_STATES = {
    3: _ANY_PDU, 4: _ANY_PDU, 6: _ANY_PDU, 10: _ANY_PDU, 12: _ANY_PDU, 13: _ANY_PDU,
    16: _ANY_PDU, 19: _ANY_PDU, 17: set(range(2, 14)), 18: {2, 13},
}  # fmt: skip


@pytest.mark.parametrize("event", sorted(WIRE_EVENT_STATES))
def test_wire_events_have_a_cell_wherever_they_can_happen(event: int) -> None:
    assert Event(event) in WIRE_EVENTS
    states = {int(s) for (s, e) in TRANSITIONS if e == event}
    assert states == WIRE_EVENT_STATES[event]


def test_wire_events_constant() -> None:
    assert {int(e) for e in WIRE_EVENTS} == set(WIRE_EVENT_STATES)


@pytest.mark.parametrize(("state", "event"), EMPTY, ids=[f"Sta{s}-Evt{e}" for s, e in EMPTY])
def test_empty_cell_raises_and_changes_nothing(state: int, event: int) -> None:
    machine = UpperLayerMachine(True, pdu_factory=FakePDUs)
    machine.state = State(state)
    with pytest.raises(InvalidEventError) as info:
        machine.handle(Event(event), EVENT_DATA[event])
    assert machine.state == State(state)
    assert info.value.state == State(state) and info.value.event == Event(event)
    assert isinstance(info.value, ChromanetError)
    assert f"Evt{event}".upper() in str(info.value) and f"STA{state}" in str(info.value)


@pytest.mark.parametrize("event", [0, 20, -1, 39])
def test_out_of_range_event_raises(event: int) -> None:
    machine = machine_in(6, True)
    with pytest.raises(InvalidEventError):
        machine.handle(event)  # type: ignore[arg-type]
    assert machine.state is State.STA6


def test_user_p_data_in_sta1_is_a_programming_error() -> None:
    machine = UpperLayerMachine(True, pdu_factory=FakePDUs)
    with pytest.raises(InvalidEventError, match="EVT9 is not allowed in STA1"):
        machine.handle(Event.EVT9, PDATA_LOCAL)
    assert machine.state is State.STA1


# --------------------------------------------------------------------------
# Whole conversations


def test_requestor_associate_data_release() -> None:
    m = UpperLayerMachine(True, pdu_factory=FakePDUs)
    assert m.handle(Event.EVT1, RQ_LOCAL) == [OpenTransport()]
    assert m.state is State.STA4
    assert m.handle(Event.EVT2) == [SendPDU(RQ_LOCAL)]
    assert m.state is State.STA5
    assert m.handle(Event.EVT3, AC_RECEIVED) == [Indicate("associate-ac", AC_RECEIVED)]
    assert m.state is State.STA6
    for _ in range(3):
        assert m.handle(Event.EVT9, PDATA_LOCAL) == [SendPDU(PDATA_LOCAL)]
        assert m.handle(Event.EVT10, PDATA_RECEIVED) == [Indicate("p-data", PDATA_RECEIVED)]
        assert m.state is State.STA6
    my_rq = F.ReleaseRQ()
    assert m.handle(Event.EVT11, my_rq)[0].pdu is my_rq  # a user-supplied PDU is sent as given
    assert m.state is State.STA7
    # P-DATA still arriving while we wait for the RP: AR-6.
    assert m.handle(Event.EVT10, PDATA_RECEIVED) == [Indicate("p-data", PDATA_RECEIVED)]
    assert m.state is State.STA7
    assert m.handle(Event.EVT13, RELEASE_RP_RECEIVED) == [Indicate("release-rp", RELEASE_RP_RECEIVED), CloseTransport()]
    assert m.state is State.STA1
    # The transport closing after AR-3 finds the machine idle: no cell, the
    # driver does not report it (Sta1 has no Evt17).
    with pytest.raises(InvalidEventError):
        m.handle(Event.EVT17)


def test_acceptor_associate_data_release() -> None:
    m = UpperLayerMachine(False, pdu_factory=FakePDUs)
    assert m.handle(Event.EVT5) == [StartARTIM()]
    assert m.state is State.STA2
    assert m.handle(Event.EVT6, RQ_RECEIVED) == [StopARTIM(), Indicate("associate-rq", RQ_RECEIVED)]
    assert m.state is State.STA3
    assert m.handle(Event.EVT7, AC_LOCAL) == [SendPDU(AC_LOCAL)]
    assert m.state is State.STA6
    assert m.handle(Event.EVT10, PDATA_RECEIVED) == [Indicate("p-data", PDATA_RECEIVED)]
    assert m.handle(Event.EVT9, PDATA_LOCAL) == [SendPDU(PDATA_LOCAL)]
    assert m.handle(Event.EVT12, RELEASE_RQ_RECEIVED) == [Indicate("release-rq", RELEASE_RQ_RECEIVED)]
    assert m.state is State.STA8
    # The user may still send P-DATA before answering: AR-7.
    assert m.handle(Event.EVT9, PDATA_LOCAL) == [SendPDU(PDATA_LOCAL)]
    assert m.state is State.STA8
    assert m.handle(Event.EVT14) == [SendPDU(F.ReleaseRP()), StartARTIM()]
    assert m.state is State.STA13
    assert m.handle(Event.EVT17) == [StopARTIM()]
    assert m.state is State.STA1


def test_acceptor_rejects_association() -> None:
    m = machine_in(3, requestor=False)
    assert m.handle(Event.EVT8, RJ_LOCAL) == [SendPDU(RJ_LOCAL), StartARTIM()]
    assert m.state is State.STA13
    # The peer does not close: ARTIM expires and we close.
    assert m.handle(Event.EVT18) == [StopARTIM(), CloseTransport()]
    assert m.state is State.STA1


def test_requestor_is_rejected() -> None:
    m = machine_in(5, requestor=True)
    assert m.handle(Event.EVT4, RJ_RECEIVED) == [Indicate("associate-rj", RJ_RECEIVED), CloseTransport()]
    assert m.state is State.STA1


def test_release_collision_requestor_side() -> None:
    m = machine_in(6, requestor=True)
    m.handle(Event.EVT11)
    assert m.state is State.STA7
    assert m.handle(Event.EVT12, RELEASE_RQ_RECEIVED) == [Indicate("release-collision", RELEASE_RQ_RECEIVED)]
    assert m.state is State.STA9
    assert m.handle(Event.EVT14) == [SendPDU(F.ReleaseRP())]  # AR-9
    assert m.state is State.STA11
    assert m.handle(Event.EVT13, RELEASE_RP_RECEIVED) == [Indicate("release-rp", RELEASE_RP_RECEIVED), CloseTransport()]
    assert m.state is State.STA1


def test_release_collision_acceptor_side() -> None:
    m = machine_in(6, requestor=False)
    m.handle(Event.EVT11)
    assert m.handle(Event.EVT12, RELEASE_RQ_RECEIVED) == [Indicate("release-collision", RELEASE_RQ_RECEIVED)]
    assert m.state is State.STA10
    # The acceptor side must not answer before its own RQ is confirmed.
    with pytest.raises(InvalidEventError):
        m.handle(Event.EVT14)
    assert m.state is State.STA10
    assert m.handle(Event.EVT13, RELEASE_RP_RECEIVED) == [Indicate("release-rp", RELEASE_RP_RECEIVED)]  # AR-10
    assert m.state is State.STA12
    assert m.handle(Event.EVT14) == [SendPDU(F.ReleaseRP()), StartARTIM()]  # AR-4
    assert m.state is State.STA13
    assert m.handle(Event.EVT17) == [StopARTIM()]
    assert m.state is State.STA1


def test_both_sides_of_a_collision_together() -> None:
    """Two machines wired back to back, both releasing at once."""
    req = machine_in(6, requestor=True)
    acc = machine_in(6, requestor=False)
    rq_from_req = req.handle(Event.EVT11)[0].pdu
    rq_from_acc = acc.handle(Event.EVT11)[0].pdu
    assert req.handle(Event.EVT12, rq_from_acc)[0].kind == "release-collision"
    assert acc.handle(Event.EVT12, rq_from_req)[0].kind == "release-collision"
    rp_from_req = req.handle(Event.EVT14)[0].pdu  # requestor answers first (Sta9 -> Sta11)
    assert acc.handle(Event.EVT13, rp_from_req) == [Indicate("release-rp", rp_from_req)]
    rp_from_acc = acc.handle(Event.EVT14)[0].pdu  # then the acceptor (Sta12 -> Sta13)
    assert req.handle(Event.EVT13, rp_from_acc) == [Indicate("release-rp", rp_from_acc), CloseTransport()]
    assert req.state is State.STA1
    assert acc.state is State.STA13
    acc.handle(Event.EVT17)
    assert acc.state is State.STA1


@pytest.mark.parametrize("requestor", [True, False], ids=["requestor", "acceptor"])
def test_local_abort(requestor: bool) -> None:
    m = machine_in(6, requestor)
    assert m.handle(Event.EVT15) == [SendPDU(F.Abort(source=0, reason=0)), StartARTIM()]
    assert m.state is State.STA13
    # The peer's PDUs still in flight are ignored (AA-6), then it closes.
    assert m.handle(Event.EVT10, PDATA_RECEIVED) == []
    assert m.handle(Event.EVT13, RELEASE_RP_RECEIVED) == []
    assert m.state is State.STA13
    assert m.handle(Event.EVT17) == [StopARTIM()]
    assert m.state is State.STA1


def test_local_abort_sends_the_users_pdu_as_given() -> None:
    m = machine_in(6, True)
    mine = F.Abort(source=0, reason=0)
    assert m.handle(Event.EVT15, mine)[0].pdu is mine


def test_local_abort_while_connecting_closes() -> None:
    m = machine_in(4, True)
    assert m.handle(Event.EVT15) == [StopARTIM(), CloseTransport()]  # AA-2
    assert m.state is State.STA1


@pytest.mark.parametrize("requestor", [True, False], ids=["requestor", "acceptor"])
def test_peer_user_abort(requestor: bool) -> None:
    m = machine_in(6, requestor)
    assert m.handle(Event.EVT16, ABORT_FROM_USER) == [Indicate("abort", (0, 0)), CloseTransport()]
    assert m.state is State.STA1


@pytest.mark.parametrize("state", [3, 5, 6, 7, 8, 9, 10, 11, 12])
def test_peer_provider_abort(state: int) -> None:
    m = machine_in(state, requestor=state in REQUESTOR_PATHS)
    assert m.handle(Event.EVT16, ABORT_FROM_PROVIDER) == [Indicate("provider-abort", 5), CloseTransport()]
    assert m.state is State.STA1


def test_abort_both_ways_back_to_back() -> None:
    req = machine_in(6, requestor=True)
    acc = machine_in(6, requestor=False)
    (send, start) = req.handle(Event.EVT15)
    assert start == StartARTIM()
    assert acc.handle(Event.EVT16, send.pdu) == [Indicate("abort", (0, 0)), CloseTransport()]
    assert acc.state is State.STA1
    assert req.handle(Event.EVT17) == [StopARTIM()]  # the acceptor closed: AR-5
    assert req.state is State.STA1


def test_artim_expiry_in_sta2() -> None:
    m = machine_in(2, requestor=False)
    assert m.handle(Event.EVT18) == [StopARTIM(), CloseTransport()]
    assert m.state is State.STA1


def test_artim_expiry_in_sta13_after_release() -> None:
    m = machine_in(13, requestor=True)  # we sent A-RELEASE-RP (AR-4); the peer does not close
    assert m.handle(Event.EVT18) == [StopARTIM(), CloseTransport()]
    assert m.state is State.STA1


def test_abort_received_in_sta13_closes() -> None:
    m = machine_in(13, requestor=False)
    assert m.handle(Event.EVT16, ABORT_FROM_USER) == [StopARTIM(), CloseTransport()]
    assert m.state is State.STA1


def test_transport_closed_in_sta2_stops_artim() -> None:
    m = machine_in(2, requestor=False)
    assert m.handle(Event.EVT17) == [StopARTIM()]  # AA-5, no indication: no user yet
    assert m.state is State.STA1


@pytest.mark.parametrize("state", [3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
def test_transport_closed_mid_association(state: int) -> None:
    m = machine_in(state, requestor=state in REQUESTOR_PATHS)
    cause = ConnectionResetError("peer reset")
    assert m.handle(Event.EVT17, cause) == [Indicate("provider-abort", cause)]
    assert m.state is State.STA1


# --------------------------------------------------------------------------
# AE-6: the provider's own check of the A-ASSOCIATE-RQ


@pytest.mark.parametrize("version", [0, 2, 0x8000])
def test_rq_without_protocol_version_1_is_rejected_by_the_provider(version: int) -> None:
    m = machine_in(2, requestor=False)
    rq = Fake("RQ, wrong version", protocol_version=version)
    assert m.handle(Event.EVT6, rq) == [
        StopARTIM(),
        SendPDU(F.AssociateRJ(result=1, source=2, reason=2)),
        StartARTIM(),
    ]
    assert m.state is State.STA13
    assert m.handle(Event.EVT17) == [StopARTIM()]
    assert m.state is State.STA1


@pytest.mark.parametrize("version", [1, 3, 0xFFFF])
def test_rq_with_bit_0_is_accepted_by_the_provider(version: int) -> None:
    m = machine_in(2, requestor=False)
    rq = Fake("RQ", protocol_version=version)
    assert m.handle(Event.EVT6, rq) == [StopARTIM(), Indicate("associate-rq", rq)]
    assert m.state is State.STA3


def test_provider_check_is_a_hook() -> None:
    class Picky(UpperLayerMachine):
        def provider_rejection(self, rq: Any) -> Any:
            return self.pdus.AssociateRJ(result=2, source=3, reason=1)  # temporary congestion

    m = Picky(False, pdu_factory=FakePDUs)
    m.handle(Event.EVT5)
    assert m.handle(Event.EVT6, RQ_RECEIVED)[1] == SendPDU(F.AssociateRJ(result=2, source=3, reason=1))
    assert m.state is State.STA13


# --------------------------------------------------------------------------
# Evt19 and unexpected PDUs: the A-ABORT the machine sends


@pytest.mark.parametrize("state", sorted(_ANY_PDU))
def test_invalid_pdu_in_each_state(state: int) -> None:
    m = machine_in(state, requestor=state in REQUESTOR_PATHS)
    error = UnrecognizedPDUError("PDU type 0x99")  # abort_reason 1
    abort = SendPDU(F.Abort(source=2, reason=1))
    if state == 2:  # AA-1: nobody to indicate to yet
        expected = [abort, StartARTIM()]
    elif state == 13:  # AA-7: ARTIM already runs
        expected = [abort]
    else:  # AA-8
        expected = [abort, Indicate("provider-abort", 1), StartARTIM()]
    assert m.handle(Event.EVT19, error) == expected
    assert m.state is State.STA13


def test_invalid_pdu_reason_as_int_and_default() -> None:
    m = machine_in(6, True)
    assert m.handle(Event.EVT19, InvalidPDUParameterError("bad").abort_reason)[0] == SendPDU(F.Abort(2, 6))
    m = machine_in(6, True)
    assert m.handle(Event.EVT19)[0] == SendPDU(F.Abort(2, 0))


@pytest.mark.parametrize(
    ("state", "event", "data"),
    [
        (6, 3, AC_RECEIVED),  # an A-ASSOCIATE-AC in Sta6
        (6, 6, RQ_RECEIVED),
        (5, 10, PDATA_RECEIVED),  # P-DATA before the AC
        (8, 13, RELEASE_RP_RECEIVED),
        (3, 12, RELEASE_RQ_RECEIVED),
    ],
)
def test_valid_pdu_out_of_place_aborts_with_unexpected_pdu(state: int, event: int, data: Any) -> None:
    m = machine_in(state, requestor=state in REQUESTOR_PATHS)
    assert m.handle(Event(event), data) == [
        SendPDU(F.Abort(source=2, reason=2)),
        Indicate("provider-abort", 2),
        StartARTIM(),
    ]
    assert m.state is State.STA13


@pytest.mark.parametrize(("event", "data"), [(3, AC_RECEIVED), (4, RJ_RECEIVED), (10, PDATA_RECEIVED),
                                             (12, RELEASE_RQ_RECEIVED), (13, RELEASE_RP_RECEIVED)])  # fmt: skip
def test_wrong_first_pdu_in_sta2(event: int, data: Any) -> None:
    m = machine_in(2, requestor=False)
    assert m.handle(Event(event), data) == [SendPDU(F.Abort(source=2, reason=2)), StartARTIM()]
    assert m.state is State.STA13


def test_rq_in_sta13_is_answered_with_abort() -> None:
    m = machine_in(13, requestor=False)
    assert m.handle(Event.EVT6, RQ_RECEIVED) == [SendPDU(F.Abort(source=2, reason=2))]
    assert m.state is State.STA13


# --------------------------------------------------------------------------
# Misuse by the driver


@pytest.mark.parametrize(("state", "event", "requestor"), [(1, 1, True), (3, 7, False), (3, 8, False),
                                                           (6, 9, True), (8, 9, False)])  # fmt: skip
def test_user_pdu_is_required(state: int, event: int, requestor: bool) -> None:
    m = machine_in(state, requestor)
    with pytest.raises(MissingPDUError):
        m.handle(Event(event), None)
    assert m.state == State(state)


def test_ae_2_without_any_rq() -> None:
    m = UpperLayerMachine(True, pdu_factory=FakePDUs)
    m.state = State.STA4
    with pytest.raises(MissingPDUError):
        m.handle(Event.EVT2)
    assert m.state is State.STA4
    other = Fake("RQ given with Evt2")
    assert m.handle(Event.EVT2, other) == [SendPDU(other)]


def test_no_factory_needed_when_the_user_gives_every_pdu() -> None:
    """The default factory is imported only when the machine builds a PDU."""
    m = UpperLayerMachine(True)
    m.handle(Event.EVT1, RQ_LOCAL)
    m.handle(Event.EVT2)
    m.handle(Event.EVT3, AC_RECEIVED)
    m.handle(Event.EVT9, PDATA_LOCAL)
    m.handle(Event.EVT11, F.ReleaseRQ())
    m.handle(Event.EVT13, RELEASE_RP_RECEIVED)
    assert m.state is State.STA1
    assert m._pdus is None


def test_transitions_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    m = UpperLayerMachine(False, pdu_factory=FakePDUs)
    with caplog.at_level(logging.DEBUG, logger="chromanet.ul"):
        m.handle(Event.EVT5)
    assert [r.getMessage() for r in caplog.records] == ["STA1 + EVT5: AE-5 -> STA2"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="chromanet.ul"):
        m.handle(Event.EVT6, RQ_RECEIVED)
    assert caplog.records == []


def test_docstrings_per_member() -> None:
    assert State.STA13.__doc__ is not None and "transport connection close" in State.STA13.__doc__
    assert all(s.__doc__ and s.__doc__ != State.__doc__ for s in State)
    assert all(e.__doc__ and e.__doc__ != Event.__doc__ for e in Event)
    assert len(State) == 13 and len(Event) == 19


# --------------------------------------------------------------------------
# With the real PDU classes


def test_with_real_pdu_classes() -> None:
    try:
        from chromanet import _pdu
    except ImportError as exc:
        pytest.skip(f"chromanet._pdu is not built yet ({exc})")
    m = UpperLayerMachine(False)  # default factory: chromanet._pdu
    m.handle(Event.EVT5)
    rq = _pdu.AssociateRQ("ANY-SCP", "ECHOSCU", protocol_version=2)
    (_stop, send, _start) = m.handle(Event.EVT6, rq)
    assert isinstance(send.pdu, _pdu.AssociateRJ)
    assert (send.pdu.result, send.pdu.source, send.pdu.reason) == (1, 2, 2)
    assert m.handle(Event.EVT19, 6) == [SendPDU(_pdu.Abort(source=2, reason=6))]  # AA-7
    m = machine_in(6, True)
    m._pdus = None  # back to the default factory
    send = m.handle(Event.EVT11)[0]
    assert isinstance(send.pdu, _pdu.ReleaseRQ)
    send, indicate, _start = m.handle(Event.EVT3, AC_RECEIVED)
    assert indicate == Indicate("provider-abort", 2)
    assert isinstance(send.pdu, _pdu.Abort) and (send.pdu.source, send.pdu.reason) == (2, 2)
    assert _pdu.encode_pdu(send.pdu) == bytes([7, 0, 0, 0, 0, 4, 0, 0, 2, 2])
