"""Data sets on the wire: encode and decode by transfer syntax, Part 10 files.

pydicom is the data model; this module is the only place where chromanet
turns bytes into Datasets and back, with the native codec (``chromanet._dataset``:
the Datasets pydicom's reader makes, the bytes pydicom's writer writes, pydicom
itself for what the codec does not do exactly). Encoded data sets travel untouched when
nothing needs to look inside them: a C-STORE sent from a file whose transfer
syntax matches the negotiated one is a memory map of the file, never decoded.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset, write_file_meta_info

from chromanet import _dataset, errors, uids

# transfer syntax UID -> (is implicit VR, is little endian, is deflated)
_SYNTAXES: dict[str, tuple[bool, bool, bool]] = {
    uids.ImplicitVRLittleEndian: (True, True, False),
    uids.ExplicitVRLittleEndian: (False, True, False),
    uids.ExplicitVRBigEndian: (False, False, False),
    uids.DeflatedExplicitVRLittleEndian: (False, True, True),
}


def _syntax(transfer_syntax: str) -> tuple[bool, bool, bool]:
    # Any other syntax (the compressed pixel ones) encodes the data set itself
    # as Explicit VR Little Endian.
    return _SYNTAXES.get(transfer_syntax, (False, True, False))


def is_native_syntax(transfer_syntax: str | None) -> bool:
    """True for the transfer syntaxes whose data sets (pixel data included)
    are plain values: the implicit and explicit VR ones and Deflated. A data
    set in one of them can be re-encoded in any other without loss; one in
    an encapsulated (compressed) syntax can only go out as it is."""
    return transfer_syntax in _SYNTAXES


def may_send_in(source_syntax: str | None, target_syntax: str) -> bool:
    """Whether a data set known to be in ``source_syntax`` (None: not known,
    taken as native) may go out in ``target_syntax``: the same syntax, or
    one native syntax into another."""
    if source_syntax == target_syntax:
        return True
    return (source_syntax is None or source_syntax in _SYNTAXES) and target_syntax in _SYNTAXES


_PIXEL_DATA = 0x7FE00010


def has_encapsulated_pixel_data(dataset: Dataset) -> bool:
    """Pixel Data of undefined length: fragments of a compressed syntax,
    whichever syntax the Dataset claims (its raw element is not converted)."""
    if _PIXEL_DATA not in dataset:
        return False
    return bool(getattr(dataset.get_item(_PIXEL_DATA), "is_undefined_length", False))


# The data set codec: chromanet._dataset (native) unless CHROMANET_PYDICOM_CODEC=1
# was set when this module was imported, or use_native_codec(False) was called.
_native = os.environ.get("CHROMANET_PYDICOM_CODEC", "") not in ("1", "true", "yes")


def use_native_codec(on: bool) -> None:
    """Switch between the native codec and pydicom's reader and writer (for
    benchmarks and debugging; both give the same Datasets and bytes)."""
    global _native
    _native = bool(on)


def native_codec() -> bool:
    return _native


def decode_dataset(data: Any, transfer_syntax: str) -> Dataset:
    """Decode an encoded data set (bytes-like) in ``transfer_syntax``.

    The structure is checked as by ``check_encoding`` (EncodingError), then
    the Dataset is what pydicom's ``read_dataset`` makes of the bytes.
    """
    implicit, little, deflated = _syntax(transfer_syntax)
    if deflated:
        data = _inflate(memoryview(data).cast("B"))
    if _native:
        decoded = _dataset.decode(data, implicit, little)
        if decoded is not None:
            return decoded
    else:
        _dataset.check(data, implicit, little)
    return read_dataset(io.BytesIO(bytes(data)), implicit, little)


def encode_dataset(dataset: Dataset, transfer_syntax: str) -> bytes:
    """Encode ``dataset`` (without file meta) in ``transfer_syntax``: the
    bytes pydicom's ``write_dataset`` writes."""
    implicit, little, deflated = _syntax(transfer_syntax)
    raw = _dataset.encode(dataset, implicit, little) if _native else None
    if raw is None:
        buffer = DicomBytesIO()
        buffer.is_implicit_VR = implicit
        buffer.is_little_endian = little
        write_dataset(buffer, dataset)
        raw = buffer.getvalue()
    if deflated:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        raw = compressor.compress(raw) + compressor.flush()
    return raw


def build_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> FileMetaDataset:
    # By tag (add_new), not by keyword: no keyword lookups, once per C-STORE received.
    meta = FileMetaDataset()
    meta.add_new(0x00020001, "OB", b"\x00\x01")  # File Meta Information Version
    meta.add_new(0x00020002, "UI", sop_class_uid)  # Media Storage SOP Class UID
    meta.add_new(0x00020003, "UI", sop_instance_uid)  # Media Storage SOP Instance UID
    meta.add_new(0x00020010, "UI", transfer_syntax)  # Transfer Syntax UID
    meta.add_new(0x00020012, "UI", uids.IMPLEMENTATION_CLASS_UID)  # Implementation Class UID
    meta.add_new(0x00020013, "SH", uids.IMPLEMENTATION_VERSION_NAME)  # Implementation Version Name
    return meta


# The file meta elements build_file_meta sets (PS3.10 7.1), their VRs and
# the byte a value of odd length is padded with (PS3.5 6.2).
_META_ELEMENTS = {
    0x00020001: (b"OB", b"\x00"),  # File Meta Information Version
    0x00020002: (b"UI", b"\x00"),  # Media Storage SOP Class UID
    0x00020003: (b"UI", b"\x00"),  # Media Storage SOP Instance UID
    0x00020010: (b"UI", b"\x00"),  # Transfer Syntax UID
    0x00020012: (b"UI", b"\x00"),  # Implementation Class UID
    0x00020013: (b"SH", b" "),  # Implementation Version Name
}
_META_REQUIRED = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012)


def _plain_file_header(meta: FileMetaDataset) -> bytes | None:
    """``encode_file_header`` without pydicom's writer, for a file meta group
    of the elements above with plain values (what ``build_file_meta`` makes,
    once per received C-STORE): the same bytes as pydicom writes (group
    length first, tags ascending, explicit VR little endian, odd values
    padded). None for anything else (pydicom then writes it)."""
    tags = sorted(meta.keys())
    if not all(tag in _META_ELEMENTS for tag in tags) or not all(tag in meta for tag in _META_REQUIRED):
        return None
    body = bytearray()
    for tag in tags:
        value = meta[tag].value
        vr, pad = _META_ELEMENTS[tag]
        if vr == b"OB":
            if not isinstance(value, bytes):
                return None
            raw = value
        elif isinstance(value, str) and value.isascii() and "\\" not in value:
            raw = value.encode("ascii")
        else:
            return None
        if len(raw) % 2:
            raw += pad
        if vr == b"OB":
            body += struct.pack("<HH2sHI", 0x0002, tag & 0xFFFF, vr, 0, len(raw))
        elif len(raw) > 0xFFFF:
            return None
        else:
            body += struct.pack("<HH2sH", 0x0002, tag & 0xFFFF, vr, len(raw))
        body += raw
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + bytes(body)


def file_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """``encode_file_header(build_file_meta(...))``: the same bytes, made
    from the three UIDs directly (once per received C-STORE: building a
    FileMetaDataset costs pydicom's element machinery six times)."""
    body = bytearray(struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01")
    for element, value, vr in (
        (0x0002, sop_class_uid, b"UI"),
        (0x0003, sop_instance_uid, b"UI"),
        (0x0010, transfer_syntax, b"UI"),
        (0x0012, uids.IMPLEMENTATION_CLASS_UID, b"UI"),
        (0x0013, uids.IMPLEMENTATION_VERSION_NAME, b"SH"),
    ):
        if not value.isascii() or "\\" in value or len(value) > 0xFFFE:
            return encode_file_header(build_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax))
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += b" " if vr == b"SH" else b"\x00"
        body += struct.pack("<HH2sH", 0x0002, element, vr, len(raw))
        body += raw
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + bytes(body)


def encode_file_header(meta: FileMetaDataset) -> bytes:
    """The 128-byte preamble, "DICM" and the group 0002 elements."""
    plain = _plain_file_header(meta)
    if plain is not None:
        return plain
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = False
    buffer.is_little_endian = True
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


@dataclass
class Part10File:
    """A DICOM file on disk, its header parsed, its data set left encoded.

    ``dataset_offset`` is where the data set starts (after the group 0002
    elements); ``data`` holds a small file's bytes, or maps a large one
    read-only, so that ``data[dataset_offset:]`` can be sent without
    reading a large file into memory.
    """

    path: str | os.PathLike[str] | None  # as given to open_part10
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    data: memoryview

    def dataset_bytes(self) -> memoryview:
        return self.data[self.dataset_offset :]

    def close(self) -> None:
        """Unmap now if nothing else still uses the data; otherwise the map
        goes away with its last user (a slice the transport still holds)."""
        obj = self.data.obj
        try:
            self.data.release()
            if isinstance(obj, mmap.mmap):
                obj.close()
        except BufferError:
            pass


class NotPart10Error(ValueError):
    """The file has no DICM prefix or no usable group 0002."""


# Files up to this size are read, larger ones mapped: for a small file one
# read costs less than a mapping and its unmapping (which, in a process with
# other threads, makes every core flush its TLB).
_READ_WHOLE = 1 << 20


def open_part10(path: str | os.PathLike[str]) -> Part10File:
    """Open a Part 10 file (read whole if small, else mapped read-only) and
    read its file meta group."""
    # A bare descriptor: open, fstat, one read and close are all the system
    # calls a small file costs (a file object's readall adds two fstats, an
    # lseek and a read that finds the end).
    fd = os.open(path, _OPEN_FLAGS)
    try:
        size = os.fstat(fd).st_size
        if size < 132:
            raise NotPart10Error(f"{path}: too short for a DICOM file")
        if size <= _READ_WHOLE:
            return parse_part10(memoryview(_read_all(fd, size)), path)
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    view = memoryview(mapped)
    try:
        return parse_part10(view, path)
    except BaseException:
        view.release()
        mapped.close()
        raise


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _read_all(fd: int, size: int) -> bytes:
    """The file's bytes to its end, ``size`` (its fstat size) expected: a
    read of one byte more that comes back short has met the end (a regular
    file reads short only there); a file that grew meanwhile is read on."""
    data = os.read(fd, size + 1)
    if len(data) <= size:
        return data
    parts = [data]
    while True:
        more = os.read(fd, 1 << 16)
        if not more:
            return b"".join(parts)
        parts.append(more)


# The file meta group is read from a bytes copy of at most this much of a
# large (mapped) file's start; one longer than that is read from all of it.
_META_PEEK = 1 << 16
# Explicit VRs with a 4-byte length after two reserved bytes (PS3.5 7.1.2)
# that a file meta element may have.
_LONG_META_VRS = frozenset((b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"))
# The file meta elements read: Media Storage SOP Class UID, SOP Instance
# UID, Transfer Syntax UID.
_META_READ = frozenset((0x0002, 0x0003, 0x0010))
# An explicit VR little endian element header: group, element, VR and the
# 2-byte length (the 4-byte one of a long VR follows two reserved bytes).
_META_ELEMENT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")


def parse_part10(view: memoryview, path: str | os.PathLike[str] | None = None) -> Part10File:
    """Read the file meta group (Explicit VR LE) of a Part 10 image in memory."""
    size = len(view)
    whole = view.obj
    if type(whole) is bytes and len(whole) == size:
        head, partial = whole, False  # the view is all of a bytes object: no copy
    else:
        head, partial = bytes(view[:_META_PEEK]), size > _META_PEEK
    if size < 132 or head[128:132] != b"DICM":
        raise NotPart10Error(f"{path or 'data'}: no DICM prefix")
    read = _file_meta_values(head, partial, path)
    if read is None:  # the group runs past the peek: read it from all of the data
        read = _file_meta_values(bytes(view), False, path)
    assert read is not None
    offset, values = read

    def text(element: int) -> str:
        return values.get(element, b"").rstrip(b"\x00 ").decode("ascii", "replace")

    transfer_syntax = text(0x0010)
    if not transfer_syntax:
        raise NotPart10Error(f"{path or 'data'}: no Transfer Syntax UID in the file meta")
    return Part10File(path, text(0x0002), text(0x0003), transfer_syntax, offset, view)


def _file_meta_values(head: bytes, partial: bool, path: Any) -> tuple[int, dict[int, bytes]] | None:
    """(offset of the data set, the values of ``_META_READ``) from the group
    0002 elements after the preamble in ``head``; None when ``head`` is only
    the start of the data (``partial``) and ends inside that group."""
    size = len(head)
    values: dict[int, bytes] = {}
    offset = 132
    element_at = _META_ELEMENT.unpack_from
    while offset + 8 <= size:
        group, element, vr, length = element_at(head, offset)
        if group != 0x0002:
            break  # the first element after the group 0002
        if vr in _LONG_META_VRS:
            if offset + 12 > size:
                if partial:
                    return None
                raise NotPart10Error(f"{path or 'data'}: truncated file meta")
            (length,) = _LONG_LENGTH.unpack_from(head, offset + 8)
            start = offset + 12
        else:
            start = offset + 8
        if start + length > size:
            if partial:
                return None
            raise NotPart10Error(f"{path or 'data'}: file meta element overruns the data")
        if element in _META_READ:
            values[element] = head[start : start + length]
        offset = start + length
    else:
        if partial:
            return None  # the peek ended at an element boundary inside the group
    return offset, values


# ------------------------------------------------------ structural check
# A deflated data set is inflated (to check it) up to this size.
_MAX_INFLATED = 1 << 30

# One class for both: the codec raises it, callers catch dsutil.EncodingError.
EncodingError = errors.EncodingError


def _inflate(view: memoryview) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(view, _MAX_INFLATED)
    except zlib.error as exc:
        raise EncodingError(f"cannot inflate: {exc}", 0) from None
    if inflater.unconsumed_tail:
        raise EncodingError(f"inflates to more than {_MAX_INFLATED} bytes", 0)
    return raw


def check_encoding(data: Any, transfer_syntax: str) -> None:
    """Raise EncodingError unless ``data`` is a well-formed data set in
    ``transfer_syntax``: every element header readable, every VR one of
    PS3.5's (explicit VR), every length inside the data, sequences and items
    closed as they were opened (the rules are listed in ``ext/_dataset.pyx``).
    (Tags out of order break PS3.5 7.1 too, but readers take them, and a
    well-known palette pydicom ships has them.) Values are not decoded: this
    costs a walk over the element headers, not a parse. Catches, e.g.,
    Implicit VR bytes sent on an Explicit VR context. ``decode_dataset`` does
    the same check as it decodes.
    """
    implicit, little, deflated = _syntax(transfer_syntax)
    view = memoryview(data).cast("B")
    if deflated:
        view = memoryview(_inflate(view))
    _dataset.check(view, implicit, little)


#: ``new_dataset(elements)``: a Dataset around ``elements`` (a dict of tag ->
#: DataElement or RawDataElement), as ``Dataset(elements)`` makes it at a
#: tenth of the cost: ``Dataset.__init__`` sets a dozen attributes through
#: pydicom's ``__setattr__`` (~10 us), which every response status would pay.
new_dataset = _dataset.new_dataset


def uid_of(dataset: Dataset, tag: int) -> str:
    """The UID value of ``tag`` in ``dataset`` as ``str(dataset[tag].value)``
    gives it, read straight from the raw element when it still is one (a
    C-STORE of a Dataset read from a file or the wire reads its SOP Class and
    Instance UIDs so, without pydicom's conversion, ~25 us each). Raises
    KeyError when the element is absent."""
    elements = getattr(dataset, "_dict", None)
    # pydicom's own element dict, read without Dataset.get_item's Tag()
    # conversion (a library-mode sub-operation asks for two UIDs).
    raw = elements.get(tag) if type(elements) is dict else dataset.get_item(tag)
    if raw is None:
        raise KeyError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) not in the data set")
    kind = type(raw)
    if kind is RawDataElement and type(raw.value) is bytes:
        text = raw.value.rstrip(b"\x00 ")
        if not text.translate(None, b"0123456789."):  # digits and dots: nothing else to strip or split
            return text.decode("ascii")
    elif kind is DataElement and raw.VR != "SQ":
        # What dataset[tag] returns for a converted element (it only
        # changes a sequence, whose items it ties to the data set).
        value = raw.value
        return "" if value is None else str(value)
    value = dataset[tag].value
    return "" if value is None else str(value)
