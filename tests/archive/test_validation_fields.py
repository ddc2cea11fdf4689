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
