"""What a store must be: the validation shared by both archives.

A store is a Color Palette Storage instance (PS3.3 A.58) with what the
archive needs to index and serve it: SOP Class and Instance UIDs (the file
meta's agreeing with the data set's), a Content Label, the three Palette
Color LUT Descriptors and their data (normal or segmented), and a data set
well formed in the transfer syntax it declares. What is refused, and with
which C-STORE status (PS3.4 B.2.3), is listed in ``store.py``'s docstring;
``IngestResult`` carries the outcome of any store, refused or not.

``check_palette_file`` reads a Part 10 file once and decodes it with
chromanet's codec (``dsutil.decode_dataset``, which checks the structure on
the way); ``check_palette_data`` does the same for a data set received in
memory. The index columns come from that data set (``_index_fields``),
Alternate Content Description Sequence as DICOM JSON built from the
elements' own JSON.

Why the columns are read from the raw elements: the codec leaves every
element undecoded (a pydicom ``RawDataElement``), and asking pydicom for a
value converts it (tag lookups, value conversion, validation), which cost
most of a store's CPU time. A value of ASCII bytes without ESC, in a VR
and character set where pydicom's conversion is plain ASCII decoding and
the stripping of padding, is read from its bytes here with the same
result (``_plain_text``); any other value is left to pydicom.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.dataelem import RawDataElement

from chromanet import dsutil, uids
from chromanet._dataset import plain_text, text_json
from chromanet.archive import matching as m
from chromanet.archive import rawscan
from chromanet.status import STATUS_SUCCESS, STATUS_WARNING, Status, code_to_category

__all__ = [
    "IngestResult", "Refused", "check_palette_file", "check_palette_data", "check_palette_dataset", "checked_file",
    "checked_data", "SUCCESS",
    "WARNING_DATASET_DOES_NOT_MATCH", "OUT_OF_RESOURCES", "DATASET_DOES_NOT_MATCH", "CANNOT_UNDERSTAND",
    "UNABLE_TO_PROCESS", "NOT_AUTHORISED",
]  # fmt: skip

LOGGER = logging.getLogger("chromanet.archive")

SUCCESS = int(Status.SUCCESS)
WARNING_DATASET_DOES_NOT_MATCH = int(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING)
OUT_OF_RESOURCES = int(Status.OUT_OF_RESOURCES)
DATASET_DOES_NOT_MATCH = int(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS)
CANNOT_UNDERSTAND = UNABLE_TO_PROCESS = int(Status.CANNOT_UNDERSTAND)
NOT_AUTHORISED = int(Status.NOT_AUTHORISED)


# Attributes a palette must have (PS3.3 C.7.9, C.7.6.3).
_LUT_DESCRIPTORS = (0x00281101, 0x00281102, 0x00281103)
_LUT_DATA = (0x00281201, 0x00281202, 0x00281203)
_SEGMENTED_LUT_DATA = (0x00281221, 0x00281222, 0x00281223)
_ICC_PROFILE = 0x00282000


@dataclass(frozen=True, slots=True)
class IngestResult:
    """Outcome of a store: a C-STORE status (PS3.4 B.2.3) and a comment."""

    status: int
    comment: str = ""
    sop_instance_uid: str | None = None
    path: Path | None = None

    @property
    def ok(self) -> bool:
        """Stored (success or warning)."""
        return code_to_category(self.status) in (STATUS_SUCCESS, STATUS_WARNING)


class Refused(Exception):
    """A store refused while validated: its C-STORE status and comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def _text_or_none(ds: Dataset, tag: int) -> str | None:
    elem = ds.get(tag)
    if elem is None:
        return None
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


# Character sets under which a value of ASCII bytes without ESC decodes to
# the same text as ASCII (PS3.5 6.1.2; ISO 2022 code extensions use ESC).
_ASCII_SAFE_CHARSETS = frozenset({None, "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
_PLAIN_TEXT_VRS = frozenset({"SH", "LO"})
# VRs pydicom decodes with its default encoding whatever the character set,
# stripping the trailing padding of the whole value (``convert_string``,
# ``convert_UI``).
_DEFAULT_ENCODING_VRS = frozenset({"CS", "UI"})


def _by_tag(ds: Dataset) -> dict[int, Any]:
    """The elements of ``ds`` as it holds them (raw or converted), by tag as
    a plain int: pydicom's ``BaseTag`` keys compare through a Python
    ``__eq__`` on every dict hit, plain ints do not."""
    return {int(tag): elem for tag, elem in ds.items()}


def _sequence(ds: Dataset, elements: dict[int, Any], tag: int) -> Any:
    """The element ``tag`` of ``ds`` (present), converted: a sequence the
    codec parsed already is a DataElement, taken as it is."""
    elem = elements[tag]
    return elem if type(elem) is not RawDataElement else ds[tag]


def _plain_text(raw: Any, plain: bool) -> str | None:
    """The text ``_text_or_none`` gives for ``raw`` (an element of a
    decoded data set), read from its bytes, when pydicom's conversion of
    them would be plain ASCII decoding; None when it must be asked. With
    ``plain``, the data set's character set is ASCII-safe. The rules are
    pydicom's: CS and UI values stripped of trailing spaces and NULs as a
    whole (``multi_string``; UI only when made of UID characters), PN likewise (``convert_PN``) and each value
    without its empty trailing component groups (``PersonName``), SH and LO value
    by value (``convert_text``); multiple values joined by "\\"."""
    if type(raw) is not RawDataElement:
        return None
    value = raw.value
    if not isinstance(value, bytes) or not value.isascii() or b"\x1b" in value:
        return None
    vr = raw.VR
    if vr in _DEFAULT_ENCODING_VRS:
        text = value.decode("ascii").rstrip(" \x00")
        if vr == "UI" and text.strip("0123456789.\\"):
            return None  # pydicom's UID strips white space from both ends too: its own
        return text
    if plain and vr == "PN":
        # Each value without its empty trailing component groups, as
        # pydicom's PersonName gives it ("Doe^Jane=" reads "Doe^Jane").
        text = value.decode("ascii").rstrip(" \x00")
        return text if "=" not in text else "\\".join(name.rstrip("=") for name in text.split("\\"))
    if plain and vr in _PLAIN_TEXT_VRS:
        return "\\".join(part.rstrip("\x00 ") for part in value.decode("ascii").split("\\"))
    return None


def _text(ds: Dataset, elements: dict[int, Any], tag: int, plain: bool) -> str | None:
    """``_text_or_none(ds, tag)``, from the raw element when it can be
    (``elements``: the data set's elements by tag, unconverted)."""
    raw = elements.get(tag)
    if raw is None:
        return None
    text = _plain_text(raw, plain)
    return text if text is not None else _text_or_none(ds, tag)


def _element_json(item: Dataset, tag: int, plain: bool, raw: Any = None) -> dict[str, Any]:
    """DICOM JSON of one element of ``item``, as ``DataElement.to_json_dict``
    gives it. With ``plain`` (an ASCII-safe character set), an SH or LO
    element still undecoded whose bytes are ASCII without ESC is turned
    into JSON from its bytes, as pydicom would decode it (split at "\\",
    trailing spaces and NULs stripped), without converting the element
    (``raw``: the element as the item holds it, when the caller has it)."""
    if plain:
        if raw is None:
            raw = item.get_item(tag)
        if type(raw) is RawDataElement and raw.VR in _PLAIN_TEXT_VRS and isinstance(raw.value, bytes):
            value = raw.value
            if value.isascii() and b"\x1b" not in value:
                parts = [part.rstrip("\x00 ") for part in value.decode("ascii").split("\\")]
                if len(parts) == 1 and not parts[0]:
                    return {"vr": raw.VR}
                return {"vr": raw.VR, "Value": parts}
    return item[tag].to_json_dict(None, 1024)


def _alternate_json(ds: Dataset, elements: dict[int, Any] | None = None, plain: bool | None = None) -> str | None:
    """Alternate Content Description Sequence as the index keeps it: a JSON
    list of items (DICOM JSON, PS3.18 F), each with Content Description and
    the Language Code Sequence's code keys only. Built from the elements'
    own JSON (or bytes, ``_element_json``), without copying them into new
    Datasets (the same text as ``Dataset.to_json_dict`` of such copies, at
    a fraction of the cost; ``tests/archive/test_archive_store.py``).
    Membership and lookups go to each item's elements by tag (``items()``),
    not through pydicom's tag conversion; ``elements`` and ``plain`` are
    the data set's, when the caller has them."""
    if elements is None:
        elements = _by_tag(ds)
    if m.ALTERNATE_CONTENT_DESCRIPTION_SEQUENCE not in elements:
        return None
    elem = _sequence(ds, elements, m.ALTERNATE_CONTENT_DESCRIPTION_SEQUENCE)
    if plain is None:
        plain = _text_or_none(ds, m.SPECIFIC_CHARACTER_SET) in _ASCII_SAFE_CHARSETS
    items = []
    for item in elem.value or ():
        inside = _by_tag(item)
        own_charset = m.SPECIFIC_CHARACTER_SET in inside
        kept: dict[str, Any] = {}
        if m.CONTENT_DESCRIPTION in inside:
            kept[f"{m.CONTENT_DESCRIPTION:08X}"] = _element_json(
                item, m.CONTENT_DESCRIPTION, plain and not own_charset, inside[m.CONTENT_DESCRIPTION]
            )
        if m.LANGUAGE_CODE_SEQUENCE in inside:
            codes = []
            for code in _sequence(item, inside, m.LANGUAGE_CODE_SEQUENCE).value or ():
                keys = _by_tag(code)
                code_plain = plain and not own_charset and m.SPECIFIC_CHARACTER_SET not in keys
                codes.append({f"{tag:08X}": _element_json(code, tag, code_plain, keys[tag])
                              for tag in m.CODE_ITEM_KEYS if tag in keys})  # fmt: skip
            kept[f"{m.LANGUAGE_CODE_SEQUENCE:08X}"] = {"vr": "SQ", "Value": codes}
        items.append(kept)
    return _alternates_json(items)


def _index_fields(ds: Dataset, meta_class: str | None, meta_instance: str | None) -> tuple[dict[str, Any], str]:
    """Validate a Color Palette data set; the index columns and a warning text."""
    elements = _by_tag(ds)  # unconverted: see the module docstring
    sop_class = _text(ds, elements, m.SOP_CLASS_UID, False)
    sop_class = sop_class.strip(" \x00") if sop_class else ""
    if sop_class != uids.ColorPaletteStorage:
        raise Refused(DATASET_DOES_NOT_MATCH, f"SOP Class {sop_class or '(none)'} is not Color Palette Storage")
    uid = (_text(ds, elements, m.SOP_INSTANCE_UID, False) or "").strip(" \x00")
    if not uids.validate_uid(uid):
        raise Refused(DATASET_DOES_NOT_MATCH, f"invalid SOP Instance UID {uid[:40]!r}")
    if meta_class and meta_class != sop_class:
        raise Refused(DATASET_DOES_NOT_MATCH, "file meta SOP Class UID differs from the data set's")
    if meta_instance and meta_instance != uid:
        raise Refused(DATASET_DOES_NOT_MATCH, "file meta SOP Instance UID differs from the data set's")
    charset = _text(ds, elements, m.SPECIFIC_CHARACTER_SET, False)
    plain = charset in _ASCII_SAFE_CHARSETS
    label = (_text(ds, elements, m.CONTENT_LABEL, plain) or "").strip(" ")
    if not label:
        raise Refused(DATASET_DOES_NOT_MATCH, "Content Label (0070,0080) missing or empty")
    if not all(tag in elements for tag in _LUT_DESCRIPTORS):
        raise Refused(DATASET_DOES_NOT_MATCH, "Palette Color LUT Descriptors missing")
    if not (all(tag in elements for tag in _LUT_DATA) or all(tag in elements for tag in _SEGMENTED_LUT_DATA)):
        raise Refused(DATASET_DOES_NOT_MATCH, "Palette Color LUT Data (normal or segmented) missing")
    description = _text(ds, elements, m.CONTENT_DESCRIPTION, plain)
    creator = _text(ds, elements, m.CONTENT_CREATOR_NAME, plain)
    alternates = _alternate_json(ds, elements, plain)
    return _columns_and_warning(uid, sop_class, label, description, creator, alternates, charset, elements)


def _columns_and_warning(
    uid: str, sop_class: str, label: str, description: str | None, creator: str | None,
    alternates: str | None, charset: str | None, elements: Any,
) -> tuple[dict[str, Any], str]:
    """The index columns of a palette and the warning its store gets (none,
    or a missing ICC Profile): one shape for the pydicom and the raw path."""
    warning = "" if _ICC_PROFILE in elements else "ICC Profile (0028,2000) missing"
    ascii_only = all(t is None or t.isascii() for t in (label, description, creator, alternates))
    fields = dict(
        sop_instance_uid=uid,
        sop_class_uid=sop_class,
        content_label=label,
        content_description=description,
        content_creator_name=creator,
        alternate_descriptions=alternates,
        specific_character_set=charset or None,
        ascii_only=ascii_only,
    )
    return fields, warning


def _decode(data: Any, transfer_syntax: str, name: str) -> Dataset:
    """The data set of ``data``, decoded in one pass by chromanet's codec,
    which also checks that it is well formed in the transfer syntax it
    declares (e.g. Implicit VR bytes sent on an Explicit VR context are
    refused): what we could not serve back, we do not store."""
    try:
        return dsutil.decode_dataset(data, transfer_syntax)
    except dsutil.EncodingError as exc:
        LOGGER.info("refusing %s: not well formed in %s: %s", name, transfer_syntax, exc)
        raise Refused(CANNOT_UNDERSTAND, f"data set not valid in its transfer syntax: {exc}"[:64]) from exc
    except Exception as exc:
        raise Refused(CANNOT_UNDERSTAND, f"cannot read as Part 10: {exc}"[:64]) from exc


def checked_file(path: Path) -> tuple[dict[str, Any], str, str, os.stat_result]:
    """``check_palette_file``'s work, and the file's stat (the archive
    renames the file it validated: its size is known); raises Refused."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
        part = dsutil.parse_part10(memoryview(data), path)
    except (OSError, ValueError) as exc:
        raise Refused(CANNOT_UNDERSTAND, f"cannot read as Part 10: {exc}"[:64]) from exc
    fields, warning = _checked(
        part.dataset_bytes(), part.transfer_syntax, part.sop_class_uid, part.sop_instance_uid, path.name
    )
    return fields, part.transfer_syntax, warning, stat


def checked_data(data: Any, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str) -> tuple[dict[str, Any], str]:
    """``check_palette_data``'s work; raises Refused."""
    return _checked(data, transfer_syntax, sop_class_uid, sop_instance_uid, sop_instance_uid[:64] or "a data set")


def _checked(data: Any, transfer_syntax: str, meta_class: str, meta_instance: str, name: str) -> tuple[dict[str, Any], str]:
    """The index columns and warning of a data set, or Refused. Explicit VR
    Little Endian (what nearly every store sends) is checked in C and read
    by ``rawscan``, without a pydicom object; a data set that is refused,
    or that holds anything the scan or its plain text rules leave out, is
    decoded and read through pydicom (``_index_fields``), which decides."""
    if transfer_syntax == uids.ExplicitVRLittleEndian:
        try:
            dsutil.check_encoding(data, transfer_syntax)
        except dsutil.EncodingError:
            pass  # _decode refuses it, saying why
        else:
            elements = rawscan.scan(data)
            if elements is not None:
                try:
                    return _scanned_fields(elements, meta_class or None, meta_instance or None)
                except _Unplain:
                    pass
    ds = _decode(data, transfer_syntax, name)
    return _index_fields(ds, meta_class or None, meta_instance or None)


#: What ``json.dumps(items, ensure_ascii=False)`` gives, from one encoder
#: made once (``json.dumps`` with any argument builds a new one per call)
#: and without the circular-reference check (the items are fresh trees of
#: dicts, lists and strings): half the time of a store's alternates.
_alternates_json = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


class _Unplain(Exception):
    """A scanned data set the plain rules do not cover (or a refusal, whose
    reason ``_index_fields`` gives): read it through pydicom."""


# Character sets whose text values (SH, LO, PN) pydicom decodes with one
# Python codec, no code extensions (PS3.5 6.1.2.2, 6.1.2.4; ISO 2022 sets
# switch with ESC and are left to pydicom): the codec, by the value of
# Specific Character Set (0008,0005).
_ONE_CODEC = {None: "ascii", "": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}


#: The elements of an Alternate Content Description Sequence item kept in
#: the index, for ``text_json``: Content Description, and the code keys of
#: the Language Code Sequence's items (the order of the JSON's keys).
_ALTERNATE_KEYS: dict[int, Any] = {
    m.CONTENT_DESCRIPTION: None,
    m.LANGUAGE_CODE_SEQUENCE: {tag: None for tag in m.CODE_ITEM_KEYS},
}


def _scanned_text(entry: Any, codec: str | None) -> str:
    """``_text_or_none`` for a scanned element ``(VR, value)``, by pydicom's
    rules (``_dataset.plain_text``, in C): CS and UI in ASCII whatever the
    character set, PN, SH and LO in ``codec`` (the data set's one codec,
    None if it has none). _Unplain for anything else."""
    text = plain_text(entry, codec)
    if text is None:
        raise _Unplain()
    return text


def _scanned_alternates(elements: dict[int, Any], codec: str | None) -> str | None:
    """``_alternate_json`` for a scanned data set, built in C
    (``_dataset.text_json``: the same text as ``_alternates_json`` of the
    items' JSON; an item with a character set of its own is left to pydicom)."""
    entry = elements.get(m.ALTERNATE_CONTENT_DESCRIPTION_SEQUENCE)
    if entry is None:
        return None
    if entry[0] != "SQ":
        raise _Unplain()
    text = text_json(entry[1], _ALTERNATE_KEYS, codec)
    if text is None:
        raise _Unplain()
    return text


def _scanned_fields(elements: dict[int, Any], meta_class: str | None, meta_instance: str | None) -> tuple[dict[str, Any], str]:
    """``_index_fields`` for a scanned data set that passes every check, in
    the same order; _Unplain for anything else."""

    def text(tag: int, codec: str | None) -> str | None:
        entry = elements.get(tag)
        return None if entry is None else _scanned_text(entry, codec)

    sop_class = (text(m.SOP_CLASS_UID, None) or "").strip(" \x00")
    uid = (text(m.SOP_INSTANCE_UID, None) or "").strip(" \x00")
    if sop_class != uids.ColorPaletteStorage or not uids.validate_uid(uid):
        raise _Unplain()
    if (meta_class and meta_class != sop_class) or (meta_instance and meta_instance != uid):
        raise _Unplain()
    charset = text(m.SPECIFIC_CHARACTER_SET, None)
    codec = _ONE_CODEC.get(charset)
    label = (text(m.CONTENT_LABEL, codec) or "").strip(" ")
    if not label or not all(tag in elements for tag in _LUT_DESCRIPTORS):
        raise _Unplain()
    if not (all(tag in elements for tag in _LUT_DATA) or all(tag in elements for tag in _SEGMENTED_LUT_DATA)):
        raise _Unplain()
    description = text(m.CONTENT_DESCRIPTION, codec)
    creator = text(m.CONTENT_CREATOR_NAME, codec)
    alternates = _scanned_alternates(elements, codec)
    return _columns_and_warning(uid, sop_class, label, description, creator, alternates, charset, elements)


def check_palette_file(path: Path) -> tuple[dict[str, Any], str, str] | IngestResult:
    """Validate a Part 10 file as a store would (shared by every backend).

    Returns the index columns (a dict), the transfer syntax and a warning
    text (empty if none), or the IngestResult of the refusal.
    """
    try:
        fields, transfer_syntax, warning, _ = checked_file(path)
    except Refused as refused:
        return IngestResult(refused.status, refused.comment)
    return fields, transfer_syntax, warning


def check_palette_data(
    data: Any, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str
) -> tuple[dict[str, Any], str, str] | IngestResult:
    """Validate a data set received in memory (no file meta: the C-STORE
    request's Affected SOP Class and Instance UIDs stand for it) as
    ``check_palette_file`` validates the file a spool would have made of
    it: the same result, without the file."""
    try:
        fields, warning = checked_data(data, transfer_syntax, sop_class_uid, sop_instance_uid)
    except Refused as refused:
        return IngestResult(refused.status, refused.comment)
    return fields, transfer_syntax, warning


def check_palette_dataset(ds: Dataset) -> tuple[dict[str, Any], str] | IngestResult:
    """Validate a decoded data set as a store would: the index columns and a
    warning text, or the IngestResult of the refusal."""
    try:
        return _index_fields(ds, None, None)
    except Refused as refused:
        return IngestResult(refused.status, refused.comment)
