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

from chromanet.ul import connection as connection_module
from chromanet.ul.connection import ULConnection
from helpers.servers import configure_scp_ae, scu_ae
from helpers.tls import Pki, client_ssl, server_ssl

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


# -------------------------------------------------- real loopback associations
def _connections(server: Any, assoc: Any) -> list[ULConnection]:
    (theirs,) = server.active_associations
    return [assoc._ul.connection, theirs._ul.connection]


def _quickack_now(conn: ULConnection) -> int:
    sock = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
    return int(sock.getsockopt(socket.IPPROTO_TCP, QUICKACK))


@linux_only
@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_both_ends_rearm_it_after_a_receive(loop_name: str) -> None:
    """The kernel reads TCP_QUICKACK back as 1 when it is out of its
    delayed-ACK ("pingpong") mode. Each end is put into that mode by hand
    before an exchange; after a receive it is out of it again."""

    async def body() -> None:
        server = await configure_scp_ae("QA").start_server_async(("127.0.0.1", 0))
        try:
            ae = scu_ae()
            async with ae.associate_async("127.0.0.1", server.server_address[1], ae_title="QA") as assoc:
                ours, theirs = _connections(server, assoc)
                assert ours.acks_quickly and theirs.acks_quickly
                for _ in range(3):
                    for conn in (ours, theirs):
                        sock = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
                        sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 0)
                    assert (await assoc.send_c_echo()).Status == 0
                    assert _quickack_now(ours) == 1  # re-armed after the C-ECHO-RSP arrived
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


@linux_only
@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_tls_connections_reach_the_tcp_socket(pki: Pki, loop_name: str) -> None:
    """Under TLS the transport still gives the TCP socket: the option is set
    on it, and the association works as it does without."""

    async def body() -> None:
        server = await configure_scp_ae("TLSQA").start_server_async(("127.0.0.1", 0), ssl_context=server_ssl(pki))
        try:
            tls_args = (client_ssl(pki), None)
            ae = scu_ae()
            port = server.server_address[1]
            async with ae.associate_async("127.0.0.1", port, ae_title="TLSQA", tls_args=tls_args) as assoc:
                for _ in range(5):
                    assert (await assoc.send_c_echo()).Status == 0
                ours, theirs = _connections(server, assoc)
                assert assoc.tls is not None
                assert ours.acks_quickly and theirs.acks_quickly
                assert _quickack_now(ours) == 1
        finally:
            await server.close()

    LOOPS[loop_name](asyncio.wait_for(body(), 60))
