"""The one status vocabulary: DIMSE status codes, their names and their
categories, for Verification, Storage and the Color Palette Query/Retrieve
service (with the public names of ``pynetdicom.status``).

Every layer that names a status uses this module: the services, the public
API, the CLI and the load tool.

- ``Status``: an IntEnum naming every code the engine itself sends, the
  engine-specific ones included; extensible with ``Status.add`` (pynetdicom's);
- the category names ``STATUS_SUCCESS`` … ``STATUS_UNKNOWN``;
- ``code_to_category(code)``: the category of a status code (PS3.7 Annex C
  and the service classes of PS3.4), ``'Unknown'`` for a code none of
  them defines, ValueError for a negative or non-int code. A service that
  must decide treats 'Unknown' as a failure (``is_failure``);
- ``code_to_status(code)``: a Dataset holding only (0000,0900) Status;
- the per-service dictionaries ``{code: (category, meaning)}``.

The meanings are short descriptions of the standard's wording, or of the
engine's own answers where PS3.4 leaves 0xC000-0xCFFF to the implementation:
0xC001/0xC002 for a bad status answer from a handler, 0xC211 for a C-STORE
handler that raised, and the C-FIND/C-GET/C-MOVE families 0xC310-0xC312,
0xC410-0xC413 and 0xC510-0xC515.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from pydicom import Dataset

from chromanet.sop_class import NotImplementedName

__all__ = [
    "STATUS_SUCCESS",
    "STATUS_FAILURE",
    "STATUS_WARNING",
    "STATUS_CANCEL",
    "STATUS_PENDING",
    "STATUS_UNKNOWN",
    "GENERAL_STATUS",
    "VERIFICATION_SERVICE_CLASS_STATUS",
    "STORAGE_SERVICE_CLASS_STATUS",
    "QR_FIND_SERVICE_CLASS_STATUS",
    "QR_MOVE_SERVICE_CLASS_STATUS",
    "QR_GET_SERVICE_CLASS_STATUS",
    "code_to_status",
    "code_to_category",
    "is_failure",
    "Status",
]

class Status(IntEnum):
    """Status codes by name. ``Status.add(name, code)`` adds one (as
    pynetdicom's does)."""

    # PS3.7 Annex C, every service
    SUCCESS = 0x0000
    CANCEL = 0xFE00
    PENDING = 0xFF00
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORISED = 0x0124
    UNRECOGNISED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    # PS3.4 C.4 and X, query/retrieve
    PENDING_WARNING = 0xFF01  # C-FIND: a match, with unsupported optional keys
    OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    SUBOPERATIONS_COMPLETE_WITH_FAILURES = 0xB000
    # PS3.4 B.2.3, storage
    COERCION_OF_DATA_ELEMENTS = 0xB000
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # chromanet's own failures (the 0xCxxx range PS3.4 leaves to the SCP)
    STATUS_DATASET_WITHOUT_STATUS = 0xC001
    STATUS_OF_WRONG_TYPE = 0xC002
    STORE_HANDLER_RAISED = 0xC211
    FIND_IDENTIFIER_DECODE_FAILED = 0xC310
    FIND_HANDLER_RAISED = 0xC311
    FIND_RESPONSE_ENCODE_FAILED = 0xC312
    GET_IDENTIFIER_DECODE_FAILED = 0xC410
    GET_HANDLER_RAISED = 0xC411
    GET_SUBOPERATION_COUNT_INVALID = 0xC413
    MOVE_IDENTIFIER_DECODE_FAILED = 0xC510
    MOVE_HANDLER_RAISED = 0xC511
    MOVE_SUBOPERATION_COUNT_INVALID = 0xC513
    MOVE_DESTINATION_OR_COUNT_NOT_YIELDED = 0xC514
    MOVE_DESTINATION_INVALID = 0xC515

    @classmethod
    def add(cls, name: str, code: int) -> None:
        setattr(cls, name, code)


STATUS_SUCCESS = "Success"
STATUS_FAILURE = "Failure"
STATUS_WARNING = "Warning"
STATUS_CANCEL = "Cancel"
STATUS_PENDING = "Pending"
STATUS_UNKNOWN = "Unknown"

StatusDictType = dict[int, tuple[str, str]]

# PS3.7 Annex C: statuses any DIMSE service may return.
GENERAL_STATUS: StatusDictType = {
    0x0000: (STATUS_SUCCESS, ""),
    0x0105: (STATUS_FAILURE, "Attribute not known"),
    0x0106: (STATUS_FAILURE, "Attribute value not valid"),
    0x0107: (STATUS_WARNING, "Attribute list error"),
    0x0110: (STATUS_FAILURE, "Processing failed"),
    0x0111: (STATUS_FAILURE, "SOP instance already exists"),
    0x0112: (STATUS_FAILURE, "SOP instance not known"),
    0x0113: (STATUS_FAILURE, "Event type not known"),
    0x0114: (STATUS_FAILURE, "Argument not known"),
    0x0115: (STATUS_FAILURE, "Argument value not valid"),
    0x0116: (STATUS_WARNING, "Attribute value out of range"),
    0x0117: (STATUS_FAILURE, "Object instance not valid"),
    0x0118: (STATUS_FAILURE, "SOP class not known"),
    0x0119: (STATUS_FAILURE, "SOP class and instance do not agree"),
    0x0120: (STATUS_FAILURE, "Attribute missing"),
    0x0121: (STATUS_FAILURE, "Attribute value missing"),
    0x0122: (STATUS_FAILURE, "Refused: SOP class not supported"),
    0x0123: (STATUS_FAILURE, "Action not known"),
    0x0124: (STATUS_FAILURE, "Refused: not authorised"),
    0x0210: (STATUS_FAILURE, "Message ID already in use"),
    0x0211: (STATUS_FAILURE, "Operation not recognised"),
    0x0212: (STATUS_FAILURE, "Argument of the wrong type"),
    0x0213: (STATUS_FAILURE, "Out of resources"),
    0xFE00: (STATUS_CANCEL, ""),
}

VERIFICATION_SERVICE_CLASS_STATUS = GENERAL_STATUS


def _with_range(table: StatusDictType, first: int, last: int, category: str, meaning: str) -> None:
    for code in range(first, last + 1):
        table.setdefault(code, (category, meaning))


# PS3.4 B.2.3: Storage.
STORAGE_SERVICE_CLASS_STATUS: StatusDictType = {
    0xB000: (STATUS_WARNING, "Some elements were coerced"),
    0xB006: (STATUS_WARNING, "Some elements were discarded"),
    0xB007: (STATUS_WARNING, "The data set does not match the SOP class"),
}
_with_range(STORAGE_SERVICE_CLASS_STATUS, 0xA700, 0xA7FF, STATUS_FAILURE, "Refused: out of resources")
_with_range(STORAGE_SERVICE_CLASS_STATUS, 0xA900, 0xA9FF, STATUS_FAILURE, "The data set does not match the SOP class")
STORAGE_SERVICE_CLASS_STATUS[Status.STORE_HANDLER_RAISED] = (STATUS_FAILURE, "The C-STORE handler raised an exception")
_with_range(STORAGE_SERVICE_CLASS_STATUS, 0xC000, 0xCFFF, STATUS_FAILURE, "The SCP cannot understand the data set")
STORAGE_SERVICE_CLASS_STATUS.update(GENERAL_STATUS)

# PS3.4 C.4.1.1.4 and X (Color Palette): C-FIND.
QR_FIND_SERVICE_CLASS_STATUS: StatusDictType = {
    0xA700: (STATUS_FAILURE, "Refused: out of resources"),
    0xA710: (STATUS_FAILURE, "Prior record key not valid"),
    0xA900: (STATUS_FAILURE, "The identifier does not match the SOP class"),
    0xB001: (STATUS_WARNING, "Response limit reached; ask again for more matches"),
    0xFF00: (STATUS_PENDING, "A match follows; more may come"),
    0xFF01: (STATUS_PENDING, "A match follows, with unsupported optional keys"),
}
QR_FIND_SERVICE_CLASS_STATUS.update(
    {
        Status.FIND_IDENTIFIER_DECODE_FAILED: (STATUS_FAILURE, "The request identifier could not be decoded"),
        Status.FIND_HANDLER_RAISED: (STATUS_FAILURE, "The C-FIND handler raised an exception"),
        Status.FIND_RESPONSE_ENCODE_FAILED: (STATUS_FAILURE, "A response identifier could not be encoded"),
    }
)
_with_range(QR_FIND_SERVICE_CLASS_STATUS, 0xC000, 0xCFFF, STATUS_FAILURE, "The SCP cannot process the query")
QR_FIND_SERVICE_CLASS_STATUS.update(GENERAL_STATUS)

_RETRIEVE_COMMON: StatusDictType = {
    0xA701: (STATUS_FAILURE, "Refused: out of resources to count the matches"),
    0xA702: (STATUS_FAILURE, "Refused: out of resources to do the sub-operations"),
    0xA900: (STATUS_FAILURE, "The identifier does not match the SOP class"),
    0xAA00: (STATUS_FAILURE, "None of the requested frames is in the SOP instance"),
    0xAA01: (STATUS_FAILURE, "A new object of this SOP class cannot be created"),
    0xAA02: (STATUS_FAILURE, "The frames cannot be extracted"),
    0xAA03: (STATUS_FAILURE, "Time-based request for an instance that is not time-based"),
    0xAA04: (STATUS_FAILURE, "The request is not valid"),
    0xFF00: (STATUS_PENDING, "Sub-operations continue"),
    0xB000: (STATUS_WARNING, "Sub-operations done, some failed or gave warnings"),
}

# PS3.4 C.4.2.1.5 and X: C-MOVE.
QR_MOVE_SERVICE_CLASS_STATUS: StatusDictType = dict(_RETRIEVE_COMMON)
QR_MOVE_SERVICE_CLASS_STATUS.update(
    {
        Status.MOVE_DESTINATION_UNKNOWN: (STATUS_FAILURE, "The move destination is not known"),
        Status.MOVE_IDENTIFIER_DECODE_FAILED: (STATUS_FAILURE, "The request identifier could not be decoded"),
        Status.MOVE_HANDLER_RAISED: (STATUS_FAILURE, "The C-MOVE handler raised an exception"),
        Status.MOVE_SUBOPERATION_COUNT_INVALID: (STATUS_FAILURE, "The handler gave no valid number of sub-operations"),
        Status.MOVE_DESTINATION_OR_COUNT_NOT_YIELDED: (STATUS_FAILURE, "The handler never gave the destination or number"),
        Status.MOVE_DESTINATION_INVALID: (STATUS_FAILURE, "The handler gave no valid (address, port)"),
    }
)
_with_range(QR_MOVE_SERVICE_CLASS_STATUS, 0xC000, 0xCFFF, STATUS_FAILURE, "The SCP cannot process the request")
QR_MOVE_SERVICE_CLASS_STATUS.update(GENERAL_STATUS)

# PS3.4 C.4.3.1.4 and X: C-GET.
QR_GET_SERVICE_CLASS_STATUS: StatusDictType = dict(_RETRIEVE_COMMON)
QR_GET_SERVICE_CLASS_STATUS.update(
    {
        Status.GET_IDENTIFIER_DECODE_FAILED: (STATUS_FAILURE, "The request identifier could not be decoded"),
        Status.GET_HANDLER_RAISED: (STATUS_FAILURE, "The C-GET handler raised an exception"),
        Status.GET_SUBOPERATION_COUNT_INVALID: (STATUS_FAILURE, "The handler gave no valid number of sub-operations"),
    }
)
_with_range(QR_GET_SERVICE_CLASS_STATUS, 0xC000, 0xCFFF, STATUS_FAILURE, "The SCP cannot process the request")
QR_GET_SERVICE_CLASS_STATUS.update(GENERAL_STATUS)

_GENERAL_FAILURES = frozenset(code for code, (category, _) in GENERAL_STATUS.items() if category == STATUS_FAILURE)


def _check(code: Any) -> int:
    if isinstance(code, bool) or not isinstance(code, int) or code < 0:
        raise ValueError(f"a status code is a non-negative int, not {code!r}")
    return code


def code_to_status(code: int) -> Dataset:
    """A Dataset whose only element is (0000,0900) Status = ``code``."""
    ds = Dataset()
    ds.Status = _check(code)
    return ds


def code_to_category(code: int) -> str:
    """The category of a status code: 'Success', 'Pending', 'Cancel',
    'Warning', 'Failure', or 'Unknown' for a code no service defines."""
    code = _check(code)
    if code == 0x0000:
        return STATUS_SUCCESS
    if code in (0xFF00, 0xFF01):
        return STATUS_PENDING
    if code == 0xFE00:
        return STATUS_CANCEL
    if code in _GENERAL_FAILURES or 0xA000 <= code <= 0xAFFF or 0xC000 <= code <= 0xCFFF:
        return STATUS_FAILURE
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return STATUS_WARNING
    return STATUS_UNKNOWN


def is_failure(code: int) -> bool:
    """True for a Failure or an undefined ('Unknown') code: what a service
    that must decide treats as not done."""
    return code_to_category(code) in (STATUS_FAILURE, STATUS_UNKNOWN)


# pynetdicom status tables for services chromanet does not implement.
_OTHER_SERVICES = {
    "MODALITY_WORKLIST_SERVICE_CLASS_STATUS",
    "RELEVANT_PATIENT_SERVICE_CLASS_STATUS",
    "SUBSTANCE_ADMINISTRATION_SERVICE_CLASS_STATUS",
    "NON_PATIENT_SERVICE_CLASS_STATUS",
    "PROCEDURE_STEP_STATUS",
    "PRINT_JOB_MANAGEMENT_SERVICE_CLASS_STATUS",
    "STORAGE_COMMITMENT_SERVICE_CLASS_STATUS",
    "STORAGE_MANAGEMENT_SERVICE_CLASS_STATUS",
    "APPLICATION_EVENT_LOGGING_SERVICE_CLASS_STATUS",
    "MEDIA_CREATION_MANAGEMENT_SERVICE_CLASS_STATUS",
    "UNIFIED_PROCEDURE_STEP_SERVICE_CLASS_STATUS",
    "RT_MACHINE_VERIFICATION_SERVICE_CLASS_STATUS",
}


def __getattr__(name: str) -> Any:
    if name in _OTHER_SERVICES:
        raise NotImplementedName(f"chromanet.status does not implement {name}: that service is not implemented")
    raise AttributeError(f"module 'chromanet.status' has no attribute {name!r}")
