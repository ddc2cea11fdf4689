"""The Upper Layer of one connection, sans-IO: bytes and time in; bytes,
indications and a deadline out.

``UpperLayer`` joins the pieces PS3.8 describes for one side of one
association: the framer that cuts the byte stream into PDUs, the state
machine of Table 9-10 (``statemachine.UpperLayerMachine``), the P-DATA
reassembler that rebuilds DIMSE messages, and the deadlines of the ARTIM
timer and of the network idle limit. It owns no socket, no loop and no clock,
in the manner of h11's ``Connection`` or aioquic's ``QuicConnection``:

- the driver feeds it what happens: ``connection_made(now)``,
  ``receive_data(data, now)``, ``connection_lost()``, ``handle_timer(now)``
  and the local primitives (``request_association``, ``accept_association``,
  ``send_message``, ``request_release``, ``abort``…);
- each of those returns the *indications* for the association user, in order
  (``AssociateRequested``…, or the reassembler's ``DimseMessage`` /
  ``CommandArrived`` / ``DatasetChunk`` objects for P-DATA);
- the driver then writes ``data_to_send()``, closes the transport when
  ``close_requested`` is set, and arms one timer for ``get_timer()``.

``ul.connection.ULConnection`` is the asyncio driver; the tests wire two
``UpperLayer`` objects back to back in memory.

Protocol follow-ups that need no decision from the user are done here: the
release collision answers of AR-8/AR-10 (PS3.8 9.2.3), and the A-ABORT of an
invalid PDU (Evt19).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Union

from chromanet import _pdu
from chromanet._dimse import Command, encode_command
from chromanet._framer import PDUFramer
from chromanet._pdata import CommandArrived, DatasetChunk, DimseMessage, Reassembler, fragment_message
from chromanet.logutil import peer_log
from chromanet.errors import (
    ABORT_REASON_INVALID_PDU_PARAMETER_VALUE,
    ChromanetError,
    CommandSetError,
    PDUError,
)
from chromanet.ul.statemachine import (
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    P_DATA,
    PROVIDER_ABORT,
    RELEASE_COLLISION,
    RELEASE_RP,
    RELEASE_RQ,
    CloseTransport,
    Event,
    Indicate,
    SendPDU,
    StartARTIM,
    State,
    StopARTIM,
    UpperLayerMachine,
)

__all__ = [
    "UpperLayer",
    "NotEstablishedError",
    "AssociateRequested",
    "AssociateAccepted",
    "AssociateRejected",
    "ReleaseRequested",
    "ReleaseConfirmed",
    "Aborted",
    "Indication",
    "MAX_ASSOCIATION_PDU_LENGTH",
]

LOGGER = logging.getLogger("chromanet.ul")

# The event each incoming PDU type is for the state machine (PS3.8 9.2.1).
_RECEIVE_EVENT: dict[type, Event] = {
    _pdu.AssociateAC: Event.EVT3,
    _pdu.AssociateRJ: Event.EVT4,
    _pdu.AssociateRQ: Event.EVT6,
    _pdu.ReleaseRQ: Event.EVT12,
    _pdu.ReleaseRP: Event.EVT13,
    _pdu.Abort: Event.EVT16,
}

# Largest non-P-DATA PDU we buffer. An A-ASSOCIATE-RQ with the maximum 128
# presentation contexts and long user identity fields stays far below this.
MAX_ASSOCIATION_PDU_LENGTH = 1 << 20
# Bytes a peer may still send once the association is over (Sta13: after our
# A-ABORT, A-ASSOCIATE-RJ or A-RELEASE-RP) before the connection is closed
# without waiting for ARTIM: enough for PDUs that crossed ours on the wire.
STA13_TOLERANCE = 256 * 1024

# States where P-DATA may be sent (DT-1 in Sta6, AR-7 in Sta7 and Sta8).
_PDATA_STATES = frozenset((State.STA6, State.STA7, State.STA8))

_PDATA_TF = 0x04

# Where a local A-RELEASE response (Evt14) has a cell: Sta8, Sta9, Sta12.
_RELEASE_ANSWER_STATES = frozenset((State.STA8, State.STA9, State.STA12))


class NotEstablishedError(ChromanetError):
    """A DIMSE message was to be sent while no association allows P-DATA."""


# ------------------------------------------------------------- indications
@dataclass(frozen=True, slots=True)
class AssociateRequested:
    """A-ASSOCIATE indication (acceptor): answer with accept or reject."""

    rq: Any


@dataclass(frozen=True, slots=True)
class AssociateAccepted:
    """A-ASSOCIATE confirmation, accepted (requestor)."""

    ac: Any


@dataclass(frozen=True, slots=True)
class AssociateRejected:
    """A-ASSOCIATE confirmation, rejected (requestor)."""

    rj: Any


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """A-RELEASE indication: the peer asks to release. Answer with
    ``respond_release`` once nothing more is to be sent (AR-2)."""


@dataclass(frozen=True, slots=True)
class ReleaseConfirmed:
    """A-RELEASE confirmation: the peer answered our release request."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """A-ABORT (the peer's user, source 0/1) or A-P-ABORT (the provider,
    source 2: an invalid PDU, the network idle limit, a lost connection)."""

    source: int
    reason: int


Indication = Union[
    AssociateRequested,
    AssociateAccepted,
    AssociateRejected,
    ReleaseRequested,
    ReleaseConfirmed,
    Aborted,
    DimseMessage,
    CommandArrived,
    DatasetChunk,
]

_RELEASE_REQUESTED = ReleaseRequested()

# What the log says when a limit expires (each is given the UpperLayer).
_EXPIRED = {
    "network": lambda ul: f"network timeout: nothing received for {ul.network_timeout:.1f} s",
    "pdu": lambda ul: f"PDU timeout: a PDU not whole {ul.pdu_timeout:.1f} s after it began",
    "idle": lambda ul: f"idle timeout: no DIMSE message for {ul.idle_timeout:.1f} s",
}
_RELEASE_CONFIRMED = ReleaseConfirmed()


class UpperLayer:
    """One side of one association over one transport connection (see the
    module docstring for the driving protocol).

    ``max_receive_pdu_length`` is our Maximum Length: a P-DATA-TF longer than
    that is a protocol error. The time limits, in seconds (None: no limit),
    each abort the association (A-ABORT, source 2) when exceeded:

    - ``network_timeout``: no byte at all has arrived for this long;
    - ``pdu_timeout``: a PDU has begun to arrive and is not whole after this
      long (a peer trickling one byte at a time cannot hold the association
      with the network limit alone);
    - ``idle_timeout``: no DIMSE message went either way for this long while
      established (a peer that keeps a slot without using it);
    - ``artim_timeout``: ARTIM, run by the state machine in Sta2 and Sta13.
    """

    def __init__(
        self,
        *,
        requestor: bool,
        max_receive_pdu_length: int,
        artim_timeout: float | None = 30.0,
        network_timeout: float | None = None,
        pdu_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.is_requestor = requestor
        self.machine = UpperLayerMachine(requestor)
        self._unaligned = False
        self._ignored = 0
        self._framer = PDUFramer(
            max_pdata_length=max_receive_pdu_length,
            max_other_length=MAX_ASSOCIATION_PDU_LENGTH,
        )
        self._reassembler = Reassembler()
        self.artim_timeout = artim_timeout
        self.network_timeout = network_timeout
        self.pdu_timeout = pdu_timeout
        self.idle_timeout = idle_timeout
        #: The peer's Maximum Length, known once the association is accepted.
        self.peer_max_pdu_length = 0
        #: Set when the transport must be closed (after the PDUs to send).
        self.close_requested = False
        self._outbox: list[Any] = []
        self._artim_deadline: float | None = None
        self._last_receive: float | None = None  # None: no connection yet, or gone
        self._clock = 0.0  # the latest time the driver gave us
        self._pdu_began: float | None = None  # when the partial PDU began to arrive
        self._last_message: float | None = None  # the last DIMSE message received (Sta6)
        self._messages_sent = 0  # counted, not timed: sending takes no clock
        self._messages_sent_seen = 0
        self._pending_rq: Any = None
        #: Who is at the other end, for log lines (set by the driver).
        self.peer_host = ""
        self.peer_label = "the peer"

    # ------------------------------------------------------------- reading
    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def is_established(self) -> bool:
        return self.machine.state is State.STA6

    @property
    def stream_datasets(self) -> bool:
        """Data sets handed up in fragments (CommandArrived + DatasetChunk)
        instead of whole messages; see ``_pdata.Reassembler``."""
        return self._reassembler.stream_datasets

    @stream_datasets.setter
    def stream_datasets(self, value: bool) -> None:
        self._reassembler.stream_datasets = value

    @property
    def stream_threshold(self) -> int:
        """A data set larger than this (bytes, 0 = none) is handed up in
        fragments even when ``stream_datasets`` is off."""
        return self._reassembler.stream_threshold

    @stream_threshold.setter
    def stream_threshold(self, value: int) -> None:
        self._reassembler.stream_threshold = value

    @property
    def in_pdu(self) -> bool:
        """True while a PDU has begun to arrive and is not yet whole."""
        return self._framer.in_pdu

    @property
    def in_message(self) -> bool:
        """True between the first P-DATA fragment of a DIMSE message and its
        last: the peer has more of this message to send."""
        return self._reassembler.in_message

    def data_to_send(self) -> list[Any]:
        """The encoded PDUs to write, in order (emptied by this call)."""
        out, self._outbox = self._outbox, []
        return out

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._outbox)

    def get_timer(self) -> float | None:
        """The earliest deadline (in the driver's clock) at which
        ``handle_timer`` must be called, or None."""
        deadlines = [d for d in self._deadlines().values() if d is not None]
        return min(deadlines) if deadlines else None

    def _deadlines(self) -> dict[str, float | None]:
        """Each running limit's deadline (a receive moves the network and
        PDU ones; a message either way moves the idle one)."""
        if self.close_requested:
            return {"artim": self._artim_deadline}
        deadlines: dict[str, float | None] = {"artim": self._artim_deadline}
        if self.network_timeout is not None and self._last_receive is not None:
            deadlines["network"] = self._last_receive + self.network_timeout
        if self.pdu_timeout is not None and self._pdu_began is not None:
            deadlines["pdu"] = self._pdu_began + self.pdu_timeout
        if self.idle_timeout is not None and self._last_message is not None and self.machine.state is State.STA6:
            deadlines["idle"] = self._last_message + self.idle_timeout
        return deadlines

    # ------------------------------------------------------ transport events
    def connection_made(self, now: float) -> list[Indication]:
        """The transport connection is up (Evt2 for a requestor, which sends
        the A-ASSOCIATE-RQ given to ``request_association``; Evt5 for an
        acceptor, which starts ARTIM)."""
        self._last_receive = self._clock = now
        if self.is_requestor:
            return self._handle(Event.EVT2, self._pending_rq, now)
        return self._handle(Event.EVT5, None, now)

    def receive_data(self, data: Any, now: float) -> list[Indication]:
        """Bytes from the transport, any size; returns the indications.
        Once the connection is to be closed, what still arrives is ignored."""
        if self.close_requested:
            return []
        if self.machine.state is State.STA13:
            # Nothing should come now (after our A-ABORT, A-ASSOCIATE-RJ or
            # A-RELEASE-RP). A little is tolerated (crossing PDUs); a peer
            # that goes on sending is closed on rather than read forever.
            self._ignored += len(data)
            if self._ignored > STA13_TOLERANCE:
                peer_log(LOGGER, logging.WARNING, self.peer_host,
                         "%s goes on sending after the association ended: closing the connection", self.peer_label)
                self.close_requested = True
                self._artim_deadline = None
                return []
        if self._unaligned:
            return []
        self._last_receive = self._clock = now
        framer = self._framer
        try:
            frames = framer.feed(data)
        except PDUError as exc:
            # The stream can no longer be split into PDUs: whatever follows
            # is dropped unread (Sta13 ignores it anyway), never buffered.
            self._unaligned = True
            return self._protocol_error(exc, now)
        if framer.in_pdu:
            if self._pdu_began is None or frames:
                self._pdu_began = now  # a new PDU began in this chunk
        else:
            self._pdu_began = None
        machine = self.machine
        if len(frames) == 1:
            pdu_type, body = frames[0]
            if pdu_type == _PDATA_TF and machine.state is State.STA6:
                # DT-2 fast path: no state change, straight to reassembly.
                indications = self._reassemble(body, now)
                if indications:
                    self._last_message = now
                return indications
        elif not frames:
            return []
        indications: list[Indication] = []
        # (The reassembler called here directly, not through _reassemble: a
        # read of many small P-DATA PDUs, a C-FIND's matches, pays one
        # Python call less per PDU.)
        feed = self._reassembler.feed
        sta6 = State.STA6
        for pdu_type, body in frames:
            if self.close_requested:
                break  # the rest of the stream no longer matters
            if pdu_type == _PDATA_TF and machine.state is sta6:
                try:
                    indications += feed(body)
                except (PDUError, CommandSetError) as exc:
                    indications.extend(self._protocol_error(exc, now))
                continue
            try:
                pdu = _pdu.decode_pdu(pdu_type, body)
            except PDUError as exc:
                indications.extend(self._protocol_error(exc, now))
                break
            if pdu_type == _PDATA_TF:
                event, data_for_machine = Event.EVT10, body
            else:
                event, data_for_machine = _RECEIVE_EVENT[type(pdu)], pdu
            if LOGGER.isEnabledFor(logging.DEBUG):
                LOGGER.debug("received %s in %s", type(pdu).__name__, machine.state.name)
            indications.extend(self._handle(event, data_for_machine, now))
        if self._last_message is not None and indications:
            self._last_message = now
        return indications

    def connection_lost(self) -> list[Indication]:
        """The transport connection is gone (Evt17)."""
        self._last_receive = self._pdu_began = self._last_message = None
        self._artim_deadline = None
        if self.machine.state is State.STA1:
            return []
        return self._handle(Event.EVT17, None, None)

    def handle_timer(self, now: float) -> list[Indication]:
        """Call at (or after) ``get_timer()``; does what is due."""
        self._clock = now
        if self._artim_deadline is not None and now >= self._artim_deadline:
            self._artim_deadline = None
            LOGGER.info("ARTIM expired in %s", self.machine.state.name)
            return self._handle(Event.EVT18, None, now)
        if self._messages_sent != self._messages_sent_seen and self._last_message is not None:
            # Messages went out since the last look: the association is in use.
            self._messages_sent_seen = self._messages_sent
            self._last_message = now
        for limit, deadline in self._deadlines().items():
            if limit != "artim" and deadline is not None and now >= deadline:
                peer_log(LOGGER, logging.WARNING, self.peer_host, "%s: %s; aborting the association",
                         self.peer_label, _EXPIRED[limit](self))
                self._last_receive = None
                self.abort(source=2, reason=0)
                return [Aborted(2, 0)]
        return []

    # ------------------------------------------------------ local primitives
    def request_association(self, rq: _pdu.AssociateRQ) -> None:
        """Evt1 (A-ASSOCIATE request). The driver opens the transport itself
        (AE-1); ``connection_made`` then sends ``rq``."""
        self._pending_rq = rq
        self._handle(Event.EVT1, rq, None)

    def accept_association(self, ac: _pdu.AssociateAC, peer_max_pdu_length: int, context_ids: set[int]) -> bool:
        """Evt7 (A-ASSOCIATE response, accept), with what was negotiated.
        False (nothing done) when the association request is no longer
        awaiting an answer: what followed the RQ in the same read aborted it."""
        if self.machine.state is not State.STA3:
            return False
        self.association_accepted(peer_max_pdu_length, context_ids)
        self._handle(Event.EVT7, ac, None)
        return True

    def reject_association(self, rj: _pdu.AssociateRJ) -> None:
        """Evt8 (A-ASSOCIATE response, reject); nothing when no longer in Sta3."""
        if self.machine.state is State.STA3:
            self._handle(Event.EVT8, rj, None)

    def association_accepted(self, peer_max_pdu_length: int, context_ids: set[int]) -> None:
        """Record what the A-ASSOCIATE-AC negotiated, before any P-DATA."""
        self.peer_max_pdu_length = peer_max_pdu_length
        self._reassembler.accepted_context_ids = context_ids
        self._last_message = self._clock  # the idle limit runs from here

    def request_release(self) -> None:
        """Evt11 (A-RELEASE request)."""
        self._handle(Event.EVT11, _pdu.ReleaseRQ(), None)

    def respond_release(self) -> None:
        """Evt14 (A-RELEASE response); nothing when no release awaits an
        answer any more (what followed the RQ in the same read aborted it)."""
        if self.machine.state in _RELEASE_ANSWER_STATES:
            self._handle(Event.EVT14, _pdu.ReleaseRP(), None)

    def abort(self, source: int = 0, reason: int = 0) -> None:
        """Evt15 (A-ABORT request), then close at once: a local abort does
        not wait in Sta13 for the peer to close (the A-ABORT PDU is written
        before the transport closes). Harmless when nothing is open."""
        if self.machine.state is State.STA1 or self.close_requested:
            return
        try:
            self._handle(Event.EVT15, _pdu.Abort(source=source, reason=reason), None)
        except ChromanetError:
            pass  # no cell for Evt15 here (e.g. Sta13 already): just close
        self._artim_deadline = None
        self.close_requested = True

    def message_buffers(self, context_id: int, command: Command, dataset: Any = None) -> list[Any]:
        """DT-1 for one whole DIMSE message: the command encoded and
        fragmented with the data set (any buffer, never copied) into P-DATA-TF
        PDUs, returned as buffers for a scatter-gather write. The caller writes
        them itself (it may pace a large data set); nothing goes to the outbox."""
        if self.machine.state not in _PDATA_STATES or self.close_requested:
            raise NotEstablishedError(f"cannot send P-DATA in {self.machine.state.name}")
        self._messages_sent += 1
        return fragment_message(context_id, encode_command(command), dataset, self.peer_max_pdu_length)

    # -------------------------------------------------------------- inside
    def _reassemble(self, body: Any, now: float) -> list[Indication]:
        try:
            return self._reassembler.feed(body)  # type: ignore[return-value]
        except (PDUError, CommandSetError) as exc:
            return self._protocol_error(exc, now)

    def _protocol_error(self, exc: Exception, now: float | None) -> list[Indication]:
        """Evt19: an unrecognised or invalid PDU (or P-DATA contents)."""
        reason = getattr(exc, "abort_reason", ABORT_REASON_INVALID_PDU_PARAMETER_VALUE)
        peer_log(LOGGER, logging.WARNING, self.peer_host, "protocol error from %s: %s", self.peer_label, exc)
        return self._handle(Event.EVT19, reason, now)

    def _handle(self, event: Event, data: Any, now: float | None) -> list[Indication]:
        indications: list[Indication] = []
        for output in self.machine.handle(event, data):
            kind = type(output)
            if kind is SendPDU:
                if LOGGER.isEnabledFor(logging.DEBUG):
                    LOGGER.debug("sending %s", type(output.pdu).__name__)  # type: ignore[union-attr]
                self._outbox.append(_pdu.encode_pdu(output.pdu))  # type: ignore[union-attr]
            elif kind is Indicate:
                self._indicate(output.kind, output.data, now, indications)  # type: ignore[union-attr]
            elif kind is StartARTIM:
                if self.artim_timeout is not None:
                    # A local primitive gives no time: ARTIM then starts from
                    # the latest time the driver gave (a receive or a timer).
                    self._artim_deadline = (now if now is not None else self._clock) + self.artim_timeout
            elif kind is StopARTIM:
                self._artim_deadline = None
            elif kind is CloseTransport:
                self.close_requested = True
                self._artim_deadline = None
            # OpenTransport: the driver opens the connection itself.
        return indications

    def _indicate(self, kind: str, data: Any, now: float | None, out: list[Indication]) -> None:
        if kind == P_DATA:
            out.extend(self._reassemble(data, now if now is not None else self._clock))
        elif kind == ASSOCIATE_RQ:
            out.append(AssociateRequested(data))
        elif kind == ASSOCIATE_AC:
            out.append(AssociateAccepted(data))
        elif kind == ASSOCIATE_RJ:
            out.append(AssociateRejected(data))
        elif kind == RELEASE_RQ:
            out.append(_RELEASE_REQUESTED)
        elif kind == RELEASE_RP:
            out.append(_RELEASE_CONFIRMED)
            if self.machine.state is State.STA12:
                # Acceptor side of a release collision (AR-10 took us to
                # Sta12): now our own A-RELEASE response goes out (AR-4).
                out.extend(self._handle(Event.EVT14, _pdu.ReleaseRP(), now))
        elif kind == RELEASE_COLLISION:
            # Both sides sent A-RELEASE-RQ. The requestor answers at once
            # (Sta9 -> AR-9); the acceptor answers after the peer's RP
            # arrives (Sta10 -> AR-10 -> Sta12, see RELEASE_RP).
            if self.machine.state is State.STA9:
                out.extend(self._handle(Event.EVT14, _pdu.ReleaseRP(), now))
        elif kind == ABORT:
            source, reason = data if data is not None else (0, 0)
            out.append(Aborted(source, reason))
        elif kind == PROVIDER_ABORT:
            out.append(Aborted(2, data if isinstance(data, int) else 0))
        # "transport-closed" and other notices need no indication: the
        # driver reports the connection's end to the user itself.
