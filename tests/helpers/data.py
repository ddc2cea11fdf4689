"""Test data: where it lives, pydicom's palette files, and pydicom's own
encoding and decoding as the reference chromanet's bytes are held to."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from chromanet import uids

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "tests" / "data"


def palette_paths() -> list[Path]:
    """pydicom's eight well-known Color Palette files, sorted by path."""
    from pydicom.data import get_palette_files

    files = sorted(Path(f) for f in get_palette_files("*.dcm"))
    assert len(files) == 8, files
    return files


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file (everything after group 0002),
    read with pydicom's own file meta reader (not chromanet's)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path, "rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        return fp.read()


def pydicom_decode(data: bytes, transfer_syntax: str) -> Any:
    """pydicom's decode of a data set in Implicit or Explicit VR LE."""
    from pydicom.filereader import read_dataset

    if transfer_syntax not in (uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian):
        raise ValueError(transfer_syntax)
    return read_dataset(io.BytesIO(data), transfer_syntax == uids.ImplicitVRLittleEndian, True)


def pydicom_encode(dataset: Any, transfer_syntax: str) -> bytes:
    """pydicom's own encoding of ``dataset`` (no file meta) in Implicit or
    Explicit VR Little Endian: the reference chromanet's bytes are held to."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    if transfer_syntax not in (uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian):
        raise ValueError(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = transfer_syntax == uids.ImplicitVRLittleEndian
    buffer.is_little_endian = True
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def hot_iron_copy(uid: str, label: str, **changes: Any) -> Any:
    """A pydicom Dataset: Hot Iron under another SOP Instance UID and Content
    Label, without file meta; ``changes`` set (None: delete) attributes."""
    import pydicom
    from pydicom.data import get_palette_files

    ds = pydicom.dcmread(get_palette_files("hotiron.dcm")[0])
    del ds.file_meta
    ds.SOPInstanceUID = uid
    ds.ContentLabel = label
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write_part10(ds: Any, path: Path, syntax: str = uids.ExplicitVRLittleEndian) -> Path:
    """``ds`` as a Part 10 file at ``path``, encoded by chromanet."""
    from chromanet import dsutil

    meta = dsutil.build_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, syntax)
    path.write_bytes(dsutil.encode_file_header(meta) + dsutil.encode_dataset(ds, syntax))
    return path


def find_uids(archive: Any, **keys: object) -> set[str]:
    """The SOP Instance UIDs an archive's C-FIND matches for these keys."""
    from pydicom import Dataset

    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return set(archive.find(ds).sop_instance_uids)


def locate_ds(value: object) -> Any:
    """A C-GET/C-MOVE identifier holding only SOP Instance UID ``value``."""
    from pydicom import Dataset

    ds = Dataset()
    ds.SOPInstanceUID = value
    return ds
