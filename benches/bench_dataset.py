"""Data set codec: chromanet._dataset (native) vs pydicom's reader and writer.

Two data sets, each decoded and encoded both ways, in one run; each
pytest-benchmark group holds the native and the pydicom row, so the ratio is
in the table:

- a Color Palette C-FIND identifier (PS3.4 X.6.1.1.3: 8 keys, one with a
  sequence of one item), Implicit VR Little Endian, as an SCU sends it and
  an SCP decodes it;
- pydicom's ``hotiron.dcm`` palette data set (4.4 KB, Explicit VR Little
  Endian), as a C-GET handler yields it and the SCU decodes it; and the
  same sent in Implicit VR Little Endian (``palette-4k-implicit``).

Both sides go through ``dsutil.decode_dataset`` / ``encode_dataset``, switched
with ``dsutil.use_native_codec``: the pydicom rows are pydicom's
``read_dataset`` (after chromanet's structural check, which decode_dataset
always does) and ``write_dataset``. Encode starts from a Dataset built in
Python (identifier) or read by ``dcmread`` in the same encoding (palette), as
handlers make them.

Run: ``.venv/bin/python -m pytest benches/bench_dataset.py --benchmark-only``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_palette_files
from pydicom.sequence import Sequence

from chromanet import dsutil, uids

IMPLICIT = uids.ImplicitVRLittleEndian
EXPLICIT = uids.ExplicitVRLittleEndian


def identifier() -> Dataset:
    item = Dataset()
    item.ContentDescription = "Hot Iron"
    item.LanguageCodeSequence = Sequence([])
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "PALETTE"
    ds.SOPClassUID = ""
    ds.SOPInstanceUID = "1.2.840.10008.1.5.1"
    ds.ContentLabel = "HOT_IRON"
    ds.ContentDate = ""
    ds.ContentTime = ""
    ds.AlternateContentDescriptionSequence = Sequence([item])
    return ds


def palette() -> Dataset:
    (path,) = get_palette_files("hotiron.dcm")
    return dcmread(path)


CASES: dict[str, tuple[Callable[[], Dataset], str]] = {
    "cfind-identifier": (identifier, IMPLICIT),
    "palette-4k": (palette, EXPLICIT),
    # Library mode's W4 (benches/e2e.py): the same palette sent on an
    # Implicit VR Little Endian context (raw elements re-headed, the others
    # converted by the first encode, as pydicom's writer converts them).
    "palette-4k-implicit": (palette, IMPLICIT),
}


@pytest.fixture(params=["native", "pydicom"])
def codec(request: Any) -> Iterator[str]:
    dsutil.use_native_codec(request.param == "native")
    try:
        yield request.param
    finally:
        dsutil.use_native_codec(True)


def test_both_codecs_agree() -> None:
    for make, syntax in CASES.values():
        dsutil.use_native_codec(False)
        theirs = dsutil.encode_dataset(make(), syntax)
        dsutil.use_native_codec(True)
        assert dsutil.encode_dataset(make(), syntax) == theirs
        assert dsutil.encode_dataset(dsutil.decode_dataset(theirs, syntax), syntax) == theirs


@pytest.mark.parametrize("case", list(CASES))
def test_decode(benchmark: Any, codec: str, case: str) -> None:
    make, syntax = CASES[case]
    data = dsutil.encode_dataset(make(), syntax)
    benchmark.group = f"dataset-decode-{case}"
    ds = benchmark(dsutil.decode_dataset, data, syntax)
    assert ds.SOPInstanceUID


@pytest.mark.parametrize("case", list(CASES))
def test_encode(benchmark: Any, codec: str, case: str) -> None:
    make, syntax = CASES[case]
    dataset = make()
    expected = dsutil.encode_dataset(make(), syntax)
    benchmark.group = f"dataset-encode-{case}"
    assert benchmark(dsutil.encode_dataset, dataset, syntax) == expected
