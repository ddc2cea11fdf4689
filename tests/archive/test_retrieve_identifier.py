"""The SOP Instance UIDs a C-GET / C-MOVE identifier asks for
(``matching.retrieve_uids``, PS3.4 X.4.2 / X.4.3: SOP Instance UID the only
key, one UID or a list, no Query/Retrieve Level, Specific Character Set
tolerated; anything else 0xA900 with the offending tags).

An identifier as it arrives (decoded from bytes: raw elements that the
archive reads without pydicom's conversion) gives the same UIDs, or the
same refusal, as the same identifier built in Python; raw bytes that are
not ASCII are left to pydicom and still refused.
"""

from __future__ import annotations

import pytest
from pydicom import Dataset

from chromanet import dsutil, uids
from chromanet.archive import IdentifierError
from chromanet.archive.matching import retrieve_uids

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

SYNTAXES = [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian]


def outcome(identifier: Dataset) -> object:
    try:
        return retrieve_uids(identifier)
    except IdentifierError as error:
        return error.status, error.comment, error.offending_tags


def identifier(**keys: object) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


CASES = {
    "one": identifier(SOPInstanceUID="1.2.3.4"),
    "odd length, padded": identifier(SOPInstanceUID="1.2.3"),
    "a list, a duplicate": identifier(SOPInstanceUID=["1.2.3", "2.25.1234567", "1.2.3", "1.2.840.10008.1.5.1"]),
    "with a character set": identifier(SpecificCharacterSet="ISO_IR 100", SOPInstanceUID=["1.2.3", "1.2.4"]),
    "other keys": identifier(SOPInstanceUID="1.2.3", PatientID="X", ContentLabel="HOT"),
    "a level": identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID="1.2.3"),
    "a bad UID": identifier(SOPInstanceUID=["1.2.3", "1.02.3"]),
    "not a UID": identifier(SOPInstanceUID="1.2.x"),
    "empty": identifier(SOPInstanceUID=""),
    "an empty one in a list": identifier(SOPInstanceUID=["1.2.3", ""]),
    "none": identifier(PatientID="X"),
}


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_as_received_same_as_built(case: str, syntax: str) -> None:
    built = CASES[case]
    received = dsutil.decode_dataset(dsutil.encode_dataset(built, syntax), syntax)
    assert outcome(received) == outcome(built)


def test_what_the_cases_give() -> None:
    assert outcome(CASES["a list, a duplicate"]) == ["1.2.3", "2.25.1234567", "1.2.840.10008.1.5.1"]
    assert outcome(CASES["with a character set"]) == ["1.2.3", "1.2.4"]
    status, _, tags = outcome(CASES["other keys"])
    assert (status, tags) == (0xA900, (0x00100020, 0x00700080))  # in tag order
    for refused in ("a level", "a bad UID", "not a UID", "empty", "an empty one in a list", "none"):
        assert outcome(CASES[refused])[0] == 0xA900


def test_raw_bytes_that_are_not_ascii_are_refused() -> None:
    value = "1.2.3\\1.2.\u00e9".encode("latin-1") + b"\x00"
    element = b"\x08\x00\x18\x00UI" + len(value).to_bytes(2, "little") + value
    received = dsutil.decode_dataset(element, uids.ExplicitVRLittleEndian)
    status, _, tags = outcome(received)
    assert (status, tags) == (0xA900, (0x00080018,))
