"""The Part 10 file meta header (PS3.10 7.1) as ``dsutil.encode_file_header``
writes it without pydicom's writer for what ``build_file_meta`` makes (once
per received C-STORE): the same bytes as pydicom's ``write_file_meta_info``
(group length first, tags ascending, explicit VR little endian, UI values
padded with NUL and SH with a space to an even length, PS3.5 6.2); any
other file meta group is still written by pydicom. Read back by
``parse_part10`` (any group length; a lying or cut one refused) and by
``open_part10`` from a file: read whole when small, mapped when large, and
to its end even when it grew after its size was taken."""

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


# ------------------------------------------------------------ reading it back
_DATASET = b"\x08\x00\x16\x00UI\x04\x001.2\x00"  # one element after the group 0002


def _file_with_private_meta(private_length: int) -> bytes:
    """A Part 10 image whose file meta group holds a (0002,0102) Private
    Information of ``private_length`` bytes before the Transfer Syntax UID
    (out of tag order, so that the UID comes after it), then a data set."""
    meta = dsutil.build_file_meta(uids.ColorPaletteStorage, "1.2.3.4", uids.ExplicitVRLittleEndian)
    header = dsutil.encode_file_header(meta)
    private = b"\x02\x00\x02\x01OB\x00\x00" + private_length.to_bytes(4, "little") + b"\x5a" * private_length
    syntax = b"\x02\x00\x10\x00UI\x14\x00" + uids.ExplicitVRLittleEndian.encode().ljust(20, b"\x00")
    return header + private + syntax + _DATASET


@pytest.mark.parametrize("private_length", [0, 100, (1 << 16) - 200, 1 << 16, (1 << 16) + 7, 200_000])
@pytest.mark.parametrize("holder", [bytes, bytearray])
def test_a_file_meta_group_of_any_length_is_read_whole(private_length: int, holder: type) -> None:
    # bytes are parsed in place; anything else (a mapped file) from a copy
    # of its start, or of all of it when the group runs past that start.
    data = _file_with_private_meta(private_length)
    part = dsutil.parse_part10(memoryview(holder(data)))
    assert (part.sop_class_uid, part.sop_instance_uid, part.transfer_syntax) == (
        uids.ColorPaletteStorage, "1.2.3.4", uids.ExplicitVRLittleEndian)  # fmt: skip
    assert bytes(part.dataset_bytes()) == _DATASET


@pytest.mark.parametrize("holder", [bytes, bytearray])
def test_a_lying_or_cut_file_meta_group_is_refused(holder: type) -> None:
    data = _file_with_private_meta(100)
    private_at = data.index(b"\x02\x00\x02\x01OB")
    lying = bytearray(data)
    lying[private_at + 8 : private_at + 12] = (1 << 31).to_bytes(4, "little")  # claims 2 GiB
    with pytest.raises(dsutil.NotPart10Error, match="overruns"):
        dsutil.parse_part10(memoryview(holder(lying)))
    with pytest.raises(dsutil.NotPart10Error, match="truncated"):
        dsutil.parse_part10(memoryview(holder(data[: private_at + 10])))  # inside a long VR's header
    with pytest.raises(dsutil.NotPart10Error, match="DICM"):
        dsutil.parse_part10(memoryview(holder(b"\x00" * 128 + b"DICX" + data[132:])))
    no_syntax = dsutil.encode_file_header(dsutil.build_file_meta(uids.ColorPaletteStorage, "1.2", "1.2.840.10008.1.2.1"))
    cut_before_syntax = no_syntax[: no_syntax.index(b"\x02\x00\x10\x00")]
    with pytest.raises(dsutil.NotPart10Error, match="Transfer Syntax"):
        dsutil.parse_part10(memoryview(holder(cut_before_syntax)))


# ------------------------------------------------------------ from a file
def test_open_part10_reads_a_small_file_whole_and_a_large_one_mapped(tmp_path) -> None:
    small = _file_with_private_meta(100)
    large = _file_with_private_meta(100)[: -len(_DATASET)] + b"\x09\x00\x10\x00OB\x00\x00" + (
        (1 << 20).to_bytes(4, "little") + b"\x01" * (1 << 20))  # fmt: skip
    for data, mapped in ((small, False), (large, True)):
        path = tmp_path / "f.dcm"
        path.write_bytes(data)
        part = dsutil.open_part10(path)
        try:
            assert (part.path, part.sop_instance_uid) == (path, "1.2.3.4")
            assert bytes(part.data) == data
            assert (type(part.data.obj).__name__ == "mmap") == mapped
        finally:
            part.close()
    path.write_bytes(small[:131])
    with pytest.raises(dsutil.NotPart10Error, match="too short"):
        dsutil.open_part10(path)
    with pytest.raises(FileNotFoundError):
        dsutil.open_part10(tmp_path / "missing.dcm")


def test_a_file_that_grew_since_its_size_was_taken_is_read_to_its_end(tmp_path) -> None:
    import os

    path = tmp_path / "grown"
    path.write_bytes(b"x" * 5000)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert dsutil._read_all(fd, 300) == b"x" * 5000  # fstat said 300 bytes
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert dsutil._read_all(fd, 5000) == b"x" * 5000
    finally:
        os.close(fd)
