"""Status values: categories, and turning handler answers into responses."""

from __future__ import annotations

import logging
from typing import Any

from pydicom import Dataset
from pydicom.tag import Tag

from chromanet._dimse import Command

LOGGER = logging.getLogger("chromanet.services")

SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = 0xFF00
PENDING_WARNING = 0xFF01
# Engine-specific failures for bad handler answers (same values as pynetdicom).
STATUS_DATASET_WITHOUT_STATUS = 0xC001
STATUS_OF_WRONG_TYPE = 0xC002

# Optional elements a status Dataset may carry into the response command.
_STATUS_ELEMENTS = {
    "ErrorComment": "error_comment",
    "ErrorID": "error_id",
    "OffendingElement": "offending_element",
    "AffectedSOPInstanceUID": "affected_sop_instance_uid",
    "NumberOfRemainingSuboperations": "number_of_remaining_suboperations",
    "NumberOfCompletedSuboperations": "number_of_completed_suboperations",
    "NumberOfFailedSuboperations": "number_of_failed_suboperations",
    "NumberOfWarningSuboperations": "number_of_warning_suboperations",
}


def code_to_category(status: int) -> str:
    """'Success', 'Warning', 'Failure', 'Cancel' or 'Pending' (PS3.7 C)."""
    if status == SUCCESS:
        return "Success"
    if status in (PENDING, PENDING_WARNING):
        return "Pending"
    if status == CANCEL:
        return "Cancel"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "Warning"
    return "Failure"


def apply_handler_status(result: Any, response: Command, event_name: str) -> None:
    """Put a handler's status answer (int or Dataset) into ``response``.

    A Dataset without (0000,0900) gives 0xC001; anything that is neither an
    int nor a Dataset gives 0xC002.
    """
    if isinstance(result, Dataset):
        if "Status" not in result:
            LOGGER.error("the status Dataset from the %s handler has no (0000,0900) Status", event_name)
            response.status = STATUS_DATASET_WITHOUT_STATUS
            return
        response.status = int(result.Status)
        for keyword, field in _STATUS_ELEMENTS.items():
            if keyword in result:
                value = result[keyword].value
                if keyword == "OffendingElement":
                    values = value if isinstance(value, (list, tuple)) else [value]
                    value = [int(Tag(tag)) for tag in values]
                elif isinstance(value, str):
                    value = str(value)
                else:
                    value = int(value)
                setattr(response, field, value)
        return
    if isinstance(result, bool) or not isinstance(result, int):
        LOGGER.error("the %s handler returned a status of type %s", event_name, type(result).__name__)
        response.status = STATUS_OF_WRONG_TYPE
        return
    response.status = result


def response_to_dataset(command: Command | None) -> Dataset:
    """A response command as pynetdicom returns it: a Dataset with Status
    and the optional status elements present. None (no response: the
    association ended) gives an empty Dataset, as pynetdicom does."""
    ds = Dataset()
    if command is None:
        return ds
    ds.Status = command.status
    for keyword, field in _STATUS_ELEMENTS.items():
        value = getattr(command, field)
        if value is not None:
            setattr(ds, keyword, value)
    return ds
