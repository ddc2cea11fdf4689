"""Handler answers in, response commands out (pynetdicom's handler protocol).

A handler answers with a status: an int, or a Dataset holding (0000,0900)
Status and optional elements (Error Comment, Offending Element, the
sub-operation counts…) that go into the response command. Responses come
back to SCU callers as such Datasets too (``response_to_dataset``).
"""

from __future__ import annotations

import inspect
import logging
import struct
from typing import Any

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag, Tag

from chromanet import dsutil
from chromanet._dimse import Command
from chromanet.status import Status

LOGGER = logging.getLogger("chromanet.services")

_DATASET_WITHOUT_STATUS = int(Status.STATUS_DATASET_WITHOUT_STATUS)
_STATUS_OF_WRONG_TYPE = int(Status.STATUS_OF_WRONG_TYPE)

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


#: LO (PS3.5 6.2): at most 64 characters, no backslash, no control characters.
_LO_MAX = 64


def lo_text(value: Any) -> str:
    """``value`` as a valid LO value in the default repertoire: a
    multi-value joined, each backslash (the value delimiter, which would
    split it) written as '/', control characters as spaces, other
    characters outside ASCII as '?', cut to 64 characters."""
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace")
    elif hasattr(value, "__iter__") and not isinstance(value, str):
        text = "/".join(str(item) for item in value)
    else:
        text = str(value)
    text = text.replace("\\", "/")
    text = "".join(
        char if 0x20 <= ord(char) < 0x7F else (" " if ord(char) < 0x20 or ord(char) == 0x7F else "?") for char in text
    )
    return text[:_LO_MAX]


def apply_handler_status(result: Any, response: Command, event_name: str) -> None:
    """Put a handler's status answer (int or Dataset) into ``response``.

    A Dataset without (0000,0900) gives 0xC001; anything that is neither an
    int nor a Dataset gives 0xC002.
    """
    if isinstance(result, Dataset):
        if "Status" not in result:
            LOGGER.error("the status Dataset from the %s handler has no (0000,0900) Status", event_name)
            response.status = _DATASET_WITHOUT_STATUS
            return
        response.status = int(result.Status)
        for keyword, field in _STATUS_ELEMENTS.items():
            if keyword in result:
                value = result[keyword].value
                try:
                    if keyword == "OffendingElement":
                        many = hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
                        values = value if many else [value]
                        value = [int(Tag(tag)) for tag in values]
                    elif keyword == "ErrorComment":
                        value = lo_text(value)
                    elif keyword == "AffectedSOPInstanceUID":
                        value = str(value)
                    else:  # the US elements: a number or nothing
                        value = int(value)
                except (TypeError, ValueError, OverflowError) as exc:
                    # A bad optional element must not cost the response.
                    LOGGER.warning("%s in the %s handler's status ignored: %s", keyword, event_name, exc)
                    continue
                setattr(response, field, value)
        return
    if isinstance(result, bool) or not isinstance(result, int):
        LOGGER.error("the %s handler returned a status of type %s", event_name, type(result).__name__)
        response.status = _STATUS_OF_WRONG_TYPE
        return
    response.status = result


def _us(value: int) -> bytes:
    return _U16.pack(value)


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _lo(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def _at(value: Any) -> bytes:
    tags = value if isinstance(value, (list, tuple)) else [value]
    return b"".join(_U16X2.pack(tag >> 16, tag & 0xFFFF) for tag in tags)


# Command field -> (tag, VR, encoder) of the element it becomes in a status
# Dataset; the elements are encoded as the command set had them (Implicit VR
# Little Endian) and left raw, for pydicom to convert when they are read.
_U16 = struct.Struct("<H")
_U16X2 = struct.Struct("<HH")
_RESPONSE_ELEMENTS = tuple(
    (field, BaseTag(tag_for_keyword(keyword)), vr, encoder)  # type: ignore[arg-type]
    for keyword, field, vr, encoder in (
        ("ErrorComment", "error_comment", "LO", _lo),
        ("ErrorID", "error_id", "US", _us),
        ("OffendingElement", "offending_element", "AT", _at),
        ("AffectedSOPInstanceUID", "affected_sop_instance_uid", "UI", _ui),
        ("NumberOfRemainingSuboperations", "number_of_remaining_suboperations", "US", _us),
        ("NumberOfCompletedSuboperations", "number_of_completed_suboperations", "US", _us),
        ("NumberOfFailedSuboperations", "number_of_failed_suboperations", "US", _us),
        ("NumberOfWarningSuboperations", "number_of_warning_suboperations", "US", _us),
    )
)
_STATUS_TAG = BaseTag(0x00000900)


def response_to_dataset(command: Command | None) -> Dataset:
    """A response command as pynetdicom returns it: a Dataset with Status
    and the optional status elements present. None (no response: the
    association ended) gives an empty Dataset, as pynetdicom does.

    Every SCU call makes one per response, so the elements go in raw (as
    pydicom's reader leaves them) into a Dataset made by
    ``dsutil.new_dataset``, instead of through ``Dataset.__setattr__``: that
    took ~30 us per response against ~4 us now."""
    if command is None:
        return Dataset()
    status = command.status
    elements = {_STATUS_TAG: RawDataElement(_STATUS_TAG, "US", 2, _U16.pack(status), 0, True, True)}
    for field, tag, vr, encode in _RESPONSE_ELEMENTS:
        value = getattr(command, field)
        if value is not None:
            raw = encode(value)
            elements[tag] = RawDataElement(tag, vr, len(raw), raw, 0, True, True)
    return dsutil.new_dataset(elements)


class Exhausted(Exception):
    """The handler's generator has nothing more to yield."""


class HandlerResults:
    """One handler's sync or async generator (or plain iterable) behind one
    ``await next()``, for the handlers that yield (C-FIND, C-GET, C-MOVE)."""

    def __init__(self, produced: Any) -> None:
        self._gen = produced
        self._async = inspect.isasyncgen(produced)
        if not self._async and not inspect.isgenerator(produced) and not hasattr(produced, "__next__"):
            # A plain iterable (a list of results) is accepted as well.
            self._gen = iter(produced)

    async def next(self) -> Any:
        try:
            if self._async:
                return await self._gen.__anext__()
            return next(self._gen)
        except (StopIteration, StopAsyncIteration):
            raise Exhausted from None

    async def close(self) -> None:
        try:
            if self._async:
                await self._gen.aclose()
            elif hasattr(self._gen, "close"):
                self._gen.close()
        except Exception:
            LOGGER.exception("handler generator raised while closing")
