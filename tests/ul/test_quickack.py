"""TCP_QUICKACK after each receive (``AE.tcp_quickack``): asked for on
every connection chromanet makes or accepts, TLS or not, and left alone when
turned off, when the platform has no such option, or once the socket refused
it. Correctness only: what it is for (no ~40 ms stalls with peers running
Nagle's algorithm) is measured in ``benches/e2e.py --nagle``, never timed
here."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
import uvloop

from chromanet._dimse import Command
from chromanet._pdata import CommandArrived, DatasetChunk, DimseMessage
from chromanet.ul import connection as connection_module
from chromanet.ul.connection import ULConnection
from helpers.servers import configure_scp_ae, scu_ae
from helpers.tls import Pki, client_ssl, server_ssl
from helpers.waits import WAIT_TIMEOUT, until

QUICKACK = getattr(socket, "TCP_QUICKACK", None)
linux_only = pytest.mark.skipif(QUICKACK is None, reason="TCP_QUICKACK is Linux's")
LOOPS = {"uvloop": uvloop.run, "asyncio": asyncio.run}


# ------------------------------------------------ a fake transport and socket
class FakeSocket:
    """Records every setsockopt; ``refuse`` makes TCP_QUICKACK raise."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.refuse = refuse

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.calls.append((level, option, value))
        if self.refuse and option == QUICKACK:
            raise OSError(92, "Protocol not available")

    def quickacks(self) -> int:
        return sum(1 for call in self.calls if call[1] == QUICKACK)


class FakeTransport(asyncio.Transport):
    def __init__(self, sock: FakeSocket) -> None:
        super().__init__()
        self.sock = sock
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"socket": self.sock, "sockname": ("127.0.0.1", 104), "peername": ("127.0.0.1", 40000)}.get(
            name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def writelines(self, data: Any) -> None:
        self.written.extend(bytes(b) for b in data)

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class NullListener:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


# Part of an A-ASSOCIATE-RQ: a read that leaves a PDU incomplete (the case
# of a peer writing a PDU in pieces), nothing to answer yet.
PIECE = bytes([0x01, 0x00, 0x00, 0x00, 0x00, 0x44]) + b"\x00\x01"


def drive(tcp_quickack: bool = True, refuse: bool = False, reads: int = 3) -> tuple[FakeSocket, ULConnection]:
    async def body() -> tuple[FakeSocket, ULConnection]:
        sock = FakeSocket(refuse)
        conn = ULConnection(NullListener(), requestor=False, max_receive_pdu_length=16382, tcp_quickack=tcp_quickack)
        conn.connection_made(FakeTransport(sock))
        for _ in range(reads):
            conn.data_received(PIECE[:2])
        conn.connection_lost(None)
        return sock, conn

    return asyncio.run(body())


@linux_only
def test_rearmed_after_every_receive() -> None:
    sock, conn = drive(reads=3)
    assert sock.quickacks() == 3
    assert (socket.IPPROTO_TCP, QUICKACK, 1) in sock.calls
    assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in sock.calls


def test_off_sets_nothing_but_nodelay() -> None:
    sock, conn = drive(tcp_quickack=False)
    assert sock.calls == [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    assert not conn.acks_quickly


def test_platform_without_the_option_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "_TCP_QUICKACK", None)
    sock, conn = drive()
    assert sock.calls == [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    assert not conn.acks_quickly


@linux_only
def test_refused_once_then_left_alone_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="chromanet.ul"):
        sock, conn = drive(refuse=True, reads=4)
    assert sock.quickacks() == 1
    assert not conn.acks_quickly
    said = [r for r in caplog.records if "TCP_QUICKACK" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG


# ------------------------------------------- when it matters, and when not
def drive_indications(indications: list[Any]) -> int:
    """setsockopt(TCP_QUICKACK) calls after one receive that made these
    indications, with nothing left partial in the Upper Layer."""

    async def body() -> int:
        sock = FakeSocket()
        conn = ULConnection(NullListener(), requestor=False, max_receive_pdu_length=16382)
        conn.connection_made(FakeTransport(sock))
        conn.upper_layer.receive_data = lambda data, now: list(indications)  # type: ignore[method-assign]
        conn.data_received(b"\x04")
        conn.connection_lost(None)
        return sock.quickacks()

    return asyncio.run(body())


ECHO_RQ = Command(0x0030, message_id=1, command_data_set_type=0x0101)
FIND_RQ = Command(0x0020, message_id=2, command_data_set_type=0x0000)


@linux_only
@pytest.mark.parametrize(
    "indications, rearmed",
    [
        pytest.param([DimseMessage(1, ECHO_RQ, None)], False, id="a whole request: our answer carries the ACK"),
        pytest.param([DimseMessage(1, Command(0x8030, status=0x0000), None)], False,
                     id="a final response: the peer waits for us"),
        pytest.param([DimseMessage(1, Command(0x8020, status=0xFF00), b"")], True,
                     id="a pending response: more follow"),
        pytest.param([DimseMessage(1, Command(0x8020, status=0xFF01), b"")], True, id="pending, warning"),
        pytest.param([DimseMessage(1, Command(0x8020, status=0xFF00), b""),
                      DimseMessage(1, Command(0x8020, status=0x0000), None)], False, id="pending then final"),
        pytest.param([CommandArrived(1, FIND_RQ)], True, id="a command whose data set follows"),
        pytest.param([CommandArrived(1, FIND_RQ), DatasetChunk(1, b"", True)], False,
                     id="a streamed request, whole: our answer carries the ACK"),
        pytest.param([CommandArrived(1, Command(0x8020, status=0xFF00)), DatasetChunk(1, b"", True)], True,
                     id="a streamed pending response: more follow"),
        pytest.param([], True, id="nothing whole yet"),
    ],
)
def test_rearmed_only_when_the_peer_may_wait(indications: list[Any], rearmed: bool) -> None:
    assert drive_indications(indications) == int(rearmed)


@linux_only
@pytest.mark.parametrize("request_first", [True, False], ids=["request", "response"])
def test_streamed_last_chunk_remembers_its_command(request_first: bool) -> None:
    """The last chunk of a data set whose command came in an earlier receive
    (a node streams every data set): re-armed after a response's only."""

    async def body() -> int:
        sock = FakeSocket()
        conn = ULConnection(NullListener(), requestor=False, max_receive_pdu_length=16382)
        conn.connection_made(FakeTransport(sock))
        command = FIND_RQ if request_first else Command(0x8020, status=0xFF00)
        receives = [[CommandArrived(1, command), DatasetChunk(1, b"x", False)], [DatasetChunk(1, b"y", True)]]
        conn.upper_layer.receive_data = lambda data, now: list(receives.pop(0))  # type: ignore[method-assign]
        conn.data_received(b"\x04")
        first = sock.quickacks()
        conn.data_received(b"\x04")
        conn.connection_lost(None)
        return sock.quickacks() - first

    assert asyncio.run(body()) == (0 if request_first else 1)


# -------------------------------------------------- real loopback associations
def _connections(server: Any, assoc: Any) -> list[ULConnection]:
    (theirs,) = server.active_associations
    return [assoc._ul.connection, theirs._ul.connection]


def _socket(conn: ULConnection) -> Any:
    return conn.transport.get_extra_info("socket")  # type: ignore[union-attr]


async def _piece_rearms(sender: ULConnection, receiver: ULConnection) -> int:
    """Put the receiver's socket in delayed-ACK mode, send it the first
    bytes of an A-RELEASE-RQ (a PDU in pieces, as a Nagle peer writes
    them), and read TCP_QUICKACK back once they are in: 1 when re-armed.
    The rest of the PDU follows, so the association ends released."""
    _socket(receiver).setsockopt(socket.IPPROTO_TCP, QUICKACK, 0)
    assert _socket(receiver).getsockopt(socket.IPPROTO_TCP, QUICKACK) == 0
    sender.transport.write(RELEASE_RQ[:2])  # type: ignore[union-attr]
    await asyncio.wait_for(until(lambda: receiver.upper_layer.in_pdu), WAIT_TIMEOUT)
    got = int(_socket(receiver).getsockopt(socket.IPPROTO_TCP, QUICKACK))
    sender.transport.write(RELEASE_RQ[2:])  # type: ignore[union-attr]
    return got


RELEASE_RQ = bytes([0x05, 0x00, 0, 0, 0, 4, 0, 0, 0, 0])


@linux_only
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_rearmed_on_a_real_socket_after_a_piece(pki: Pki, loop_name: str, tls: bool) -> None:
    """The kernel reads TCP_QUICKACK back as 1 when it is out of its
    delayed-ACK ("pingpong") mode: after a piece of a PDU arrived, the
    requestor's socket is out of it again. Under TLS the transport still
    gives the TCP socket, and the association works as without."""

    async def body() -> None:
        ssl_context = server_ssl(pki) if tls else None
        server = await configure_scp_ae("QA").start_server_async(("127.0.0.1", 0), ssl_context=ssl_context)
        try:
            tls_args = (client_ssl(pki), None) if tls else None
            assoc = await scu_ae().associate_async("127.0.0.1", server.server_address[1], ae_title="QA",
                                                   tls_args=tls_args)
            assert assoc.is_established and (assoc.tls is not None) == tls
            for _ in range(3):
                assert (await assoc.send_c_echo()).Status == 0
            ours, theirs = _connections(server, assoc)
            assert ours.acks_quickly and theirs.acks_quickly
            assert await _piece_rearms(theirs, ours) == 1
            await asyncio.wait_for(until(lambda: assoc.is_released), WAIT_TIMEOUT)
        finally:
            await server.close()

    LOOPS[loop_name](asyncio.wait_for(body(), 60))


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_turned_off_on_the_ae_both_roles(loop_name: str) -> None:
    async def body() -> None:
        scp_ae = configure_scp_ae("QA")
        scp_ae.tcp_quickack = False
        server = await scp_ae.start_server_async(("127.0.0.1", 0))
        try:
            ae = scu_ae()
            ae.tcp_quickack = False
            async with ae.associate_async("127.0.0.1", server.server_address[1], ae_title="QA") as assoc:
                assert (await assoc.send_c_echo()).Status == 0
                ours, theirs = _connections(server, assoc)
                assert not ours.tcp_quickack and not theirs.tcp_quickack
                assert not ours.acks_quickly and not theirs.acks_quickly
        finally:
            await server.close()

    LOOPS[loop_name](asyncio.wait_for(body(), 60))
