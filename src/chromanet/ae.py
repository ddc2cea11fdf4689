"""The Application Entity: configuration, associations out, servers in.

``AE`` has pynetdicom's names and blocking behaviour (``associate`` returns an
``Association``; ``start_server(..., block=False)`` returns a server with
``shutdown()``), run on a shared background loop, plus coroutine twins for
asyncio programs: ``await ae.associate_async(...)`` (usable as ``async
with``) and ``await ae.start_server_async(...)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydicom import Dataset

from chromanet import _pdu, loopthread, uids
from chromanet.association import AsyncAssociation
from chromanet.evt import EVT_CONN_OPEN, EVT_REQUESTED, EVT_SOP_EXTENDED, EVT_USER_ID, Event, HandlerSpec, notify, split_handlers
from chromanet.presentation import DEFAULT_TRANSFER_SYNTAXES, PresentationContext, build_context
from chromanet.ul.association import AcceptorPolicy, AssociationAborted, AssociationClosed, Timeouts, ULAssociation
from chromanet.ul.negotiation import AssociationRejected, ContextSpec, build_associate_rq

LOGGER = logging.getLogger("chromanet.ae")

# Presentation provider rejection when too many associations are open
# (A-ASSOCIATE-RJ result 2 transient, source 3, reason 2 local limit exceeded).
_TOO_MANY_ASSOCIATIONS = (2, 3, 2)


class AE:
    """A DICOM Application Entity (pynetdicom's ``AE``)."""

    def __init__(self, ae_title: str = "CHROMANET") -> None:
        self.ae_title = ae_title
        self.maximum_pdu_size = 16382
        self.maximum_associations = 10
        self.acse_timeout: float | None = 30
        self.dimse_timeout: float | None = 30
        self.network_timeout: float | None = 60
        self.connection_timeout: float | None = None
        # chromanet extra: the ARTIM timer (waiting for the A-ASSOCIATE-RQ
        # after a connection, and for the peer to close after an abort,
        # reject or release).
        self.artim_timeout: float | None = 30
        self.require_called_aet = False
        self.require_calling_aet: list[str] = []
        self.implementation_class_uid = uids.IMPLEMENTATION_CLASS_UID
        self.implementation_version_name: str | None = uids.IMPLEMENTATION_VERSION_NAME
        self.async_ops_window: tuple[int, int] = (1, 1)
        # chromanet extra: spool received C-STORE data sets to files here
        # (bounded memory; handlers read event.dataset_path).
        self.store_spool_directory: Path | None = None
        self._requested: list[PresentationContext] = []
        self._supported: list[PresentationContext] = []
        self._servers: list[Any] = []

    # -------------------------------------------------------------- config
    @property
    def ae_title(self) -> str:
        return self._ae_title

    @ae_title.setter
    def ae_title(self, value: str | bytes) -> None:
        if isinstance(value, bytes):
            value = value.decode("ascii")
        self._ae_title = uids.validate_ae_title(value)

    @property
    def requested_contexts(self) -> list[PresentationContext]:
        return list(self._requested)

    @requested_contexts.setter
    def requested_contexts(self, contexts: Iterable[PresentationContext]) -> None:
        self._requested = []
        for ctx in contexts:
            self.add_requested_context(ctx.abstract_syntax, ctx.transfer_syntax)

    @property
    def supported_contexts(self) -> list[PresentationContext]:
        return list(self._supported)

    @supported_contexts.setter
    def supported_contexts(self, contexts: Iterable[PresentationContext]) -> None:
        self._supported = []
        for ctx in contexts:
            self.add_supported_context(ctx.abstract_syntax, ctx.transfer_syntax, ctx.scu_role, ctx.scp_role)

    def add_requested_context(
        self, abstract_syntax: str, transfer_syntax: str | list[str] = DEFAULT_TRANSFER_SYNTAXES
    ) -> None:
        """Request a context (at most 128). The same abstract syntax may be
        requested more than once, with different transfer syntaxes."""
        if len(self._requested) >= 128:
            raise ValueError("at most 128 presentation contexts can be requested")
        self._requested.append(build_context(abstract_syntax, transfer_syntax))

    def add_supported_context(
        self,
        abstract_syntax: str,
        transfer_syntax: str | list[str] = DEFAULT_TRANSFER_SYNTAXES,
        scu_role: bool | None = None,
        scp_role: bool | None = None,
    ) -> None:
        """Support a context; a second call for the same abstract syntax adds
        transfer syntaxes and replaces the roles."""
        new = build_context(abstract_syntax, transfer_syntax)
        for ctx in self._supported:
            if ctx.abstract_syntax == new.abstract_syntax:
                for syntax in new.transfer_syntax:
                    ctx.add_transfer_syntax(syntax)
                ctx.scu_role, ctx.scp_role = scu_role, scp_role
                return
        new.scu_role, new.scp_role = scu_role, scp_role
        self._supported.append(new)

    def remove_requested_context(self, abstract_syntax: str, transfer_syntax: str | list[str] | None = None) -> None:
        self._requested = _remove(self._requested, abstract_syntax, transfer_syntax)

    def remove_supported_context(self, abstract_syntax: str, transfer_syntax: str | list[str] | None = None) -> None:
        self._supported = _remove(self._supported, abstract_syntax, transfer_syntax)

    def _timeouts(self) -> Timeouts:
        return Timeouts(
            acse=self.acse_timeout,
            dimse=self.dimse_timeout,
            network=self.network_timeout,
            connection=self.connection_timeout,
            artim=self.artim_timeout,
        )

    # ---------------------------------------------------------- requestor
    def associate_async(
        self,
        addr: str,
        port: int,
        contexts: list[PresentationContext] | None = None,
        ae_title: str = "ANY-SCP",
        max_pdu: int = 16382,
        ext_neg: list[Any] | None = None,
        evt_handlers: list[HandlerSpec] | None = None,
    ) -> _AssociateCall:
        """Open an association. Await it for an AsyncAssociation (check
        ``is_established``), or ``async with`` it to release on exit."""
        return _AssociateCall(self._associate(addr, port, contexts, ae_title, max_pdu, ext_neg, evt_handlers))

    async def _associate(
        self,
        addr: str,
        port: int,
        contexts: list[PresentationContext] | None,
        ae_title: str,
        max_pdu: int,
        ext_neg: list[Any] | None,
        evt_handlers: list[HandlerSpec] | None,
    ) -> AsyncAssociation:
        requested = contexts if contexts is not None else self._requested
        if not requested:
            raise RuntimeError("no requested presentation contexts: use add_requested_context() first")
        extended = _extended_items(ext_neg)
        rq = build_associate_rq(
            uids.validate_ae_title(ae_title),
            self.ae_title,
            _context_specs(requested, extended.pop("roles")),
            max_pdu_length=max_pdu,
            implementation_class_uid=self.implementation_class_uid,
            implementation_version_name=self.implementation_version_name,
            **extended,
        )
        ul = ULAssociation(requestor=True, timeouts=self._timeouts(), max_receive_pdu_length=max_pdu)
        assoc = AsyncAssociation(
            self, ul, split_handlers(evt_handlers), spool_directory=self.store_spool_directory
        )
        try:
            await ul.open(addr, port, rq)
        except AssociationRejected as exc:
            LOGGER.info("association rejected: result %d source %d reason %d", exc.result, exc.source, exc.reason)
        except (AssociationAborted, AssociationClosed, asyncio.TimeoutError, OSError) as exc:
            LOGGER.error("association request failed: %s", exc)
            if ul.outcome == "pending":
                ul.outcome = "aborted"
        return assoc

    def associate(
        self,
        addr: str,
        port: int,
        contexts: list[PresentationContext] | None = None,
        ae_title: str = "ANY-SCP",
        max_pdu: int = 16382,
        ext_neg: list[Any] | None = None,
        bind_address: tuple[str, int] = ("", 0),
        tls_args: Any = None,
        evt_handlers: list[HandlerSpec] | None = None,
    ) -> Association:
        """Blocking ``associate`` (pynetdicom's): returns an Association."""
        if tls_args is not None:
            raise NotImplementedError("chromanet does not implement TLS (tls_args) yet")
        if bind_address != ("", 0):
            raise NotImplementedError("chromanet does not implement bind_address yet")
        coro = self._associate(addr, port, contexts, ae_title, max_pdu, ext_neg, evt_handlers)
        return Association(loopthread.run(coro))

    # ------------------------------------------------------------ acceptor
    async def start_server_async(
        self,
        address: tuple[str, int],
        evt_handlers: list[HandlerSpec] | None = None,
        ae_title: str | None = None,
        contexts: list[PresentationContext] | None = None,
    ) -> AsyncServer:
        """Listen on ``address``; returns a started AsyncServer."""
        server = AsyncServer(self, address, split_handlers(evt_handlers), ae_title, contexts)
        await server.start()
        self._servers.append(server)
        return server

    def start_server(
        self,
        address: tuple[str, int],
        block: bool = True,
        ssl_context: Any = None,
        evt_handlers: list[HandlerSpec] | None = None,
        ae_title: str | None = None,
        contexts: list[PresentationContext] | None = None,
    ) -> ThreadedServer | None:
        """pynetdicom's ``start_server``: with ``block=False`` returns a
        server running on the background loop (stop it with
        ``shutdown()``); with ``block=True`` serves until interrupted."""
        if ssl_context is not None:
            raise NotImplementedError("chromanet does not implement TLS (ssl_context) yet")
        coro = self.start_server_async(address, evt_handlers, ae_title, contexts)
        server = ThreadedServer(loopthread.run(coro))
        if not block:
            return server
        try:
            server._stopped.wait()
        except KeyboardInterrupt:
            server.shutdown()
        return None

    @property
    def active_associations(self) -> list[Association]:
        """The established associations of every server this AE runs."""
        return [Association(a) for server in self._servers for a in server.active_associations]

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("chromanet does not implement AE.make_server: use start_server(..., block=False)")

    def shutdown(self) -> None:
        """Stop every server this AE started (and their associations)."""
        for server in list(self._servers):
            if loopthread.in_loop_thread():
                asyncio.ensure_future(server.close())
            else:
                loopthread.run(server.close())
        self._servers.clear()


class _AssociateCall:
    """``await`` it for the association, or ``async with`` it."""

    def __init__(self, coro: Any) -> None:
        self._coro = coro
        self._assoc: AsyncAssociation | None = None

    def __await__(self) -> Any:
        return self._coro.__await__()

    async def __aenter__(self) -> AsyncAssociation:
        self._assoc = await self._coro
        if not self._assoc.is_established:
            raise ConnectionError("the association was not established")
        return self._assoc

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._assoc is not None
        if self._assoc.is_established:
            if exc_info[0] is None:
                await self._assoc.release()
            else:
                self._assoc.abort()


def _remove(
    contexts: list[PresentationContext], abstract_syntax: str, transfer_syntax: str | list[str] | None
) -> list[PresentationContext]:
    if transfer_syntax is None:
        return [c for c in contexts if c.abstract_syntax != abstract_syntax]
    drop = [transfer_syntax] if isinstance(transfer_syntax, str) else list(transfer_syntax)
    kept = []
    for ctx in contexts:
        if ctx.abstract_syntax == abstract_syntax:
            ctx.transfer_syntax = [s for s in ctx.transfer_syntax if s not in drop]
            if not ctx.transfer_syntax:
                continue
        kept.append(ctx)
    return kept


def _context_specs(requested: list[PresentationContext], roles: dict[str, tuple[bool, bool]]) -> list[ContextSpec]:
    """The requested contexts as negotiation specs, with the role selection
    items of ``ext_neg`` applied. Asking for Color Palette C-GET implies
    receiving Color Palette Storage instances on the same association: the
    storage context is added if missing, and the SCP role proposed for it
    unless ``ext_neg`` said otherwise."""
    specs = [ctx.to_spec() for ctx in requested]
    if any(spec.abstract_syntax == uids.ColorPaletteInformationModelGet for spec in specs):
        if not any(spec.abstract_syntax == uids.ColorPaletteStorage for spec in specs):
            specs.append(ContextSpec(uids.ColorPaletteStorage, list(DEFAULT_TRANSFER_SYNTAXES)))
        roles.setdefault(uids.ColorPaletteStorage, (False, True))
    for spec in specs:
        if spec.abstract_syntax in roles:
            spec.scu_role, spec.scp_role = roles[spec.abstract_syntax]
    return specs


def build_role(sop_class_uid: str, scu_role: bool = False, scp_role: bool = False) -> _pdu.RoleSelection:
    """An SCP/SCU Role Selection item for ``ext_neg`` (pynetdicom's build_role)."""
    return _pdu.RoleSelection(str(sop_class_uid), bool(scu_role), bool(scp_role))


def _extended_items(ext_neg: list[Any] | None) -> dict[str, Any]:
    """Split pynetdicom-style ``ext_neg`` items into build_associate_rq's
    keywords (plus "roles": {SOP class: (scu, scp)} from role items)."""
    roles: dict[str, tuple[bool, bool]] = {}
    if not ext_neg:
        return {"roles": roles}
    identity = None
    extended: list[Any] = []
    common: list[Any] = []
    for item in ext_neg:
        if isinstance(item, _pdu.UserIdentityRQ):
            identity = item
        elif isinstance(item, _pdu.SOPClassExtendedNegotiation):
            extended.append(item)
        elif isinstance(item, _pdu.SOPClassCommonExtendedNegotiation):
            common.append(item)
        elif isinstance(item, _pdu.AsyncOperationsWindow):
            pass  # handled below
        elif isinstance(item, _pdu.RoleSelection):
            roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
        else:
            raise NotImplementedError(f"extended negotiation item {type(item).__name__} is not supported")
    result: dict[str, Any] = {"sop_class_extended": extended, "sop_class_common_extended": common, "roles": roles}
    if identity is not None:
        result["user_identity"] = identity
    for item in ext_neg:
        if isinstance(item, _pdu.AsyncOperationsWindow):
            result["async_ops_window"] = (item.max_operations_invoked, item.max_operations_performed)
    return result


class AsyncServer:
    """A listening acceptor on the loop it was started on."""

    def __init__(
        self,
        ae: AE,
        address: tuple[str, int],
        handlers: dict[Any, list[tuple[Any, list[Any]]]],
        ae_title: str | None,
        contexts: list[PresentationContext] | None,
    ) -> None:
        self.ae = ae
        self.address = address
        self._handlers = handlers
        supported = contexts if contexts is not None else ae.supported_contexts
        if not supported:
            raise ValueError("no supported presentation contexts: use add_supported_context() first")
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
        )
        self.associations: set[AsyncAssociation] = set()
        self._server: asyncio.AbstractServer | None = None
        self._closed: asyncio.Event | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        assert self._server is not None
        sockname = self._server.sockets[0].getsockname()
        return (sockname[0], sockname[1])

    @property
    def active_associations(self) -> list[AsyncAssociation]:
        return [a for a in self.associations if a.is_established]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        host, port = self.address
        self._server = await loop.create_server(
            self._new_connection, host or None, port, reuse_address=True, backlog=1024
        )

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

    def _gatekeeper(self, rq: _pdu.AssociateRQ) -> _pdu.AssociateRJ | None:
        established = sum(1 for a in self.associations if a.is_established)
        if self.ae.maximum_associations and established >= self.ae.maximum_associations:
            result, source, reason = _TOO_MANY_ASSOCIATIONS
            return _pdu.AssociateRJ(result=result, source=source, reason=reason)
        return None

    def _new_connection(self) -> Any:
        ae = self.ae
        ul = ULAssociation(
            requestor=False,
            timeouts=ae._timeouts(),
            max_receive_pdu_length=ae.maximum_pdu_size,
            acceptor_policy=self.policy,
        )
        assoc = AsyncAssociation(ae, ul, self._handlers, spool_directory=ae.store_spool_directory)
        self.associations.add(assoc)
        ul.ended.add_done_callback(lambda _f, a=assoc: self.associations.discard(a))
        notify(self._handlers, Event(assoc, EVT_CONN_OPEN))
        original = ul.on_associate_rq

        def on_rq(rq: _pdu.AssociateRQ) -> None:
            notify(self._handlers, Event(assoc, EVT_REQUESTED))
            original(rq)

        ul.on_associate_rq = on_rq  # type: ignore[method-assign]
        return ul.connection

    async def close(self) -> None:
        """Stop listening and abort the associations still open."""
        if self._server is not None:
            self._server.close()
        for assoc in list(self.associations):
            assoc.abort()
        waits = [asyncio.ensure_future(a.wait_closed()) for a in list(self.associations)]
        if waits:
            await asyncio.wait(waits, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
        if self._closed is not None:
            self._closed.set()

    async def serve_forever(self) -> None:
        assert self._closed is not None
        await self._closed.wait()

    async def __aenter__(self) -> AsyncServer:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


class ThreadedServer:
    """A server on the background loop, for blocking code (pynetdicom's
    ``ThreadedAssociationServer``: ``shutdown()``, ``server_address``)."""

    def __init__(self, server: AsyncServer) -> None:
        self._server = server
        self._stopped = threading.Event()

    @property
    def server_address(self) -> tuple[str, int]:
        return self._server.server_address

    @property
    def active_associations(self) -> list[Association]:
        return [Association(a) for a in self._server.active_associations]

    @property
    def ae(self) -> AE:
        return self._server.ae

    def bind(self, event: Any, handler: Any, args: list[Any] | None = None) -> None:
        """Bind a handler for this server's associations, open or future."""
        from chromanet.evt import check_implemented

        check_implemented(event)
        handlers = self._server._handlers
        entry = (handler, list(args or []))
        if event.is_intervention:
            handlers[event] = [entry]
        elif all(bound is not handler for bound, _ in handlers.get(event, [])):
            handlers.setdefault(event, []).append(entry)

    def unbind(self, event: Any, handler: Any) -> None:
        handlers = self._server._handlers
        kept = [(h, a) for h, a in handlers.get(event, []) if h is not handler]
        if kept:
            handlers[event] = kept
        else:
            handlers.pop(event, None)

    def get_events(self) -> list[Any]:
        return sorted(self._server._handlers, key=lambda event: event.name)

    def serve_forever(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "chromanet does not implement serve_forever: the server already serves; use start_server(block=True) to block"
        )

    def server_close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        loopthread.run(self._server.close())
        if self._server in self._server.ae._servers:
            self._server.ae._servers.remove(self._server)
        self._stopped.set()


class Association:
    """Blocking wrapper of AsyncAssociation (pynetdicom's ``Association``)."""

    def __init__(self, inner: AsyncAssociation) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Settings (e.g. store_directory) belong to the association itself.
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    @property
    def is_established(self) -> bool:
        return self._inner.is_established

    def send_c_echo(self, msg_id: int = 1) -> Dataset:
        return loopthread.run(self._inner.send_c_echo(msg_id))

    def send_c_store(
        self,
        dataset: Dataset | str | os.PathLike[str] | bytes,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        return loopthread.run(self._inner.send_c_store(dataset, msg_id, priority, originator_aet, originator_id))

    def send_c_find(
        self, dataset: Dataset, query_model: str, msg_id: int = 1, priority: int = 2
    ) -> Iterator[tuple[Dataset, Dataset | None]]:
        return loopthread.iterate(self._inner.send_c_find(dataset, query_model, msg_id, priority))

    def send_c_get(
        self, dataset: Dataset, query_model: str, msg_id: int = 1, priority: int = 2
    ) -> Iterator[tuple[Dataset, Dataset | None]]:
        return loopthread.iterate(self._inner.send_c_get(dataset, query_model, msg_id, priority))

    def send_c_move(
        self, dataset: Dataset, move_aet: str, query_model: str, msg_id: int = 1, priority: int = 2
    ) -> Iterator[tuple[Dataset, Dataset | None]]:
        return loopthread.iterate(self._inner.send_c_move(dataset, move_aet, query_model, msg_id, priority))

    def send_c_cancel(self, msg_id: int, context_id: int | None = None, query_model: str | None = None) -> None:
        loopthread.call(self._inner.send_c_cancel, msg_id, context_id, query_model)

    def release(self) -> None:
        loopthread.run(self._inner.release())

    def abort(self) -> None:
        """A-ABORT; returns once the connection is closed (as pynetdicom's
        does), or at once when called from a handler on the loop thread."""
        if loopthread.in_loop_thread():
            self._inner.abort()
            return

        async def abort_and_wait() -> None:
            self._inner.abort()
            try:
                await asyncio.wait_for(self._inner.wait_closed(), 5)
            except asyncio.TimeoutError:
                LOGGER.warning("the connection did not close within 5 s of the abort")

        loopthread.run(abort_and_wait())
