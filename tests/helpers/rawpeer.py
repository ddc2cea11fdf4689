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
