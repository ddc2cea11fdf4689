"""Data sets on the wire: encode and decode by transfer syntax, Part 10 files.

pydicom is the data model; this module is the only place where chromanet
turns bytes into Datasets and back. Encoded data sets travel untouched when
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
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset, write_file_meta_info

from chromanet import uids

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


def decode_dataset(data: Any, transfer_syntax: str) -> Dataset:
    """Decode an encoded data set (bytes-like) in ``transfer_syntax``."""
    implicit, little, deflated = _syntax(transfer_syntax)
    raw = bytes(data)
    if deflated:
        raw = zlib.decompress(raw, -zlib.MAX_WBITS)
    return read_dataset(io.BytesIO(raw), implicit, little)


def encode_dataset(dataset: Dataset, transfer_syntax: str) -> bytes:
    """Encode ``dataset`` (without file meta) in ``transfer_syntax``."""
    implicit, little, deflated = _syntax(transfer_syntax)
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
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = uids.IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = uids.IMPLEMENTATION_VERSION_NAME
    return meta


def encode_file_header(meta: FileMetaDataset) -> bytes:
    """The 128-byte preamble, "DICM" and the group 0002 elements."""
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
    elements); ``data`` maps the file read-only, so ``data[dataset_offset:]``
    can be sent without reading the file into memory.
    """

    path: Path | None
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


def open_part10(path: str | os.PathLike[str]) -> Part10File:
    """Map a Part 10 file read-only and read its file meta group."""
    path = Path(path)
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < 132:
            raise NotPart10Error(f"{path}: too short for a DICOM file")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    try:
        return parse_part10(view, path)
    except BaseException:
        view.release()
        mapped.close()
        raise


def parse_part10(view: memoryview, path: Path | None = None) -> Part10File:
    """Read the file meta group (Explicit VR LE) of a Part 10 image in memory."""
    size = len(view)
    if size < 132 or bytes(view[128:132]) != b"DICM":
        raise NotPart10Error(f"{path or 'data'}: no DICM prefix")
    values: dict[int, bytes] = {}
    offset = 132
    try:
        while offset + 8 <= size:
            group, element = struct.unpack_from("<HH", view, offset)
            if group != 0x0002:
                break
            vr = bytes(view[offset + 4 : offset + 6])
            if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
                (length,) = struct.unpack_from("<I", view, offset + 8)
                header = 12
            else:
                (length,) = struct.unpack_from("<H", view, offset + 6)
                header = 8
            start = offset + header
            if start + length > size:
                raise NotPart10Error(f"{path or 'data'}: file meta element overruns the data")
            values[element] = bytes(view[start : start + length])
            offset = start + length
    except struct.error as exc:
        raise NotPart10Error(f"{path or 'data'}: truncated file meta") from exc

    def text(element: int) -> str:
        return values.get(element, b"").rstrip(b"\x00 ").decode("ascii", "replace")

    transfer_syntax = text(0x0010)
    if not transfer_syntax:
        raise NotPart10Error(f"{path or 'data'}: no Transfer Syntax UID in the file meta")
    return Part10File(path, text(0x0002), text(0x0003), transfer_syntax, offset, view)


# ------------------------------------------------------ structural check
# Value representations of PS3.5 6.2, and those with a 4-byte length field
# in explicit VR (PS3.5 7.1.2).
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
_MAX_DEPTH = 32
# A deflated data set is inflated (to check it) up to this size.
_MAX_INFLATED = 1 << 30


class EncodingError(ValueError):
    """A data set is not well formed in its transfer syntax (at ``offset``)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.offset = offset


def check_encoding(data: Any, transfer_syntax: str) -> None:
    """Raise EncodingError unless ``data`` is a well-formed data set in
    ``transfer_syntax``: every element header readable, every VR one of
    PS3.5's (explicit VR), every length inside the data, sequences and items
    closed as they were opened. (Tags out of order break PS3.5 7.1 too, but
    readers take them, and a well-known palette pydicom ships has them.)
    Values are not decoded: this costs a walk over the element headers, not
    a parse. Catches, e.g., Implicit VR bytes sent on an Explicit VR context.
    """
    implicit, little, deflated = _syntax(transfer_syntax)
    view = memoryview(data).cast("B")
    if deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(view, _MAX_INFLATED)
        except zlib.error as exc:
            raise EncodingError(f"cannot inflate: {exc}", 0) from None
        if inflater.unconsumed_tail:
            raise EncodingError(f"inflates to more than {_MAX_INFLATED} bytes", 0)
        view = memoryview(raw)
    walker = _Walker(view, implicit, little)
    walker.dataset(0, len(view), 0, until_item_end=False)


class _Walker:
    __slots__ = ("view", "implicit", "tag_format", "u16", "u32")

    def __init__(self, view: memoryview, implicit: bool, little: bool) -> None:
        self.view = view
        self.implicit = implicit
        order = "<" if little else ">"
        self.tag_format = struct.Struct(order + "HH")
        self.u16 = struct.Struct(order + "H")
        self.u32 = struct.Struct(order + "I")

    def header(self, pos: int, end: int) -> tuple[int, int, bytes | None, int, int]:
        """(group, element, VR or None, value length, value offset)."""
        if end - pos < 8:
            raise EncodingError("truncated element header", pos)
        group, element = self.tag_format.unpack_from(self.view, pos)
        if group == 0xFFFE or self.implicit:
            return group, element, None, self.u32.unpack_from(self.view, pos + 4)[0], pos + 8
        vr = bytes(self.view[pos + 4 : pos + 6])
        if vr not in _VRS:
            raise EncodingError(f"({group:04X},{element:04X}) has no valid VR ({vr!r})", pos + 4)
        if vr in _LONG_VRS:
            if end - pos < 12:
                raise EncodingError("truncated element header", pos)
            return group, element, vr, self.u32.unpack_from(self.view, pos + 8)[0], pos + 12
        return group, element, vr, self.u16.unpack_from(self.view, pos + 6)[0], pos + 8

    def dataset(self, pos: int, end: int, depth: int, until_item_end: bool) -> int:
        """Walk elements from ``pos``; returns where the data set ended."""
        if depth > _MAX_DEPTH:
            raise EncodingError(f"sequences nested deeper than {_MAX_DEPTH}", pos)
        while pos < end:
            group, element, vr, length, value = self.header(pos, end)
            if group == 0xFFFE:
                if until_item_end and element == _ITEM_END:
                    return value
                raise EncodingError(f"item tag (FFFE,{element:04X}) where an element is expected", pos)
            if length == _UNDEFINED:
                if vr is None or vr == b"SQ":
                    pos = self.sequence(value, end, depth)
                elif vr == b"UN":
                    # PS3.5 6.2.2: its content is encoded as Implicit VR LE.
                    pos = _Walker(self.view, True, True).sequence(value, end, depth)
                elif vr in (b"OB", b"OW"):
                    pos = self.fragments(value, end)
                else:
                    raise EncodingError(f"undefined length with VR {vr!r}", pos)
            elif length > end - value:
                raise EncodingError(f"({group:04X},{element:04X}) length {length} runs past the data", pos)
            elif vr == b"SQ":
                self.sequence_items(value, value + length, depth)
                pos = value + length
            else:
                pos = value + length
        if until_item_end:
            raise EncodingError("item without its delimitation item", pos)
        return pos

    def sequence(self, pos: int, end: int, depth: int) -> int:
        """Items of an undefined-length sequence, up to its delimiter."""
        while True:
            group, element, _vr, length, value = self.header(pos, end)
            if (group, element) == (0xFFFE, _SEQUENCE_END):
                return value
            pos = self.item(group, element, length, value, end, depth, pos)

    def sequence_items(self, pos: int, end: int, depth: int) -> None:
        while pos < end:
            group, element, _vr, length, value = self.header(pos, end)
            pos = self.item(group, element, length, value, end, depth, pos)

    def item(self, group: int, element: int, length: int, value: int, end: int, depth: int, at: int) -> int:
        if (group, element) != (0xFFFE, _ITEM):
            raise EncodingError(f"({group:04X},{element:04X}) where a sequence item is expected", at)
        if length == _UNDEFINED:
            return self.dataset(value, end, depth + 1, until_item_end=True)
        if length > end - value:
            raise EncodingError(f"item length {length} runs past the data", at)
        self.dataset(value, value + length, depth + 1, until_item_end=False)
        return value + length

    def fragments(self, pos: int, end: int) -> int:
        """Encapsulated pixel data: fragment items up to the delimiter."""
        while True:
            group, element, _vr, length, value = self.header(pos, end)
            if (group, element) == (0xFFFE, _SEQUENCE_END):
                return value
            if (group, element) != (0xFFFE, _ITEM) or length == _UNDEFINED or length > end - value:
                raise EncodingError("malformed encapsulated fragment", pos)
            pos = value + length


# ------------------------------------------------------ fast Datasets
def _dataset_maker() -> Any:
    """A function that makes a Dataset around a dict of elements as
    ``Dataset(elements)`` does, at a tenth of its cost.

    ``Dataset.__init__`` sets a dozen attributes through pydicom's own
    ``__setattr__`` (~10 us on the 2-core machine), which every decoded data
    set, sequence item and response status would pay. The maker copies the
    attributes of one Dataset made the ordinary way instead, giving each new
    one its own copies of the mutable ones. It is used only when a fresh
    Dataset has exactly the attributes it knows (pydicom 3.0's); for any
    other pydicom it is ``Dataset`` itself.
    """
    probe = Dataset()
    state = dict(probe.__dict__)
    known = {
        "_dict", "_is_implicit_VR", "_is_little_endian", "_parent_encoding", "_pixel_array",
        "_pixel_array_opts", "_pixel_id", "_private_blocks", "_read_charset", "_read_implicit",
        "_read_little", "is_decompressed", "is_undefined_length_sequence_item",
    }
    if set(state) != known or state["_private_blocks"] or state["_pixel_id"] or state["_dict"]:
        return Dataset
    del state["_dict"]
    pixel_options = dict(state["_pixel_array_opts"])
    new = object.__new__

    def make(elements: dict[Any, Any]) -> Dataset:
        ds = new(Dataset)
        attributes = ds.__dict__
        attributes.update(state)
        attributes["_dict"] = elements
        attributes["_private_blocks"] = {}
        attributes["_pixel_array_opts"] = dict(pixel_options)
        attributes["_pixel_id"] = {}
        return ds

    return make


#: ``new_dataset(elements)``: a Dataset around ``elements`` (a dict of tag ->
#: DataElement or RawDataElement), as ``Dataset(elements)`` makes it.
new_dataset = _dataset_maker()
