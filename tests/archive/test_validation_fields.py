"""The index columns a store is validated into, read from the raw elements
(``archive/validation.py``), against the same columns read through pydicom's
conversion of every value (PS3.5 6.2 padding and multiple values, 6.1.2
character sets): for undecoded data sets in both little endian transfer
syntaxes and for data sets pydicom decoded."""

from __future__ import annotations

import pytest
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
