"""The ready-made palette archive node behind ``chromanet serve``.

One AE that is a Verification SCP, a Color Palette Storage SCP and a Color
Palette Query/Retrieve SCP (FIND, GET, MOVE) over a ``PaletteArchive`` (an
SQLite index and a file store under the data directory), or, with ``index``
a ``postgresql://`` URL, over a ``PgArchive`` that several nodes share (the
handlers are then async generators that await the database; the SQLite
path keeps its synchronous handlers, the faster for an embedded index).
Received instances are spooled to disk as they arrive (bounded memory) and ingested from there;
retrieved instances are sent from their files without being decoded when
the negotiated transfer syntax is the stored one.

With a TLS certificate configured the node listens for DICOM over TLS
(PS3.15 B.1, port 2762 by convention) next to, or instead of, plain TCP;
C-MOVE destinations marked ``tls`` are reached over TLS.

One node may be one of several worker processes of ``chromanet serve
--workers N`` (``apps/workers.py``): it is then given a ``WorkerPlace``
(the supervisor's listening sockets, the association count shared across
workers, its own spool subdirectory) and opens the archive shared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydicom import Dataset

from chromanet import _dimse, evt, uids
from chromanet.ae import AE
from chromanet.apps.access import OPEN_GRANT, AccessPolicy, Grant
from chromanet.apps.tls_options import MoveDestination, NodeTls
from chromanet.apps.audit import AuditTrail
from chromanet.apps.audit_writer import AuditWriter, FileSink, Sink, SyslogSink
from chromanet.apps.metrics import NodeMetrics, serve_metrics
from chromanet.server import AssociationCounter, AsyncServer
from chromanet.archive import ArchiveError, PaletteArchive
from chromanet.archive.group_commit import DEFAULT_MAX_BATCH, DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_WAIT, IngestQueue
from chromanet.archive.durability import check_durability
from chromanet.archive.store import DEFAULT_INLINE_MAX
from chromanet.archive.postgres import PgArchive, is_postgresql_url
from chromanet.archive.shared_commit import RemoteCommitter
from chromanet.services.spool import SPOOL_PREFIX
from chromanet.status import Status

LOGGER = logging.getLogger("chromanet.node")

STORE_OUT_OF_RESOURCES = int(Status.OUT_OF_RESOURCES)
NOT_AUTHORISED = int(Status.NOT_AUTHORISED)
# Palettes read from PostgreSQL per query during a retrieve: fewer round
# trips, and at most this many (each <= ~400 KB) held at once.
_READ_BATCH = 16

#: What a peer that no [[peers]] entry names may do, unless the
#: administrator says otherwise: read the archive, not write to it nor make
#: the node send palettes elsewhere.
DEFAULT_OPERATIONS = frozenset({"echo", "find", "get"})

# Request Command Field -> the operation a grant names.
_OPERATIONS = {
    _dimse.C_ECHO_RQ: "echo",
    _dimse.C_FIND_RQ: "find",
    _dimse.C_GET_RQ: "get",
    _dimse.C_MOVE_RQ: "move",
    _dimse.C_STORE_RQ: "store",
}


#: Bytes of a C-STORE data set received in memory at most (a palette is
#: 4 KB to 400 KB; the 8-bit ones most stores carry are under 16 KB).
DEFAULT_STORE_MEMORY_LIMIT = 64 * 1024
#: NodeConfig.store_committer's values.
STORE_COMMITTERS = ("auto", "supervisor", "worker")

@dataclass
class NodeConfig:
    """Everything ``chromanet serve`` can be told (file or flags)."""

    ae_title: str = "CHROMANET"
    port: int = 11112
    bind_address: str = "0.0.0.0"
    data_dir: Path = Path("data")
    # None: the embedded SQLite index in data_dir; "postgresql://user@host:port/db":
    # index and palettes in PostgreSQL, shared by every node pointed at it
    # (data_dir then holds only the spool of incoming C-STOREs).
    index: str | None = None
    allowed_calling_aets: list[str] = field(default_factory=list)
    # AE title -> (host, port) or MoveDestination(host, port, tls).
    move_destinations: dict[str, tuple[str, int] | MoveDestination] = field(default_factory=dict)
    max_associations: int = 64
    # One host may hold at most this many connections (established or
    # still negotiating), so a few hosts cannot take every slot.
    max_associations_per_host: int | None = 32
    max_pdu_length: int = 65536
    acse_timeout: float | None = 30
    dimse_timeout: float | None = 60
    network_timeout: float | None = 120
    # A PDU that began must be whole within this (a trickling peer).
    pdu_timeout: float | None = 30
    # No DIMSE message either way for this long: the association is aborted
    # and its slot freed (Orthanc's default for the same limit is 30 s).
    idle_timeout: float | None = 60
    # An identifier (any data set but a C-STORE's) larger than this many
    # bytes is refused without being held (C-FIND 0xA700, C-GET/MOVE 0xA701).
    max_identifier_size: int = 256 * 1024
    # A-ASSOCIATE-RQ for another called AE title: rejected (1, 1, 7).
    require_called_aet: bool = True
    # Linux: acknowledge each receive at once (TCP_QUICKACK) on every
    # association, in and out (C-MOVE sub-associations too), so peers that
    # run Nagle's algorithm (most DCMTK-based nodes, pynetdicom) do not
    # stall ~40 ms a message on our delayed ACK (AE.tcp_quickack).
    tcp_quickack: bool = True
    # Identity, the peers table and the default for unknown peers.
    access: AccessPolicy = field(default_factory=lambda: AccessPolicy(default_operations=DEFAULT_OPERATIONS))
    log_level: str = "INFO"
    # The plain TCP listener on ``port``; off for a TLS-only node.
    listen_plain: bool = True
    # The TLS listener (when tls.certificate is set) and TLS move destinations.
    tls: NodeTls = field(default_factory=NodeTls)
    # The audit trail (README "Audit trail"): JSON lines appended to this
    # file, and/or RFC 5424 messages to this syslog address ("/dev/log",
    # "HOST:PORT" for UDP) with this facility. None and None: no trail.
    audit_file: Path | None = None
    audit_syslog: str | None = None
    audit_syslog_facility: str = "authpriv"
    # Worker processes accepting on the same port(s) under a supervisor
    # (apps/workers.py); None: one per core (os.cpu_count()); 1: this
    # process alone, no supervisor.
    workers: int | None = None
    # SIGTERM/SIGINT: stop accepting, let associations end within this many
    # seconds, then abort the rest.
    drain_timeout: float = 30.0
    # Prometheus metrics on http://metrics_bind:metrics_port/metrics (the
    # supervisor's, with workers); None: no metrics. metrics_bind None: bind_address.
    metrics_port: int | None = None
    metrics_bind: str | None = None
    # Group commit of C-STOREs (archive/group_commit.py): stores that arrive
    # while a commit runs are made durable together, at most this many at
    # once; a store waits at most store_batch_wait seconds for its batch to
    # begin (then a second commit starts beside the first, store_batch_inflight
    # at most). A store that finds no commit running is committed at once, alone.
    store_batch_size: int = DEFAULT_MAX_BATCH
    store_batch_wait: float = DEFAULT_MAX_WAIT
    store_batch_inflight: int = DEFAULT_MAX_INFLIGHT
    # A C-STORE data set of at most this many bytes is received in memory
    # and written by the archive straight into its store; a larger one is
    # spooled to data_dir/incoming as it arrives (bounded memory: at most
    # this much per outstanding store, 8 per association). 0: spool all.
    store_memory_limit: int = DEFAULT_STORE_MEMORY_LIMIT
    # How the SQLite archive makes a batch's files durable (archive/durability.py):
    # "syncfs" (one per batch), "fsync" (one per file and one of the
    # directory), "auto" (syncfs where it reports write-back errors).
    store_durability: str = "auto"
    # A stored Part 10 file of at most this many bytes is kept in the SQLite
    # index itself, committed with its row (archive/store.py); 0: every
    # instance in a file of its own.
    store_inline_max: int = DEFAULT_INLINE_MAX
    # Who commits the stores kept in the SQLite index: "supervisor", in
    # batches shared by every worker (archive/shared_commit.py; with
    # workers=1 too: a supervisor and one worker, whose commits then never
    # wait for the worker's GIL); "worker": each worker (or the one process)
    # its own, in threads of its own; "auto": the supervisor when there are
    # several workers, else the one process.
    store_committer: str = "auto"

    @property
    def worker_count(self) -> int:
        return max(1, self.workers if self.workers is not None else (os.cpu_count() or 1))

    @property
    def uses_supervisor(self) -> bool:
        """Worker processes under a supervisor, rather than this process alone."""
        return self.worker_count > 1 or (self.store_committer == "supervisor" and not is_postgresql_url(self.index))

    @property
    def shared_committer(self) -> bool:
        """The supervisor commits the stores its workers keep in the SQLite index."""
        return self.uses_supervisor and self.store_committer != "worker" and not is_postgresql_url(self.index)


@dataclass
class WorkerPlace:
    """What a worker process gets from its supervisor (``apps/workers.py``)."""

    #: 1..N; names the spool subdirectory and the worker's metrics label.
    index: int
    #: The listening sockets to accept on (plain, TLS), or None.
    plain_socket: socket.socket | None
    tls_socket: socket.socket | None
    #: ``max_associations`` across the workers.
    counter: AssociationCounter | None
    #: This worker's link to the supervisor's shared committer
    #: (``archive/shared_commit.py``), or None: it commits its own stores.
    commit_socket: socket.socket | None = None


def _grant_of(assoc: Any) -> Grant | None:
    """What the admission check granted the association's peer, if it ran."""
    admission = assoc.admission if assoc is not None else None
    grant = admission.grant if admission is not None else None
    return grant if isinstance(grant, Grant) else None


def _grant(event: evt.Event) -> Grant:
    return _grant_of(event.assoc) or OPEN_GRANT


def _store_status(result: Any) -> int | Dataset:
    """A C-STORE's answer from the archive's IngestResult."""
    if result.comment:
        status = Dataset()
        status.Status = result.status
        status.ErrorComment = str(result.comment)[:64]
        return status
    return int(result.status)


def _status_dataset(error: ArchiveError) -> Dataset:
    status = Dataset()
    status.Status = error.status
    if error.comment:
        status.ErrorComment = str(error.comment)[:64]
    if getattr(error, "offending_tags", None):
        status.OffendingElement = list(error.offending_tags)
    return status


def _find_answers(result: Any, event: evt.Event) -> Any:
    """A C-FIND's answers from the archive's result: each match's identifier
    pre-encoded in the context's transfer syntax, until the end or a C-CANCEL."""
    pending = result.status_pending
    for encoded in result.encoded(event.context.transfer_syntax):
        if event.is_cancelled:
            yield Status.CANCEL, None
            return
        yield pending, encoded


class PaletteNode:
    """A configured AE bound to an archive; ``await start()`` listens."""

    def __init__(
        self, config: NodeConfig, archive: PaletteArchive | PgArchive | None = None, worker: WorkerPlace | None = None
    ) -> None:
        self.config = config
        self.worker = worker
        if (
            config.store_batch_size < 1
            or config.store_batch_inflight < 1
            or config.store_batch_wait < 0
            or config.store_memory_limit < 0
            or config.store_inline_max < 0
        ):
            raise ValueError(
                "store_batch_size and store_batch_inflight must be at least 1, store_batch_wait, store_memory_limit and store_inline_max "
                "not negative"
            )
        check_durability(config.store_durability)
        if config.store_committer not in STORE_COMMITTERS:
            raise ValueError(f"store_committer must be one of {', '.join(STORE_COMMITTERS)}")
        config.data_dir.mkdir(parents=True, exist_ok=True)
        if archive is None and is_postgresql_url(config.index):
            archive_or_none: Any = None  # opened by start(): connecting is awaited
        elif archive is None and config.index:
            raise ValueError(f"index {config.index!r}: only postgresql:// URLs (or none, for SQLite)")
        else:
            # A worker shares the archive its supervisor recovered and seeded.
            archive_or_none = archive or PaletteArchive.open(
                config.data_dir, seed=True, shared=worker is not None, durability=config.store_durability,
                inline_max=config.store_inline_max,
            )  # fmt: skip
        self.archive: Any = archive_or_none
        # Incoming C-STORE data sets are spooled here, on the archive's file
        # system, so that ingesting one is a rename. What a crash left here
        # was never acknowledged to any peer: it goes. A worker has its own
        # subdirectory, so that one restarted cleans up only its own.
        self.spool_root = config.data_dir / "incoming"
        self.spool_directory = self.spool_root / f"w{worker.index}" if worker is not None else self.spool_root
        self.spool_directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.spool_directory.glob(f"{SPOOL_PREFIX}*"):
            leftover.unlink()
        self.audit = self._build_audit()
        #: The Prometheus metrics, when config.metrics_port is set.
        self.metrics: NodeMetrics | None = None
        if config.metrics_port is not None:
            self.metrics = NodeMetrics(worker=worker.index if worker is not None else None)
        self._metrics_server: Any = None
        self.ae = self._build_ae()
        self.ae.tls_handshake_timeout = config.tls.handshake_timeout
        observers = [o for o in (self.audit, self.metrics) if o is not None]
        self.ae.association_observer = observers[0] if len(observers) == 1 else (_Both(*observers) if observers else None)
        if worker is not None:
            self.ae.association_counter = worker.counter
        #: The first listener (plain when there is one), and the TLS one.
        self.server: AsyncServer | None = None
        self.tls_server: AsyncServer | None = None
        self._move_tls_context: Any = None  # built when a destination needs it
        self._ingest: IngestQueue | None = None  # made on the loop, by the first store
        self._shared_committer: RemoteCommitter | None = None  # connected by start()

    def _build_audit(self) -> AuditTrail | None:
        config = self.config
        sinks: list[Sink] = []
        if config.audit_file is not None:
            sinks.append(FileSink(config.audit_file))
        if config.audit_syslog:
            sinks.append(SyslogSink(config.audit_syslog, config.audit_syslog_facility))
        if not sinks:
            return None
        return AuditTrail(AuditWriter(sinks), config.ae_title)

    def _build_ae(self) -> AE:
        config = self.config
        ae = AE(config.ae_title)
        ae.maximum_associations = config.max_associations
        ae.maximum_associations_per_host = config.max_associations_per_host
        ae.pdu_timeout = config.pdu_timeout
        ae.idle_timeout = config.idle_timeout
        ae.max_identifier_size = config.max_identifier_size
        ae.maximum_pdu_size = config.max_pdu_length
        ae.acse_timeout = config.acse_timeout
        ae.dimse_timeout = config.dimse_timeout
        ae.network_timeout = config.network_timeout
        ae.require_called_aet = config.require_called_aet
        ae.tcp_quickack = config.tcp_quickack
        ae.require_calling_aet = list(config.allowed_calling_aets)
        ae.admission = config.access.admit
        ae.request_gate = self._request_gate
        ae.async_ops_window = (8, 8)
        ae.store_spool_directory = self.spool_directory
        ae.store_spool_memory_limit = self.config.store_memory_limit
        ae.add_supported_context(uids.Verification)
        for model in (
            uids.ColorPaletteInformationModelFind,
            uids.ColorPaletteInformationModelGet,
            uids.ColorPaletteInformationModelMove,
        ):
            ae.add_supported_context(model)
        # Storage SCP for C-STORE, and the SCU role on the same context for
        # the C-STORE sub-operations of a C-GET (role selection). Explicit VR
        # Little Endian first: it is how the files are stored, so a retrieve
        # on such a context sends them without decoding.
        stored_first = [uids.ExplicitVRLittleEndian] + [
            syntax for syntax in uids.DEFAULT_TRANSFER_SYNTAXES if syntax != uids.ExplicitVRLittleEndian
        ]
        ae.add_supported_context(uids.ColorPaletteStorage, stored_first, scu_role=True, scp_role=True)
        # Requested on C-MOVE sub-associations: one context for the stored
        # syntax alone (whatever the destination prefers), one for the rest.
        ae.add_requested_context(uids.ColorPaletteStorage, uids.ExplicitVRLittleEndian)
        ae.add_requested_context(uids.ColorPaletteStorage, stored_first[1:])
        return ae

    @property
    def archive_is_async(self) -> bool:
        return bool(getattr(self.archive, "is_async", False)) or (
            self.archive is None and is_postgresql_url(self.config.index)
        )

    def handlers(self) -> list[Any]:
        if self.archive_is_async:
            return [
                (evt.EVT_C_STORE, self.on_store),
                (evt.EVT_C_FIND, self.on_find_async),
                (evt.EVT_C_GET, self.on_get_async),
                (evt.EVT_C_MOVE, self.on_move_async),
            ]
        return [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
        ]

    async def start(self) -> AsyncServer:
        config = self.config
        if self.archive is None:
            assert config.index is not None
            self.archive = await PgArchive.open(config.index, seed=True)
        if not config.listen_plain and not config.tls.listening:
            raise ValueError("no listener: the plain one is off and no TLS certificate is configured")
        ssl_context = config.tls.server_context() if config.tls.listening else None
        if any(isinstance(d, MoveDestination) and d.tls for d in config.move_destinations.values()):
            self._move_tls_context = config.tls.client_context()
        worker = self.worker
        if worker is not None and worker.commit_socket is not None and not self.archive_is_async:
            self._shared_committer = await RemoteCommitter.connect(worker.commit_socket)
        if config.listen_plain:
            self.server = await self.ae.start_server_async(
                (config.bind_address, config.port), evt_handlers=self.handlers(),
                sock=worker.plain_socket if worker is not None else None,
            )  # fmt: skip
            self._log_listening(self.server, "")
        if ssl_context is not None:
            self.tls_server = await self.ae.start_server_async(
                (config.bind_address, config.tls.port), evt_handlers=self.handlers(), ssl_context=ssl_context,
                sock=worker.tls_socket if worker is not None else None,
            )  # fmt: skip
            mutual = ", client certificates required" if config.tls.require_client_certificate else ""
            self._log_listening(self.tls_server, f" for TLS{mutual}")
            if self.audit is not None:
                self.tls_server.on_handshake_failed = self.audit.tls_handshake_failed
            if self.server is None:
                self.server = self.tls_server
        assert self.server is not None
        access = config.access
        LOGGER.info(
            "access: %d [[peers]] rule(s); peers without one may %s; called AE title %s; user identity %s",
            len(access.rules),
            ", ".join(sorted(access.default_operations)) or "nothing (rejected)",
            "checked" if config.require_called_aet else "not checked",
            ("required" if access.require_user_identity else "verified") if access.identity.configured
            else "not checked",
        )
        if self.audit is not None:
            self.audit.application_record("start", self.server.server_address)
        if self.metrics is not None and worker is None:
            # Workers' values are summed and served by their supervisor.
            address = config.metrics_bind if config.metrics_bind is not None else config.bind_address
            self._metrics_server = serve_metrics(self.metrics, config.metrics_port or 0, address, self.spool_root)
        return self.server

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where this process serves /metrics (None: it does not)."""
        if self._metrics_server is None:
            return None
        return self._metrics_server.server_address[:2]

    def _log_listening(self, server: AsyncServer, what: str) -> None:
        host, port = server.server_address
        if self.archive_is_async:
            where = f"index and palettes in {self.archive.display_url}"
        else:
            where = f"data in {self.config.data_dir} ({len(self.archive)} palettes indexed)"
        LOGGER.info("%s listening%s on %s:%d, %s", self.config.ae_title, what, host, port, where)

    def _servers(self) -> list[AsyncServer]:
        # each once: a TLS-only node's server is both
        return list(dict.fromkeys(s for s in (self.server, self.tls_server) if s is not None))

    async def drain(self, timeout: float) -> bool:
        """Stop accepting and wait up to ``timeout`` seconds for the
        associations in progress to end; True when they all did (``close``
        aborts what is left)."""
        servers = self._servers()
        for server in servers:
            await server.stop_accepting()
        remaining = sum(len(server.associations) for server in servers)
        if remaining:
            LOGGER.info("draining: %d association(s) in progress, waiting up to %g s", remaining, timeout)
        ended = [server.wait_idle(timeout) for server in servers]
        return all(await asyncio.gather(*ended))

    async def close(self) -> None:
        for server in self._servers():
            await server.close()
        if self.metrics is not None:
            self.metrics.flush()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._ingest is not None:
            await self._ingest.close()  # the batches in flight commit first
        if self._shared_committer is not None:
            self._shared_committer.close()
        if self.archive_is_async:
            if self.archive is not None:
                await self.archive.close()
        else:
            self.archive.close()
        if self.audit is not None:
            self.audit.application_record("stop")
            # The last records are written (off the loop) before we return.
            await asyncio.get_running_loop().run_in_executor(None, self.audit.writer.close)

    def _move_target(self, destination: tuple[str, int] | MoveDestination) -> Any:
        """What EVT_C_MOVE yields for a destination: (host, port), plus the
        TLS arguments of the sub-association when it is marked tls."""
        host, port = destination[0], destination[1]
        if isinstance(destination, MoveDestination) and destination.tls:
            return host, port, {"tls_args": (self._move_tls_context, None)}
        return host, port

    # -------------------------------------------------------------- handlers
    # The sync handlers below are marked ``evt.inline``: they run on the
    # loop, as before sync handlers ran off it by default. Each is quick
    # (an index query, then pre-encoded identifiers or file paths) and
    # never blocks on the network, so a thread hand-off per request and per
    # batch of results would only cost the node its speed.
    def _request_gate(self, assoc: Any, command: Any) -> tuple[int, str] | None:
        """Every request passes here before it is served (a C-STORE as soon
        as its command arrives, so a refused store's data set is dropped as
        it comes, never spooled): an operation the peer's grant does not
        allow, or a move to a destination it may not use, is refused with
        0x0124 (Refused: Not Authorized)."""
        grant = _grant_of(assoc)
        if grant is None:
            return None
        operation = _OPERATIONS.get(command.command_field)
        if operation is None:
            return None
        what = operation
        allowed = grant.allows(operation)
        if allowed and operation == "move":
            destination = (command.move_destination or "").strip()
            if destination in self.config.move_destinations and not grant.allows_destination(destination):
                allowed, what = False, f"move to {destination}"
        if allowed:
            return None
        LOGGER.info("%s (user %s) may not %s: refused with 0x0124", grant.peer, grant.user or "-", what)
        return NOT_AUTHORISED, f"not authorised to {what}"[:64]

    @property
    def ingest_queue(self) -> IngestQueue:
        """The group commit every C-STORE of this node goes through."""
        if self._ingest is None:
            config = self.config
            self._ingest = IngestQueue(
                self.archive, max_batch=config.store_batch_size, max_wait=config.store_batch_wait,
                max_inflight=config.store_batch_inflight, remote=self._shared_committer,
            )
        return self._ingest

    @evt.inline
    def on_store(self, event: evt.Event) -> int | asyncio.Future[int | Dataset]:
        """Ingest the data set (received in memory, or spooled to a file
        when larger than ``store_memory_limit``): validated and written
        into the store off the event loop, then made durable (fsynced,
        renamed, indexed) together with the stores of other associations
        that arrived meanwhile (group commit); answered only once its batch
        has committed. A peer may replace a palette another peer stored only
        when its grant says so. Inline, it returns the future of its status
        (answered from the commit's callback: no task or coroutine per store)."""
        grant = _grant(event)
        started = time.perf_counter()
        owner = grant.peer or None
        try:
            spooled = getattr(event, "dataset_path", None)
            if spooled is not None:
                committed = self.ingest_queue.submit_file(
                    Path(spooled), owner=owner, may_replace_others=grant.may_replace_others
                )
            else:
                command = event.request.command
                committed = self.ingest_queue.submit_data(
                    event.encoded_dataset(include_meta=False), event.context.transfer_syntax,
                    command.affected_sop_class_uid or "", command.affected_sop_instance_uid or "",
                    owner=owner, may_replace_others=grant.may_replace_others,
                )  # fmt: skip
        except Exception as exc:  # the archive could not be written at all
            LOGGER.error("storing %s failed: %s", event.request.AffectedSOPInstanceUID, exc)
            return STORE_OUT_OF_RESOURCES
        status: asyncio.Future[int | Dataset] = committed.get_loop().create_future()

        def stored(_: asyncio.Future[Any]) -> None:
            if committed.cancelled():
                status.cancel()
                return
            error = committed.exception()
            if error is not None:  # the archive could not be written at all
                LOGGER.error("storing %s failed: %s", event.request.AffectedSOPInstanceUID, error)
                status.set_result(STORE_OUT_OF_RESOURCES)
                return
            if self.metrics is not None:
                self.metrics.index_query("store", time.perf_counter() - started)
            status.set_result(_store_status(committed.result()))

        committed.add_done_callback(stored)
        return status

    @evt.inline
    def on_find(self, event: evt.Event) -> Any:
        """Matching runs in the index; the identifiers go out pre-encoded in
        the context's transfer syntax (no pydicom Dataset per match)."""
        metrics = self.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        try:
            result = self.archive.find(event.identifier)
        except ArchiveError as error:
            yield _status_dataset(error), None
            return
        if metrics is not None:
            metrics.index_query("find", time.perf_counter() - started)
        yield from _find_answers(result, event)

    def _instances(self, event: evt.Event) -> tuple[int, Iterator[Any]]:
        """Sub-operations of a retrieve: how many, and each one's item: a
        stored file's path (sent without decoding), the bytes of an instance
        kept in the index (read a few at a time, ``_READ_BATCH`` in one
        query, just before they are sent), then a UID-only Dataset for each
        requested UID that is not stored (its sub-operation fails and it is
        listed in the Failed SOP Instance UID List); an instance replaced
        or removed since it was located fails the same way. Raises
        IdentifierError for a bad identifier."""
        metrics = self.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        located = self.archive.locate(event.identifier)
        if metrics is not None:
            metrics.index_query("locate", time.perf_counter() - started)
        return len(located) + len(located.missing), self._items(located)

    def _items(self, located: Any) -> Iterator[Any]:
        for start in range(0, len(located), _READ_BATCH):
            chunk = located[start : start + _READ_BATCH]
            in_index = [instance.sop_instance_uid for instance in chunk if instance.file is None]
            read: dict[str, bytes] = {}
            if in_index:
                try:
                    read = self.archive.read_many(in_index)
                except ArchiveError:
                    pass
            for instance in chunk:
                if instance.file is not None:
                    yield instance.file
                else:
                    data = read.get(instance.sop_instance_uid)
                    yield data if data is not None else _uid_only(instance.sop_instance_uid)
        for uid in located.missing:
            yield _uid_only(uid)

    @evt.inline
    def on_get(self, event: evt.Event) -> Any:
        try:
            count, items = self._instances(event)
        except ArchiveError as error:
            # A status Dataset in place of the number ends the retrieve
            # with that status (chromanet's handler protocol allows it).
            yield _status_dataset(error)
            return
        yield count
        for item in items:
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            yield Status.PENDING, item

    @evt.inline
    def on_move(self, event: evt.Event) -> Any:
        destination = self.config.move_destinations.get((event.move_destination or "").strip())
        if destination is None:
            yield None, None
            return
        try:
            count, items = self._instances(event)
        except ArchiveError as error:
            yield _status_dataset(error)
            return
        yield self._move_target(destination)
        yield count
        for item in items:
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            yield Status.PENDING, item

    # ------------------------------------------- handlers over PostgreSQL
    async def on_find_async(self, event: evt.Event) -> Any:
        """``on_find`` over an archive whose queries are awaited."""
        started = time.perf_counter()
        try:
            result = await self.archive.find(event.identifier)
        except ArchiveError as error:
            yield _status_dataset(error), None
            return
        if self.metrics is not None:
            self.metrics.index_query("find", time.perf_counter() - started)
        for answer in _find_answers(result, event):
            yield answer

    async def _retrieve_async(self, event: evt.Event, target: Any = None) -> Any:
        """A C-GET's (or, with ``target``, a C-MOVE's) answers over an awaited
        archive: the located instances' bytes are read a few at a time
        (``_READ_BATCH``, one query each), just before they are sent, so a
        retrieve of many never holds them all; one that cannot be read (gone
        since, or the database lost) fails its sub-operation and is listed
        as failed."""
        try:
            located = await self.archive.locate(event.identifier)
        except ArchiveError as error:
            yield _status_dataset(error)
            return
        if target is not None:
            yield target
        yield len(located) + len(located.missing)
        for start in range(0, len(located), _READ_BATCH):
            batch = [instance.sop_instance_uid for instance in located[start : start + _READ_BATCH]]
            try:
                read = await self.archive.read_many(batch)
            except ArchiveError:
                read = {}
            for uid in batch:
                if event.is_cancelled:
                    yield Status.CANCEL, None
                    return
                data: Any = read.pop(uid, None)
                yield Status.PENDING, data if data is not None else _uid_only(uid)
        for uid in located.missing:
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            yield Status.PENDING, _uid_only(uid)

    @evt.inline
    def on_get_async(self, event: evt.Event) -> Any:
        return self._retrieve_async(event)

    async def on_move_async(self, event: evt.Event) -> Any:
        destination = self.config.move_destinations.get((event.move_destination or "").strip())
        if destination is None:
            yield None, None
            return
        async for answer in self._retrieve_async(event, self._move_target(destination)):
            yield answer


def _uid_only(uid: str) -> Dataset:
    """The item of a sub-operation whose instance is not here: it fails,
    and ``uid`` is listed in the Failed SOP Instance UID List."""
    missing = Dataset()
    missing.SOPInstanceUID = uid
    return missing


class _Both:
    """Two association observers (the audit trail and the metrics) as one."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def association_opened(self, assoc: Any) -> Any:
        one, two = self.first.association_opened(assoc), self.second.association_opened(assoc)
        if one is None or two is None:
            return one or two

        def both(record: Any) -> None:
            one(record)
            two(record)

        return both  # wants the query keys: the audit trail does

    def association_established(self, assoc: Any) -> None:
        for observer in (self.first, self.second):
            hook = getattr(observer, "association_established", None)
            if hook is not None:
                hook(assoc)

    def association_closed(self, assoc: Any) -> None:
        self.first.association_closed(assoc)
        self.second.association_closed(assoc)


async def serve(
    config: NodeConfig,
    ready: asyncio.Future[Any] | None = None,
    stop: asyncio.Event | None = None,
    worker: WorkerPlace | None = None,
) -> bool:
    """Run a node until cancelled, or until ``stop`` is set: then drain
    (stop accepting, let associations end within ``config.drain_timeout``)
    and close. Returns True when nothing had to be aborted."""
    node = PaletteNode(config, worker=worker)
    if node.audit is not None:
        _reopen_on_sighup(node.audit.writer)
    try:
        server = await node.start()
    except BaseException:
        if node.archive_is_async and node.archive is not None:
            await node.archive.close()  # the pool start() opened
        raise
    if ready is not None and not ready.done():
        ready.set_result(server.server_address)
    drained = True
    try:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()
            drained = await node.drain(config.drain_timeout)
            if not drained:
                left = sum(len(s.associations) for s in node._servers())
                LOGGER.warning("drain timeout (%g s): aborting %d association(s)", config.drain_timeout, left)
    finally:
        await node.close()
    return drained


def _reopen_on_sighup(writer: AuditWriter) -> None:
    """SIGHUP reopens the audit file (after logrotate), where the loop can
    take signals (the main thread, not Windows)."""
    import signal

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, writer.reopen)
    except (AttributeError, NotImplementedError, RuntimeError, ValueError):
        LOGGER.debug("no SIGHUP handler: the audit file is reopened only when rotated away")


__all__ = ["NodeConfig", "PaletteNode", "WorkerPlace", "serve"]
