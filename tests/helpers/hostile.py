"""A palette node in a subprocess with short limits, and a raw-socket peer
that builds its PDUs by hand, for the hostile-peer tests.

The node runs as a user runs it (``python -m chromanet.apps.cli serve``), its
log going to a file the tests read; its memory and open files are read from
/proc. It is one process (``--workers 1``): the limits under test are a
node's, and its memory and descriptors are that process's. The peer sends exactly the bytes a test wants, including what no
well-behaved SCU would send.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pydicom import Dataset

from chromanet import _dimse, _pdu, dsutil, uids
from chromanet._dimse import Command
from chromanet._pdata import DimseMessage, Reassembler, fragment_message
from helpers.data import StoredView
from helpers.rawpeer import recv_exact
from helpers.servers import free_port, wait_listening

IO_TIMEOUT = 10.0
IMPLICIT, EXPLICIT = uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian
FIND, GET = uids.ColorPaletteInformationModelFind, uids.ColorPaletteInformationModelGet

# The limits the tests' node runs with (seconds, bytes, connections).
PDU_TIMEOUT = 2.0
IDLE_TIMEOUT = 3.0
PER_HOST = 3
MAX_IDENTIFIER = 64 * 1024


@dataclass
class Node:
    process: subprocess.Popen[Any]
    port: int
    data_dir: Path
    log_path: Path

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def spool(self) -> list[str]:
        return sorted(os.listdir(self.data_dir / "incoming"))

    @property
    def stored(self) -> StoredView:
        """What the node's archive holds (its index and files)."""
        return StoredView(self.data_dir)


@contextlib.contextmanager
def running_node(tmp_path: Path, *extra: str) -> Iterator[Node]:
    port = free_port()
    data_dir = tmp_path / "node"
    log_path = tmp_path / "node.log"
    args = [
        sys.executable, "-m", "chromanet.apps.cli", "serve", "--port", str(port), "--bind", "127.0.0.1",
        "--data-dir", str(data_dir), "--log-level", "INFO", "--default-access", "all", "--workers", "1",
        "--pdu-timeout", str(PDU_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT),
        "--max-associations-per-host", str(PER_HOST), "--max-identifier-size", str(MAX_IDENTIFIER),
        *extra,
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, process, timeout=60)
        yield Node(process, port, data_dir, log_path)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait(10)


# ------------------------------------------------------------------ PDUs
def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def raw_associate_rq(
    contexts: list[tuple[int, str, list[str]]],
    called: bytes = b"CHROMANET",
    calling: bytes = b"HOSTILE",
    max_length: int = 16384,
    scp_roles: tuple[str, ...] = (),
) -> bytes:
    """An A-ASSOCIATE-RQ written byte by byte, so that it can break the
    rules the encoder enforces (context IDs used twice, bad titles...)."""
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, s.encode()) for s in syntaxes)
        items += _item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + sub)
    roles = b"".join(
        _item(0x54, struct.pack(">H", len(uid)) + uid.encode() + b"\x00\x01") for uid in scp_roles
    )  # SCP/SCU Role Selection: we propose to be SCP (of a C-GET's C-STOREs)
    items += _item(0x50, _item(0x51, struct.pack(">I", max_length)) + _item(0x52, b"1.2.3.4") + roles)
    body = struct.pack(">HH", 1, 0) + called.ljust(16)[:16] + calling.ljust(16)[:16] + b"\0" * 32 + items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def recv_pdu(sock: socket.socket) -> Any:
    header = recv_exact(sock, 6)
    (length,) = struct.unpack(">I", header[2:6])
    return _pdu.decode_pdu_bytes(header + recv_exact(sock, length))


def connect(node: Node, source: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    if source is not None:
        sock.bind((source, 0))
    sock.connect(node.address)
    return sock


def associate(
    node: Node,
    contexts: list[tuple[int, str, list[str]]] | None = None,
    source: str | None = None,
    scp_roles: tuple[str, ...] = (),
) -> socket.socket:
    """A socket on an established association (or AssertionError)."""
    sock = connect(node, source)
    sock.sendall(raw_associate_rq(contexts or [(1, uids.Verification, [IMPLICIT])], scp_roles=scp_roles))
    answer = recv_pdu(sock)
    assert isinstance(answer, _pdu.AssociateAC), answer
    return sock


def message_bytes(context_id: int, command: Command, dataset: bytes | None = None) -> bytes:
    return b"".join(bytes(b) for b in fragment_message(context_id, _dimse.encode_command(command), dataset, 16384))


def echo_rq(message_id: int) -> Command:
    return Command(_dimse.C_ECHO_RQ, affected_sop_class_uid=uids.Verification, message_id=message_id,
                   command_data_set_type=_dimse.NO_DATASET)


def query_rq(field: int, model: str, message_id: int) -> Command:
    return Command(field, affected_sop_class_uid=model, message_id=message_id, priority=2,
                   command_data_set_type=_dimse.DATASET_PRESENT)


def store_rq(sop_instance: str, message_id: int) -> Command:
    return Command(_dimse.C_STORE_RQ, affected_sop_class_uid=uids.ColorPaletteStorage,
                   affected_sop_instance_uid=sop_instance, message_id=message_id, priority=2,
                   command_data_set_type=_dimse.DATASET_PRESENT)


def read_message(sock: socket.socket, context_ids: set[int]) -> DimseMessage:
    """The next whole DIMSE message from the node."""
    reassembler = Reassembler(accepted_context_ids=context_ids)
    while True:
        pdu_type, body = _raw(sock)
        if pdu_type != 0x04:
            raise AssertionError(f"PDU type 0x{pdu_type:02X} where P-DATA was expected")
        for event in reassembler.feed(body):
            if isinstance(event, DimseMessage):
                return event


def _raw(sock: socket.socket) -> tuple[int, bytes]:
    header = recv_exact(sock, 6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, recv_exact(sock, length)


def identifier(syntax: str = IMPLICIT, **keys: Any) -> bytes:
    """An encoded identifier; values may break their VR on purpose."""
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warning for a value too long
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        return dsutil.encode_dataset(ds, syntax)


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_for(predicate: Any, timeout: float = IO_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def still_serves(node: Node) -> bool:
    """A fresh association gets its C-ECHO answered with Success."""
    sock = associate(node)
    try:
        sock.sendall(message_bytes(1, echo_rq(1)))
        return read_message(sock, {1}).command.status == 0
    finally:
        sock.close()
