"""The elements of an Explicit VR Little Endian data set, as bytes, by tag.

Why: validating and indexing a received palette needs a dozen of its
elements, and the bytes of each. Decoding the whole data set into pydicom
objects (``dsutil.decode_dataset``) and reading the values back through
pydicom cost most of a store's CPU time in the commit thread, where the
GIL is shared with the event loop. ``scan`` walks the encoded elements
once (PS3.5 7.1.2 headers, 7.5 items and delimiters) and makes a dict per
data set or item: tag -> ``(VR, value)``, or for a sequence
``("SQ", [item dicts])``; a value is ``bytes`` up to 256 bytes (text, UIDs),
a memoryview of ``data`` beyond (LUT data, ICC profiles: not copied).

It is not a checker: ``chromanet._dataset.check`` must have passed on the
same bytes first (every header inside the data, lengths inside their
containers, explicit VRs of PS3.5, items and delimiters where they
belong). What it does not handle (undefined length on anything but a
sequence or an item, e.g. encapsulated pixel data or UN) makes it return
None, and the caller decodes the data set the general way.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["scan"]

# VRs with the 12-byte header: 2 reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_MAX_DEPTH = 32

_header = struct.Struct("<HH2sH")
_tag_and_length = struct.Struct("<HHI")
_length32 = struct.Struct("<I")


class _Unhandled(Exception):
    """Bytes this scanner leaves to the general decoder."""


def scan(data: Any) -> dict[int, Any] | None:
    """The top-level elements of ``data`` (Explicit VR Little Endian, already
    checked), by tag; None where the general decoder must read it."""
    raw = bytes(data)
    try:
        elements, _ = _level(raw, memoryview(raw), 0, len(raw), False, 0)
    except (_Unhandled, struct.error, IndexError):
        return None
    return elements


def _level(
    data: bytes, view: memoryview, pos: int, end: int, in_undefined_item: bool, depth: int
) -> tuple[dict[int, Any], int]:
    """The elements from ``pos`` to ``end`` (or, in an item of undefined
    length, to its Item Delimitation Item); their dict and where they end."""
    if depth > _MAX_DEPTH:
        raise _Unhandled()
    elements: dict[int, Any] = {}
    while pos < end:
        group, element, vr, short = _header.unpack_from(data, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            if not in_undefined_item:
                raise _Unhandled()
            return elements, pos + 8
        if group == 0xFFFE:
            raise _Unhandled()
        if vr in _LONG_VRS:
            (length,) = _length32.unpack_from(data, pos + 8)
            pos += 12
        else:
            length = short
            pos += 8
        if vr == b"SQ":
            items, pos = _sequence(data, view, pos, length, end, depth + 1)
            elements[tag] = ("SQ", items)
            continue
        if length == _UNDEFINED or pos + length > end:
            raise _Unhandled()
        value = data[pos : pos + length] if length <= 256 else view[pos : pos + length]
        elements[tag] = (vr.decode("ascii"), value)
        pos += length
    if in_undefined_item:
        raise _Unhandled()  # no Item Delimitation Item before the end
    return elements, pos


def _sequence(
    data: bytes, view: memoryview, pos: int, length: int, end: int, depth: int
) -> tuple[list[dict[int, Any]], int]:
    """The items of a sequence whose value starts at ``pos``; they and
    where the sequence ends."""
    undefined = length == _UNDEFINED
    stop = end if undefined else pos + length
    if stop > end:
        raise _Unhandled()
    items: list[dict[int, Any]] = []
    while pos < stop:
        group, element, item_length = _tag_and_length.unpack_from(data, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            if not undefined:
                raise _Unhandled()
            return items, pos
        if tag != _ITEM:
            raise _Unhandled()
        if item_length == _UNDEFINED:
            item, pos = _level(data, view, pos, stop, True, depth)
        else:
            if pos + item_length > stop:
                raise _Unhandled()
            item, pos = _level(data, view, pos, pos + item_length, False, depth)
        items.append(item)
    if undefined:
        raise _Unhandled()  # no Sequence Delimitation Item before the end
    return items, pos
