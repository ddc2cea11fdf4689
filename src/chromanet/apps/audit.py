"""The audit trail: one structured record per association and per operation.

``AuditTrail`` is an ``AssociationObserver`` (``chromanet.server``): a
server (or an AE, through ``ae.association_observer``) tells it of each
connection it accepts, and it tells the services' operation records
(``chromanet.services.observe``) of that association to an ``AuditWriter``
(``apps/audit_writer.py``) as JSON objects:

- ``operation``: one per request served (C-ECHO, C-STORE, C-FIND, C-GET,
  C-MOVE), with the association's calling/called AE and peer, the SOP
  Instance UIDs or query keys, the final status, counts, bytes, duration;
- ``association``: one per connection when it is gone, rejected and aborted
  ones included: calling/called AE, peer and local address, TLS, user
  identity, how it ended, when it began, how long it lasted, its operations;
- ``application``: the node started or stopped;
- ``tls-handshake-failure``: a connection whose TLS handshake failed.

The keys of each kind are always all there (null when they do not apply),
so that a reader can rely on them; README.md ("Audit trail") shows a line of
each and maps them to the DICOM audit messages of PS3.15 A.5.
"""

from __future__ import annotations

import os
import secrets
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from chromanet import __version__
from chromanet.services.observe import OperationRecord
from chromanet.ul.negotiation import REJECT_REASONS

if TYPE_CHECKING:
    from chromanet.apps.audit_writer import AuditWriter
    from chromanet.association import AsyncAssociation

#: User Identity Type (PS3.7 D.3.3.7.1) -> name.
USER_IDENTITY_TYPES = {1: "username", 2: "username+passcode", 3: "kerberos", 4: "saml", 5: "jwt"}
#: A username longer than this is cut (a peer chooses it).
MAX_USERNAME_CHARS = 128

#: A-ABORT source 2 reason -> what it means (PS3.8 Table 9-26).
PROVIDER_ABORT_REASONS = {
    0: "reason not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


class _AssociationEntry:
    """One association's part of the trail; also the observer of its
    operations (what ``association_opened`` returns)."""

    __slots__ = ("trail", "assoc", "id", "started", "clock", "operations", "failed")

    def __init__(self, trail: AuditTrail, assoc: AsyncAssociation) -> None:
        self.trail = trail
        self.assoc = assoc
        self.id = secrets.token_hex(8)
        self.started = time.time()
        self.clock = time.perf_counter()
        self.operations: dict[str, int] = {}
        self.failed = 0

    def __call__(self, record: OperationRecord) -> None:
        operations = self.operations
        operations[record.operation] = operations.get(record.operation, 0) + 1
        category = record.status_category
        failed = category not in ("Success", "Warning", "Cancel")
        if failed:
            self.failed += 1
        # The record is final once delivered: its JSON object is built in
        # the writer thread, off the event loop.
        self.trail.writer.write(partial(self.trail.operation_record, self, record, failed, time.time()))


class AuditTrail:
    """Builds the audit records and hands them to ``writer``."""

    def __init__(self, writer: AuditWriter, ae_title: str) -> None:
        self.writer = writer
        self.ae_title = ae_title
        # id(association) -> its entry, while it lasts (its operation
        # observer may be another's too: the node's metrics share it).
        self._entries: dict[int, _AssociationEntry] = {}

    # -------------------------------------------- AssociationObserver
    def association_opened(self, assoc: AsyncAssociation) -> _AssociationEntry:
        entry = self._entries[id(assoc)] = _AssociationEntry(self, assoc)
        return entry

    def association_closed(self, assoc: AsyncAssociation) -> None:
        entry = self._entries.pop(id(assoc), None)
        if entry is not None and entry.assoc is assoc:
            self._take_admission(assoc)
            self.writer.write(self.association_record(entry))

    @staticmethod
    def _take_admission(assoc: AsyncAssociation) -> None:
        """What the admission check found (the verified user, the peer rule,
        why it refused) into the association's audit context."""
        admission = assoc.admission
        if admission is None or not admission.details:
            return
        details = dict(admission.details)
        verified = details.pop("user_verified", None)
        if assoc.audit.user_verified is None:
            assoc.audit.user_verified = verified
        for key, value in details.items():
            assoc.audit.details.setdefault(key, value)

    # ---------------------------------------------------------- records
    def _base(self, kind: str, severity: str = "info") -> dict[str, Any]:
        return {"time": time.time(), "record": kind, "severity": severity, "node": self.ae_title}

    def operation_record(
        self, entry: _AssociationEntry, op: OperationRecord, failed: bool, when: float | None = None
    ) -> dict[str, Any]:
        assoc = entry.assoc
        rq = assoc.acse_request
        record = self._base("operation", "warning" if failed else "info")
        if when is not None:
            record["time"] = when
        record.update(
            association=entry.id,
            calling_ae=rq.calling_ae_title if rq is not None else None,
            called_ae=rq.called_ae_title if rq is not None else None,
            peer_address=assoc.remote_host,
            operation=op.operation,
            message_id=op.message_id,
            sop_class_uid=op.sop_class_uid,
            sop_instance_uid=op.sop_instance_uid,
            move_destination=op.move_destination,
            move_destination_address=_host_port(op.move_destination_address),
            move_originator=op.move_originator,
            query=op.query,
            query_keys_omitted=op.query_keys_omitted,
            status=f"0x{op.status:04X}" if op.status is not None else None,
            status_category=op.status_category,
            error_comment=op.error_comment,
            outcome=op.outcome,
            matches=op.matches if op.command_field == 0x0020 else None,
            completed=op.completed,
            failed=op.failed,
            warning=op.warning,
            instances_sent=op.instances_sent,
            instances_failed=op.instances_failed,
            instances_omitted=op.instances_omitted,
            bytes_in=op.bytes_in,
            bytes_out=op.bytes_out,
            started=op.started,
            duration=round(op.duration, 6),
        )
        return record

    def association_record(self, entry: _AssociationEntry) -> dict[str, Any]:
        assoc = entry.assoc
        rq = assoc.acse_request
        outcome = assoc.outcome
        # A connection that never asked for an association (a port probe, a
        # health check) is worth noticing; a refused or broken one, a warning.
        severity = {"released": "info", "closed": "notice"}.get(outcome, "warning")
        record = self._base("association", severity)
        local, peer = assoc.local, assoc.remote
        info = rq.user_information if rq is not None else None
        identity = info.user_identity_rq if info is not None else None
        tls = assoc.tls
        abort = assoc.abort_source_reason if outcome == "aborted" else None
        rj = assoc.acse_response if outcome == "rejected" else None
        record.update(
            association=entry.id,
            calling_ae=rq.calling_ae_title if rq is not None else None,
            called_ae=rq.called_ae_title if rq is not None else None,
            peer_address=peer["address"] or None,
            peer_port=peer["port"] or None,
            local_address=local["address"] or None,
            local_port=local["port"] or None,
            implementation_class_uid=info.implementation_class_uid if info is not None else None,
            implementation_version_name=info.implementation_version_name if info is not None else None,
            tls=_tls(tls),
            user_identity_type=_identity_type(identity),
            username=_username(identity),
            user_verified=assoc.audit.user_verified,
            result=outcome,
            aborted_by=assoc.aborted_by if abort is not None else None,
            abort_source=abort[0] if abort is not None else None,
            abort_reason=abort[1] if abort is not None else None,
            abort_reason_text=PROVIDER_ABORT_REASONS.get(abort[1]) if abort is not None and abort[0] == 2 else None,
            reject_result=getattr(rj, "result", None),
            reject_source=getattr(rj, "source", None),
            reject_reason=getattr(rj, "reason", None),
            reject_reason_text=REJECT_REASONS.get((rj.source, rj.reason)) if rj is not None else None,
            started=entry.started,
            duration=round(time.perf_counter() - entry.clock, 6),
            operations=dict(entry.operations),
            operations_failed=entry.failed,
            details=dict(assoc.audit.details),
            # the process that served it (one of several with --workers)
            pid=os.getpid(),
        )
        return record

    def application_record(self, event: str, address: tuple[str, int] | None = None) -> None:
        """The node started ("start") or stopped ("stop")."""
        record = self._base("application")
        record.update(
            event=event,
            address=address[0] if address else None,
            port=address[1] if address else None,
            pid=os.getpid(),
            version=__version__,
        )
        self.writer.write(record)

    def tls_handshake_failed(self, peer_address: Any, reason: str) -> None:
        """A connection whose TLS handshake failed (a Security Alert):
        ``peer_address`` is (host, port) or a host."""
        if isinstance(peer_address, (tuple, list)) and peer_address:
            host, port = str(peer_address[0]), (peer_address[1] if len(peer_address) > 1 else None)
        else:
            host, port = (str(peer_address) if peer_address else None), None
        record = self._base("tls-handshake-failure", "warning")
        record.update(peer_address=host, peer_port=port, reason=str(reason)[:200])
        self.writer.write(record)


def _host_port(address: tuple[str, int] | None) -> str | None:
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls(tls: Any) -> dict[str, Any] | None:
    if tls is None:
        return None
    return {"version": tls.version, "cipher": tls.cipher, "peer_subject": tls.peer_subject}


def _identity_type(identity: Any) -> str | None:
    if identity is None:
        return None
    return USER_IDENTITY_TYPES.get(identity.identity_type, str(identity.identity_type))


def _username(identity: Any) -> str | None:
    """The username of a type 1 or 2 user identity (never the passcode)."""
    if identity is None or identity.identity_type not in (1, 2):
        return None
    name = bytes(identity.primary_field).decode("utf-8", errors="replace")
    return name if len(name) <= MAX_USERNAME_CHARS else name[: MAX_USERNAME_CHARS - 3] + "..."


__all__ = ["AuditTrail", "PROVIDER_ABORT_REASONS", "REJECT_REASONS", "USER_IDENTITY_TYPES"]
