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


class StoredView:
    """What a node's SQLite archive at ``data_dir`` holds, read from outside
    the node (read-only, while it runs): its index rows, the instances kept
    in the index, and the files in ``files/``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import contextlib
        import sqlite3

        uri = f"file:{self.data_dir / 'index.sqlite3'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            return db.execute(sql, params).fetchall()

    def rows(self) -> dict[str, str | None]:
        """SOP Instance UID -> file name, None for an instance kept in the index."""
        return dict(self._query("SELECT sop_instance_uid, file_name FROM instance"))

    def files(self) -> list[str]:
        return sorted(p.name for p in (self.data_dir / "files").iterdir())

    def bytes_kept(self) -> int:
        """How many instances' bytes the index keeps (one per such row, if consistent)."""
        return int(self._query("SELECT count(*) FROM instance_data")[0][0])

    def part10(self, uid: str) -> bytes | None:
        """The stored Part 10 bytes of ``uid``, wherever kept, or None."""
        found = self._query(
            "SELECT i.file_name, d.data FROM instance i LEFT JOIN instance_data d ON d.id = i.data_id"
            " WHERE i.sop_instance_uid = ?",
            (uid,),
        )
        if not found:
            return None
        name, data = found[0]
        return (self.data_dir / "files" / name).read_bytes() if name is not None else bytes(data)

    def consistent(self) -> bool:
        """Every row's file is there and every file has its row; the index
        keeps bytes for exactly its rows without a file."""
        rows = self.rows()
        named = {name for name in rows.values() if name is not None}
        inline = sum(1 for name in rows.values() if name is None)
        return set(self.files()) == named and self.bytes_kept() == inline
