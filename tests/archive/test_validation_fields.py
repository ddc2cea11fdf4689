"""The index columns a store is validated into, read from the raw elements
(``archive/validation.py``), against the same columns read through pydicom's
conversion of every value (PS3.5 6.2 padding and multiple values, 6.1.2
character sets): for undecoded data sets in both little endian transfer
syntaxes and for data sets pydicom decoded."""

from __future__ import annotations

import struct
import warnings
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from pydicom import Dataset

from chromanet import dsutil, uids
from chromanet.archive import matching as m
from chromanet.archive import validation
from helpers.data import hot_iron_copy

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

UID = "1.2.826.0.1.3680043.10.1234.78"


def _by_pydicom(ds: Dataset, meta_class: str | None, meta_instance: str | None) -> tuple[dict, str]:
    """The columns as ``_index_fields`` read them before it read raw
    elements: every value through pydicom (``_text_or_none``)."""
    text = validation._text_or_none
    sop_class = (text(ds, m.SOP_CLASS_UID) or "").strip(" \x00")
    uid = (text(ds, m.SOP_INSTANCE_UID) or "").strip(" \x00")
    fields = dict(
        sop_instance_uid=uid,
        sop_class_uid=sop_class,
        content_label=(text(ds, m.CONTENT_LABEL) or "").strip(" "),
        content_description=text(ds, m.CONTENT_DESCRIPTION),
        content_creator_name=text(ds, m.CONTENT_CREATOR_NAME),
        specific_character_set=text(ds, m.SPECIFIC_CHARACTER_SET) or None,
    )
    return fields, "" if 0x00282000 in ds else "ICC Profile (0028,2000) missing"


def _variants() -> list[Dataset]:
    plain = hot_iron_copy(UID, "MY_PALETTE")
    padded = hot_iron_copy(UID, "LABEL  ", ContentDescription="Two\\Values ", ContentCreatorName="Doe^Jane ")
    multi_name = hot_iron_copy(UID, "X", ContentCreatorName=["Doe^Jane", "Roe^Rick="], ContentDescription="")
    latin = hot_iron_copy(UID, "LATIN", ContentDescription="Café", ContentCreatorName="Müller^Jörg")
    latin.SpecificCharacterSet = "ISO_IR 100"
    utf8 = hot_iron_copy(UID, "UTF8", ContentDescription="Ünïcode", ContentCreatorName="Smith^John")
    utf8.SpecificCharacterSet = "ISO_IR 192"
    japanese = hot_iron_copy(UID, "JIS", ContentDescription="Plain text", ContentCreatorName="Yamada^Tarou")
    japanese.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    gb = hot_iron_copy(UID, "GB", ContentDescription="ASCII here", ContentCreatorName="Wang^Li")
    gb.SpecificCharacterSet = "GB18030"
    no_icc = hot_iron_copy(UID, "NO_ICC")
    del no_icc[0x00282000]
    return [plain, padded, multi_name, latin, utf8, japanese, gb, no_icc]


@pytest.mark.parametrize("syntax", [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian])
def test_raw_columns_equal_pydicom_columns(syntax: str) -> None:
    for ds in _variants():
        encoded = dsutil.encode_dataset(ds, syntax)
        raw = dsutil.decode_dataset(encoded, syntax)
        fields, warning = validation._index_fields(raw, uids.ColorPaletteStorage, UID)
        reference = dsutil.decode_dataset(encoded, syntax)
        expected, expected_warning = _by_pydicom(reference, uids.ColorPaletteStorage, UID)
        assert {k: fields[k] for k in expected} == expected, (ds.ContentLabel, syntax)
        assert warning == expected_warning
        assert fields["alternate_descriptions"] == validation._alternate_json(reference)
        # A data set whose values pydicom converted already reads the same.
        converted, _ = validation._index_fields(reference, None, None)
        assert converted == fields


def test_check_palette_data_as_check_palette_file(tmp_path) -> None:
    """A data set received in memory is validated as its Part 10 file is."""
    ds = hot_iron_copy(UID, "IN_MEMORY")
    syntax = uids.ExplicitVRLittleEndian
    data = dsutil.encode_dataset(ds, syntax)
    path = tmp_path / "p.dcm"
    meta = dsutil.build_file_meta(uids.ColorPaletteStorage, UID, syntax)
    path.write_bytes(dsutil.encode_file_header(meta) + data)
    assert validation.check_palette_data(data, syntax, uids.ColorPaletteStorage, UID) == validation.check_palette_file(path)
    refused = validation.check_palette_data(data, syntax, uids.ColorPaletteStorage, UID + ".9")
    assert isinstance(refused, validation.IngestResult) and refused.status == validation.DATASET_DOES_NOT_MATCH
    garbled = validation.check_palette_data(data[:-7], syntax, uids.ColorPaletteStorage, UID)
    assert isinstance(garbled, validation.IngestResult) and garbled.status == validation.CANNOT_UNDERSTAND


def _through_pydicom(data: bytes, syntax: str, meta_class: str, meta_instance: str) -> tuple[dict, str]:
    return validation._index_fields(dsutil.decode_dataset(data, syntax), meta_class or None, meta_instance or None)


def test_scanned_columns_equal_decoded_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit VR Little Endian data sets are read by ``rawscan`` (no
    pydicom object): the same columns as the decoded data set's, for every
    palette pydicom ships (Latin-1 alternates among them) and the variants
    above; those the scan leaves out (an ISO 2022 or GB18030 character set)
    are still read, through pydicom."""
    from pydicom.data import get_palette_files

    syntax = uids.ExplicitVRLittleEndian
    cases = []
    for path in sorted(get_palette_files("*.dcm")):
        part = dsutil.open_part10(path)
        cases.append((bytes(part.dataset_bytes()), part.sop_class_uid, part.sop_instance_uid, True))
        part.close()
    for ds in _variants():
        charset = ds.get("SpecificCharacterSet")
        plain = charset in (None, "ISO_IR 100", "ISO_IR 192")
        cases.append((dsutil.encode_dataset(ds, syntax), uids.ColorPaletteStorage, UID, plain))
    for data, meta_class, meta_instance, scanned in cases:
        expected = _through_pydicom(data, syntax, meta_class, meta_instance)
        assert validation.checked_data(data, syntax, meta_class, meta_instance) == expected
        elements = validation.rawscan.scan(data)
        assert elements is not None
        if scanned:
            assert validation._scanned_fields(elements, meta_class, meta_instance) == expected
        else:
            with pytest.raises(validation._Unplain):
                validation._scanned_fields(elements, meta_class, meta_instance)


def test_scan_leaves_refusals_and_the_unusual_to_pydicom() -> None:
    """What the scan does not take (a refusal, undefined lengths, a UN
    element) gets pydicom's answer, the same status and comment."""
    syntax = uids.ExplicitVRLittleEndian
    no_label = dsutil.encode_dataset(hot_iron_copy(UID, "X", ContentLabel=""), syntax)
    refused = validation.check_palette_data(no_label, syntax, uids.ColorPaletteStorage, UID)
    assert isinstance(refused, validation.IngestResult) and "Content Label" in refused.comment
    wrong_meta = validation.check_palette_data(
        dsutil.encode_dataset(hot_iron_copy(UID, "X"), syntax), syntax, uids.ColorPaletteStorage, UID + ".1"
    )
    assert isinstance(wrong_meta, validation.IngestResult) and "Instance UID" in wrong_meta.comment
    # A sequence and an item of undefined length (PS3.5 7.5.1, 7.5.2), by hand.
    ds = hot_iron_copy(UID, "UNDEFINED")
    del ds.AlternateContentDescriptionSequence
    data = dsutil.encode_dataset(ds, syntax)
    sequence = (b"\x70\x00\x87\x00SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
                + b"\x70\x00\x81\x00LO\x04\x00Kept" + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
                + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")  # fmt: skip
    tail = data.index(b"\x70\x00\x80\x00")  # (0070,0080) onwards; (0070,0087) sorts after 0084
    after = data.index(b"\x70\x00\x84\x00", tail)
    end = after + 8 + int.from_bytes(data[after + 6 : after + 8], "little")
    spliced = data[:end] + sequence + data[end:]
    elements = validation.rawscan.scan(spliced)
    assert elements is not None and elements[0x00700087] == ("SQ", [{0x00700081: ("LO", b"Kept")}])
    assert validation.checked_data(spliced, syntax, uids.ColorPaletteStorage, UID) == _through_pydicom(
        spliced, syntax, uids.ColorPaletteStorage, UID
    )
    # Undefined length on anything but a sequence or an item: the scan declines.
    assert validation.rawscan.scan(b"\x09\x00\x10\x10UN\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") is None


# ------------------------------------------------ text in C, against pydicom
# Bytes that make text interesting: padding, the value separator, JSON's
# escapes, control characters, ESC (ISO 2022), Latin-1 and UTF-8 letters and
# bytes no codec decodes.
_TEXT_BYTES = st.lists(
    st.sampled_from([b"a", b"Z", b"0", b".", b" ", b"\x00", b"\\", b'"', b"\n", b"\x01", b"\x7f", b"\x1b",
                     b"\xe9", b"\xc3\xa9", b"\xff", b"^", b"="]),
    max_size=12,
).map(b"".join)
_CHARSETS = {None: "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8", "GB18030": None}


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element with a 2-byte length (PS3.5 7.1.2), made by hand."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _decoded_like_a_store(tag: int, vr: str, value: bytes, charset: str | None) -> Dataset:
    """A data set of one element (and ``charset``), encoded by hand and
    decoded by chromanet's codec: its elements raw, as a received store's
    are, for pydicom to convert."""
    data = b"" if charset is None else _element(0x00080005, "CS", charset.encode() + b" " * (len(charset) % 2))
    data += _element(tag, vr, value)
    return dsutil.decode_dataset(data, uids.ExplicitVRLittleEndian)


@settings(max_examples=300, deadline=None)
@given(value=_TEXT_BYTES, vr=st.sampled_from(["SH", "LO", "PN", "CS", "UI"]), charset=st.sampled_from(list(_CHARSETS)))
def test_plain_text_is_pydicoms_text(value: bytes, vr: str, charset: str | None) -> None:
    """``_dataset.plain_text`` gives what pydicom's conversion gives, or
    declines; it declines only what pydicom must read (ESC, bytes the
    codec cannot decode, no single codec). So does ``_plain_text``, its
    Python twin for decoded data sets."""
    from chromanet import _dataset

    value = value if len(value) % 2 == 0 else value + b" "
    codec = _CHARSETS[charset]
    text = _dataset.plain_text((vr, value), codec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _decoded_like_a_store(0x00700081, vr, value, charset)
        raw = ds.get_item(0x00700081)  # before pydicom converts it in place
        try:
            expected = validation._text_or_none(ds, 0x00700081)
        except UnicodeDecodeError:  # pydicom cannot read it: neither may we
            assert text is None
            return
    if text is not None:
        assert text == expected
    # The same rules in Python, for data sets the codec decoded (implicit VR).
    from_decoded = validation._plain_text(raw, charset in validation._ASCII_SAFE_CHARSETS)
    assert from_decoded is None or from_decoded == expected
    if vr == "UI":
        decodes = all(c in b"0123456789.\\" for c in value.rstrip(b" \x00"))
    else:
        decodes = value.isascii() if vr == "CS" else codec is not None and _decodes(value, codec)
    assert (text is not None) == (b"\x1b" not in value and decodes)


def _decodes(value: bytes, codec: str) -> bool:
    try:
        value.decode(codec)
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(
        st.tuples(
            st.one_of(st.none(), _TEXT_BYTES),
            st.one_of(st.none(), st.lists(st.tuples(*[st.one_of(st.none(), _TEXT_BYTES)] * 4), max_size=2)),
        ),
        max_size=3,
    ),
    charset=st.sampled_from(list(_CHARSETS)),
)
def test_text_json_is_the_json_of_pydicoms_elements(items: list[Any], charset: str | None) -> None:
    """The alternates' JSON built in C (``_dataset.text_json``) is the text
    built from pydicom's own JSON of each element, or it declines (and the
    store is read through pydicom)."""
    from pydicom.dataelem import DataElement
    from pydicom.sequence import Sequence

    from chromanet import _dataset

    def even(value: bytes) -> bytes:
        return value if len(value) % 2 == 0 else value + b" "

    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    sequence = []
    for description, codes in items:
        item = Dataset()
        if description is not None:
            item.add(DataElement(m.CONTENT_DESCRIPTION, "LO", even(description)))
        if codes is not None:
            code_items = []
            for values in codes:
                code = Dataset()
                for (tag, vr), value in zip(m.CODE_ITEM_KEYS.items(), values):
                    if value is not None:
                        code.add(DataElement(tag, vr, even(value)))
                code_items.append(code)
            item.add(DataElement(m.LANGUAGE_CODE_SEQUENCE, "SQ", Sequence(code_items)))
        sequence.append(item)
    ds.add(DataElement(m.ALTERNATE_CONTENT_DESCRIPTION_SEQUENCE, "SQ", Sequence(sequence)))
    data = dsutil.encode_dataset(ds, uids.ExplicitVRLittleEndian)
    elements = validation.rawscan.scan(data)
    assert elements is not None
    text = _dataset.text_json(elements[m.ALTERNATE_CONTENT_DESCRIPTION_SEQUENCE][1], validation._ALTERNATE_KEYS,
                              _CHARSETS[charset])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = validation._alternate_json(dsutil.decode_dataset(data, uids.ExplicitVRLittleEndian))
        except Exception:  # pydicom cannot make JSON of it: neither may we
            assert text is None
            return
    if text is not None:
        assert text == expected
    values = [v for d, codes in items for v in [d, *(x for c in codes or () for x in c)] if v is not None]
    codec = _CHARSETS[charset]
    plain = all(codec is not None and b"\x1b" not in v and _decodes(v, codec) for v in values)
    assert (text is not None) == plain
