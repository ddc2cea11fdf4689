"""The acceptor's TLS handshake, before any association exists (PS3.15 B.1).

A TLS listener accepts plain TCP connections itself and runs the server side
of each handshake with ``loop.connect_accepted_socket(..., ssl=context)``
instead of letting ``create_server(ssl=...)`` do it out of sight, because:

- a failed handshake (a plain-TCP client, an unknown CA, no client
  certificate where mutual TLS requires one, a peer that never sends its
  ClientHello) then raises here: it is logged with the peer's address and
  OpenSSL's reason, and reported to ``on_failed`` (the audit trail);
- a connection takes no association slot while its handshake runs: the
  association (``ULConnection`` and everything above it) is made by
  ``make_connection`` in the TLS transport's ``connection_made``, which the
  loop calls once the handshake is done, and the handshake is bounded by
  ``handshake_timeout``; a peer stalling handshakes cannot starve the slots,
  and what fails is closed at once; one host may have at most
  ``max_pending_per_host`` handshakes running (further connections from it
  are closed at once), so a peer cannot hold descriptors by the thousand
  either;
- the hand-over happens in ``connection_made``, before the TLS transport
  delivers any application data, so the A-ASSOCIATE-RQ that a TLS 1.3
  client sends straight behind its Finished reaches the ``ULConnection``
  (a protocol swapped in later would have to keep those bytes).

Why not ``start_tls`` on a connection accepted by ``create_server``: uvloop
starts reading an accepted connection right after its ``connection_made``
(a ``pause_reading`` there is undone), so the ClientHello would reach the
plain protocol before ``start_tls`` could take over.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from typing import Any, Callable

from chromanet.logutil import peer_log
from chromanet.ul.connection import ULConnection

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "TlsListener", "handshake_failure_reason"]

LOGGER = logging.getLogger("chromanet.ul")

#: Seconds a TLS handshake may take when no limit is configured.
DEFAULT_HANDSHAKE_TIMEOUT = 30.0

# accept() failing for want of descriptors or memory: wait this long before
# accepting again, as asyncio's own accept loop does, instead of spinning.
_ACCEPT_RETRY_DELAY = 1.0
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

PeerAddress = tuple[str, int]


def handshake_failure_reason(exc: BaseException) -> str:
    """One line saying why a handshake failed: OpenSSL's reason and, for a
    certificate, the verification message."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TlsListener:
    """Listens on TCP and hands each connection to an association once its
    TLS handshake is done.

    ``make_connection`` is called when a handshake has succeeded and returns
    the ``ULConnection`` of a new association (or None to drop the
    connection). ``on_failed(peer, reason)`` hears of each failed handshake.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        make_connection: Callable[[], ULConnection | None],
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        on_failed: Callable[[PeerAddress, str], None] | None = None,
        max_pending_per_host: int | None = None,
    ) -> None:
        if not isinstance(context, ssl.SSLContext):
            raise TypeError(f"an ssl.SSLContext is needed, not {type(context).__name__}")
        self.context = context
        self.make_connection = make_connection
        self.handshake_timeout = handshake_timeout or DEFAULT_HANDSHAKE_TIMEOUT
        self.on_failed = on_failed
        self.sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self.max_pending_per_host = max_pending_per_host
        self._pending_by_host: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Connections whose handshake is still running."""
        return len(self._handshakes)

    @property
    def address(self) -> tuple[str, int]:
        sockname = self.sockets[0].getsockname()
        return (sockname[0], sockname[1])

    async def start(
        self, host: str | None, port: int, backlog: int = 1024, sock: socket.socket | None = None
    ) -> None:
        """Listen on every address ``host`` resolves to (all interfaces for
        None or ""), as ``loop.create_server`` would; or accept on ``sock``,
        a listening socket made elsewhere (a supervisor's, for workers)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            sock.setblocking(False)
            self.sockets.append(sock)
            self._accepting = [loop.create_task(self._accept(sock))]
            return
        infos = await loop.getaddrinfo(
            host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen: set[Any] = set()
        try:
            for family, kind, proto, _name, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                listener = socket.socket(family, kind, proto)
                self.sockets.append(listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind(address)
                listener.listen(backlog)
                listener.setblocking(False)
        except BaseException:
            self._close_sockets()
            raise
        self._accepting = [loop.create_task(self._accept(listener)) for listener in self.sockets]

    async def stop_accepting(self) -> None:
        """Stop accepting; the handshakes already running go on."""
        tasks, self._accepting = self._accepting, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._close_sockets()

    async def close(self) -> None:
        """Stop accepting and drop every handshake still running."""
        tasks = self._accepting + list(self._handshakes)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._accepting = []
        self._close_sockets()

    def _close_sockets(self) -> None:
        for listener in self.sockets:
            listener.close()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, peer = await loop.sock_accept(listener)
            except OSError as exc:
                if listener.fileno() < 0:
                    return
                LOGGER.error("accepting a TLS connection failed: %s", exc)
                if exc.errno in _RESOURCE_ERRORS:
                    await asyncio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
            host = address[0]
            pending = self._pending_by_host.get(host, 0)
            if self.max_pending_per_host and pending >= self.max_pending_per_host:
                peer_log(LOGGER, logging.WARNING, host, "%s has %d TLS handshakes running (at most %d): closing %s:%d",
                         host, pending, self.max_pending_per_host, host, address[1])
                connection.close()
                continue
            self._pending_by_host[host] = pending + 1
            task = loop.create_task(self._handshake(connection, address))
            self._handshakes.add(task)
            task.add_done_callback(lambda t, h=host: self._handshake_over(t, h))

    def _handshake_over(self, task: asyncio.Task[None], host: str) -> None:
        self._handshakes.discard(task)
        left = self._pending_by_host.get(host, 1) - 1
        if left > 0:
            self._pending_by_host[host] = left
        else:
            self._pending_by_host.pop(host, None)

    async def _handshake(self, connection: socket.socket, peer: PeerAddress) -> None:
        """The server side of one handshake; the association is made by
        ``_HandOver.connection_made`` when it succeeds."""
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: _HandOver(self.make_connection),
                connection,
                ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except asyncio.CancelledError:
            raise  # the loop closes the transport, and with it the socket
        except Exception as exc:
            self._failed(peer, exc)

    def _failed(self, peer: PeerAddress, exc: BaseException) -> None:
        reason = handshake_failure_reason(exc)
        peer_log(LOGGER, logging.WARNING, peer[0], "TLS handshake with %s:%d failed: %s", peer[0], peer[1], reason)
        if self.on_failed is not None:
            try:
                self.on_failed(peer, reason)
            except Exception:
                LOGGER.exception("the handler of failed TLS handshakes raised")


class _HandOver(asyncio.Protocol):
    """The TLS transport's first protocol: when the handshake is done it
    makes the association and steps aside for its ULConnection."""

    def __init__(self, make_connection: Callable[[], ULConnection | None]) -> None:
        self.make_connection = make_connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        connection = self.make_connection()
        if connection is None:
            transport.abort()  # type: ignore[attr-defined]
            return
        transport.set_protocol(connection)
        connection.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # only after a refused hand-over
        pass
