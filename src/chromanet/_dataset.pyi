"""Data sets to pydicom Datasets and back, in C (see ext/_dataset.pyx)."""

from typing import Any

from pydicom import Dataset

from chromanet.errors import EncodingError as EncodingError

def check(data: Any, implicit: bool, little: bool) -> None:
    """Raise EncodingError unless ``data`` (bytes-like) is a well-formed data
    set in the encoding given: headers inside the data, explicit VRs of PS3.5,
    lengths inside what contains them, sequences and items closed, at most 32
    levels of sequences, undefined length only where PS3.5 allows it."""

def decode(data: Any, implicit: bool, little: bool) -> Dataset | None:
    """The Dataset pydicom's ``read_dataset`` makes of ``data`` (checked as by
    ``check`` in the same walk), or None when pydicom must read it."""

def encode(dataset: Dataset, implicit: bool, little: bool) -> bytes | None:
    """The bytes pydicom's ``write_dataset`` writes for ``dataset``, or None
    when pydicom's writer must write it."""

def new_dataset(elements: dict[Any, Any]) -> Dataset:
    """A Dataset around ``elements`` (tag -> DataElement or RawDataElement), as
    ``Dataset(elements)`` makes it, without running ``Dataset.__init__``."""

def scan(data: Any) -> dict[int, Any] | None:
    """The top-level elements of an Explicit VR Little Endian data set that
    ``check`` passed, by tag: (VR, value) with the value bytes up to 256
    bytes and a memoryview beyond, or ("SQ", [item dicts]); None where the
    general decoder must read it (``chromanet.archive.rawscan``)."""

def plain_text(entry: tuple[str, Any], codec: str | None) -> str | None:
    """The text pydicom's conversion gives for a scanned element (``(VR,
    value)`` from ``scan``), several values joined by "\\", for the data
    set's one ASCII-compatible ``codec`` (None: its character set has
    none): CS and UI as ASCII whatever the character set, PN, SH and LO in
    ``codec``, padding stripped as pydicom strips it; None for anything
    else (the caller asks pydicom)."""

def text_json(items: list[dict[int, Any]], keys: dict[int, Any], codec: str | None) -> str | None:
    """DICOM JSON of the text elements ``keys`` (tag -> None for SH/LO, or
    the keys of a sequence's items) of scanned ``items``: the text
    ``json.dumps(..., ensure_ascii=False)`` gives for pydicom's
    ``to_json_dict`` of each element, one object per item; None when
    something is not plain."""
