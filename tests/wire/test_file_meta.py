"""The Part 10 file meta header (PS3.10 7.1) as ``dsutil.encode_file_header``
writes it without pydicom's writer for what ``build_file_meta`` makes (once
per received C-STORE): the same bytes as pydicom's ``write_file_meta_info``
(group length first, tags ascending, explicit VR little endian, UI values
padded with NUL and SH with a space to an even length, PS3.5 6.2); any
other file meta group is still written by pydicom."""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from chromanet import dsutil, uids


def by_pydicom(meta) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = False
    buffer.is_little_endian = True
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.34", "2.25." + "7" * 38, "1.2.840.10008.1.5.1"])
@pytest.mark.parametrize("syntax", [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian, uids.DeflatedExplicitVRLittleEndian])
def test_same_bytes_as_pydicom(uid: str, syntax: str) -> None:
    meta = dsutil.build_file_meta(uids.ColorPaletteStorage, uid, syntax)
    assert dsutil.encode_file_header(meta) == by_pydicom(meta)
    part = dsutil.parse_part10(memoryview(dsutil.encode_file_header(meta)))
    assert (part.sop_class_uid, part.sop_instance_uid, part.transfer_syntax) == (uids.ColorPaletteStorage, uid, syntax)


def test_other_file_meta_groups_are_pydicoms() -> None:
    meta = dsutil.build_file_meta(uids.ColorPaletteStorage, "1.2.3", uids.ExplicitVRLittleEndian)
    meta.SourceApplicationEntityTitle = "ELSEWHERE"  # an element the plain writer does not know
    assert dsutil.encode_file_header(meta) == by_pydicom(meta)
    odd_version = dsutil.build_file_meta(uids.ColorPaletteStorage, "1.2.3", uids.ExplicitVRLittleEndian)
    odd_version.ImplementationVersionName = "ODD"
    assert dsutil.encode_file_header(odd_version) == by_pydicom(odd_version)
