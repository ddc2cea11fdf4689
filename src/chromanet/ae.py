"""The Application Entity: its configuration, and associations out.

``AE`` has pynetdicom's names and blocking behaviour (``associate`` returns an
``Association``; ``start_server(..., block=False)`` returns a server with
``shutdown()``), run on a shared background loop, plus coroutine twins for
asyncio programs: ``await ae.associate_async(...)`` (usable as ``async
with``) and ``await ae.start_server_async(...)``. The server itself lives in
``chromanet.server``, the blocking facades in ``chromanet.blocking``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any, Callable, Iterable

from pydicom.uid import UID

from chromanet import _pdu, loopthread, uids
from chromanet.association import AsyncAssociation
from chromanet.blocking import Association, ThreadedServer
from chromanet.evt import HandlerSpec, split_handlers
from chromanet.presentation import DEFAULT_TRANSFER_SYNTAXES, PresentationContext, build_context, build_role
from chromanet.services.handler_threads import HandlerThreads
from chromanet.server import AsyncServer
from chromanet.ul.acse import AdmissionCheck, AssociationAborted, AssociationClosed, AssociationControl, Timeouts
from chromanet.ul.negotiation import AssociationRejected, ContextSpec, NegotiationError, build_associate_rq
from chromanet.ul.tls_accept import handshake_failure_reason

__all__ = ["AE", "Association", "AsyncServer", "ThreadedServer", "build_role"]

LOGGER = logging.getLogger("chromanet.ae")


class _LiveTimeout:
    """An AE timeout in seconds under pynetdicom's rules (None or a number
    >= 0; anything else is logged and replaced by ``default``) that is also
    set on every association the AE runs, from its next wait on."""

    def __init__(self, default: float | None) -> None:
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = "_" + name

    def __get__(self, ae: Any, owner: type | None = None) -> Any:
        return self if ae is None else getattr(ae, self.slot)

    def __set__(self, ae: Any, value: float | None) -> None:
        value = _timeout_value(value, self.default, self.name)
        setattr(ae, self.slot, value)
        for assoc in ae._established():
            setattr(assoc, self.name, value)


class AE:
    """A DICOM Application Entity (pynetdicom's ``AE``)."""

    def __init__(self, ae_title: str = "CHROMANET") -> None:
        self.ae_title = ae_title
        self.maximum_pdu_size = 16382
        self.maximum_associations = 10
        self._servers: list[Any] = []
        # Associations this AE requested, until they end.
        self._requested_associations: set[AsyncAssociation] = set()
        self.acse_timeout = 30
        self.dimse_timeout = 30
        self.network_timeout = 60
        self.connection_timeout = None
        # chromanet extra: the ARTIM timer (waiting for the A-ASSOCIATE-RQ
        # after a connection, and for the peer to close after an abort,
        # reject or release).
        self.artim_timeout: float | None = 30
        # chromanet extras against slow or stuck peers (seconds, None: no
        # limit): a PDU that began to arrive must be whole within
        # ``pdu_timeout``; an association with no DIMSE message either way
        # for ``idle_timeout`` is aborted.
        self.pdu_timeout: float | None = 30
        self.idle_timeout: float | None = None
        # chromanet extra: at most this many connections from one host
        # (None: only maximum_associations applies), so that a few hosts
        # cannot take every association slot.
        self.maximum_associations_per_host: int | None = None
        # chromanet extra: an identifier (or any data set that is not a
        # C-STORE's) larger than this many bytes is refused, never held
        # whole (0: no limit).
        self.max_identifier_size = 256 * 1024
        self.require_called_aet = False
        # chromanet extra: an async check of each requestor (identity, peer
        # rules) run after negotiation and before the A-ASSOCIATE-AC; its
        # Admission may reject the association or carry a grant that the
        # handlers read as ``event.assoc.admission.grant``.
        self.admission: AdmissionCheck | None = None
        # chromanet extra: called with (association, request command) before
        # a request is served (a C-STORE's as soon as its command arrives,
        # ahead of its data set); a (status, comment) answer refuses the
        # request with that status, and a refused store's data set is read
        # and dropped as it comes, never kept.
        self.request_gate: Callable[[Any, Any], tuple[int, str] | None] | None = None
        self.require_calling_aet: list[str] = []
        self.implementation_class_uid = uids.IMPLEMENTATION_CLASS_UID
        self.implementation_version_name = uids.IMPLEMENTATION_VERSION_NAME
        # (max invoked, max performed) this AE offers as acceptor (PS3.7
        # D.3.3.3). Its invoked value is also what a C-MOVE SCP proposes on
        # the sub-association to the destination: when the destination
        # grants more than 1, that many C-STORE sub-operations are
        # outstanding at once (services/query_retrieve.py).
        self.async_ops_window: tuple[int, int] = (1, 1)
        # chromanet extra: spool received C-STORE data sets to files here
        # (bounded memory; handlers read event.dataset_path).
        self.store_spool_directory: Path | None = None
        # chromanet extra: with a spool directory, a C-STORE data set of at
        # most this many bytes stays in memory (event.encoded_dataset(), no
        # dataset_path), a larger one is spooled; 0: every one is spooled.
        self.store_spool_memory_limit: int = 0
        # chromanet extra: seconds a TLS handshake may take, either side
        # (a TLS listener drops a connection that has not completed its
        # handshake by then; it never held an association slot).
        self.tls_handshake_timeout: float = 30.0
        # chromanet extra: on Linux, acknowledge at once what the peer sent
        # (TCP_QUICKACK, re-armed after each read that may leave the peer
        # waiting for our ACK) on every association
        # this AE makes or accepts, so a peer running Nagle's algorithm
        # (DCMTK without TCP_NODELAY=1, pynetdicom) does not wait ~40 ms on
        # our delayed ACK for each message it writes in pieces. Read at each
        # association; no effect where the option does not exist.
        self.tcp_quickack: bool = True
        # chromanet extra: TLS handshakes one host may have running at once
        # on a TLS listener (more are closed at once; None: no limit), so a
        # peer stalling handshakes cannot hold descriptors by the thousand.
        self.maximum_tls_handshakes_per_host: int | None = 32
        # chromanet extra: the servers this AE starts tell it of each
        # association and its operations (an audit trail, metrics; see
        # chromanet.server.AssociationObserver). None: off.
        self.association_observer: Any = None
        # chromanet extra: when several processes serve one port, what
        # counts against maximum_associations across them (see
        # chromanet.server.AssociationCounter). None: this AE's servers alone.
        self.association_counter: Any = None
        # Plain ``def`` handlers run in worker threads, in order per
        # association, with ``event.assoc`` the blocking Association (as
        # pynetdicom runs them in the association's thread). chromanet
        # extra: True runs them inline on the event loop instead (no thread
        # hand-off, ``event.assoc`` the AsyncAssociation), for handlers that
        # never block; ``evt.inline`` marks one handler so. Read when an
        # association starts.
        self.sync_handlers_inline = False
        self._max_handler_threads = 32
        self._handler_threads: HandlerThreads | None = None
        self._requested: list[PresentationContext] = []
        self._supported: list[PresentationContext] = []

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
    def implementation_class_uid(self) -> UID:
        """Sent in every A-ASSOCIATE-RQ/AC (PS3.7 D.3.3.2): a str, bytes or
        UID that is a well-formed UID, kept as a pydicom ``UID``."""
        return self._implementation_class_uid

    @implementation_class_uid.setter
    def implementation_class_uid(self, value: str | bytes) -> None:
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if not isinstance(value, str):
            raise TypeError(f"implementation_class_uid takes a str, bytes or UID, not {type(value).__name__}")
        if not uids.validate_uid(value):
            raise ValueError(f"implementation_class_uid {value!r} is not a well-formed UID")
        self._implementation_class_uid = UID(value)

    @property
    def implementation_version_name(self) -> str | None:
        """Sent when set (PS3.7 D.3.3.2): 1 to 16 characters, or None."""
        return self._implementation_version_name

    @implementation_version_name.setter
    def implementation_version_name(self, value: str | bytes | None) -> None:
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f"implementation_version_name takes a str or None, not {type(value).__name__}")
            if not 0 < len(value) <= 16 or not value.isascii() or not value.isprintable():
                raise ValueError(
                    f"implementation_version_name {value!r} must be 1 to 16 printable ASCII characters, or None"
                )
        self._implementation_version_name = value

    @property
    def maximum_associations(self) -> int:
        return self._maximum_associations

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        # As pynetdicom: anything but an int of 1 or more means 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            LOGGER.warning("maximum_associations must be an int of 1 or more, not %r: 1", value)
            value = 1
        self._maximum_associations = value

    @property
    def maximum_pdu_size(self) -> int:
        return self._maximum_pdu_size

    @maximum_pdu_size.setter
    def maximum_pdu_size(self, value: int) -> None:
        # As pynetdicom: 0 is "no limit"; a negative or non-int value is ignored.
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            LOGGER.warning("maximum_pdu_size must be an int, 0 or more, not %r: unchanged", value)
            return
        self._maximum_pdu_size = value

    @property
    def requested_contexts(self) -> list[PresentationContext]:
        return list(self._requested)

    @requested_contexts.setter
    def requested_contexts(self, contexts: Iterable[PresentationContext]) -> None:
        contexts = list(contexts)
        _check_contexts(contexts)
        self._requested = []
        for ctx in contexts:
            self.add_requested_context(ctx.abstract_syntax, ctx.transfer_syntax)

    @property
    def supported_contexts(self) -> list[PresentationContext]:
        """The supported contexts, by abstract syntax (as pynetdicom lists them)."""
        return sorted(self._supported, key=lambda ctx: ctx.abstract_syntax)

    @supported_contexts.setter
    def supported_contexts(self, contexts: Iterable[PresentationContext]) -> None:
        contexts = list(contexts)
        _check_contexts(contexts)
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
        transfer syntaxes and replaces the roles. A role that is neither
        None nor a bool is a TypeError."""
        for name, role in (("scu_role", scu_role), ("scp_role", scp_role)):
            if role is not None and not isinstance(role, bool):
                raise TypeError(f"{name} is None, True or False, not {role!r}")
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

    @property
    def max_handler_threads(self) -> int:
        """chromanet extra: at most this many plain ``def`` handlers run at
        once, over every association of this AE (default 32); the others
        wait for a free thread, their association's order kept. pynetdicom
        runs one thread per association instead."""
        return self._max_handler_threads

    @max_handler_threads.setter
    def max_handler_threads(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_handler_threads must be at least 1")
        self._max_handler_threads = value
        if self._handler_threads is not None:
            self._handler_threads.max_threads = value

    @property
    def handler_threads(self) -> HandlerThreads:
        """The worker threads of this AE's sync handlers (made when first
        needed; a thread starts when a handler needs one)."""
        if self._handler_threads is None:
            self._handler_threads = HandlerThreads(self._max_handler_threads, f"chromanet-{self.ae_title}")
        return self._handler_threads

    def blocking_association(
        self, assoc: AsyncAssociation, loop: asyncio.AbstractEventLoop | None = None
    ) -> Association:
        """The blocking ``Association`` over ``assoc``, which runs on
        ``loop`` (None: the shared background loop): what ``associate``
        returns and its sync handlers get as ``event.assoc``."""
        return Association(assoc, loop)

    def association_timeouts(self) -> Timeouts:
        """The timeouts an association made now gets (read at each one, so
        a change applies to the next association)."""
        return Timeouts(
            acse=self.acse_timeout,
            dimse=self.dimse_timeout,
            network=self.network_timeout,
            connection=self.connection_timeout,
            artim=self.artim_timeout,
            pdu=self.pdu_timeout,
            idle=self.idle_timeout,
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
        tls_args: tuple[ssl.SSLContext, str | None] | None = None,
        bind_address: tuple[Any, ...] = ("", 0),
        *,
        failure_level: int = logging.ERROR,
    ) -> _AssociateCall:
        """Open an association. Await it for an AsyncAssociation (check
        ``is_established``), or ``async with`` it to release on exit.

        ``tls_args`` is pynetdicom's ``(ssl_context, server_hostname)``: the
        association runs over TLS (PS3.15 B.1), the handshake within
        ``connection_timeout``; ``server_hostname`` None checks the
        certificate against ``addr``. ``bind_address``: the local (host,
        port) to connect from. ``failure_level`` (chromanet extra): the log
        level of the line that says why a request failed (the reason is
        also in the association's ``request_failure``); a C-MOVE SCP asks
        for DEBUG and says it in its own, rate-limited, warning."""
        _local_address(bind_address)
        return _AssociateCall(
            self._associate(addr, port, contexts, ae_title, max_pdu, ext_neg, evt_handlers, tls_args, bind_address,
                            failure_level=failure_level)
        )

    async def _associate(
        self,
        addr: str,
        port: int,
        contexts: list[PresentationContext] | None,
        ae_title: str,
        max_pdu: int,
        ext_neg: list[Any] | None,
        evt_handlers: list[HandlerSpec] | None,
        tls_args: tuple[ssl.SSLContext, str | None] | None = None,
        bind_address: tuple[Any, ...] = ("", 0),
        *,
        failure_level: int = logging.ERROR,
    ) -> AsyncAssociation:
        """``associate_async``'s work. A failed request gives an association
        that is not established, its reason in ``request_failure`` and, at
        ``failure_level``, in the log (a C-MOVE sub-association's failure is
        logged by the C-MOVE instead)."""
        # A non-str address or non-int port is a TypeError, as in pynetdicom.
        if not isinstance(addr, str):
            raise TypeError(f"addr is a str (a host name or IP address), not {type(addr).__name__}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port is an int, not {type(port).__name__}")
        tls = _tls_options(tls_args, self.tls_handshake_timeout)
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
        ul = AssociationControl(requestor=True, timeouts=self.association_timeouts(), max_receive_pdu_length=max_pdu,
                                tcp_quickack=self.tcp_quickack)
        assoc = AsyncAssociation(
            self, ul, split_handlers(evt_handlers), spool_directory=self.store_spool_directory
        )
        self._requested_associations.add(assoc)
        ul.ended.add_done_callback(lambda _f: self._requested_associations.discard(assoc))
        failure: str | None = None
        try:
            await ul.open(addr, port, rq, local_addr=_local_address(bind_address), **tls)
        except AssociationRejected as exc:
            assoc.request_failure = f"rejected: result {exc.result} source {exc.source} reason {exc.reason}"
            # A refusal is the peer's answer, not a fault: INFO (DEBUG for a
            # C-MOVE sub-association, whose C-MOVE says so).
            LOGGER.log(min(failure_level, logging.INFO), "association %s", assoc.request_failure)
        except NegotiationError as exc:
            # An A-ASSOCIATE-AC that does not answer our RQ: the connection
            # was aborted (``AssociationControl.on_associate_ac``); the
            # caller gets a failed association, as for any other failure.
            failure = f"inconsistent A-ASSOCIATE-AC: {exc}"
        except ssl.SSLError as exc:
            failure = f"TLS handshake: {handshake_failure_reason(exc)}"
        except (AssociationAborted, AssociationClosed, asyncio.TimeoutError, OSError) as exc:
            lost = ul.connection.lost_exception
            # TLS 1.3: a server that refuses our certificate says so after
            # our side of the handshake is done, on the first read.
            if isinstance(lost, ssl.SSLError):
                failure = f"TLS: {handshake_failure_reason(lost)}"
            else:  # an abort of ours says why (no context accepted), else the error's text
                failure = getattr(exc, "why", None) or str(exc) or type(exc).__name__
        if failure is not None:
            assoc.request_failure = failure
            LOGGER.log(failure_level, "association request to %s:%d failed: %s", addr, port, failure)
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
        """Blocking ``associate`` (pynetdicom's): returns an Association.
        ``tls_args``: ``(ssl_context, server_hostname)`` for TLS."""
        _local_address(bind_address)  # a bad one is a TypeError before anything starts
        coro = self._associate(addr, port, contexts, ae_title, max_pdu, ext_neg, evt_handlers, tls_args, bind_address)
        # The object its sync handlers get as event.assoc, as in pynetdicom.
        return loopthread.run(coro).sync_facade

    # ------------------------------------------------------------ acceptor
    async def start_server_async(
        self,
        address: tuple[Any, ...],
        evt_handlers: list[HandlerSpec] | None = None,
        ae_title: str | None = None,
        contexts: list[PresentationContext] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        sock: Any = None,
    ) -> AsyncServer:
        """Listen on ``address``, ``(host, port)`` or for IPv6 also
        ``(host, port, flowinfo, scope_id)``; returns a started AsyncServer. With
        ``ssl_context`` every connection runs over TLS (PS3.15 B.1). With
        ``sock`` (chromanet extra) it accepts on that listening socket
        instead of binding ``address`` (worker processes sharing a port)."""
        server = AsyncServer(self, address, split_handlers(evt_handlers), ae_title, contexts, ssl_context, sock)
        await server.start()
        self._servers.append(server)
        server.on_closed = self._forget_server
        return server

    def _forget_server(self, server: AsyncServer) -> None:
        if server in self._servers:
            self._servers.remove(server)

    def start_server(
        self,
        address: tuple[Any, ...],
        block: bool = True,
        ssl_context: Any = None,
        evt_handlers: list[HandlerSpec] | None = None,
        ae_title: str | None = None,
        contexts: list[PresentationContext] | None = None,
    ) -> ThreadedServer | None:
        """pynetdicom's ``start_server``: with ``block=False`` returns a
        server running on the background loop (stop it with
        ``shutdown()``); with ``block=True`` serves until interrupted.
        With ``ssl_context`` every connection runs over TLS."""
        coro = self.start_server_async(address, evt_handlers, ae_title, contexts, ssl_context)
        server = ThreadedServer(loopthread.run(coro))
        if not block:
            return server
        try:
            server.wait_stopped()
        except KeyboardInterrupt:
            server.shutdown()
        return None

    @property
    def active_associations(self) -> list[Association]:
        """The established associations of this AE: those it requested and
        those of every server it runs (pynetdicom's list holds both)."""
        return [a.sync_facade for a in self._established()]

    def _established(self) -> list[AsyncAssociation]:
        accepted = [a for server in self._servers for a in server.active_associations]
        return [a for a in list(self._requested_associations) if a.is_established] + accepted

    # ------------------------------------------------------------ timeouts
    # pynetdicom's rules: None or a number >= 0 (connection_timeout > 0);
    # anything else is logged and replaced by the default. A change applies
    # to the associations already running, from their next wait on.
    acse_timeout = _LiveTimeout(30)
    dimse_timeout = _LiveTimeout(30)
    network_timeout = _LiveTimeout(60)

    @property
    def connection_timeout(self) -> float | None:
        return self._connection_timeout

    @connection_timeout.setter
    def connection_timeout(self, value: float | None) -> None:
        # Only a connection being made waits on it; the open associations
        # show the new value (as in pynetdicom).
        self._connection_timeout = None if value == 0 else _timeout_value(value, None, "connection_timeout")
        for assoc in self._established():
            assoc.connection_timeout = self._connection_timeout

    def __str__(self) -> str:
        """A readable summary of the AE's configuration and state."""

        def name(uid: str) -> str:
            return UID(uid).name if uid else ""

        def contexts(title: str, items: list[PresentationContext]) -> list[str]:
            out = [f"  {title}:"]
            if not items:
                out.append("    None")
            for ctx in items:
                out.append(f"    {name(ctx.abstract_syntax)}")
                out.extend(f"      {name(syntax)}" for syntax in ctx.transfer_syntax)
            return out

        def timeout(value: float | None) -> str:
            return "None" if value is None else f"{value:g} s"

        calling = ", ".join(self.require_calling_aet) if self.require_calling_aet else "None"
        lines = [
            f"Application Entity '{self.ae_title}'",
            f"  Implementation class UID: {self.implementation_class_uid}",
            f"  Implementation version name: {self.implementation_version_name}",
            f"  Maximum PDU size: {self.maximum_pdu_size}",
            f"  Timeouts: ACSE {timeout(self.acse_timeout)}, DIMSE {timeout(self.dimse_timeout)}, "
            f"network {timeout(self.network_timeout)}, connection {timeout(self.connection_timeout)}",
            f"  Require called AE title: {self.require_called_aet}",
            f"  Require calling AE title: {calling}",
            *contexts("Requested presentation contexts", self.requested_contexts),
            *contexts("Supported presentation contexts", self.supported_contexts),
            f"  Associations (active/maximum): {len(self._established())}/{self.maximum_associations}",
        ]
        for assoc in self._established():
            peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
            lines.append(f"    Peer {peer.ae_title!r} at {peer.address}:{peer.port} (we are the {assoc.mode})")
        return "\n".join(lines)

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


def _local_address(bind_address: Any) -> tuple[Any, ...] | None:
    """``bind_address`` -> ``local_addr`` of the connection: None for
    ("", 0), the default (any interface, any port)."""
    ok = (
        isinstance(bind_address, tuple)
        and len(bind_address) in (2, 4)
        and isinstance(bind_address[0], str)
        and all(isinstance(part, int) and not isinstance(part, bool) for part in bind_address[1:])
    )
    if not ok:
        raise TypeError(f"bind_address is a (host: str, port: int) tuple, not {bind_address!r}")
    if bind_address[0] == "" and bind_address[1] == 0 and len(bind_address) == 2:
        return None
    return bind_address


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


def _tls_options(tls_args: Any, handshake_timeout: float) -> dict[str, Any]:
    """AssociationControl.open's TLS keywords from pynetdicom's ``tls_args``
    (``(ssl_context, server_hostname)``, or None for plain TCP)."""
    if tls_args is None:
        return {}
    if isinstance(tls_args, ssl.SSLContext):
        context, server_hostname = tls_args, None
    else:
        context, server_hostname = tls_args
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"tls_args must be (ssl.SSLContext, server_hostname), not {tls_args!r}")
    return {"ssl_context": context, "server_hostname": server_hostname, "handshake_timeout": handshake_timeout}


def _check_contexts(contexts: list[Any]) -> None:
    """ValueError unless every item is a PresentationContext."""
    for ctx in contexts:
        if not isinstance(ctx, PresentationContext):
            raise ValueError(f"presentation contexts are PresentationContext objects (build_context()), not {ctx!r}")


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
    unless ``ext_neg`` said otherwise; when the program requested the
    storage context itself, the SCU role is proposed as well, so that it
    can still send C-STOREs on it (as it could without the role item)."""
    specs = [ctx.to_spec() for ctx in requested]
    if any(spec.abstract_syntax == uids.ColorPaletteInformationModelGet for spec in specs):
        asked = any(spec.abstract_syntax == uids.ColorPaletteStorage for spec in specs)
        if not asked:
            specs.append(ContextSpec(uids.ColorPaletteStorage, list(DEFAULT_TRANSFER_SYNTAXES)))
        roles.setdefault(uids.ColorPaletteStorage, (asked, True))
    for spec in specs:
        if spec.abstract_syntax in roles:
            spec.scu_role, spec.scp_role = roles[spec.abstract_syntax]
    return specs


def _timeout_value(value: Any, default: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return value
    LOGGER.warning("%s must be None or a number >= 0, not %r: set to %s", name, value, default)
    return default


def _extended_items(ext_neg: list[Any] | None) -> dict[str, Any]:
    """Split pynetdicom-style ``ext_neg`` items into build_associate_rq's
    keywords (plus "roles": {SOP class: (scu, scp)} from role items)."""
    roles: dict[str, tuple[bool, bool]] = {}
    if not ext_neg:
        return {"roles": roles}
    identity = None
    extended: list[Any] = []
    common: list[Any] = []
    # pynetdicom-style items (chromanet.pdu_primitives) become their PDU items.
    ext_neg = [item.to_item() if hasattr(item, "to_item") else item for item in ext_neg]
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
