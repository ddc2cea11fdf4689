"""A peer that speaks PDUs over a plain blocking socket.

For what a chromanet AE cannot be made to send or answer: bad or
out-of-state PDUs, a data set cut off half-way, a connection dropped
mid-association. Every socket gets a timeout, so every read is bounded.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any, Callable

from chromanet import _pdu
from helpers.waits import NETWORK_TIMEOUT

IO_TIMEOUT = 5.0


def recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def recv_raw_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU as (PDU type, body), not decoded."""
    header = recv_exact(sock, 6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, recv_exact(sock, length)


def recv_pdu(sock: socket.socket) -> _pdu.PDU:
    """The next PDU, decoded."""
    header = recv_exact(sock, 6)
    (length,) = struct.unpack(">I", header[2:6])
    return _pdu.decode_pdu_bytes(header + recv_exact(sock, length))


def wait_closed(sock: socket.socket) -> bool:
    """True when the peer closed the connection (reads EOF) in time."""
    sock.settimeout(IO_TIMEOUT)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def pdata(context_id: int, control: int, fragment: bytes) -> bytes:
    """A P-DATA-TF with one PDV: ``control`` is the message control header
    (bit 0 command, bit 1 last fragment)."""
    pdv = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def raw_associate(address: tuple[str, int], rq: Any, timeout: float = NETWORK_TIMEOUT) -> socket.socket:
    """Connect, send the A-ASSOCIATE-RQ ``rq`` and read the A-ASSOCIATE-AC;
    the caller closes the socket."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.sendall(_pdu.encode_pdu(rq))
        pdu_type, _ = recv_raw_pdu(sock)
        assert pdu_type == 0x02, "expected an A-ASSOCIATE-AC"
    except BaseException:
        sock.close()
        raise
    return sock


class FakeAcceptor:
    """A one-connection TCP server whose answer to the RQ is scripted:
    ``script(conn, fake)`` runs after the RQ arrived (``fake.received``);
    ``closed_by_peer`` is set when the requestor closed the connection."""

    def __init__(self, script: Callable[[socket.socket, FakeAcceptor], Any]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[_pdu.PDU] = []
        self.closed_by_peer = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.listener.settimeout(IO_TIMEOUT)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.settimeout(IO_TIMEOUT)
        try:
            self.received.append(recv_pdu(conn))
            self.script(conn, self)
            if wait_closed(conn):
                self.closed_by_peer.set()
        except (OSError, ConnectionError):
            self.closed_by_peer.set()
        finally:
            conn.close()
            self.listener.close()


def partial_store(port: int, dataset_bytes: bytes, sop_instance_uid: str, called: str = "CHROMANET") -> socket.socket:
    """Associate with 127.0.0.1:``port`` and send a C-STORE-RQ (Color
    Palette Storage, Explicit VR Little Endian) whose data set stops
    half-way; the socket, still open."""
    from chromanet import _dimse, uids
    from chromanet.ul.negotiation import ContextSpec, build_associate_rq

    rq = build_associate_rq(
        called, "RAW", [ContextSpec(uids.ColorPaletteStorage, [uids.ExplicitVRLittleEndian])], max_pdu_length=0
    )
    sock = raw_associate(("127.0.0.1", port), rq, timeout=NETWORK_TIMEOUT)
    command = _dimse.encode_command(
        _dimse.Command(
            _dimse.C_STORE_RQ,
            affected_sop_class_uid=uids.ColorPaletteStorage,
            affected_sop_instance_uid=sop_instance_uid,
            message_id=1,
            priority=0,
            command_data_set_type=_dimse.DATASET_PRESENT,
        )
    )
    half = dataset_bytes[: len(dataset_bytes) // 2]
    for control, fragment in ((0x03, command), (0x00, half)):
        sock.sendall(pdata(1, control, fragment))
    return sock


class RawRetrieveScu:
    """A C-GET SCU over a plain socket that answers the C-STORE
    sub-operations only when the test says so. A chromanet or pynetdicom
    SCU answers each as it comes; this one can leave many unanswered, so a
    test sees how many the SCP sends before it waits for a response.

    Context 1 is Color Palette Q/R Get, context 3 Color Palette Storage
    with the SCP role; ``window`` is the Asynchronous Operations Window
    item proposed (None: none, synchronous)."""

    def __init__(self, port: int, window: tuple[int, int] | None, called: str = "QRSCP") -> None:
        from chromanet import uids
        from chromanet._pdata import Reassembler
        from chromanet.ul.negotiation import ContextSpec, build_associate_rq

        syntax = [uids.ExplicitVRLittleEndian]
        rq = build_associate_rq(
            called,
            "RAWSCU",
            [
                ContextSpec(uids.ColorPaletteInformationModelGet, syntax),
                ContextSpec(uids.ColorPaletteStorage, syntax, scu_role=False, scp_role=True),
            ],
            max_pdu_length=0,
            async_ops_window=window,
        )
        self.sock = raw_associate(("127.0.0.1", port), rq)
        self._reassembler = Reassembler(accepted_context_ids={1, 3})
        self._messages: list[Any] = []

    def send(self, context_id: int, command: Any, dataset: bytes | None = None) -> None:
        from chromanet import _dimse
        from chromanet._pdata import fragment_message

        encoded = _dimse.encode_command(command)
        self.sock.sendall(b"".join(bytes(b) for b in fragment_message(context_id, encoded, dataset, 16384)))

    def next_message(self, timeout: float = IO_TIMEOUT) -> Any:
        """The next whole DIMSE message, or None when none came within
        ``timeout`` seconds (a bound on the wait, not a measurement)."""
        from chromanet._pdata import DimseMessage

        self.sock.settimeout(timeout)
        try:
            while not self._messages:
                pdu_type, body = recv_raw_pdu(self.sock)
                if pdu_type != 0x04:
                    raise AssertionError(f"PDU type 0x{pdu_type:02X} where P-DATA was expected")
                self._messages += [m for m in self._reassembler.feed(body) if isinstance(m, DimseMessage)]
        except socket.timeout:
            return None
        finally:
            self.sock.settimeout(IO_TIMEOUT)
        return self._messages.pop(0)

    def answer_store(self, request: Any, status: int) -> None:
        """The C-STORE-RSP to the sub-operation ``request`` (a DimseMessage)."""
        from chromanet import _dimse

        command = request.command
        self.send(
            request.context_id,
            _dimse.Command(
                _dimse.C_STORE_RSP,
                affected_sop_class_uid=command.affected_sop_class_uid,
                affected_sop_instance_uid=command.affected_sop_instance_uid,
                message_id_being_responded_to=command.message_id,
                command_data_set_type=_dimse.NO_DATASET,
                status=status,
            ),
        )

    def close(self) -> None:
        self.sock.close()
