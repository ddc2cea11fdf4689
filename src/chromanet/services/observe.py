"""What an SCP operation did, told to an observer when it ends.

An audit trail wants to know who did what to which instances; metrics want
operations by type and final status, latencies, bytes and sub-operation
counts. Both get the same thing: one ``OperationRecord`` per request this
association served (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE), also for a
request the dispatcher refused (0x0122, 0x0211, a data set over the limit)
and for one the association's end cut off, handed to the session's
``observer`` (an ``OperationObserver``) once the operation is over.

The record is filled in as the operation runs, at the places that already
hold the facts, so that it costs no decoding and no per-byte work:

- the dispatcher starts it (type, Message ID, SOP class, the C-STORE's
  Affected SOP Instance UID from the command, the received data set's size)
  and hands it to the observer at the end (``services/dispatch.py``);
- every response goes through ``note_response``: the final status, the
  sub-operation counts of the final C-GET/C-MOVE response, the matches and
  the bytes of the identifiers sent; the final response delivers the record
  to the observer (``deliver``), and the dispatcher delivers it when the
  operation ended without one;
- the Q/R service adds the query keys of the identifier it decoded anyway
  (``note_query``, bounded), and each C-GET/C-MOVE sub-operation's SOP
  Instance UID and data set size (``note_suboperation``, ``note_sent``).

With no observer the services create no record: ``IncomingMessage.trace``
stays None and each place costs one ``is not None`` test. An observer that
needs no query keys (metrics) says so with ``wants_details = False``: the
record then leaves ``query`` None and costs no conversion of the
identifier's values to text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from chromanet import _dimse
from chromanet.status import code_to_category

LOGGER = logging.getLogger("chromanet.services")

#: A query records at most this many keys of its identifier…
MAX_QUERY_KEYS = 32
#: …and at most this many characters of each value.
MAX_VALUE_CHARS = 64
#: A C-GET/C-MOVE records at most this many SOP Instance UIDs (sent and
#: failed together); the counts say how many there were in all.
MAX_INSTANCE_UIDS = 100

#: Command Field -> the operation's name.
OPERATION_NAMES = {
    _dimse.C_ECHO_RQ: "C-ECHO",
    _dimse.C_STORE_RQ: "C-STORE",
    _dimse.C_FIND_RQ: "C-FIND",
    _dimse.C_GET_RQ: "C-GET",
    _dimse.C_MOVE_RQ: "C-MOVE",
}

#: The final response was sent (its status says how it went).
ANSWERED = "answered"
#: The engine refused the request before any service saw it.
REFUSED = "refused"
#: The operation ended without a final response (the association ended
#: under it, or its handler failed and the association was aborted).
INTERRUPTED = "interrupted"

_PENDING = (0xFF00, 0xFF01)


class OperationRecord:
    """One SCP operation, as it went. Times are ``time.time()`` seconds
    (``started``) and seconds (``duration``); sizes are data set bytes
    (command sets not counted)."""

    __slots__ = (
        "operation", "command_field", "message_id", "sop_class_uid", "sop_instance_uid",
        "move_destination", "move_destination_address", "move_originator", "query", "query_keys_omitted",
        "status", "error_comment", "outcome",
        "matches", "completed", "failed", "warning",
        "instances_sent", "instances_failed", "instances_omitted",
        "bytes_in", "bytes_out", "started", "duration", "observer", "details", "_clock",
    )  # fmt: skip

    def __init__(self, command: _dimse.Command, bytes_in: int = 0) -> None:
        field = command.command_field
        self.command_field: int = field
        self.operation: str = OPERATION_NAMES.get(field, f"0x{field:04X}")
        self.message_id: int | None = command.message_id
        self.sop_class_uid: str | None = command.affected_sop_class_uid
        #: C-STORE: the Affected SOP Instance UID of the command.
        self.sop_instance_uid: str | None = command.affected_sop_instance_uid if field == _dimse.C_STORE_RQ else None
        self.move_destination: str | None = command.move_destination if field == _dimse.C_MOVE_RQ else None
        #: C-MOVE: where the move destination was found, (host, port).
        self.move_destination_address: tuple[str, int] | None = None
        #: C-STORE sub-operation of someone's C-MOVE: the AE that asked for it.
        self.move_originator: str | None = (
            command.move_originator_application_entity_title if field == _dimse.C_STORE_RQ else None
        )
        #: C-FIND/C-GET/C-MOVE: {keyword or "(gggg,eeee)": value as text} of
        #: the identifier (bounded: see ``note_query``); None when not decoded.
        self.query: dict[str, str] | None = None
        self.query_keys_omitted = 0
        #: The final status sent, or None when none was.
        self.status: int | None = None
        self.error_comment: str | None = None
        self.outcome = INTERRUPTED
        #: C-FIND: the pending responses with an identifier.
        self.matches = 0
        #: C-GET/C-MOVE: the sub-operation counts of the final response.
        self.completed: int | None = None
        self.failed: int | None = None
        self.warning: int | None = None
        #: C-GET/C-MOVE: the sub-operations' SOP Instance UIDs (bounded).
        self.instances_sent: list[str] = []
        self.instances_failed: list[str] = []
        self.instances_omitted = 0
        self.bytes_in = bytes_in
        self.bytes_out = 0
        self.started = time.time()
        self.duration = 0.0
        #: Who gets the record: told once, at the final response (or when
        #: the operation ended without one); None once told.
        self.observer: OperationObserver | None = None
        #: Whether the observer wants the query keys (``note_query``).
        self.details = True
        self._clock = time.perf_counter()

    @property
    def status_category(self) -> str | None:
        """'Success', 'Warning', 'Failure', 'Cancel' or 'Unknown'; None
        without a final status."""
        return code_to_category(self.status) if self.status is not None else None

    # ------------------------------------------------------ filled in by
    def note_response(self, response: _dimse.Command, dataset: Any = None) -> None:
        """A response to this request was sent (with ``dataset``, if any)."""
        if dataset is not None:
            self.bytes_out += memoryview(dataset).nbytes
        status = response.status
        if status in _PENDING:
            if dataset is not None:
                self.matches += 1
            return
        self.status = status
        if self.outcome == INTERRUPTED:
            self.outcome = ANSWERED
        self.error_comment = response.error_comment
        if response.number_of_completed_suboperations is not None:
            self.completed = response.number_of_completed_suboperations
            self.failed = response.number_of_failed_suboperations
            self.warning = response.number_of_warning_suboperations
        # Told now, as the peer learns the outcome: what the service does
        # after its final response (a C-MOVE releasing its sub-association)
        # is not the operation's, and may outlast the association.
        self.deliver()

    def note_refused(self, response: _dimse.Command) -> None:
        """The dispatcher refused the request with ``response``."""
        self.outcome = REFUSED
        self.note_response(response)

    def note_query(self, identifier: Any) -> None:
        """The keys of a decoded identifier and their values as text, at
        most MAX_QUERY_KEYS keys and MAX_VALUE_CHARS characters a value,
        so a hostile identifier cannot blow up the record."""
        keys: dict[str, str] = {}
        try:
            for element in identifier:
                if len(keys) >= MAX_QUERY_KEYS:
                    break  # the rest are counted, not converted
                keys[element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})"] = _text(element)
        except Exception as exc:  # a value pydicom cannot convert: keep what we have
            LOGGER.debug("query keys not fully recorded: %s", exc)
        self.query = keys
        self.query_keys_omitted = max(len(identifier) - len(keys), 0)

    def note_suboperation(self, sop_instance_uid: str, done: bool) -> None:
        """One C-GET/C-MOVE sub-operation ended: done (Success or Warning)
        or failed."""
        if len(self.instances_sent) + len(self.instances_failed) >= MAX_INSTANCE_UIDS:
            self.instances_omitted += 1
        elif done:
            self.instances_sent.append(sop_instance_uid)
        else:
            self.instances_failed.append(sop_instance_uid)

    def note_sent(self, nbytes: int) -> None:
        """A sub-operation's data set of ``nbytes`` went out."""
        self.bytes_out += nbytes

    def deliver(self) -> None:
        """Hand the record to its observer, once; the observer's failure is
        logged, never raised into the service."""
        observer = self.observer
        if observer is None:
            return
        self.observer = None
        self.duration = time.perf_counter() - self._clock
        try:
            observer(self)
        except Exception:
            LOGGER.exception("the operation observer raised")

    def __repr__(self) -> str:
        return f"<OperationRecord {self.operation} #{self.message_id} {self.outcome} status={self.status}>"


def _text(element: Any) -> str:
    if element.VR == "SQ":
        return f"[{len(element.value)} item(s)]"
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value[:MAX_VALUE_CHARS])
    else:
        text = str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


#: Told of each finished operation; must not raise or block (a metrics
#: counter, a queue put).
OperationObserver = Callable[[OperationRecord], None]


class AuditContext:
    """What the layers above learn about one association and want in its
    audit record (``AsyncAssociation.audit``): set them as they are known.

    - ``user_verified``: True/False once the user identity of the
      A-ASSOCIATE-RQ was checked, None while nobody did.
    - ``details``: more facts for the record, by name (JSON-able values),
      e.g. ``{"denied": "C-STORE"}`` from an access policy.
    """

    __slots__ = ("user_verified", "details")

    def __init__(self) -> None:
        self.user_verified: bool | None = None
        self.details: dict[str, Any] = {}


def dataset_size(dataset: Any) -> int:
    """The size in bytes of a received data set as the channel hands it
    over: bytes, a memoryview, a spooled file, a dropped one, or None."""
    if dataset is None:
        return 0
    size = getattr(dataset, "size", None)  # DatasetTooLarge
    if type(size) is int:
        return size
    data = getattr(dataset, "data", None)  # a spooled Part 10 file
    if data is not None:
        return memoryview(data).nbytes - dataset.dataset_offset
    try:
        return memoryview(dataset).nbytes
    except TypeError:
        return 0


__all__ = [
    "ANSWERED",
    "AuditContext",
    "INTERRUPTED",
    "MAX_INSTANCE_UIDS",
    "MAX_QUERY_KEYS",
    "MAX_VALUE_CHARS",
    "OPERATION_NAMES",
    "OperationObserver",
    "OperationRecord",
    "REFUSED",
    "dataset_size",
]
