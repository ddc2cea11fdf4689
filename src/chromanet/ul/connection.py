"""One Upper Layer connection: the PS3.8 state machine driven by an asyncio transport.

``ULConnection`` is the asyncio ``Protocol`` under every association. It owns
the socket's byte stream (cut into PDUs by the Cython framer), the sans-IO
state machine (``statemachine.UpperLayerMachine``), the ARTIM and network idle
timers, and the P-DATA reassembler. What the state machine decides, it carries
out: PDUs to send, timers to start or stop, the transport to close, and
indications for its listener (the association object above it).

Everything is driven by loop callbacks: ``data_received``, ``connection_lost``,
``call_at`` timers. Nothing here polls or sleeps.

The hot path (P-DATA-TF in Sta6, both ways) skips the generic event
dispatch: DT-1 and DT-2 are "send it" and "hand it up", with no state change,
so incoming P-DATA bodies go straight to the reassembler and outgoing messages
straight to ``transport.writelines`` with the buffers ``fragment_message``
built (no copy of the data set).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any, Protocol

from chromanet import _pdu
from chromanet._dimse import Command, encode_command
from chromanet._framer import PDUFramer
from chromanet._pdata import DatasetChunk, DimseMessage, Reassembler, fragment_message
from chromanet.errors import (
    ABORT_REASON_INVALID_PDU_PARAMETER_VALUE,
    ChromanetError,
    CommandSetError,
    PDUError,
)
from chromanet.ul.statemachine import (
    CloseTransport,
    Event,
    Indicate,
    OpenTransport,
    SendPDU,
    StartARTIM,
    State,
    StopARTIM,
    UpperLayerMachine,
)

if TYPE_CHECKING:
    from chromanet._pdata import CommandArrived

LOGGER = logging.getLogger("chromanet.ul")

# The event each incoming PDU type is for the state machine (PS3.8 9.2.1).
_RECEIVE_EVENT: dict[type, Event] = {
    _pdu.AssociateAC: Event.EVT3,
    _pdu.AssociateRJ: Event.EVT4,
    _pdu.AssociateRQ: Event.EVT6,
    _pdu.PDataTF: Event.EVT10,
    _pdu.ReleaseRQ: Event.EVT12,
    _pdu.ReleaseRP: Event.EVT13,
    _pdu.Abort: Event.EVT16,
}

# Largest non-P-DATA PDU we buffer. An A-ASSOCIATE-RQ with the maximum 128
# presentation contexts and long user identity fields stays far below this.
MAX_ASSOCIATION_PDU_LENGTH = 1 << 20

# Data sets larger than this are written a slice of this size at a time.
PACING_SLICE = 1 << 20

# States where P-DATA may be sent (DT-1 in Sta6, AR-7 in Sta7 and Sta8).
_PDATA_STATES = frozenset((State.STA6, State.STA7, State.STA8))


class NotEstablishedError(ChromanetError):
    """A DIMSE message was to be sent while the association is not in Sta6."""


class ConnectionListener(Protocol):
    """What the association above a connection must implement.

    Each method is an indication or confirmation primitive of PS3.8, called
    from the event loop.
    """

    def on_associate_rq(self, rq: _pdu.AssociateRQ) -> None: ...
    def on_associate_ac(self, ac: _pdu.AssociateAC) -> None: ...
    def on_associate_rj(self, rj: _pdu.AssociateRJ) -> None: ...
    def on_message(self, message: DimseMessage) -> None: ...
    def on_command_arrived(self, event: CommandArrived) -> None: ...
    def on_dataset_chunk(self, chunk: DatasetChunk) -> None: ...
    def on_release_rq(self) -> None: ...
    def on_release_rp(self) -> None: ...
    def on_abort(self, source: int, reason: int) -> None: ...
    def on_closed(self) -> None: ...


class ULConnection(asyncio.Protocol):
    """Drives one Upper Layer association over one TCP connection.

    ``requestor`` says which side of the association this is. The
    ``listener`` receives the primitives; it is given by the association
    object that created this connection.

    Timers, in seconds (None: none):
    - ``artim_timeout``: ARTIM, run by the state machine in Sta2 and Sta13.
    - ``network_timeout``: the association is aborted when no byte arrives
      for this long (a dead peer or network).
    """

    def __init__(
        self,
        listener: ConnectionListener,
        *,
        requestor: bool,
        max_receive_pdu_length: int,
        artim_timeout: float | None = 30.0,
        network_timeout: float | None = None,
    ) -> None:
        self.listener = listener
        self.is_requestor = requestor
        self.machine = UpperLayerMachine(requestor)
        self.framer = PDUFramer(
            max_pdata_length=max_receive_pdu_length,
            max_other_length=MAX_ASSOCIATION_PDU_LENGTH,
        )
        self.reassembler = Reassembler()
        self.transport: asyncio.Transport | None = None
        self.peer_max_pdu_length = 0
        self.artim_timeout = artim_timeout
        self.network_timeout = network_timeout
        self._artim_handle: asyncio.TimerHandle | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_receive = 0.0
        self._loop = asyncio.get_running_loop()
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed = self._loop.create_future()
        self._pending_rq: _pdu.AssociateRQ | None = None
        self._pacing: asyncio.Future[None] | None = None  # a large message is going out
        self._deferred: list[list[Any]] = []  # messages sent meanwhile, in order

    # ----------------------------------------------------------- properties
    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def is_established(self) -> bool:
        return self.machine.state is State.STA6

    def peername(self) -> tuple[str, int] | None:
        if self.transport is None:
            return None
        info = self.transport.get_extra_info("peername")
        return (info[0], info[1]) if info else None

    # ------------------------------------------------------ asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                # Without it, a request/response exchange of small PDUs stalls
                # on delayed ACKs (~40 ms per message on Linux).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not TCP (a UNIX socket in tests)
                pass
        self._last_receive = self._loop.time()
        self._arm_idle_timer()
        if self.is_requestor:
            # Evt2: transport connection confirmed -> AE-2 sends the RQ.
            self._handle(Event.EVT2, self._pending_rq)
        else:
            # Evt5: transport connection indication -> AE-5, ARTIM on.
            self._handle(Event.EVT5, None)

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        self._last_receive = self._loop.time()
        try:
            frames = self.framer.feed(data)
        except PDUError as exc:
            self._protocol_error(exc)
            return
        for pdu_type, body in frames:
            if pdu_type == 0x04 and self.machine.state is State.STA6:
                # DT-2 fast path: no state change, straight to reassembly.
                self._receive_pdata(body)
                continue
            try:
                pdu = _pdu.decode_pdu(pdu_type, body)
            except PDUError as exc:
                self._protocol_error(exc)
                return
            if LOGGER.isEnabledFor(logging.DEBUG):
                LOGGER.debug("received %s in %s", type(pdu).__name__, self.machine.state.name)
            self._handle(_RECEIVE_EVENT[type(pdu)], pdu if pdu_type != 0x04 else body)
            if self.transport is None or self.transport.is_closing():
                return

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self.machine.state is not State.STA1:
            self._handle(Event.EVT17, None)
        self.transport = None
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("connection closed"))
        self._drain_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self.listener.on_closed()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---------------------------------------------------- primitives, down
    def request_association(self, rq: _pdu.AssociateRQ) -> None:
        """Evt1 (A-ASSOCIATE request). The caller opens the TCP connection
        itself (AE-1's "issue transport connect"); Evt2 fires when it is made."""
        self._pending_rq = rq
        self._handle(Event.EVT1, rq)

    def accept_association(self, ac: _pdu.AssociateAC, peer_max_pdu_length: int, context_ids: set[int]) -> None:
        """Evt7 (A-ASSOCIATE response accept)."""
        self.peer_max_pdu_length = peer_max_pdu_length
        self.reassembler.accepted_context_ids = context_ids
        self._handle(Event.EVT7, ac)

    def reject_association(self, rj: _pdu.AssociateRJ) -> None:
        """Evt8 (A-ASSOCIATE response reject)."""
        self._handle(Event.EVT8, rj)

    def association_accepted(self, peer_max_pdu_length: int, context_ids: set[int]) -> None:
        """Requestor: record what the AC negotiated before any P-DATA flows."""
        self.peer_max_pdu_length = peer_max_pdu_length
        self.reassembler.accepted_context_ids = context_ids

    def request_release(self) -> None:
        """Evt11 (A-RELEASE request)."""
        self._handle(Event.EVT11, _pdu.ReleaseRQ())

    def respond_release(self) -> None:
        """Evt14 (A-RELEASE response)."""
        self._handle(Event.EVT14, _pdu.ReleaseRP())

    def abort(self, source: int = 0, reason: int = 0) -> None:
        """Evt15 (A-ABORT request). Harmless once the connection is gone."""
        if self.machine.state is State.STA1 or self.transport is None:
            return
        try:
            self._handle(Event.EVT15, _pdu.Abort(source=source, reason=reason))
        except ChromanetError:
            pass  # no cell for Evt15 here (e.g. Sta13 already): just close
        # AA-1 left us in Sta13 waiting for the peer to close, with ARTIM as
        # the backstop. A local abort does not wait: the A-ABORT PDU is
        # already in the transport's buffer, which close() flushes first.
        self._close_transport()

    def _fragments(self, context_id: int, command: Command, dataset: Any) -> list[Any]:
        if self.machine.state not in _PDATA_STATES:
            raise NotEstablishedError(f"cannot send P-DATA in {self.machine.state.name}")
        transport = self.transport
        if transport is None or transport.is_closing():
            raise NotEstablishedError("the connection is closed")
        return fragment_message(context_id, encode_command(command), dataset, self.peer_max_pdu_length)

    def send_message(self, context_id: int, command: Command, dataset: Any = None) -> None:
        """DT-1 for one whole DIMSE message: encode the command, fragment it
        with the data set (any buffer, never copied) and write it in one go.

        While a large message is being paced out (``send_message_paced``),
        this one waits its turn in order: fragments of two messages never
        interleave on the wire."""
        buffers = self._fragments(context_id, command, dataset)
        if self._pacing is not None:
            self._deferred.append(buffers)
            return
        self.transport.writelines(buffers)  # type: ignore[union-attr]

    async def send_message_paced(self, context_id: int, command: Command, dataset: Any = None) -> None:
        """Like send_message, but a large data set goes out a slice at a
        time, waiting for the transport between slices, so sending a file of
        any size holds at most about PACING_SLICE bytes in the write buffer."""
        if dataset is None or memoryview(dataset).nbytes <= PACING_SLICE:
            self.send_message(context_id, command, dataset)
            return
        while self._pacing is not None:
            await asyncio.shield(self._pacing)
        buffers = self._fragments(context_id, command, dataset)
        self._pacing = self._loop.create_future()
        try:
            start = pending = 0
            for index, buffer in enumerate(buffers):
                pending += len(buffer)
                if pending >= PACING_SLICE:
                    self._write_slice(buffers[start : index + 1])
                    start, pending = index + 1, 0
                    await self.drain()
            self._write_slice(buffers[start:])
        finally:
            done, self._pacing = self._pacing, None
            deferred, self._deferred = self._deferred, []
            if self.transport is not None and not self.transport.is_closing():
                for queued in deferred:
                    self.transport.writelines(queued)
            done.set_result(None)

    def _write_slice(self, buffers: list[Any]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise NotEstablishedError("the connection closed while sending")
        transport.writelines(buffers)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high mark."""
        if not self._writing_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    # -------------------------------------------------------------- inside
    def _receive_pdata(self, body: Any) -> None:
        try:
            events = self.reassembler.feed(body)
        except (PDUError, CommandSetError) as exc:
            self._protocol_error(exc)
            return
        listener = self.listener
        for event in events:
            kind = type(event)
            if kind is DimseMessage:
                listener.on_message(event)  # type: ignore[arg-type]
            elif kind is DatasetChunk:
                listener.on_dataset_chunk(event)  # type: ignore[arg-type]
            else:
                listener.on_command_arrived(event)  # type: ignore[arg-type]

    def _protocol_error(self, exc: Exception) -> None:
        """Evt19: an unrecognised or invalid PDU (or P-DATA contents)."""
        reason = getattr(exc, "abort_reason", ABORT_REASON_INVALID_PDU_PARAMETER_VALUE)
        LOGGER.warning("protocol error from %s: %s", self.peername(), exc)
        self._handle(Event.EVT19, reason)

    def _handle(self, event: Event, data: Any) -> None:
        outputs = self.machine.handle(event, data)
        for output in outputs:
            kind = type(output)
            if kind is SendPDU:
                self._write_pdu(output.pdu)
            elif kind is Indicate:
                self._indicate(output.kind, output.data)
            elif kind is StartARTIM:
                self._start_artim()
            elif kind is StopARTIM:
                self._stop_artim()
            elif kind is CloseTransport:
                self._close_transport()
            elif kind is OpenTransport:
                pass  # the association object opens the connection itself

    def _write_pdu(self, pdu: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if LOGGER.isEnabledFor(logging.DEBUG):
            LOGGER.debug("sending %s", type(pdu).__name__)
        transport.write(_pdu.encode_pdu(pdu))

    def _indicate(self, kind: str, data: Any) -> None:
        listener = self.listener
        if kind == "p-data":
            self._receive_pdata(data)
        elif kind == "associate-rq":
            listener.on_associate_rq(data)
        elif kind == "associate-ac":
            listener.on_associate_ac(data)
        elif kind == "associate-rj":
            listener.on_associate_rj(data)
        elif kind == "release-rq":
            listener.on_release_rq()
        elif kind == "release-rp":
            listener.on_release_rp()
            if self.machine.state is State.STA12:
                # Acceptor side of a release collision (AR-10 took us to
                # Sta12): now our own A-RELEASE response goes out (AR-4).
                self._handle(Event.EVT14, _pdu.ReleaseRP())
        elif kind == "release-collision":
            # Both sides sent A-RELEASE-RQ. The requestor answers at once
            # (Sta9 -> AR-9); the acceptor answers after the peer's RP
            # arrives (Sta10 -> AR-10 -> Sta12, see "release-rp").
            if self.machine.state is State.STA9:
                self._handle(Event.EVT14, _pdu.ReleaseRP())
        elif kind == "abort":
            source, reason = data if data is not None else (0, 0)
            listener.on_abort(source, reason)
        elif kind == "provider-abort":
            listener.on_abort(2, data if data is not None else 0)
        # "transport-closed" and other notices need no action: on_closed
        # follows from connection_lost.

    def _close_transport(self) -> None:
        self._cancel_timers()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # --------------------------------------------------------------- timers
    def _start_artim(self) -> None:
        self._stop_artim()
        if self.artim_timeout is not None:
            self._artim_handle = self._loop.call_later(self.artim_timeout, self._artim_expired)

    def _stop_artim(self) -> None:
        if self._artim_handle is not None:
            self._artim_handle.cancel()
            self._artim_handle = None

    def _artim_expired(self) -> None:
        self._artim_handle = None
        LOGGER.info("ARTIM expired in %s", self.machine.state.name)
        self._handle(Event.EVT18, None)

    def _arm_idle_timer(self) -> None:
        if self.network_timeout is not None:
            self._idle_handle = self._loop.call_at(self._last_receive + self.network_timeout, self._idle_check)

    def _idle_check(self) -> None:
        # Re-arming on each expiry instead of on each received chunk keeps
        # timer work off the receive path.
        self._idle_handle = None
        if self.transport is None:
            return
        assert self.network_timeout is not None
        if self._loop.time() - self._last_receive >= self.network_timeout:
            LOGGER.warning("network timeout: nothing received for %.1f s, aborting", self.network_timeout)
            self.listener.on_abort(2, 0)
            self.abort(source=2, reason=0)
            self._close_transport()
            return
        self._arm_idle_timer()

    def _cancel_timers(self) -> None:
        self._stop_artim()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
