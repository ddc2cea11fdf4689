"""The acceptor side: a listening server that makes an association of each
connection (pynetdicom's association server, on asyncio).

``AsyncServer`` listens on the loop it was started on; every accepted
connection gets an ``AssociationControl`` (Upper Layer) and an
``AsyncAssociation`` (API) sharing the server's handler table and
``AcceptorPolicy``. The AE starts servers (``AE.start_server_async``); the
blocking ``ThreadedServer`` (``chromanet.blocking``) wraps one.

With an ``ssl_context`` the server listens for DICOM over TLS (PS3.15
B.1): a ``TlsListener`` accepts the connections and runs each handshake; the
association (and its slot) is only made once the handshake is done.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from chromanet import _pdu, uids
from chromanet.association import AsyncAssociation, Handlers
from chromanet.logutil import peer_log
from chromanet.evt import EVT_CONN_OPEN, EVT_REQUESTED, EVT_SOP_COMMON, EVT_SOP_EXTENDED, EVT_USER_ID, Event, EventType
from chromanet.presentation import PresentationContext
from chromanet.services.observe import OperationObserver
from chromanet.ul.acse import AcceptorPolicy, AssociationControl
from chromanet.ul.tls_accept import TlsListener

if TYPE_CHECKING:
    from chromanet.ae import AE

LOGGER = logging.getLogger("chromanet.server")

# Presentation provider rejection when too many associations are open
# (A-ASSOCIATE-RJ result 2 transient, source 3, reason 2 local limit exceeded).
_TOO_MANY_ASSOCIATIONS = (2, 3, 2)


class AssociationObserver(Protocol):
    """Told of every connection a server accepts (an audit trail, metrics):
    ``association_opened`` when it is made, returning the observer of its
    operations (or None); ``association_closed`` once it is gone, however
    it ended (released, aborted, rejected, or closed without a request).
    Neither may block or raise."""

    def association_opened(self, assoc: AsyncAssociation) -> OperationObserver | None: ...

    def association_closed(self, assoc: AsyncAssociation) -> None: ...


class AssociationCounter(Protocol):
    """chromanet extra: the associations that count against
    ``AE.maximum_associations`` when the AE is one of several processes
    serving one port (the workers of ``chromanet serve --workers``):
    ``held()`` is every process's count, ``opened()`` and ``closed()`` move
    this process's own. Called on the loop; none may block."""

    def held(self) -> int: ...

    def opened(self) -> None: ...

    def closed(self) -> None: ...


@dataclass(frozen=True)
class AddressInfo:
    """The address a server was started with (pynetdicom's
    ``server.address_info``): host and port, and for IPv6 the flow
    information and scope ID."""

    address: str
    port: int
    flowinfo: int = 0
    scope_id: int = 0

    @property
    def address_family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if self.is_ipv6 else socket.AF_INET

    @property
    def is_ipv6(self) -> bool:
        try:
            return ipaddress.ip_address(self.address.split("%", 1)[0]).version == 6
        except ValueError:
            return False

    @property
    def is_ipv4(self) -> bool:
        return not self.is_ipv6

    @property
    def as_tuple(self) -> tuple[Any, ...]:
        if self.is_ipv6:
            return (self.address, self.port, self.flowinfo, self.scope_id)
        return (self.address, self.port)


def _ipv6_listener(address: tuple[Any, ...]) -> socket.socket:
    """A listening IPv6 socket bound to a 4-tuple (host, port, flowinfo,
    scope_id): the loop's create_server takes only a host and a port."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


class AsyncServer:
    """A listening acceptor on the loop it was started on."""

    def __init__(
        self,
        ae: AE,
        address: tuple[Any, ...],
        handlers: Handlers,
        ae_title: str | None,
        contexts: list[PresentationContext] | None,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.ae = ae
        #: A listening socket made elsewhere (a supervisor's, for its worker
        #: processes) to serve on instead of binding ``address``.
        self.sock = sock
        #: Called once with this server when it has closed (the AE forgets it).
        self.on_closed: Callable[[AsyncServer], None] | None = None
        #: TLS listeners: called with the peer's (host, port) and the reason
        #: when a connection's TLS handshake fails (no association was made).
        self.on_handshake_failed: Callable[[tuple[str, int], str], None] | None = None
        self.ssl_context = ssl_context
        self._tls: TlsListener | None = None
        self.address = address
        self._handlers = handlers
        supported = contexts if contexts is not None else ae.supported_contexts
        if not supported:
            raise ValueError("no supported presentation contexts: use add_supported_context() first")
        half_roles = sorted({ctx.abstract_syntax for ctx in supported if (ctx.scu_role is None) != (ctx.scp_role is None)})
        if half_roles:
            # An acceptor answers role selection only with both roles set:
            # one alone would be silently ignored, so refuse the setting.
            raise ValueError(
                "set both scu_role and scp_role, or neither, on the supported contexts for: " + ", ".join(half_roles)
            )
        self.policy = AcceptorPolicy(
            ae_title=uids.validate_ae_title(ae_title or ae.ae_title),
            supported_contexts=[ctx.to_spec() for ctx in supported],
            max_pdu_length=ae.maximum_pdu_size,
            require_called_aet=ae.require_called_aet,
            require_calling_aet=list(ae.require_calling_aet),
            implementation_class_uid=ae.implementation_class_uid,
            implementation_version_name=ae.implementation_version_name,
            async_ops_window=ae.async_ops_window,
            identity_handler=self._identity_adapter(),
            sop_extended_handler=self._sop_extended_adapter(),
            gatekeeper=self._gatekeeper,
            admission=ae.admission,
        )
        self.associations: set[AsyncAssociation] = set()
        #: chromanet extra: told of each association (the AE's, by default).
        self.observer: AssociationObserver | None = ae.association_observer
        self._server: asyncio.AbstractServer | None = None
        self._closed: asyncio.Event | None = None

    @property
    def handlers(self) -> Handlers:
        """The handlers bound for this server's associations (shared by
        every association until one binds or unbinds on its own)."""
        return self._handlers

    @property
    def ae_title(self) -> str:
        """The AE title this server answers as (``start_server(ae_title=)``,
        else the AE's when the server started)."""
        return self.policy.ae_title

    def get_handlers(self, event: EventType) -> Any:
        """pynetdicom's ``AssociationServer.get_handlers``: for a
        notification event the list of ``(handler, args)``, for an
        intervention event the one ``(handler, args)``; ``args`` is None
        when none were given, and nothing bound gives ``[]``."""
        bound = self._handlers.get(event)
        if not bound:
            return []
        if event.is_intervention:
            handler, args = bound[0]
            return (handler, args or None)
        return [(handler, args or None) for handler, args in bound]

    @property
    def server_address(self) -> tuple[str, int]:
        if self._tls is not None:
            return self._tls.address
        assert self._server is not None
        sockname = self._server.sockets[0].getsockname()
        return (sockname[0], sockname[1])

    @property
    def address_info(self) -> AddressInfo:
        """The address the server was started with, as pynetdicom gives it
        (port 0 stays 0: ``server_address`` has the port bound)."""
        return AddressInfo(*self.address)

    @property
    def pending_handshakes(self) -> int:
        """TLS listeners: connections whose handshake is still running (they
        hold no association slot)."""
        return self._tls.pending if self._tls is not None else 0

    @property
    def active_associations(self) -> list[AsyncAssociation]:
        return [a for a in list(self.associations) if a.is_established or a.watch_busy]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        host, port = self.address[0], self.address[1]
        if self.sock is None and len(self.address) == 4:
            self.sock = _ipv6_listener(self.address)
        if self.ssl_context is not None:
            self._tls = TlsListener(
                self.ssl_context, self._new_connection, self.ae.tls_handshake_timeout, self._handshake_failed,
                max_pending_per_host=self.ae.maximum_tls_handshakes_per_host,
            )
            await self._tls.start(host or None, port, sock=self.sock)
            return
        if self.sock is not None:
            self._server = await loop.create_server(self._new_connection, sock=self.sock, backlog=1024)
            return
        self._server = await loop.create_server(
            self._new_connection, host or None, port, reuse_address=True, backlog=1024
        )

    def _handshake_failed(self, peer: tuple[str, int], reason: str) -> None:
        if self.on_handshake_failed is not None:
            self.on_handshake_failed(peer, reason)

    def _identity_adapter(self) -> Any:
        """EVT_USER_ID handler (pynetdicom's protocol: the event carries
        user_id_type, primary_field, secondary_field; the handler returns
        (is_verified, response or None)) as the negotiation's hook."""
        bound = self._handlers.get(EVT_USER_ID)
        if not bound:
            return None
        handler, args = bound[0]

        def identity(item: _pdu.UserIdentityRQ) -> tuple[bool, bytes | None]:
            event = Event(
                None,
                EVT_USER_ID,
                user_id_type=item.identity_type,
                primary_field=item.primary_field,
                secondary_field=item.secondary_field or None,
            )
            verified, response = handler(event, *args)
            return bool(verified), response

        return identity

    def _sop_extended_adapter(self) -> Any:
        """EVT_SOP_EXTENDED handler: event.app_info {uid: bytes} in, the
        replies {uid: bytes} out."""
        bound = self._handlers.get(EVT_SOP_EXTENDED)
        if not bound:
            return None
        handler, args = bound[0]

        def extended(items: list[_pdu.SOPClassExtendedNegotiation]) -> list[_pdu.SOPClassExtendedNegotiation]:
            app_info = {item.sop_class_uid: item.application_information for item in items}
            replies = handler(Event(None, EVT_SOP_EXTENDED, app_info=app_info), *args) or {}
            return [_pdu.SOPClassExtendedNegotiation(uid, bytes(info)) for uid, info in replies.items() if info]

        return extended

    def _gatekeeper(self, rq: _pdu.AssociateRQ, peer_host: str) -> _pdu.AssociateRJ | None:
        """Refuse (transient, local limit exceeded) when every association
        slot is taken, or when ``peer_host`` already holds its share: its
        other connections, established or not yet, count against it.

        Called for each A-ASSOCIATE-RQ before negotiation, it also brings the
        AE's ``require_called_aet`` / ``require_calling_aet`` into the
        policy, so a change made while the server runs applies to the next
        request (as in pynetdicom, which reads them from the AE)."""
        ae = self.ae
        self.policy.require_called_aet = ae.require_called_aet
        self.policy.require_calling_aet = list(ae.require_calling_aet)
        counter: AssociationCounter | None = ae.association_counter
        if counter is not None:
            held = counter.held()
        else:
            held = sum(1 for a in self.associations if a.is_established)
        refused = bool(ae.maximum_associations and held >= ae.maximum_associations)
        per_host = ae.maximum_associations_per_host
        if not refused and per_host:
            # This connection is among self.associations too: hence the >.
            from_host = sum(1 for a in self.associations if a.remote_host == peer_host)
            refused = from_host > per_host
            if refused:
                peer_log(LOGGER, logging.WARNING, peer_host, "%s holds %d connections (at most %d per host): refusing",
                         peer_host, from_host - 1, per_host)
        if refused:
            result, source, reason = _TOO_MANY_ASSOCIATIONS
            return _pdu.AssociateRJ(result=result, source=source, reason=reason)
        return None

    def _new_connection(self) -> Any:
        ae = self.ae
        ul = AssociationControl(
            requestor=False,
            timeouts=ae.association_timeouts(),
            max_receive_pdu_length=ae.maximum_pdu_size,
            acceptor_policy=self.policy,
            tcp_quickack=ae.tcp_quickack,
        )
        assoc = AsyncAssociation(ae, ul, self._handlers, spool_directory=ae.store_spool_directory)
        self.associations.add(assoc)
        ul.ended.add_done_callback(lambda _f, a=assoc: self._forget(a))
        counter = ae.association_counter
        established_hook = getattr(self.observer, "association_established", None)
        if counter is not None or established_hook is not None:
            self._on_established(assoc, ul, counter, established_hook)
        if self.observer is not None:
            self._observe(assoc, ul.ended, self.observer)
        assoc.notify(EVT_CONN_OPEN)
        ul.on_requested = lambda _ul, a=assoc: self._on_requested(a, _ul)
        return ul.connection

    def _on_requested(self, assoc: AsyncAssociation, ul: AssociationControl) -> None:
        assoc.notify(EVT_REQUESTED)
        bound = self._handlers.get(EVT_SOP_COMMON)
        rq = ul.request
        if not bound or rq is None:
            return
        items = {item.sop_class_uid: item for item in rq.user_information.sop_class_common_extended}
        if not items:
            return
        # PS3.7 D.3.3.6: the acceptor sends no reply item; the handler
        # learns what the requestor proposed (its answer has no wire effect).
        handler, args = bound[0]
        try:
            handler(Event(assoc, EVT_SOP_COMMON, items=items), *args)
        except Exception:
            LOGGER.exception("the EVT_SOP_COMMON handler raised")

    def _forget(self, assoc: AsyncAssociation) -> None:
        """An association ended: drop it, once its wire/DIMSE notifications
        (if any wait in its handler lane) ran."""
        if assoc.watch_busy:
            assoc.on_watch_idle = lambda: self.associations.discard(assoc)
        else:
            self.associations.discard(assoc)

    @staticmethod
    def _on_established(
        assoc: AsyncAssociation, ul: AssociationControl, counter: AssociationCounter | None, hook: Any
    ) -> None:
        """Once the association is established: count it (until it ends)
        with the process-wide ``counter`` and tell the observer's optional
        ``association_established``."""
        inner = ul.on_established

        def established(control: AssociationControl) -> None:
            if inner is not None:
                inner(control)
            if counter is not None:
                counter.opened()
                ul.ended.add_done_callback(lambda _f: counter.closed())
            if hook is not None:
                try:
                    hook(assoc)
                except Exception:
                    LOGGER.exception("the association observer raised")

        ul.on_established = established

    @staticmethod
    def _observe(assoc: AsyncAssociation, ended: asyncio.Future[str], observer: AssociationObserver) -> None:
        try:
            assoc.operation_observer = observer.association_opened(assoc)
        except Exception:
            LOGGER.exception("the association observer raised")
            return

        def closed(_ended: Any) -> None:
            try:
                observer.association_closed(assoc)
            except Exception:
                LOGGER.exception("the association observer raised")

        ended.add_done_callback(closed)

    async def stop_accepting(self) -> None:
        """Stop listening; the associations in progress go on (``wait_idle``)."""
        if self._server is not None:
            self._server.close()
        if self._tls is not None:
            await self._tls.stop_accepting()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds until no association is left;
        True when none is."""
        waits = [asyncio.ensure_future(a.wait_closed()) for a in list(self.associations)]
        if not waits:
            return True
        _done, pending = await asyncio.wait(waits, timeout=timeout)
        for wait in pending:
            wait.cancel()
        return not pending and not self.associations

    async def close(self) -> None:
        """Stop listening and abort the associations still open."""
        if self._server is not None:
            self._server.close()
        if self._tls is not None:
            await self._tls.close()
        for assoc in list(self.associations):
            assoc.abort()
        waits = [asyncio.ensure_future(a.wait_closed()) for a in list(self.associations)]
        if waits:
            await asyncio.wait(waits, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
        if self._closed is not None:
            self._closed.set()
        if self.on_closed is not None:
            on_closed, self.on_closed = self.on_closed, None
            on_closed(self)

    async def serve_forever(self) -> None:
        assert self._closed is not None
        await self._closed.wait()

    async def __aenter__(self) -> AsyncServer:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
