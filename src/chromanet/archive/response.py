"""C-FIND response identifiers, built from index rows.

Two ways out, same content:

* ``FindResult.matches`` yields small pydicom Datasets (what a
  pynetdicom-style handler yields with 0xFF00 / 0xFF01);
* ``FindResult.encoded(transfer_syntax)`` yields each identifier already
  encoded for Implicit or Explicit VR Little Endian, straight from the row's
  strings, for a service layer that can send bytes. It is about ten times
  cheaper than building a Dataset and encoding it with pydicom; rows that
  need a character set other than ASCII, and requests for the sequence,
  take the Dataset path inside it, so the bytes are always the same.

Character set of a response (PS3.4 C.4.1.1.3.2, K.4.1.1.3.2): Specific
Character Set is included only when the response holds text outside the
default repertoire. The SCP may answer in a character set other than the
request's; ours is the first of: the request's Specific Character Set, the
palette's own, ISO_IR 192 (UTF-8), that can encode every returned value.
So an ISO_IR 100 palette answers an ISO_IR 192 request in UTF-8 and an
ISO_IR 100 request in Latin-1, and an ASCII request gets the palette's set.
"""

from __future__ import annotations

import json
import struct
import warnings
from typing import Any, Iterator, Sequence

from pydicom import Dataset, config
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from chromanet import dsutil, uids
from chromanet.archive import matching as m

__all__ = ["FindResult", "identifier_from_row", "choose_charset"]

_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_SPECIFIC_CHARACTER_SET = BaseTag(m.SPECIFIC_CHARACTER_SET)
_UTF8 = ("ISO_IR 192",)
# Values come from the index, checked when stored: skip pydicom's per-value checks.
_TRUSTED = config.IGNORE


def _can_encode(texts: Sequence[str], charset: Sequence[str] | None) -> bool:
    if not charset or charset == ("ISO_IR 6",) or charset == ("",):
        return all(t.isascii() for t in texts)
    try:
        encodings = convert_encodings(list(charset))
    except Exception:
        return False
    if len(encodings) == 1:
        try:
            for text in texts:
                text.encode(encodings[0])
        except (UnicodeError, LookupError):
            return False
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            for text in texts:
                encode_string(text, encodings)
        except (UserWarning, UnicodeError, LookupError):
            return False
    return True


def choose_charset(texts: Sequence[str], request: Sequence[str] | None, stored: str | None) -> tuple[str, ...] | None:
    """The Specific Character Set for a response holding ``texts`` (None: default)."""
    if all(t.isascii() for t in texts):
        return None
    candidates: list[tuple[str, ...]] = []
    if request:
        candidates.append(tuple(request))
    if stored:
        candidates.append(tuple(stored.split("\\")))
    candidates.append(_UTF8)
    for charset in candidates:
        if _can_encode(texts, charset):
            return charset
    return _UTF8


def _empty(tag: int, vr: str) -> DataElement:
    return DataElement(BaseTag(tag), vr, DicomSequence() if vr == "SQ" else None, validation_mode=_TRUSTED)


def _shape_items(items: Sequence[Dataset], template: m.Template, allowed: dict[int, str]) -> DicomSequence:
    out = DicomSequence()
    for item in items:
        new = Dataset()
        if template is None:
            for tag, vr in sorted(allowed.items()):
                if tag not in item:
                    continue
                if tag == m.LANGUAGE_CODE_SEQUENCE:
                    new[BaseTag(tag)] = DataElement(BaseTag(tag), "SQ", _shape_items(item[tag].value, None, m.CODE_ITEM_KEYS))
                else:
                    new[BaseTag(tag)] = DataElement(BaseTag(tag), vr, item[tag].value)
        else:
            for tag, vr, sub in template:
                if tag == m.LANGUAGE_CODE_SEQUENCE:
                    codes = item[tag].value if tag in item else ()
                    new[BaseTag(tag)] = DataElement(BaseTag(tag), "SQ", _shape_items(codes, sub, m.CODE_ITEM_KEYS))
                elif tag in allowed and tag in item:
                    new[BaseTag(tag)] = DataElement(BaseTag(tag), vr, item[tag].value)
                else:
                    new[BaseTag(tag)] = _empty(tag, vr)
        out.append(new)
    return out


def _sequence(stored_json: str | None, template: m.Template) -> DicomSequence:
    if not stored_json:
        return DicomSequence()
    items = [Dataset.from_json(item) for item in json.loads(stored_json)]
    return _shape_items(items, template, m.ALTERNATE_ITEM_KEYS)


def _texts(ds: Dataset) -> list[str]:
    found: list[str] = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found.extend(_texts(item))
        elif elem.VR in _TEXT_VRS and elem.value is not None:
            found.append(str(elem.value))
    return found


def identifier_from_row(plan: m.FindPlan, row: Sequence[Any]) -> Dataset:
    """The response identifier for one index row, as a pydicom Dataset."""
    ds = Dataset()
    for key in plan.keys:
        tag = BaseTag(key.tag)
        if key.column is None:
            ds[tag] = _empty(key.tag, key.vr)
        elif key.vr == "SQ":
            ds[tag] = DataElement(tag, "SQ", _sequence(row[key.column], key.template))
        else:
            value = row[key.column]
            ds[tag] = DataElement(tag, key.vr, "" if value is None else value, validation_mode=_TRUSTED)
    if not row[m.COL_ASCII_ONLY]:
        charset = choose_charset(_texts(ds), plan.request_charset, row[m.COL_SPECIFIC_CHARACTER_SET])
        if charset is not None:
            ds[_SPECIFIC_CHARACTER_SET] = DataElement(
                _SPECIFIC_CHARACTER_SET, "CS", charset[0] if len(charset) == 1 else list(charset)
            )
    return ds


class _Encoder:
    """Encodes the rows of one plan whose returned values are ASCII without
    pydicom (fast path). A row qualifies by the values the response holds,
    not by its ``ascii_only`` flag (which covers every text of the palette):
    with only ASCII returned, ``identifier_from_row`` adds no Specific
    Character Set either, and the bytes are the same."""

    def __init__(self, plan: m.FindPlan, implicit: bool) -> None:
        self.plan = plan
        self.syntax = uids.ImplicitVRLittleEndian if implicit else uids.ExplicitVRLittleEndian
        self.usable = not plan.wants_sequence
        fields: list[tuple[bytes, str, int | None, bytes]] = []
        for key in plan.keys:
            tag = struct.pack("<HH", key.tag >> 16, key.tag & 0xFFFF)
            if implicit:
                header, fmt = tag, "<I"
            elif key.vr in _LONG_VRS:
                header, fmt = tag + key.vr.encode() + b"\0\0", "<I"
            else:
                header, fmt = tag + key.vr.encode(), "<H"
            pad = b"\0" if key.vr == "UI" else b" "
            fields.append((header, fmt, key.column, pad))
        self.fields = fields

    def encode(self, row: Sequence[Any]) -> bytes:
        if not self.usable:
            return self._slow(row)
        parts: list[bytes] = []
        pack = struct.pack
        for header, fmt, column, pad in self.fields:
            value = row[column] if column is not None else None
            try:
                raw = value.encode("ascii") if value else b""
            except UnicodeEncodeError:  # text outside ASCII: a character set to choose
                return self._slow(row)
            if len(raw) & 1:
                raw += pad
            parts.append(header)
            parts.append(pack(fmt, len(raw)))
            parts.append(raw)
        return b"".join(parts)

    def _slow(self, row: Sequence[Any]) -> bytes:
        return dsutil.encode_dataset(identifier_from_row(self.plan, row), self.syntax)


class FindResult:
    """The matches of one C-FIND, read from the index in one snapshot.

    ``status_pending`` is the status for every pending response: 0xFF00, or
    0xFF01 when the identifier had keys we do not support (for existence or
    matching). ``count`` is known before any identifier is built; identifiers
    are built lazily, one per step of the iteration, so a service can send
    each one before the next is made.
    """

    def __init__(self, plan: m.FindPlan, rows: list[tuple[Any, ...]]) -> None:
        self.plan = plan
        self._rows = rows
        self.status_pending = plan.status
        self.count = len(rows)

    def __len__(self) -> int:
        return self.count

    @property
    def sop_instance_uids(self) -> list[str]:
        """The SOP Instance UIDs of the matches, in response order."""
        return [row[m.COL_SOP_INSTANCE_UID] for row in self._rows]

    @property
    def matches(self) -> Iterator[Dataset]:
        """Response identifiers as Datasets, built as they are taken."""
        plan = self.plan
        return (identifier_from_row(plan, row) for row in self._rows)

    def __iter__(self) -> Iterator[tuple[int, Dataset]]:
        """(status, identifier) pairs, the shape a C-FIND handler yields."""
        status = self.status_pending
        return ((status, ds) for ds in self.matches)

    def encoded(self, transfer_syntax: str) -> Iterator[bytes]:
        """Response identifiers encoded in ``transfer_syntax``, ready to send."""
        if transfer_syntax in (uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian):
            encoder = _Encoder(self.plan, transfer_syntax == uids.ImplicitVRLittleEndian)
            return (encoder.encode(row) for row in self._rows)
        plan = self.plan
        return (dsutil.encode_dataset(identifier_from_row(plan, row), transfer_syntax) for row in self._rows)
