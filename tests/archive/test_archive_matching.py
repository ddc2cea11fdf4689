"""C-FIND matching of the palette archive, key by key (PS3.4 Table X.6-1, C.2.2.2).

The archive holds the eight well-known palettes and copies of Hot Iron with
labels chosen to catch the usual mistakes: SQL LIKE characters (``%``,
``_``) and GLOB's ``[`` that are literal in DICOM, lower case, non-ASCII
return values in ISO_IR 100 and ISO_IR 192, a palette without return keys.

One body, two backends: every test that takes the ``archive`` fixture runs
against the embedded SQLite index and against PostgreSQL (a throwaway
cluster, ``helpers.postgres``), whose SQL renders the same matching plan
(GLOB there, LIKE with escapes here).
"""

from __future__ import annotations

import struct
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from chromanet import dsutil, uids
from chromanet.archive import IdentifierError, PaletteArchive
from chromanet.archive.index import IndexRow

from helpers.data import hot_iron_copy
from helpers.postgres import SyncPgArchive

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

HOT_IRON = "1.2.840.10008.1.5.1"
PET = "1.2.840.10008.1.5.2"
HOT_METAL_BLUE = "1.2.840.10008.1.5.3"
PET_20_STEP = "1.2.840.10008.1.5.4"
SPRING = "1.2.840.10008.1.5.5"
SUMMER = "1.2.840.10008.1.5.6"
FALL = "1.2.840.10008.1.5.7"
WINTER = "1.2.840.10008.1.5.8"
SEEDED = {HOT_IRON, PET, HOT_METAL_BLUE, PET_20_STEP, SPRING, SUMMER, FALL, WINTER}
SEEDED_LABELS = {
    HOT_IRON: "HOT_IRON", PET: "PET", HOT_METAL_BLUE: "HOT_METAL_BLUE", PET_20_STEP: "PET_20_STEP",
    SPRING: "SPRING LUT", SUMMER: "SUMMER LUT", FALL: "FALL LUT", WINTER: "WINTER LUT",
}  # fmt: skip

ROOT = "1.2.826.0.1.3680043.10.1234."
COPY = ROOT + "1"  # HOT_IRON_COPY
PERCENT = ROOT + "2"  # 50%_OFF
PERCENT_X = ROOT + "3"  # 50X_OFF: what "50%_OFF" would match as a LIKE pattern
BRACKET = ROOT + "4"  # A[B]C
LOWER = ROOT + "5"  # lower case
HOTX = ROOT + "6"  # HOTXIRON: what "HOT_IRON" would match as a LIKE pattern
UTF8 = ROOT + "7"  # UTF-8 description
LATIN1 = ROOT + "8"  # Latin-1 creator's name
BARE = ROOT + "9"  # no description, creator or alternate descriptions
EXTRA = {COPY, PERCENT, PERCENT_X, BRACKET, LOWER, HOTX, UTF8, LATIN1, BARE}
ALL = SEEDED | EXTRA


def _palette(uid: str, label: str, **changes: object) -> Dataset:
    return hot_iron_copy(uid, label, **{"PaletteColorLookupTableUID": uid, **changes})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PaletteArchive:
    if request.param == "postgresql":
        arch = SyncPgArchive(request.getfixturevalue("postgres").create_database())
    else:
        arch = PaletteArchive.open(tmp_path_factory.mktemp("archive"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extras = [
            _palette(COPY, "HOT_IRON_COPY"),
            _palette(PERCENT, "50%_OFF"),
            _palette(PERCENT_X, "50X_OFF"),
            _palette(BRACKET, "A[B]C"),
            _palette(LOWER, "lower case"),
            _palette(HOTX, "HOTXIRON"),
            _palette(UTF8, "UTF8 PALETTE", SpecificCharacterSet="ISO_IR 192", ContentDescription="Palette für Ärzte ✓"),
            _palette(LATIN1, "LATIN1 PALETTE", SpecificCharacterSet="ISO_IR 100", ContentCreatorName="Müller^Jürgen"),
            _palette(
                BARE, "BARE", ContentDescription=None, ContentCreatorName=None, AlternateContentDescriptionSequence=None
            ),
        ]
        for ds in extras:
            result = arch.ingest_dataset(ds)
            assert result.status == 0x0000, result
    yield arch
    arch.close()


def ident(**keys: object) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


# (identifier keys, matched SOP Instance UIDs, pending status)
CASES = {
    # Content Label: universal
    "label-empty-universal": (dict(ContentLabel=""), ALL, 0xFF00),
    "label-star-universal": (dict(ContentLabel="*"), ALL, 0xFF00),
    "label-stars-universal": (dict(ContentLabel="**"), ALL, 0xFF00),
    "no-keys": (dict(), ALL, 0xFF00),
    # Content Label: single value, case sensitive, spaces not significant (CS)
    "label-single": (dict(ContentLabel="HOT_IRON"), {HOT_IRON}, 0xFF00),
    "label-single-space": (dict(ContentLabel="FALL LUT"), {FALL}, 0xFF00),
    "label-single-padded": (dict(ContentLabel=" PET "), {PET}, 0xFF00),
    "label-case-upper-vs-lower": (dict(ContentLabel="hot_iron"), set(), 0xFF00),
    "label-case-lower": (dict(ContentLabel="lower case"), {LOWER}, 0xFF00),
    "label-case-lower-vs-upper": (dict(ContentLabel="LOWER CASE"), set(), 0xFF00),
    "label-no-match": (dict(ContentLabel="NOPE"), set(), 0xFF00),
    # Content Label: wild cards at start, middle, end; ?; combinations
    "label-star-end": (dict(ContentLabel="HOT*"), {HOT_IRON, HOT_METAL_BLUE, COPY, HOTX}, 0xFF00),
    "label-star-start": (dict(ContentLabel="*LUT"), {SPRING, SUMMER, FALL, WINTER}, 0xFF00),
    "label-star-middle": (dict(ContentLabel="PET*STEP"), {PET_20_STEP}, 0xFF00),
    "label-star-both": (dict(ContentLabel="*METAL*"), {HOT_METAL_BLUE}, 0xFF00),
    "label-question-end": (dict(ContentLabel="PE?"), {PET}, 0xFF00),
    "label-question-start": (dict(ContentLabel="?ET"), {PET}, 0xFF00),
    "label-question-middle": (dict(ContentLabel="HOT?IRON"), {HOT_IRON, HOTX}, 0xFF00),
    "label-question-star": (dict(ContentLabel="?U*R LUT"), {SUMMER}, 0xFF00),
    "label-wildcard-case": (dict(ContentLabel="hot*"), set(), 0xFF00),
    # characters special to SQL or GLOB are literal
    "underscore-literal": (dict(ContentLabel="HOT_IRON*"), {HOT_IRON, COPY}, 0xFF00),
    "percent-literal": (dict(ContentLabel="50%_OFF"), {PERCENT}, 0xFF00),
    "percent-literal-wild": (dict(ContentLabel="50%*"), {PERCENT}, 0xFF00),
    "percent-question": (dict(ContentLabel="50?_OFF"), {PERCENT, PERCENT_X}, 0xFF00),
    "bracket-literal": (dict(ContentLabel="A[B]C"), {BRACKET}, 0xFF00),
    "bracket-literal-wild": (dict(ContentLabel="A[*"), {BRACKET}, 0xFF00),
    "bracket-not-a-class": (dict(ContentLabel="[AH]*"), set(), 0xFF00),
    # SOP Instance UID: single value, list of UID, never wild
    "uid-single": (dict(SOPInstanceUID=WINTER), {WINTER}, 0xFF00),
    "uid-list": (dict(SOPInstanceUID=[WINTER, PET, "1.2.3.999"]), {WINTER, PET}, 0xFF00),
    "uid-unknown": (dict(SOPInstanceUID="1.2.3.999"), set(), 0xFF00),
    "uid-empty-universal": (dict(SOPInstanceUID=""), ALL, 0xFF00),
    "uid-no-wildcard": (dict(SOPInstanceUID="1.2.840.10008.1.5.*"), set(), 0xFF00),
    "uid-and-label": (dict(SOPInstanceUID=[HOT_IRON, PET], ContentLabel="HOT*"), {HOT_IRON}, 0xFF00),
    # SOP Class UID: single value
    "class-palette": (dict(SOPClassUID=uids.ColorPaletteStorage), ALL, 0xFF00),
    "class-other": (dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.2"), set(), 0xFF00),
    "class-empty": (dict(SOPClassUID=""), ALL, 0xFF00),
    # return-only keys: zero length is fine; a value is not matched -> 0xFF01
    "return-keys": (
        dict(ContentDescription="", ContentCreatorName="", AlternateContentDescriptionSequence=[]),
        ALL,
        0xFF00,
    ),
    "return-key-with-value": (dict(ContentLabel="PET", ContentDescription="nothing like it*"), {PET}, 0xFF01),
    # keys outside Table X.6-1 -> returned empty, 0xFF01
    "unsupported-key": (dict(ContentLabel="PET", PatientName=""), {PET}, 0xFF01),
    "unsupported-key-with-value": (dict(ContentLabel="PET", Modality="CT"), {PET}, 0xFF01),
    # Specific Character Set and Timezone Offset are not keys
    "charset-not-a-key": (dict(SpecificCharacterSet="ISO_IR 192", ContentLabel="PET"), {PET}, 0xFF00),
}


@pytest.mark.parametrize("keys,expected,status", CASES.values(), ids=CASES.keys())
def test_find_matches(archive: PaletteArchive, keys: dict, expected: set, status: int) -> None:
    identifier = ident(**keys)
    result = archive.find(identifier)
    assert set(result.sop_instance_uids) == expected
    assert result.count == len(expected)
    assert result.status_pending == status
    requested = {int(e.tag) for e in identifier} - {0x00080005}
    for ds in result.matches:
        returned = {int(e.tag) for e in ds} - {0x00080005}
        assert returned == requested  # exactly the requested keys


# (identifier keys, failure status, offending tag)
FAILURES = {
    "query-retrieve-level": (dict(QueryRetrieveLevel="IMAGE", ContentLabel=""), 0xA900, 0x00080052),
    "query-retrieve-level-empty": (dict(QueryRetrieveLevel=""), 0xA900, 0x00080052),
    "label-two-values": (dict(ContentLabel=["PET", "FALL LUT"]), 0xA900, 0x00700080),
    "class-two-values": (dict(SOPClassUID=[uids.ColorPaletteStorage, "1.2.3"]), 0xA900, 0x00080016),
    "sequence-two-items": (
        dict(AlternateContentDescriptionSequence=[Dataset(), Dataset()]),
        0xA900,
        0x00700087,
    ),
}


@pytest.mark.parametrize("keys,status,tag", FAILURES.values(), ids=FAILURES.keys())
def test_find_refuses(archive: PaletteArchive, keys: dict, status: int, tag: int) -> None:
    with pytest.raises(IdentifierError) as info:
        archive.find(ident(**keys))
    assert info.value.status == status
    assert info.value.offending_tags == (tag,)
    assert len(info.value.comment) <= 64


def _implicit_element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


# Identifiers (Implicit VR Little Endian bytes, as received) with a sequence
# that cannot be decoded: pydicom converts a sequence only when it is first
# read, so these pass the engine's decode and reach the archive.
_CUT_ITEM_HEADER = b"\xfe\xff\x00\xe0\x00\x00"  # 6 of an item's 8 header bytes
UNDECODABLE = {
    "item-header-cut-short": (0x00700087, _implicit_element(0x0070, 0x0087, _CUT_ITEM_HEADER)),
    "element-in-item-runs-past-it": (
        0x00700087,
        _implicit_element(
            0x0070, 0x0087, b"\xfe\xff\x00\xe0" + struct.pack("<I", 12) + struct.pack("<HHI", 0x0070, 0x0086, 80) + b"ABCD"
        ),
    ),
    "language-code-sequence-in-item": (
        0x00700087,
        _implicit_element(
            0x0070, 0x0087,
            b"\xfe\xff\x00\xe0" + struct.pack("<I", 14) + _implicit_element(0x0008, 0x0006, _CUT_ITEM_HEADER),
        ),
    ),
    "unsupported-sequence-key": (0x00081115, _implicit_element(0x0008, 0x1115, _CUT_ITEM_HEADER)),
}


@pytest.mark.parametrize("tag,data", UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_find_refuses_an_identifier_it_cannot_decode(archive: PaletteArchive, tag: int, data: bytes) -> None:
    """0xC310 (the request identifier could not be decoded) naming the
    element, not an exception out of the handler (0xC311 and a traceback
    in the node's log for every such request a peer sends)."""
    identifier = dsutil.decode_dataset(_implicit_element(0x0070, 0x0080, b"") + data, uids.ImplicitVRLittleEndian)
    with pytest.raises(IdentifierError) as info:
        archive.find(identifier)
    assert info.value.status == 0xC310
    assert info.value.offending_tags == (tag,)
    assert len(info.value.comment) <= 64


@pytest.mark.parametrize("uid,label", sorted(SEEDED_LABELS.items()))
def test_seeded_labels(archive: PaletteArchive, uid: str, label: str) -> None:
    result = archive.find(ident(ContentLabel=label, SOPInstanceUID="", SOPClassUID=""))
    (ds,) = list(result.matches)
    assert ds.SOPInstanceUID == uid
    assert ds.ContentLabel == label
    assert ds.SOPClassUID == uids.ColorPaletteStorage


def test_returned_values(archive: PaletteArchive) -> None:
    (ds,) = archive.find(
        ident(ContentLabel="FALL*", ContentDescription="", ContentCreatorName="", PatientName="")
    ).matches
    assert ds.ContentLabel == "FALL LUT"
    assert ds.ContentDescription == "Fall LUT"
    assert str(ds.ContentCreatorName) == "Philips"
    assert ds["PatientName"].VR == "PN" and ds["PatientName"].is_empty
    assert "SpecificCharacterSet" not in ds  # all ASCII


def test_absent_return_keys_are_zero_length(archive: PaletteArchive) -> None:
    (ds,) = archive.find(
        ident(ContentLabel="BARE", ContentDescription="", ContentCreatorName="", AlternateContentDescriptionSequence=[])
    ).matches
    assert ds["ContentDescription"].is_empty
    assert ds["ContentCreatorName"].is_empty
    assert ds["AlternateContentDescriptionSequence"].VR == "SQ"
    assert len(ds.AlternateContentDescriptionSequence) == 0


def test_sequence_whole(archive: PaletteArchive) -> None:
    for request in ([], [Dataset()]):
        (ds,) = archive.find(ident(ContentLabel="FALL LUT", AlternateContentDescriptionSequence=request)).matches
        items = ds.AlternateContentDescriptionSequence
        assert [i.ContentDescription for i in items] == ["Automne LUT", "Herbst LUT"]
        assert [i.LanguageCodeSequence[0].CodeValue for i in items] == ["fr", "de"]
        assert items[0].LanguageCodeSequence[0].CodingSchemeDesignator == "RFC3066"


def test_sequence_sub_keys(archive: PaletteArchive) -> None:
    item = ident(ContentDescription="")
    code = ident(CodeValue="")
    item.LanguageCodeSequence = Sequence([code])
    result = archive.find(ident(ContentLabel="WINTER LUT", AlternateContentDescriptionSequence=[item]))
    assert result.status_pending == 0xFF00
    (ds,) = result.matches
    first = ds.AlternateContentDescriptionSequence[0]
    assert set(first.keys()) == {0x00080006, 0x00700081}
    assert set(first.LanguageCodeSequence[0].keys()) == {0x00080100}
    assert first.ContentDescription == "Hiver LUT"


def test_sequence_item_value_not_matched(archive: PaletteArchive) -> None:
    item = ident(ContentDescription="Hiver*")
    result = archive.find(ident(ContentLabel="*LUT", AlternateContentDescriptionSequence=[item]))
    assert result.status_pending == 0xFF01
    assert result.count == 4  # not used for matching


def test_charset_utf8_palette(archive: PaletteArchive) -> None:
    (ds,) = archive.find(ident(SOPInstanceUID=UTF8, ContentDescription="")).matches
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.ContentDescription == "Palette für Ärzte ✓"
    raw = dsutil.encode_dataset(ds, uids.ExplicitVRLittleEndian)
    assert "Palette für Ärzte ✓".encode("utf-8") in raw
    assert dsutil.decode_dataset(raw, uids.ExplicitVRLittleEndian).ContentDescription == "Palette für Ärzte ✓"


def test_charset_latin1_palette(archive: PaletteArchive) -> None:
    # no request character set: the palette's own (ISO_IR 100)
    (ds,) = archive.find(ident(SOPInstanceUID=LATIN1, ContentCreatorName="")).matches
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    raw = dsutil.encode_dataset(ds, uids.ImplicitVRLittleEndian)
    assert "Müller^Jürgen".encode("latin-1") in raw
    # a UTF-8 request gets UTF-8
    (ds,) = archive.find(ident(SpecificCharacterSet="ISO_IR 192", SOPInstanceUID=LATIN1, ContentCreatorName="")).matches
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert "Müller^Jürgen".encode("utf-8") in dsutil.encode_dataset(ds, uids.ImplicitVRLittleEndian)


def test_charset_latin1_request_cannot_encode_utf8_value(archive: PaletteArchive) -> None:
    # "✓" is not in Latin-1: the palette's own character set (UTF-8) is used
    (ds,) = archive.find(ident(SpecificCharacterSet="ISO_IR 100", SOPInstanceUID=UTF8, ContentDescription="")).matches
    assert ds.SpecificCharacterSet == "ISO_IR 192"


def test_match_in_request_charset(archive: PaletteArchive) -> None:
    # The request is decoded with its character set; matching is on Unicode.
    ds = ident(SpecificCharacterSet="ISO_IR 100", ContentLabel="LATIN1*")
    raw = dsutil.encode_dataset(ds, uids.ExplicitVRLittleEndian)
    decoded = dsutil.decode_dataset(raw, uids.ExplicitVRLittleEndian)
    assert archive.find(decoded).sop_instance_uids == [LATIN1]


def test_decoded_wire_identifier(archive: PaletteArchive) -> None:
    # As the service layer hands it over: decoded from Implicit VR bytes.
    ds = ident(ContentLabel="HOT*", SOPInstanceUID="", ContentDescription="", AlternateContentDescriptionSequence=[])
    decoded = dsutil.decode_dataset(dsutil.encode_dataset(ds, uids.ImplicitVRLittleEndian), uids.ImplicitVRLittleEndian)
    result = archive.find(decoded)
    assert set(result.sop_instance_uids) == {HOT_IRON, HOT_METAL_BLUE, COPY, HOTX}
    assert result.status_pending == 0xFF00


@pytest.mark.parametrize("syntax", [uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian, uids.ExplicitVRBigEndian])
@pytest.mark.parametrize(
    "keys",
    [
        dict(SOPClassUID="", SOPInstanceUID="", ContentLabel="", ContentDescription="", ContentCreatorName=""),
        dict(ContentLabel="*", PatientName="", PatientID="", AlternateContentDescriptionSequence=[]),
        dict(SpecificCharacterSet="ISO_IR 192", ContentLabel="", ContentCreatorName=""),
        # ASCII values returned from palettes with other texts outside ASCII:
        # the encoder's fast path, no Specific Character Set.
        dict(SOPInstanceUID="", ContentLabel=""),
    ],
    ids=["model-keys", "unsupported-and-sequence", "charset", "uid-and-label"],
)
def test_encoded_equals_dataset_path(archive: PaletteArchive, syntax: str, keys: dict) -> None:
    result = archive.find(ident(**keys))
    fast = list(result.encoded(syntax))
    slow = [dsutil.encode_dataset(ds, syntax) for ds in result.matches]
    assert fast == slow
    assert len(fast) == len(ALL)


def test_find_result_iterates_status_pairs(archive: PaletteArchive) -> None:
    pairs = list(archive.find(ident(ContentLabel="PET*", PatientID="")))
    assert [status for status, _ in pairs] == [0xFF01, 0xFF01]


def test_empty_archive(tmp_path: Path) -> None:
    with PaletteArchive.open(tmp_path, seed=False) as empty:
        for keys in (dict(), dict(ContentLabel="*"), dict(SOPInstanceUID=HOT_IRON), dict(PatientName="")):
            result = empty.find(ident(**keys))
            assert result.count == 0
            assert list(result.matches) == []
        assert empty.find(ident(PatientName="")).status_pending == 0xFF01


def test_timing_10000_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not asserted: prints the cost of a 10,000-match C-FIND."""
    with PaletteArchive.open(tmp_path, seed=False) as big:
        big.index.upsert_many(
            IndexRow(
                f"{ROOT}100.{n}", uids.ColorPaletteStorage, uids.ExplicitVRLittleEndian, f"{n}.dcm", 1000,
                f"LABEL_{n:05d}", f"Description {n}", "Creator^Name", None, None, True,
            )  # fmt: skip
            for n in range(10_000)
        )
        identifier = ident(SOPClassUID="", SOPInstanceUID="", ContentLabel="LABEL*", ContentDescription="", ContentCreatorName="")
        t0 = time.perf_counter()
        result = big.find(identifier)
        t1 = time.perf_counter()
        datasets = list(result.matches)
        t2 = time.perf_counter()
        encoded = list(result.encoded(uids.ImplicitVRLittleEndian))
        t3 = time.perf_counter()
        slow = [dsutil.encode_dataset(ds, uids.ImplicitVRLittleEndian) for ds in datasets]
        t4 = time.perf_counter()
        assert result.count == len(datasets) == len(encoded) == 10_000
        assert encoded[:50] == slow[:50]
        with capsys.disabled():
            print(
                f"\n10,000-match C-FIND: query {1e3 * (t1 - t0):.1f} ms; Datasets {1e3 * (t2 - t1):.1f} ms; "
                f"encoded fast path {1e3 * (t3 - t2):.1f} ms; pydicom encode of the Datasets {1e3 * (t4 - t3):.1f} ms"
            )


# ------------------------------------- raw identifiers read without pydicom
_KEY_TEXT = st.text(alphabet=st.sampled_from(list("ABC xyz*?.19-\\\x00")), max_size=24)


@settings(max_examples=300, deadline=None)
@given(
    syntax=st.sampled_from([uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian, uids.ExplicitVRBigEndian]),
    values=st.fixed_dictionaries(
        {},
        optional={
            "SOPInstanceUID": _KEY_TEXT,
            "SOPClassUID": _KEY_TEXT,
            "ContentLabel": _KEY_TEXT,
            "ContentDescription": _KEY_TEXT,
            "ContentCreatorName": st.text(alphabet="AB^", max_size=8),
            "SpecificCharacterSet": st.sampled_from(["", "ISO_IR 100", "ISO_IR 192"]),
            "PatientID": _KEY_TEXT,
        },
    ),
)
def test_plan_of_raw_identifier_is_the_plan_of_converted_one(syntax: str, values: dict[str, str]) -> None:
    """plan_find reads simple raw text elements itself (``matching._plain``):
    the plan, or the failure, is the same as from the elements pydicom
    converts, for values with padding, NULs, backslashes (several values)
    and wild cards, in the three encodings."""
    from chromanet.archive import matching

    source = Dataset()
    for keyword, value in values.items():
        raw = value.encode("ascii")
        tag = Tag(keyword)
        source[tag] = DataElement(tag, dictionary_VR(tag), raw)  # bytes: written as they are
    encoded = dsutil.encode_dataset(source, syntax)
    decoded = dsutil.decode_dataset(encoded, syntax)
    converted = Dataset()
    other = dsutil.decode_dataset(encoded, syntax)  # reading an element converts it in place
    for tag in other.keys():
        converted[tag] = other[tag]  # pydicom's conversion of the raw element

    def outcome(identifier: Dataset) -> object:
        try:
            return matching.plan_find(identifier)
        except IdentifierError as exc:
            return (exc.status, str(exc), tuple(exc.offending_tags))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's value checks of odd generated values
        ours = list(matching._elements(decoded))
        # read by plan_find itself (empty ones come from the decoder converted)
        assert all(type(e) is matching._Plain for e in ours if e.VR in ("UI", "CS", "LO") and e.value)
        assert outcome(decoded) == outcome(converted)
        assert [int(e.tag) for e in ours] == [int(e.tag) for e in converted]
        for mine, theirs in zip(ours, converted):
            assert mine.VR == theirs.VR
            assert [str(v) for v in matching._values(mine)] == [str(v) for v in matching._values(theirs)]
