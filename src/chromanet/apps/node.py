"""The ready-made palette archive node behind ``chromanet serve``.

One AE that is a Verification SCP, a Color Palette Storage SCP and a Color
Palette Query/Retrieve SCP (FIND, GET, MOVE) over a ``PaletteArchive`` (an
SQLite index and a file store under the data directory). Received instances
are spooled to disk as they arrive (bounded memory) and ingested from there;
retrieved instances are sent from their files without being decoded when
the negotiated transfer syntax is the stored one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset

from chromanet import evt, uids
from chromanet.ae import AE
from chromanet.apps.audit import AuditTrail
from chromanet.apps.audit_writer import AuditWriter, FileSink, Sink, SyslogSink
from chromanet.server import AsyncServer
from chromanet.archive import ArchiveError, PaletteArchive
from chromanet.services.spool import SPOOL_PREFIX
from chromanet.status import Status

LOGGER = logging.getLogger("chromanet.node")

STORE_OUT_OF_RESOURCES = int(Status.OUT_OF_RESOURCES)


@dataclass
class NodeConfig:
    """Everything ``chromanet serve`` can be told (file or flags)."""

    ae_title: str = "CHROMANET"
    port: int = 11112
    bind_address: str = "0.0.0.0"
    data_dir: Path = Path("data")
    allowed_calling_aets: list[str] = field(default_factory=list)
    move_destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
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
    require_called_aet: bool = False
    log_level: str = "INFO"
    # The audit trail (README "Audit trail"): JSON lines appended to this
    # file, and/or RFC 5424 messages to this syslog address ("/dev/log",
    # "HOST:PORT" for UDP) with this facility. None and None: no trail.
    audit_file: Path | None = None
    audit_syslog: str | None = None
    audit_syslog_facility: str = "authpriv"


def _status_dataset(error: ArchiveError) -> Dataset:
    status = Dataset()
    status.Status = error.status
    if error.comment:
        status.ErrorComment = str(error.comment)[:64]
    if getattr(error, "offending_tags", None):
        status.OffendingElement = list(error.offending_tags)
    return status


class PaletteNode:
    """A configured AE bound to an archive; ``await start()`` listens."""

    def __init__(self, config: NodeConfig, archive: PaletteArchive | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.archive = archive or PaletteArchive.open(config.data_dir, seed=True)
        # Incoming C-STORE data sets are spooled here, on the archive's file
        # system, so that ingesting one is a rename. What a crash left here
        # was never acknowledged to any peer: it goes.
        self.spool_directory = config.data_dir / "incoming"
        self.spool_directory.mkdir(exist_ok=True)
        for leftover in self.spool_directory.glob(f"{SPOOL_PREFIX}*"):
            leftover.unlink()
        self.audit = self._build_audit()
        self.ae = self._build_ae()
        self.ae.association_observer = self.audit
        self.server: AsyncServer | None = None

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
        ae.require_calling_aet = list(config.allowed_calling_aets)
        ae.async_ops_window = (8, 8)
        ae.store_spool_directory = self.spool_directory
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

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
        ]

    async def start(self) -> AsyncServer:
        self.server = await self.ae.start_server_async(
            (self.config.bind_address, self.config.port), evt_handlers=self.handlers()
        )
        host, port = self.server.server_address
        LOGGER.info(
            "%s listening on %s:%d, data in %s (%d palettes indexed)",
            self.config.ae_title,
            host,
            port,
            self.config.data_dir,
            len(self.archive),
        )
        if self.audit is not None:
            self.audit.application_record("start", (host, port))
        return self.server

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        self.archive.close()
        if self.audit is not None:
            self.audit.application_record("stop")
            # The last records are written (off the loop) before we return.
            await asyncio.get_running_loop().run_in_executor(None, self.audit.writer.close)

    # -------------------------------------------------------------- handlers
    async def on_store(self, event: evt.Event) -> int | Dataset:
        """Ingest the spooled file: moved into the store, fsynced, indexed in
        one transaction, off the event loop."""
        path = event.dataset_path
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, self.archive.ingest_file, Path(path))
        except OSError as exc:
            LOGGER.error("storing %s failed: %s", event.request.AffectedSOPInstanceUID, exc)
            return STORE_OUT_OF_RESOURCES
        if result.comment:
            status = Dataset()
            status.Status = result.status
            status.ErrorComment = str(result.comment)[:64]
            return status
        return result.status

    def on_find(self, event: evt.Event) -> Any:
        """Matching runs in the index; the identifiers go out pre-encoded in
        the context's transfer syntax (no pydicom Dataset per match)."""
        try:
            result = self.archive.find(event.identifier)
        except ArchiveError as error:
            yield _status_dataset(error), None
            return
        pending = result.status_pending
        syntax = event.context.transfer_syntax[0]
        for encoded in result.encoded(syntax):
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            yield pending, encoded

    def _instances(self, event: evt.Event) -> Any:
        """Sub-operations of a retrieve: the stored files (sent without
        decoding), then a UID-only Dataset for each requested UID that is not
        stored (its sub-operation fails and it is listed in the Failed SOP
        Instance UID List). Raises IdentifierError for a bad identifier."""
        located = self.archive.locate(event.identifier)
        items: list[Any] = [str(instance.path) for instance in located]
        for uid in located.missing:
            missing = Dataset()
            missing.SOPInstanceUID = uid
            items.append(missing)
        return items

    def on_get(self, event: evt.Event) -> Any:
        try:
            items = self._instances(event)
        except ArchiveError as error:
            # A status Dataset in place of the number ends the retrieve
            # with that status (chromanet's handler protocol allows it).
            yield _status_dataset(error)
            return
        yield len(items)
        for item in items:
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            yield Status.PENDING, item

    def on_move(self, event: evt.Event) -> Any:
        destination = self.config.move_destinations.get((event.move_destination or "").strip())
        if destination is None:
            yield None, None
            return
        try:
            items = self._instances(event)
        except ArchiveError as error:
            yield _status_dataset(error)
            return
        yield destination
        yield len(items)
        for item in items:
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            yield Status.PENDING, item


async def serve(config: NodeConfig, ready: asyncio.Future[Any] | None = None) -> None:
    """Run a node until cancelled."""
    node = PaletteNode(config)
    if node.audit is not None:
        _reopen_on_sighup(node.audit.writer)
    server = await node.start()
    if ready is not None and not ready.done():
        ready.set_result(server.server_address)
    try:
        await server.serve_forever()
    finally:
        await node.close()


def _reopen_on_sighup(writer: AuditWriter) -> None:
    """SIGHUP reopens the audit file (after logrotate), where the loop can
    take signals (the main thread, not Windows)."""
    import signal

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, writer.reopen)
    except (AttributeError, NotImplementedError, RuntimeError, ValueError):
        LOGGER.debug("no SIGHUP handler: the audit file is reopened only when rotated away")


__all__ = ["NodeConfig", "PaletteNode", "serve"]
