"""The PS3.8 Upper Layer state machine (section 9.2), sans-IO.

The machine knows nothing of sockets, the event loop or clocks. It is fed the
events of PS3.8 9.2 (``Event``) one at a time and answers each with a list of
*outputs* for the caller to carry out, in order: PDUs to send (``SendPDU``),
primitives for the association user (``Indicate``), the transport to open or
close, and the ARTIM timer to start or stop. The caller owns the socket and
the timer; it reports back what they do as further events (a PDU received,
the transport closed, ARTIM expired).

``TRANSITIONS`` is Table 9-10 written out as data: one entry per non-empty
cell, mapping (state, event) to the action the standard names and the state
that follows. Two actions choose between two next states (AE-6: is the
A-ASSOCIATE-RQ acceptable to the service provider; AR-8: is this side the
association-requestor); their cells carry both. An event with no cell in the
current state is a mistake of the local side (the table has a cell for every
event that can come from the peer or the transport in a state where it can
happen) and raises ``InvalidEventError`` without changing anything.

PDUs the machine builds itself (A-ABORT, A-ASSOCIATE-RJ from the provider,
A-RELEASE-RQ/RP when the user gives none) come from a *PDU factory*: any
object with callables ``Abort(source=, reason=)``, ``AssociateRJ(result=,
source=, reason=)``, ``ReleaseRQ()`` and ``ReleaseRP()``. By default that is
``chromanet._pdu``, imported the first time one is needed.

P-DATA in Sta6 (DT-1 and DT-2) is the hot path: ``handle`` costs one list
index and one small output object for it, and formats no log message unless
debug logging is on.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from chromanet.errors import (
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_REASON_UNEXPECTED_PDU,
    ChromanetError,
)

__all__ = [
    "State",
    "Event",
    "Action",
    "Cell",
    "TRANSITIONS",
    "CONDITIONS",
    "WIRE_EVENTS",
    "SendPDU",
    "Indicate",
    "OpenTransport",
    "CloseTransport",
    "StartARTIM",
    "StopARTIM",
    "Output",
    "InvalidEventError",
    "MissingPDUError",
    "UpperLayerMachine",
    "ASSOCIATE_RQ",
    "ASSOCIATE_AC",
    "ASSOCIATE_RJ",
    "P_DATA",
    "RELEASE_RQ",
    "RELEASE_RP",
    "RELEASE_COLLISION",
    "ABORT",
    "PROVIDER_ABORT",
]

LOGGER = logging.getLogger("chromanet.ul")
_DEBUG = logging.DEBUG
_log_enabled_for = LOGGER.isEnabledFor  # bound once: handle() is on the P-DATA path


# --------------------------------------------------------------------------
# States, events, actions (PS3.8 9.2.1, 9.2.2, Table 9-10 rows)


class State(enum.IntEnum):
    """The thirteen states of PS3.8 Tables 9-1 to 9-5; each member's
    docstring is its meaning in the standard."""

    def __new__(cls, value: int, doc: str) -> State:
        member = int.__new__(cls, value)
        member._value_ = value
        member.__doc__ = doc
        return member

    STA1 = 1, "Idle: no association, no transport connection."
    STA2 = 2, "Transport connection open (acceptor), awaiting the A-ASSOCIATE-RQ PDU; ARTIM runs."
    STA3 = 3, "Awaiting the local A-ASSOCIATE response primitive (from the local user)."
    STA4 = 4, "Awaiting the transport connection opening to complete (from the local transport service)."
    STA5 = 5, "Awaiting the A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU."
    STA6 = 6, "Association established and ready for data transfer."
    STA7 = 7, "Awaiting the A-RELEASE-RP PDU."
    STA8 = 8, "Awaiting the local A-RELEASE response primitive (from the local user)."
    STA9 = 9, "Release collision, requestor side: awaiting the A-RELEASE response (from the local user)."
    STA10 = 10, "Release collision, acceptor side: awaiting the A-RELEASE-RP PDU."
    STA11 = 11, "Release collision, requestor side: awaiting the A-RELEASE-RP PDU."
    STA12 = 12, "Release collision, acceptor side: awaiting the A-RELEASE response primitive (from the local user)."
    STA13 = 13, "Awaiting the transport connection close indication (the association no longer exists); ARTIM runs."


class Event(enum.IntEnum):
    """The nineteen events of Table 9-10 (its rows); each member's docstring
    says what it is, where it comes from, and what ``data`` goes with it."""

    def __new__(cls, value: int, doc: str) -> Event:
        member = int.__new__(cls, value)
        member._value_ = value
        member.__doc__ = doc
        return member

    EVT1 = 1, "A-ASSOCIATE request (local user). data: the A-ASSOCIATE-RQ PDU, sent once the transport is up."
    EVT2 = 2, "Transport connect confirmation (local transport). data: the RQ to send, or None for the one of Evt1."
    EVT3 = 3, "A-ASSOCIATE-AC PDU received. data: the decoded PDU."
    EVT4 = 4, "A-ASSOCIATE-RJ PDU received. data: the decoded PDU."
    EVT5 = 5, "Transport connection indication (local transport: a peer connected to us). data: None."
    EVT6 = 6, "A-ASSOCIATE-RQ PDU received. data: the decoded PDU."
    EVT7 = 7, "A-ASSOCIATE response primitive, accept (local user). data: the A-ASSOCIATE-AC PDU."
    EVT8 = 8, "A-ASSOCIATE response primitive, reject (local user). data: the A-ASSOCIATE-RJ PDU."
    EVT9 = 9, "P-DATA request primitive (local user). data: the P-DATA-TF PDU (or encoded buffers) to send."
    EVT10 = 10, "P-DATA-TF PDU received. data: the PDU or its undecoded body, handed up as it is."
    EVT11 = 11, "A-RELEASE request primitive (local user). data: an A-RELEASE-RQ PDU, or None to build one."
    EVT12 = 12, "A-RELEASE-RQ PDU received. data: the decoded PDU."
    EVT13 = 13, "A-RELEASE-RP PDU received. data: the decoded PDU."
    EVT14 = 14, "A-RELEASE response primitive (local user). data: an A-RELEASE-RP PDU, or None to build one."
    EVT15 = 15, "A-ABORT request primitive (local user). data: an A-ABORT PDU, or None for source 0, reason 0."
    EVT16 = 16, "A-ABORT PDU received. data: the decoded PDU (its source and reason are indicated up)."
    EVT17 = 17, "Transport connection closed indication (local transport). data: None, or the cause (an exception)."
    EVT18 = 18, "ARTIM timer expired. data: None."
    EVT19 = (
        19,
        (
            "Unrecognised or invalid PDU received. data: the A-ABORT reason to send (an int, or an error "
            "with an ``abort_reason`` attribute); None means 0, reason not specified."
        ),
    )


class Action(enum.Enum):
    """The actions of PS3.8 Tables 9-6 to 9-9 (the contents of the cells);
    each member's docstring is the standard's definition in short."""

    def __new__(cls, value: str, doc: str) -> Action:
        member = object.__new__(cls)
        member._value_ = value
        member.__doc__ = doc
        return member

    AE_1 = "AE-1", "Issue a transport connect request to the local transport service. Next Sta4."
    AE_2 = "AE-2", "Send the A-ASSOCIATE-RQ PDU. Next Sta5."
    AE_3 = "AE-3", "Issue the A-ASSOCIATE confirmation (accept). Next Sta6."
    AE_4 = "AE-4", "Issue the A-ASSOCIATE confirmation (reject) and close the transport. Next Sta1."
    AE_5 = "AE-5", "Issue the transport connection response; start ARTIM. Next Sta2."
    AE_6 = (
        "AE-6",
        (
            "Stop ARTIM; if the A-ASSOCIATE-RQ is acceptable to the service provider, issue the A-ASSOCIATE "
            "indication (next Sta3), otherwise send an A-ASSOCIATE-RJ PDU and start ARTIM (next Sta13)."
        ),
    )
    AE_7 = "AE-7", "Send the A-ASSOCIATE-AC PDU. Next Sta6."
    AE_8 = "AE-8", "Send the A-ASSOCIATE-RJ PDU and start ARTIM. Next Sta13."
    DT_1 = "DT-1", "Send the P-DATA-TF PDU. Next Sta6."
    DT_2 = "DT-2", "Issue the P-DATA indication. Next Sta6."
    AR_1 = "AR-1", "Send the A-RELEASE-RQ PDU. Next Sta7."
    AR_2 = "AR-2", "Issue the A-RELEASE indication. Next Sta8."
    AR_3 = "AR-3", "Issue the A-RELEASE confirmation and close the transport. Next Sta1."
    AR_4 = "AR-4", "Send the A-RELEASE-RP PDU and start ARTIM. Next Sta13."
    AR_5 = "AR-5", "Stop ARTIM. Next Sta1."
    AR_6 = "AR-6", "Issue the P-DATA indication. Next Sta7."
    AR_7 = "AR-7", "Send the P-DATA-TF PDU. Next Sta8."
    AR_8 = "AR-8", "Issue the A-RELEASE indication (release collision). Next Sta9 if association-requestor, else Sta10."
    AR_9 = "AR-9", "Send the A-RELEASE-RP PDU. Next Sta11."
    AR_10 = "AR-10", "Issue the A-RELEASE confirmation. Next Sta12."
    AA_1 = "AA-1", "Send an A-ABORT PDU and start (or restart) ARTIM. Next Sta13."
    AA_2 = "AA-2", "Stop ARTIM if running; close the transport. Next Sta1."
    AA_3 = (
        "AA-3",
        "Issue the A-ABORT (user source) or A-P-ABORT (provider source) indication; close the transport. Next Sta1.",
    )
    AA_4 = "AA-4", "Issue the A-P-ABORT indication. Next Sta1."
    AA_5 = "AA-5", "Stop ARTIM. Next Sta1."
    AA_6 = "AA-6", "Ignore the PDU. Next Sta13."
    AA_7 = "AA-7", "Send an A-ABORT PDU. Next Sta13."
    AA_8 = (
        "AA-8",
        "Send an A-ABORT PDU (service-provider source), issue the A-P-ABORT indication, start ARTIM. Next Sta13.",
    )


# --------------------------------------------------------------------------
# Table 9-10


class Cell(NamedTuple):
    """One non-empty cell of Table 9-10.

    ``next_state`` is where the machine goes; for the two conditional actions
    (see ``CONDITIONS``) it is where it goes when the condition holds and
    ``otherwise`` where it goes when it does not. ``otherwise`` is None for
    every other cell.
    """

    action: Action
    next_state: State
    otherwise: State | None = None


S = State
E = Event
A = Action

#: The condition each two-way action tests (Tables 9-6 and 9-8).
CONDITIONS: Mapping[Action, str] = MappingProxyType(
    {
        A.AE_6: "the A-ASSOCIATE-RQ is acceptable to the service provider (UpperLayerMachine.provider_rejection)",
        A.AR_8: "this side is the association-requestor (UpperLayerMachine.is_requestor)",
    }
)

_RELEASE_STATES = (S.STA6, S.STA7, S.STA8, S.STA9, S.STA10, S.STA11, S.STA12)


def _every(states: tuple[State, ...], cell: Cell) -> dict[State, Cell]:
    return dict.fromkeys(states, cell)


def _unexpected_pdu_row(in_sta5: Cell, in_sta6: Cell, in_sta7: Cell, in_sta13: Cell) -> dict[State, Cell]:
    """The common shape of the rows of a PDU received: AA-1 in Sta2 (no
    association user yet), AA-8 in Sta3 and from Sta5 to Sta12 unless the PDU
    is expected there, and in Sta13 whatever the row says; no cell in Sta1 or
    Sta4 (no transport connection from which a PDU could arrive)."""
    row = {State.STA2: Cell(Action.AA_1, State.STA13), State.STA3: Cell(Action.AA_8, State.STA13)}
    row.update(_every((State.STA5,) + _RELEASE_STATES, Cell(Action.AA_8, State.STA13)))
    row[State.STA5] = in_sta5
    row[State.STA6] = in_sta6
    row[State.STA7] = in_sta7
    row[State.STA13] = in_sta13
    return row


_AA8 = Cell(A.AA_8, S.STA13)
_AA6 = Cell(A.AA_6, S.STA13)

# Table 9-10, one entry per event (row), each a dict state -> cell.
_ROWS: dict[Event, dict[State, Cell]] = {
    E.EVT1: {S.STA1: Cell(A.AE_1, S.STA4)},
    E.EVT2: {S.STA4: Cell(A.AE_2, S.STA5)},
    E.EVT3: _unexpected_pdu_row(Cell(A.AE_3, S.STA6), _AA8, _AA8, _AA6),
    E.EVT4: _unexpected_pdu_row(Cell(A.AE_4, S.STA1), _AA8, _AA8, _AA6),
    E.EVT5: {S.STA1: Cell(A.AE_5, S.STA2)},
    E.EVT6: {
        **_unexpected_pdu_row(_AA8, _AA8, _AA8, Cell(A.AA_7, S.STA13)),
        S.STA2: Cell(A.AE_6, S.STA3, otherwise=S.STA13),
    },
    E.EVT7: {S.STA3: Cell(A.AE_7, S.STA6)},
    E.EVT8: {S.STA3: Cell(A.AE_8, S.STA13)},
    E.EVT9: {S.STA6: Cell(A.DT_1, S.STA6), S.STA8: Cell(A.AR_7, S.STA8)},
    E.EVT10: _unexpected_pdu_row(_AA8, Cell(A.DT_2, S.STA6), Cell(A.AR_6, S.STA7), _AA6),
    E.EVT11: {S.STA6: Cell(A.AR_1, S.STA7)},
    E.EVT12: _unexpected_pdu_row(_AA8, Cell(A.AR_2, S.STA8), Cell(A.AR_8, S.STA9, otherwise=S.STA10), _AA6),
    E.EVT13: {
        **_unexpected_pdu_row(_AA8, _AA8, Cell(A.AR_3, S.STA1), _AA6),
        S.STA10: Cell(A.AR_10, S.STA12),
        S.STA11: Cell(A.AR_3, S.STA1),
    },
    E.EVT14: {S.STA8: Cell(A.AR_4, S.STA13), S.STA9: Cell(A.AR_9, S.STA11), S.STA12: Cell(A.AR_4, S.STA13)},
    E.EVT15: {
        S.STA3: Cell(A.AA_1, S.STA13),
        S.STA4: Cell(A.AA_2, S.STA1),
        **_every((S.STA5,) + _RELEASE_STATES, Cell(A.AA_1, S.STA13)),
    },
    E.EVT16: {
        S.STA2: Cell(A.AA_2, S.STA1),
        S.STA3: Cell(A.AA_3, S.STA1),
        **_every((S.STA5,) + _RELEASE_STATES, Cell(A.AA_3, S.STA1)),
        S.STA13: Cell(A.AA_2, S.STA1),
    },
    E.EVT17: {
        S.STA2: Cell(A.AA_5, S.STA1),
        **_every((S.STA3, S.STA4, S.STA5) + _RELEASE_STATES, Cell(A.AA_4, S.STA1)),
        S.STA13: Cell(A.AR_5, S.STA1),
    },
    E.EVT18: {S.STA2: Cell(A.AA_2, S.STA1), S.STA13: Cell(A.AA_2, S.STA1)},
    E.EVT19: _unexpected_pdu_row(_AA8, _AA8, _AA8, Cell(A.AA_7, S.STA13)),
}

#: Table 9-10: (state, event) -> Cell, exactly the table's non-empty cells.
TRANSITIONS: Mapping[tuple[State, Event], Cell] = MappingProxyType(
    {(state, event): cell for event, row in _ROWS.items() for state, cell in sorted(row.items())}
)

#: Events that come from the peer, the transport or ARTIM rather than from
#: the local user: the table has a cell for them wherever they can happen.
WIRE_EVENTS: frozenset[Event] = frozenset(
    {E.EVT3, E.EVT4, E.EVT6, E.EVT10, E.EVT12, E.EVT13, E.EVT16, E.EVT17, E.EVT18, E.EVT19}
)

del S, E, A


# --------------------------------------------------------------------------
# Outputs

# Indication kinds (what ``Indicate.kind`` holds).
ASSOCIATE_RQ = "associate-rq"  # A-ASSOCIATE indication; data: the received RQ
ASSOCIATE_AC = "associate-ac"  # A-ASSOCIATE confirmation (accept); data: the AC
ASSOCIATE_RJ = "associate-rj"  # A-ASSOCIATE confirmation (reject); data: the RJ
P_DATA = "p-data"  # P-DATA indication; data: what came with Evt10
RELEASE_RQ = "release-rq"  # A-RELEASE indication (AR-2); data: the RQ PDU
RELEASE_RP = "release-rp"  # A-RELEASE confirmation (AR-3, AR-10); data: the RP PDU
RELEASE_COLLISION = "release-collision"  # A-RELEASE indication in a collision (AR-8); data: the RQ PDU
ABORT = "abort"  # A-ABORT indication (peer user aborted); data: (source, reason)
PROVIDER_ABORT = "provider-abort"  # A-P-ABORT indication; data: the reason (int), or Evt17's data


@dataclass(frozen=True, slots=True)
class SendPDU:
    """Encode ``pdu`` and write it to the transport."""

    pdu: Any


@dataclass(frozen=True, slots=True)
class Indicate:
    """Deliver a primitive to the association user: ``kind`` is one of the
    module's indication-kind constants; ``data`` is described there."""

    kind: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class OpenTransport:
    """AE-1: open the transport connection to the peer (then report Evt2 or Evt17)."""


@dataclass(frozen=True, slots=True)
class CloseTransport:
    """Close the transport connection (then report Evt17 if asked for it)."""


@dataclass(frozen=True, slots=True)
class StartARTIM:
    """Start ARTIM, or restart it if running; report Evt18 when it expires."""


@dataclass(frozen=True, slots=True)
class StopARTIM:
    """Stop ARTIM if it runs."""


Output = SendPDU | Indicate | OpenTransport | CloseTransport | StartARTIM | StopARTIM

# The outputs without fields are immutable; one instance of each serves all.
_OPEN = OpenTransport()
_CLOSE = CloseTransport()
_START = StartARTIM()
_STOP = StopARTIM()


# --------------------------------------------------------------------------
# Errors


class InvalidEventError(ChromanetError):
    """An event arrived in a state where Table 9-10 has no cell for it.

    Only local events can do this (e.g. a P-DATA request in Sta1): it is a
    mistake of the code driving the machine, which is left unchanged.
    """

    def __init__(self, state: State, event: Event | int) -> None:
        name = event.name if isinstance(event, Event) else repr(event)
        super().__init__(f"{name} is not allowed in {state.name} (PS3.8 Table 9-10 has no cell for it)")
        self.state = state
        self.event = event


class MissingPDUError(ChromanetError, ValueError):
    """A local event that sends a user-built PDU (Evt1/2, 7, 8, 9) came without it."""


# --------------------------------------------------------------------------
# The machine

_default_pdus: Any = None


def _import_pdus() -> Any:
    global _default_pdus
    if _default_pdus is None:
        from chromanet import _pdu

        _default_pdus = _pdu
    return _default_pdus


class UpperLayerMachine:
    """One side of one association, as PS3.8 9.2 describes it.

    ``requestor`` says whether this side requested the association; it
    matters only for a release collision (AR-8). ``pdu_factory`` builds the
    PDUs the machine sends on its own (see the module docstring); None uses
    ``chromanet._pdu``, imported on first use.

    ``handle(event, data)`` applies one event and returns the outputs to carry
    out, in order. ``state`` is the current state; the driver may read it
    (and tests may set it).
    """

    __slots__ = ("state", "is_requestor", "_pdus", "_pending_rq")

    def __init__(self, requestor: bool, pdu_factory: Any = None) -> None:
        self.state: State = State.STA1
        self.is_requestor: bool = bool(requestor)
        self._pdus = pdu_factory
        self._pending_rq: Any = None  # the A-ASSOCIATE-RQ of Evt1, sent by AE-2

    def __repr__(self) -> str:
        side = "requestor" if self.is_requestor else "acceptor"
        return f"<UpperLayerMachine {side} {self.state.name}>"

    @property
    def pdus(self) -> Any:
        """The PDU factory in use."""
        pdus = self._pdus
        if pdus is None:
            pdus = self._pdus = _import_pdus()
        return pdus

    def provider_rejection(self, rq: Any) -> Any:
        """AE-6's check: None if the service provider accepts the received
        A-ASSOCIATE-RQ ``rq``, else the A-ASSOCIATE-RJ PDU to answer it with.

        The provider (as opposed to the user, who answers with Evt7 or Evt8)
        only checks the protocol version: bit 0 must be set (PS3.8 9.3.2).
        Subclasses may check more.
        """
        if getattr(rq, "protocol_version", 1) & 1:
            return None
        # result 1 rejected-permanent, source 2 ACSE provider, reason 2 protocol version not supported
        return self.pdus.AssociateRJ(result=1, source=2, reason=2)

    def handle(self, event: Event, data: Any = None) -> list[Output]:
        """Apply ``event`` (with its ``data``, see ``Event``) and return the
        outputs to carry out, in order. Raises InvalidEventError, leaving the
        machine as it was, if the current state has no cell for ``event``."""
        state = self.state
        entry = _FLAT[state * _STRIDE + event] if 0 < event < _STRIDE else None
        if entry is None:
            raise InvalidEventError(state, event)
        run, action, next_state, otherwise = entry
        outputs: list[Output]
        if otherwise is None:
            outputs = run(self, event, data)
        else:
            outputs, condition_holds = run(self, event, data)
            if not condition_holds:
                next_state = otherwise
        self.state = next_state
        if _log_enabled_for(_DEBUG):
            LOGGER.debug("%s + %s: %s -> %s", state.name, _event_name(event), action.value, next_state.name)
        return outputs


# --------------------------------------------------------------------------
# What each action does. Each takes (machine, event, data) and returns the
# outputs; the two conditional ones return (outputs, condition holds). They
# raise, if at all, before changing anything.

_Runner = Callable[[UpperLayerMachine, Event, Any], Any]


def _event_name(event: Event | int) -> str:
    return Event(event).name  # type: ignore[call-arg]  # a lookup by value, not a new member


def _required(event: Event, data: Any) -> Any:
    if data is None:
        raise MissingPDUError(f"{_event_name(event)} needs the PDU to send as its data")
    return data


def _abort_reason(event: Event, data: Any) -> int:
    """The reason of a provider A-ABORT answering a received PDU: what the
    caller found wrong for Evt19, "unexpected PDU" for a valid PDU that has
    no place in the current state."""
    if event == Event.EVT19:
        if data is None:
            return ABORT_REASON_NOT_SPECIFIED
        return int(getattr(data, "abort_reason", data))
    return ABORT_REASON_UNEXPECTED_PDU


def _ae_1(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    m._pending_rq = _required(event, data)
    return [_OPEN]


def _ae_2(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    rq = _required(event, data if data is not None else m._pending_rq)
    m._pending_rq = None
    return [SendPDU(rq)]


def _ae_3(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [Indicate(ASSOCIATE_AC, data)]


def _ae_4(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [Indicate(ASSOCIATE_RJ, data), _CLOSE]


def _ae_5(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    # The transport connection response (accepting the connection) is the
    # driver's: asyncio has already accepted it when Evt5 is reported.
    return [_START]


def _ae_6(m: UpperLayerMachine, event: Event, data: Any) -> tuple[list[Output], bool]:
    rejection = m.provider_rejection(data)
    if rejection is None:
        return [_STOP, Indicate(ASSOCIATE_RQ, data)], True
    return [_STOP, SendPDU(rejection), _START], False


def _ae_7(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [SendPDU(_required(event, data))]


def _ae_8(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [SendPDU(_required(event, data)), _START]


def _send_user_pdu(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    """DT-1 and AR-7: send the user's P-DATA-TF."""
    if data is None:
        _required(event, data)
    return [SendPDU(data)]


def _indicate_p_data(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    """DT-2 and AR-6."""
    return [Indicate(P_DATA, data)]


def _ar_1(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [SendPDU(data if data is not None else m.pdus.ReleaseRQ())]


def _ar_2(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [Indicate(RELEASE_RQ, data)]


def _ar_3(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [Indicate(RELEASE_RP, data), _CLOSE]


def _ar_4(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [SendPDU(data if data is not None else m.pdus.ReleaseRP()), _START]


def _ar_5(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [_STOP]


def _ar_8(m: UpperLayerMachine, event: Event, data: Any) -> tuple[list[Output], bool]:
    # The A-RELEASE indication of a collision. It has its own kind because the
    # user must answer it differently: at once on the requestor side (Sta9),
    # but only after the A-RELEASE confirmation on the acceptor side (Sta10).
    return [Indicate(RELEASE_COLLISION, data)], m.is_requestor


def _ar_9(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [SendPDU(data if data is not None else m.pdus.ReleaseRP())]


def _ar_10(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [Indicate(RELEASE_RP, data)]


def _aa_1(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    if event == Event.EVT15:
        # The user's abort request (Sta3, Sta5-Sta12): service-user source.
        pdu = data if data is not None else m.pdus.Abort(source=0, reason=0)
    else:
        # Sta2: a PDU other than A-ASSOCIATE-RQ, or a broken one, before any
        # association user exists. The standard's AA-1 says "service-user
        # source"; no user is involved yet, so we send what the abort really
        # is, a provider abort, with the reason that is meaningful only then.
        pdu = m.pdus.Abort(source=2, reason=_abort_reason(event, data))
    return [SendPDU(pdu), _START]


def _aa_2(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [_STOP, _CLOSE]


def _aa_3(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    source = getattr(data, "source", 2)
    reason = getattr(data, "reason", 0)
    if source == 0:
        return [Indicate(ABORT, (source, reason)), _CLOSE]
    return [Indicate(PROVIDER_ABORT, reason), _CLOSE]


def _aa_4(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [Indicate(PROVIDER_ABORT, data)]


def _aa_5(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return [_STOP]


def _aa_6(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    return []


def _aa_7(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    # Sta13: the association is gone but the peer sent an A-ASSOCIATE-RQ or a
    # broken PDU. ARTIM is already running (every way into Sta13 starts it).
    return [SendPDU(m.pdus.Abort(source=2, reason=_abort_reason(event, data)))]


def _aa_8(m: UpperLayerMachine, event: Event, data: Any) -> list[Output]:
    reason = _abort_reason(event, data)
    return [SendPDU(m.pdus.Abort(source=2, reason=reason)), Indicate(PROVIDER_ABORT, reason), _START]


_RUNNERS: dict[Action, _Runner] = {
    Action.AE_1: _ae_1,
    Action.AE_2: _ae_2,
    Action.AE_3: _ae_3,
    Action.AE_4: _ae_4,
    Action.AE_5: _ae_5,
    Action.AE_6: _ae_6,
    Action.AE_7: _ae_7,
    Action.AE_8: _ae_8,
    Action.DT_1: _send_user_pdu,
    Action.DT_2: _indicate_p_data,
    Action.AR_1: _ar_1,
    Action.AR_2: _ar_2,
    Action.AR_3: _ar_3,
    Action.AR_4: _ar_4,
    Action.AR_5: _ar_5,
    Action.AR_6: _indicate_p_data,
    Action.AR_7: _send_user_pdu,
    Action.AR_8: _ar_8,
    Action.AR_9: _ar_9,
    Action.AR_10: _ar_10,
    Action.AA_1: _aa_1,
    Action.AA_2: _aa_2,
    Action.AA_3: _aa_3,
    Action.AA_4: _aa_4,
    Action.AA_5: _aa_5,
    Action.AA_6: _aa_6,
    Action.AA_7: _aa_7,
    Action.AA_8: _aa_8,
}

# TRANSITIONS flattened for handle(): index state * _STRIDE + event.
_STRIDE = max(Event) + 1
_FLAT: list[tuple[_Runner, Action, State, State | None] | None] = [None] * ((max(State) + 1) * _STRIDE)
for (_state, _event), _cell in TRANSITIONS.items():
    if (_cell.otherwise is None) != (_cell.action not in CONDITIONS):
        raise AssertionError(f"cell {_state.name}/{_event.name}: only {sorted(a.value for a in CONDITIONS)} branch")
    _FLAT[_state * _STRIDE + _event] = (_RUNNERS[_cell.action], _cell.action, _cell.next_state, _cell.otherwise)
del _state, _event, _cell
