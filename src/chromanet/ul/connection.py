"""The asyncio driver of one ``UpperLayer``: socket, clock and one timer.

``ULConnection`` is the asyncio ``Protocol`` under every association. All
protocol decisions live in the sans-IO ``upper_layer.UpperLayer``; this class
only carries them out on the event loop:

- bytes from ``data_received`` go in with ``loop.time()``; the indications
  that come back go to the listener (the association object above);
- what the Upper Layer has to send goes to ``transport.write``; a DIMSE
  message's PDUs go to ``transport.writelines`` as the buffers
  ``fragment_message`` built (the data set is never copied), a large data set
  paced out in slices with the transport's flow control;
- one ``call_at`` timer stands for every deadline of the Upper Layer (ARTIM,
  network idle). It is re-armed lazily: a deadline that moved later (each
  received chunk moves the idle limit) is found when the timer fires, so the
  receive path never touches the timer;
- on Linux, TCP_QUICKACK is re-armed after a receive that may leave the
  peer waiting for our ACK (``tcp_quickack``), so the peer's Nagle
  algorithm never waits on our delayed ACK (see ``ULConnection``).

Nothing here polls or sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable, Protocol

from chromanet import _pdu
from chromanet._dimse import Command
from chromanet._pdata import CommandArrived, DatasetChunk, DimseMessage
from chromanet.logutil import peer_log
from chromanet.status import Status
from chromanet.ul.statemachine import State
from chromanet.ul.tls import TlsInfo, tls_info_of
from chromanet.ul.upper_layer import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    AssociateRequested,
    NotEstablishedError,
    ReleaseConfirmed,
    ReleaseRequested,
    UpperLayer,
)

__all__ = ["ULConnection", "ConnectionListener", "NotEstablishedError", "PACING_SLICE"]

LOGGER = logging.getLogger("chromanet.ul")

# Data sets larger than this are written a slice of this size at a time.
PACING_SLICE = 1 << 20

_MESSAGE_KINDS = (DimseMessage, DatasetChunk, CommandArrived)

# Responses after which the peer goes on sending without waiting for us.
_PENDING = (int(Status.PENDING), int(Status.PENDING_WARNING))

# Linux only; elsewhere there is nothing to re-arm and quick ACKs are off.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

# The transport's write buffer high mark: above it, reading from the peer
# pauses and paced writers wait (flow control both ways).
WRITE_BUFFER_HIGH = 256 * 1024

# Linux: once a connection streams many small responses (drain_below), the
# kernel takes at most this many bytes beyond what it has sent
# (TCP_NOTSENT_LOWAT); the rest waits in the transport's buffer.
_TCP_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)
NOTSENT_LOWAT = 16 * 1024

# Held messages (``send_message(..., hold=True)``) go out together at the
# latest when this many buffers are held (a few dozen pending responses),
# and a message with a data set larger than HOLD_DATASET_LIMIT is never held.
HOLD_BUFFERS = 96
HOLD_DATASET_LIMIT = 16 * 1024


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


class WireHook:
    """Cuts the bytes of one connection into whole PDUs, each way, and
    hands each PDU to ``on_pdu(sent, data)``. Used only while a handler
    watches the wire; a connection nobody watches has none."""

    __slots__ = ("on_pdu", "_in", "_out")

    def __init__(self, on_pdu: Callable[[bool, bytes], None]) -> None:
        self.on_pdu = on_pdu
        self._in = bytearray()
        self._out = bytearray()

    def received(self, data: Any) -> None:
        self._cut(self._in, data, False)

    def sent(self, data: Any) -> None:
        self._cut(self._out, data, True)

    def _cut(self, pending: bytearray, data: Any, sent: bool) -> None:
        pending += data
        while len(pending) >= 6:
            end = 6 + int.from_bytes(pending[2:6], "big")
            if len(pending) < end:
                return
            pdu = bytes(pending[:end])
            del pending[:end]
            try:
                self.on_pdu(sent, pdu)
            except Exception:
                LOGGER.exception("wire watcher failed")


class _WatchedTransport:
    """A transport that shows every write to a ``WireHook`` first."""

    def __init__(self, inner: Any, hook: WireHook) -> None:
        self.inner = inner
        self._hook = hook

    def write(self, data: Any) -> None:
        self._hook.sent(data)
        self.inner.write(data)

    def writelines(self, buffers: Any) -> None:
        buffers = list(buffers)
        for buffer in buffers:
            self._hook.sent(buffer)
        self.inner.writelines(buffers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ULConnection(asyncio.Protocol):
    """Drives one ``UpperLayer`` over one TCP connection.

    ``requestor`` says which side of the association this is; the
    ``listener`` receives the primitives. The time limits (seconds, None:
    none) are the Upper Layer's: ``artim_timeout``, ``network_timeout``,
    ``pdu_timeout`` and ``idle_timeout``.

    Flow control: while the transport's write buffer is above its high mark
    (the peer does not read what we send), nothing more is read from the
    peer, so a peer that pipelines requests without reading the responses
    cannot make us queue responses without bound. The layer above may hold
    reading too (``hold_reading``), e.g. while the peer has more operations
    outstanding than the negotiated window. Reading resumes when every hold
    is released.

    Quick ACKs (``tcp_quickack``, on by default): a peer that runs Nagle's
    algorithm (DCMTK without ``TCP_NODELAY=1``, pynetdicom) and writes a
    PDU or a message in more than one ``send`` holds each later piece until
    its first piece is acknowledged; Linux delays that ACK up to 40 ms when
    we have nothing to send back, so every such message stalls, in both
    roles (a store into us; the responses to our finds, stores and moves).
    Linux's TCP_QUICKACK makes the kernel send the pending ACK now, but it
    is not sticky: the kernel goes back to delaying ACKs on its own (e.g.
    when we answer quickly, it takes the exchange for an interactive one),
    so it is set again after each receive that may leave the peer waiting
    for our ACK (``_peer_may_wait_for_ack``), one ``setsockopt`` each. A
    socket that refuses it (not TCP, or a platform without it) is left
    alone from then on.
    """

    def __init__(
        self,
        listener: ConnectionListener,
        *,
        requestor: bool,
        max_receive_pdu_length: int,
        artim_timeout: float | None = 30.0,
        network_timeout: float | None = None,
        pdu_timeout: float | None = None,
        idle_timeout: float | None = None,
        tcp_quickack: bool = True,
    ) -> None:
        self.listener = listener
        self.tcp_quickack = tcp_quickack
        self.is_requestor = requestor
        self.upper_layer = UpperLayer(
            requestor=requestor,
            max_receive_pdu_length=max_receive_pdu_length,
            artim_timeout=artim_timeout,
            network_timeout=network_timeout,
            pdu_timeout=pdu_timeout,
            idle_timeout=idle_timeout,
        )
        self.transport: asyncio.Transport | None = None
        #: A ``WireHook`` while EVT_DATA_RECV / EVT_DATA_SENT is bound, else None.
        self.wire_hook: WireHook | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._pacing: asyncio.Future[None] | None = None  # a large message is going out
        self._deferred: list[list[Any]] = []  # messages sent meanwhile, in order
        # Messages held to go out with the next one in a single write, and
        # the loop callback that writes them if nothing else does first.
        self._held: list[Any] = []
        self._flush_handle: asyncio.Handle | None = None
        # True while what one receive brought is being delivered: messages
        # sent meanwhile (the answers of requests served inline) are held
        # and go out in one write once the delivery is done.
        self._delivering = False
        # Whether the message whose data set is streaming in is a request.
        self._streaming_request = False
        self._addresses: tuple[tuple[str, int], tuple[str, int]] = (("", 0), ("", 0))
        self.tls: TlsInfo | None = None
        #: Why the transport went away, when it said (a reset, a TLS alert).
        self.lost_exception: Exception | None = None
        self._read_holds: set[str] = set()  # reasons reading is paused
        # The socket TCP_QUICKACK is re-armed on after each receive, or None.
        self._quickack_socket: Any = None
        # The TCP socket, and whether drain_below limited its unsent bytes.
        self._tcp_socket: Any = None
        self._notsent_limited = False
        #: Called once the transport is up and, for a requestor, the
        #: A-ASSOCIATE-RQ has been written.
        self.on_connected: Callable[[], None] | None = None

    # ----------------------------------------------------------- properties
    @property
    def state(self) -> State:
        return self.upper_layer.state

    @property
    def is_established(self) -> bool:
        return self.upper_layer.is_established

    @property
    def peer_max_pdu_length(self) -> int:
        return self.upper_layer.peer_max_pdu_length

    @property
    def addresses(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """(local, peer) socket addresses, kept after the connection closed."""
        return self._addresses

    @property
    def acks_quickly(self) -> bool:
        """True while TCP_QUICKACK is re-armed after each receive (asked
        for, on Linux, on a socket that has not refused it)."""
        return self._quickack_socket is not None

    def peername(self) -> tuple[str, int] | None:
        return self._addresses[1] if self._addresses[1][0] else None

    # ------------------------------------------------------- wire watching
    def set_wire_hook(self, hook: WireHook | None) -> None:
        """Watch the raw bytes both ways (EVT_DATA_RECV / EVT_DATA_SENT).

        None (the default) costs one attribute check per receive and nothing
        per write: only a watched connection writes through a
        ``_WatchedTransport``."""
        self.wire_hook = hook
        transport = self.transport
        if transport is None:
            return  # applied in connection_made
        if isinstance(transport, _WatchedTransport):
            transport = transport.inner
        self.transport = transport if hook is None else _WatchedTransport(transport, hook)  # type: ignore[assignment]

    # ------------------------------------------------------ asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.wire_hook is not None:
            self.transport = _WatchedTransport(transport, self.wire_hook)  # type: ignore[assignment]
        # Responses beyond this many unsent bytes pause reading from the
        # peer (see the class docstring); writes below it never wait.
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                # Without it, a request/response exchange of small PDUs stalls
                # on delayed ACKs (~40 ms per message on Linux).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._tcp_socket = sock
            except OSError:  # not TCP (a UNIX socket in tests)
                pass
            if self.tcp_quickack and _TCP_QUICKACK is not None:
                self._quickack_socket = sock
        #: The TLS parameters when the connection runs on TLS, else None.
        self.tls = tls_info_of(transport)
        local = transport.get_extra_info("sockname") or ("", 0)
        peer = transport.get_extra_info("peername") or ("", 0)
        if isinstance(local, tuple) and isinstance(peer, tuple):
            self._addresses = ((str(local[0]), int(local[1])), (str(peer[0]), int(peer[1])))
            self.upper_layer.peer_host = str(peer[0])
            self.upper_layer.peer_label = f"{peer[0]}:{peer[1]}"
        self._after(self.upper_layer.connection_made(self._loop.time()))
        if self.on_connected is not None:
            self.on_connected()

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        if self.wire_hook is not None:  # EVT_DATA_RECV bound: the only cost here
            self.wire_hook.received(data)
        upper = self.upper_layer
        try:
            indications = upper.receive_data(data, self._loop.time())
            if self._quickack_socket is not None and self._peer_may_wait_for_ack(indications):
                self._rearm_quickack()  # before delivering: the peer's next piece comes meanwhile
            # In Sta6 a receive only moves the idle deadline later (found when
            # the timer fires); elsewhere it may start or stop ARTIM.
            if upper.has_data_to_send or upper.close_requested or upper.state is not State.STA6:
                self._carry_out()
            if indications:
                self._delivering = True
                try:
                    self._deliver(indications)
                finally:
                    self._delivering = False
                if self._held:
                    self._write_held()
        except Exception:
            # A bug of ours, not the peer's doing: said once with its
            # traceback, and the association aborted, instead of the
            # exception escaping into the event loop's transport.
            LOGGER.error("internal error on the connection from %s; aborting", upper.peer_label, exc_info=True)
            self.abort(source=2, reason=0)

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._held = []
        self.lost_exception = exc
        upper = self.upper_layer
        if exc is not None and upper.state is not State.STA1 and not upper.close_requested:
            # A reset is an ordinary failure of a peer: one line, no traceback.
            peer_log(LOGGER, logging.INFO, upper.peer_host, "connection from %s lost: %s", upper.peer_label, exc)
        indications = upper.connection_lost()
        self.transport = None
        self._deliver(indications)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("connection closed"))
        self._drain_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self.listener.on_closed()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.hold_reading("unread responses")

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.release_reading("unread responses")
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def hold_reading(self, reason: str) -> None:
        """Stop reading from the peer until ``release_reading(reason)``."""
        if reason in self._read_holds:
            return
        self._read_holds.add(reason)
        transport = self.transport
        if len(self._read_holds) == 1 and transport is not None and not transport.is_closing():
            LOGGER.debug("reading from %s paused: %s", self.peername(), reason)
            transport.pause_reading()

    def release_reading(self, reason: str) -> None:
        if reason not in self._read_holds:
            return
        self._read_holds.discard(reason)
        transport = self.transport
        if not self._read_holds and transport is not None and not transport.is_closing():
            LOGGER.debug("reading from %s resumed", self.peername())
            transport.resume_reading()

    # ---------------------------------------------------- primitives, down
    def request_association(self, rq: _pdu.AssociateRQ) -> None:
        """Evt1 (A-ASSOCIATE request). The caller opens the TCP connection
        itself (AE-1); the RQ goes out when it is made."""
        self.upper_layer.request_association(rq)

    def accept_association(self, ac: _pdu.AssociateAC, peer_max_pdu_length: int, context_ids: set[int]) -> bool:
        """Evt7 (A-ASSOCIATE response accept); False when too late (see UpperLayer)."""
        accepted = self.upper_layer.accept_association(ac, peer_max_pdu_length, context_ids)
        self._after([])
        return accepted

    def reject_association(self, rj: _pdu.AssociateRJ) -> None:
        """Evt8 (A-ASSOCIATE response reject)."""
        self.upper_layer.reject_association(rj)
        self._after([])

    def association_accepted(self, peer_max_pdu_length: int, context_ids: set[int]) -> None:
        """Requestor: record what the AC negotiated before any P-DATA flows."""
        self.upper_layer.association_accepted(peer_max_pdu_length, context_ids)

    def request_release(self) -> None:
        """Evt11 (A-RELEASE request)."""
        self.upper_layer.request_release()
        self._after([])

    def respond_release(self) -> None:
        """Evt14 (A-RELEASE response)."""
        self.upper_layer.respond_release()
        self._after([])

    def abort(self, source: int = 0, reason: int = 0) -> None:
        """Evt15 (A-ABORT request); the transport closes once the A-ABORT PDU
        is written. Harmless once the connection is gone."""
        if self.transport is None:
            return
        self.upper_layer.abort(source, reason)
        self._after([])

    def send_message(self, context_id: int, command: Command, dataset: Any = None, *, hold: bool = False) -> None:
        """DT-1 for one whole DIMSE message, written in one go.

        ``hold``: another message is likely to follow before the task that
        sends this one yields (a pending C-FIND response and the next match
        or the final one; a pending C-GET response and the next C-STORE-RQ),
        so this one waits for it and both go out in one write: one syscall
        and one segment instead of two. A held message never waits longer
        than the current pass of the event loop: a callback scheduled with
        it writes whatever is still held. Everything written after it (any
        message, an A-RELEASE, an A-ABORT) goes out after it. Messages sent
        while what one receive brought is delivered (the answers of requests
        served inline: several C-ECHOs, C-STOREs or C-FINDs in one read)
        are held the same way and written together when the delivery ends.

        While a large message is being paced out (``send_message_paced``),
        this one waits its turn in order: fragments of two messages never
        interleave on the wire."""
        buffers = self._buffers(context_id, command, dataset)
        if self._pacing is not None:
            self._deferred.append(buffers)
            return
        held = self._held
        if (hold or self._delivering) and (dataset is None or len(dataset) <= HOLD_DATASET_LIMIT):
            held += buffers
            if len(held) >= HOLD_BUFFERS:
                self._write_held()
            elif self._flush_handle is None and not self._delivering:
                self._flush_handle = self._loop.call_soon(self._write_held)
            return
        if held:
            held += buffers
            buffers = held
            self._held = []
        self.transport.writelines(buffers)  # type: ignore[union-attr]

    def _write_held(self) -> None:
        """Write the held messages now (from the scheduled callback, before
        anything else is written, or when enough are held)."""
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()
        held = self._held
        if not held:
            return
        self._held = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(held)

    async def send_message_paced(
        self, context_id: int, command: Command, dataset: Any = None, *, hold: bool = False
    ) -> None:
        """Like send_message, but a large data set goes out a slice at a
        time, waiting for the transport between slices, so sending a file of
        any size holds at most about PACING_SLICE bytes in the write buffer.
        ``hold``: as for send_message (a small message only)."""
        if dataset is None or memoryview(dataset).nbytes <= PACING_SLICE:
            self.send_message(context_id, command, dataset, hold=hold)
            return
        while self._pacing is not None:
            await asyncio.shield(self._pacing)
        buffers = self._buffers(context_id, command, dataset)
        self._write_held()
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

    @property
    def writing_paused(self) -> bool:
        """True while the transport's write buffer is above its high mark
        (``drain`` would wait)."""
        return self._writing_paused

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high mark."""
        if not self._writing_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    async def drain_below(self, limit: int) -> None:
        """Wait until at most ``limit`` bytes are unsent in the transport's
        write buffer (pending responses that should not run far ahead of
        what the peer reads): the buffer's marks are lowered to ``limit``
        while waiting, so ``resume_writing`` says when (reading from the
        peer pauses meanwhile, as for any full buffer)."""
        self._write_held()
        if not self._notsent_limited:
            # From the first on: what the peer has not taken yet stays in
            # the transport's buffer, where this sees it, not in a kernel
            # send buffer that grows to megabytes. Left alone on
            # connections that never stream responses (bulk sends).
            self._notsent_limited = True
            if self._tcp_socket is not None and _TCP_NOTSENT_LOWAT is not None:
                try:
                    self._tcp_socket.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
                except OSError:
                    pass
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() <= limit:
            return
        transport.set_write_buffer_limits(high=limit, low=limit // 2)  # type: ignore[attr-defined]
        try:
            await self.drain()
        finally:
            transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)  # type: ignore[attr-defined]

    # -------------------------------------------------------------- inside
    def _peer_may_wait_for_ack(self, indications: list[Any]) -> bool:
        """Whether the peer may now be holding bytes back until we
        acknowledge what it sent (Nagle: a small write waits while earlier
        data is unacknowledged).

        It may, in the middle of a PDU or of a message (its next piece is
        held), and after a pending response (the next response follows
        without waiting for us). It does not after a whole request, which we
        answer (the answer carries the ACK), nor after a final response (the
        peer waits for our next request). Skipping those keeps a plain
        request/response exchange at no extra syscall and no extra pure ACK
        segment: re-arming after every receive cost chromanet <-> chromanet
        about 10 % of its C-ECHO rate in one run (benches/e2e.py --nagle,
        cn-async: 4,160 against 4,639 msg/s; a uvloop setsockopt takes ~4 us,
        and the pure ACK it pushes out costs both kernels a segment). Now a
        C-ECHO or a C-STORE re-arms nothing, a one-match C-FIND about 0.6
        times on the requestor."""
        upper = self.upper_layer
        if upper.close_requested:
            return False  # nothing more will be read
        if upper.in_pdu or upper.in_message or not indications:
            return True
        last = indications[-1]
        kind = type(last)
        if kind is DimseMessage:
            command = last.command
            return not command.is_request and command.status in _PENDING
        if kind is DatasetChunk:
            # The end of a streamed data set (a node streams every one): as
            # for a whole message, a request is answered, so no re-arm. Its
            # command came in this receive or an earlier one.
            for indication in indications:
                if type(indication) is CommandArrived:
                    command = indication.command
                    self._streaming_request = command.is_request
            return not self._streaming_request
        # An association PDU: rare, cheap.
        return True

    def _rearm_quickack(self) -> None:
        """Acknowledge what was just read now, not in up to 40 ms (the
        kernel sends its pending ACK at once and leaves its delayed-ACK
        mode until we next send)."""
        try:
            self._quickack_socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError as exc:  # not TCP, or the option is refused: stop trying here
            self._quickack_socket = None
            LOGGER.debug("TCP_QUICKACK not available on the connection from %s: %s", self.upper_layer.peer_label, exc)

    def _buffers(self, context_id: int, command: Command, dataset: Any) -> list[Any]:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise NotEstablishedError("the connection is closed")
        return self.upper_layer.message_buffers(context_id, command, dataset)

    def _write_slice(self, buffers: list[Any]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise NotEstablishedError("the connection closed while sending")
        transport.writelines(buffers)

    def _after(self, indications: list[Any]) -> None:
        """After a call into the Upper Layer: write, close, re-arm, deliver."""
        self._carry_out()
        if indications:
            self._deliver(indications)

    def _carry_out(self) -> None:
        upper = self.upper_layer
        transport = self.transport
        out = upper.data_to_send()
        if out and transport is not None and not transport.is_closing():
            if self._held:
                self._write_held()
            transport.writelines(out)
        if upper.close_requested:
            self._cancel_timer()
            if transport is not None and not transport.is_closing():
                transport.close()
            return
        self._arm_timer()

    def _deliver(self, indications: list[Any]) -> None:
        listener = self.listener
        upper = self.upper_layer
        for indication in indications:
            kind = type(indication)
            if upper.close_requested and kind in _MESSAGE_KINDS:
                # The association is being closed: nothing more to serve.
                # A whole response that came before the A-ABORT (in the same
                # read) still reaches the request it answers: with several
                # requests outstanding, it says which of them were done.
                if kind is not DimseMessage or indication.command.is_request:
                    continue
            if kind is DimseMessage:
                listener.on_message(indication)
            elif kind is DatasetChunk:
                listener.on_dataset_chunk(indication)
            elif kind is CommandArrived:
                self._streaming_request = indication.command.is_request
                listener.on_command_arrived(indication)
            elif kind is AssociateRequested:
                listener.on_associate_rq(indication.rq)
            elif kind is AssociateAccepted:
                listener.on_associate_ac(indication.ac)
            elif kind is AssociateRejected:
                listener.on_associate_rj(indication.rj)
            elif kind is ReleaseRequested:
                listener.on_release_rq()
            elif kind is ReleaseConfirmed:
                listener.on_release_rp()
            elif kind is Aborted:
                listener.on_abort(indication.source, indication.reason)

    # --------------------------------------------------------------- timer
    def set_network_timeout(self, value: float | None) -> None:
        """A new network timeout, from any thread: applied on the loop, where
        the timer is re-armed (a shorter one may be due at once)."""
        self._loop.call_soon_threadsafe(self._apply_network_timeout, value)

    def _apply_network_timeout(self, value: float | None) -> None:
        self.upper_layer.network_timeout = value
        if self.transport is not None and not self.upper_layer.close_requested:
            self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.upper_layer.get_timer()
        if deadline is None:
            self._cancel_timer()
        elif self._timer_at is None or deadline < self._timer_at:
            self._cancel_timer()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = self._timer_at = None
        if self.transport is None:
            return
        self._after(self.upper_layer.handle_timer(self._loop.time()))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
