"""Handler answers in, response commands out (pynetdicom's handler protocol).

A handler answers with a status: an int, or a Dataset holding (0000,0900)
Status and optional elements (Error Comment, Offending Element, the
sub-operation counts…) that go into the response command. Responses come
back to SCU callers as such Datasets too (``response_to_dataset``).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from pydicom import Dataset, config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
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


# The VR of each optional status element (PS3.7 Annex C).
_STATUS_VRS = {"ErrorComment": "LO", "ErrorID": "US", "OffendingElement": "AT", "AffectedSOPInstanceUID": "UI"}
# Command field -> (tag, VR) of the element it becomes in a status Dataset;
# the sub-operation counts are US.
_RESPONSE_ELEMENTS = tuple(
    (field, BaseTag(tag_for_keyword(keyword)), _STATUS_VRS.get(keyword, "US"))  # type: ignore[arg-type]
    for keyword, field in _STATUS_ELEMENTS.items()
)
_STATUS_TAG = BaseTag(0x00000900)
# The values come from a decoded command set, already checked: pydicom's
# per-value validation would only repeat that.
_TRUSTED = config.IGNORE


# A US element of an int value, as ``DataElement(tag, "US", value,
# validation_mode=IGNORE)`` makes it (``__init__`` keeps such a value as it
# is: nothing to convert, nothing validated), at a sixth of the cost: a new
# instance given a copy of a made one's attributes and its own tag and
# value. Checked at import against the constructor; when pydicom's
# DataElement is not made that way, the constructor itself.
_US_STATE = dict(vars(DataElement(_STATUS_TAG, "US", 0xFF00, validation_mode=_TRUSTED)))
_FAST_US = DataElement.__new__ is object.__new__ and _US_STATE.get("_value") == 0xFF00 and "tag" in _US_STATE


def _us_element(tag: BaseTag, value: int) -> DataElement:
    if not _FAST_US:
        return DataElement(tag, "US", value, validation_mode=_TRUSTED)
    elem = object.__new__(DataElement)
    state = elem.__dict__
    state.update(_US_STATE)
    state["tag"] = tag
    state["_value"] = value
    return elem


def _status_elements(command: Command) -> dict[BaseTag, DataElement]:
    """The elements of a response's status Dataset: Status and the optional
    status elements the command has, made without pydicom's value checks
    (the values come from a decoded command set)."""
    status = command.status
    elements = {
        _STATUS_TAG: _us_element(_STATUS_TAG, status)
        if type(status) is int
        else DataElement(_STATUS_TAG, "US", status, validation_mode=_TRUSTED)
    }
    for field, tag, vr in _RESPONSE_ELEMENTS:
        value = getattr(command, field)
        if value is not None:
            if vr == "US" and type(value) is int:
                elements[tag] = _us_element(tag, value)
            else:
                elements[tag] = DataElement(tag, vr, value, validation_mode=_TRUSTED)
    return elements


class _ElementsOnFirstUse:
    """``StatusDataset._dict``: the elements, made from the response command
    the first time anything of pydicom's asks for them, then kept as the
    instance's own ``_dict`` (which from then on shadows this descriptor).

    Why: most callers read only ``Status`` (one per response: a C-FIND with
    10,000 matches makes 10,000), which ``StatusDataset`` answers from the
    command; making the elements cost ~3 of the ~4 us of a response's
    Dataset on the 2-core machine. Two threads asking at once both get the
    one dict kept (``setdefault``; the command is dropped only after)."""

    def __get__(self, ds: Any, owner: Any = None) -> Any:
        if ds is None:
            return self
        state = ds.__dict__
        command = state.get("_command")
        if command is None:
            return state["_dict"]  # made by another thread meanwhile
        elements = state.setdefault("_dict", _status_elements(command))
        state.pop("_command", None)
        return elements


class StatusDataset(Dataset):
    """The Dataset an SCU call returns for a response (see
    ``response_to_dataset``): a plain pydicom ``Dataset`` in every way, with
    the two reads nearly every caller makes of it, ``"Status" in status``
    and ``status.Status``, answered from the response command itself
    (~0.2 against ~2.5 us each through pydicom's keyword lookup; a C-FIND
    with many matches makes them once per match), and its elements made
    only when something else is asked of it (``_ElementsOnFirstUse``): a
    copy or a pickle holds the elements, never the command. Anything else,
    setting and deleting Status included, is pydicom's own."""

    __slots__ = ()

    _dict = _ElementsOnFirstUse()

    def __contains__(self, name: Any) -> bool:
        if name.__class__ is str and name == "Status":
            if "_command" in self.__dict__:
                return True  # not yet made: Status is always among them
            return _STATUS_TAG in self.keys()
        return Dataset.__contains__(self, name)

    @property
    def Status(self) -> Any:  # noqa: N802 - the DICOM keyword, as pydicom spells it
        command = self.__dict__.get("_command")
        if command is not None and type(command.status) is int:
            return command.status
        elem = self.get_item(_STATUS_TAG)
        if elem is None:
            raise AttributeError("'Dataset' object has no attribute 'Status'")  # as pydicom words it
        if elem.__class__ is DataElement:
            return elem.value
        return self[_STATUS_TAG].value  # a raw element: converted (in place), as pydicom does

    def __reduce_ex__(self, protocol: Any) -> Any:
        self._dict  # noqa: B018 - made now: copies and pickles carry the elements
        return super().__reduce_ex__(protocol)


def response_to_dataset(command: Command | None) -> Dataset:
    """A response command as pynetdicom returns it: a Dataset with Status
    and the optional status elements present. None (no response: the
    association ended) gives an empty Dataset, as pynetdicom does.

    Every SCU call makes one per response and nearly every caller reads its
    Status, so it is built for that: ``dsutil.new_dataset`` instead of
    ``Dataset()`` and ``__setattr__``, its elements made on first use
    (``StatusDataset``) without pydicom's value checks: making one and
    reading its Status takes ~1 us, against ~4 us with the elements made
    at once, ~21 us with ``Dataset()`` and attribute assignment, and ~33 us
    with raw elements (converted when read)."""
    if command is None:
        return Dataset()
    made = dsutil.new_dataset({})
    state = made.__dict__
    del state["_dict"]
    state["_command"] = command
    object.__setattr__(made, "__class__", StatusDataset)
    return made


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

    def next_now(self) -> Any:
        """``next`` for a sync handler, without a coroutine (the inline path)."""
        try:
            return next(self._gen)
        except StopIteration:
            raise Exhausted from None

    async def close(self) -> None:
        if self._async:
            try:
                await self._gen.aclose()
            except Exception:
                LOGGER.exception("handler generator raised while closing")
        else:
            self.close_now()

    def close_now(self) -> None:
        """``close`` for a sync handler."""
        try:
            if hasattr(self._gen, "close"):
                self._gen.close()
        except Exception:
            LOGGER.exception("handler generator raised while closing")
