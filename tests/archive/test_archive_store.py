"""The palette archive's storage: seeding, restart, ingest, duplicates,
refusals, retrieve lookups, crash safety and ``verify()``, for instances
kept in files of their own (``inline_max=0``); ``test_archive_inline.py``
covers instances kept in the index."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread

from chromanet import uids
from chromanet.archive import (
    ArchiveBusyError,
    ArchiveVersionError,
    IdentifierError,
    PaletteArchive,
    WELL_KNOWN_PALETTE_UIDS,
)
from chromanet.archive import index as index_module
from chromanet.archive.index import SCHEMA_VERSION, Index, IndexRow
from chromanet.archive.seed import well_known_palette_files
from helpers.data import find_uids, locate_ds, hot_iron_copy
from helpers.durability import DURABILITIES, STORE_STEPS, mode_steps

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

NEW_UID = "1.2.826.0.1.3680043.10.1234.77"
HOT_IRON = "1.2.840.10008.1.5.1"


def palette(uid: str = NEW_UID, label: str = "MY_PALETTE", **changes: object) -> Dataset:
    return hot_iron_copy(uid, label, **changes)


def listing(archive: PaletteArchive) -> list[str]:
    return sorted(os.listdir(archive.files_dir))


@pytest.fixture(params=DURABILITIES)
def archive(tmp_path: Path, request: pytest.FixtureRequest):
    arch = PaletteArchive.open(tmp_path / "data", durability=request.param, inline_max=0)
    yield arch
    arch.close()


def test_seed_idempotent_and_restart(tmp_path: Path) -> None:
    with PaletteArchive.open(tmp_path, inline_max=0) as first:
        assert len(first) == 8
        assert {i.sop_instance_uid for i in first.locate(locate_ds(sorted(WELL_KNOWN_PALETTE_UIDS)))} == set(
            WELL_KNOWN_PALETTE_UIDS
        )
        files = listing(first)
    with PaletteArchive.open(tmp_path, inline_max=0) as second:
        assert len(second) == 8
        assert listing(second) == files
        assert second.verify().ok
        assert (tmp_path / "index.sqlite3").exists()
        mode = sqlite3.connect(tmp_path / "index.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_seeded_files_are_the_pydicom_files(archive: PaletteArchive) -> None:
    for path in well_known_palette_files():
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        stored = archive.get(uid)
        assert stored is not None
        assert stored.path.read_bytes() == path.read_bytes()
        assert stored.size == path.stat().st_size
        assert stored.transfer_syntax == uids.ExplicitVRLittleEndian
        assert stored.sop_class_uid == uids.ColorPaletteStorage


def test_ingest_dataset_findable_and_locatable_after_restart(tmp_path: Path) -> None:
    with PaletteArchive.open(tmp_path, inline_max=0) as arch:
        result = arch.ingest_dataset(palette(), uids.ImplicitVRLittleEndian)
        assert result.status == 0x0000 and result.ok
        assert result.path == arch.files_dir / f"{NEW_UID}.dcm"
    with PaletteArchive.open(tmp_path, inline_max=0) as arch:
        assert find_uids(arch, ContentLabel="MY_*") == {NEW_UID}
        (stored,) = arch.locate(locate_ds(NEW_UID))
        assert stored.transfer_syntax == uids.ImplicitVRLittleEndian
        assert stored.size == stored.path.stat().st_size
        back = dcmread(stored.path)
        assert back.ContentLabel == "MY_PALETTE"
        assert back.file_meta.MediaStorageSOPInstanceUID == NEW_UID


def test_ingest_file_moves_the_spooled_file(archive: PaletteArchive, tmp_path: Path) -> None:
    spooled = tmp_path / "spool.dcm"
    _write_part10(palette(), spooled)
    result = archive.ingest_file(spooled)
    assert result.status == 0x0000
    assert not spooled.exists()
    assert archive.get(NEW_UID).path.exists()
    assert archive.verify().ok


def _write_part10(ds: Dataset, path: Path, syntax: str = uids.ExplicitVRLittleEndian) -> None:
    from chromanet import dsutil

    meta = dsutil.build_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, syntax)
    path.write_bytes(dsutil.encode_file_header(meta) + dsutil.encode_dataset(ds, syntax))


def test_ingest_file_copy_leaves_the_source(archive: PaletteArchive, tmp_path: Path) -> None:
    source = tmp_path / "source.dcm"
    _write_part10(palette(), source)
    assert archive.ingest_file(source, move=False).status == 0x0000
    assert source.exists()


def test_duplicate_replaces(archive: PaletteArchive) -> None:
    first = archive.ingest_dataset(palette(label="FIRST"))
    second = archive.ingest_dataset(palette(label="SECOND"))
    assert first.status == second.status == 0x0000
    assert first.path != second.path
    assert not first.path.exists()  # the replaced version is gone
    assert find_uids(archive, ContentLabel="FIRST") == set()
    assert find_uids(archive, ContentLabel="SECOND") == {NEW_UID}
    assert len(archive) == 9
    assert dcmread(archive.get(NEW_UID).path).ContentLabel == "SECOND"
    assert archive.verify().ok
    third = archive.ingest_dataset(palette(label="THIRD"))  # and back to the plain name
    assert third.ok and archive.verify().ok and len(listing(archive)) == 9


def test_well_known_palette_is_never_replaced(archive: PaletteArchive) -> None:
    before = archive.get(HOT_IRON).path.read_bytes()
    result = archive.ingest_dataset(palette(uid=HOT_IRON, label="EVIL"))
    # Not stored, and the status says so (0x0124 Refused: Not Authorized).
    assert result.status == 0x0124 and not result.ok and "not stored" in result.comment
    assert archive.get(HOT_IRON).path.read_bytes() == before
    assert find_uids(archive, ContentLabel="EVIL") == set()
    assert archive.verify().ok


def test_refusals(archive: PaletteArchive, tmp_path: Path) -> None:
    ct = palette()
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    cases = {
        "other SOP class": (archive.ingest_dataset(ct), 0xA900),
        "no label": (archive.ingest_dataset(palette(label="")), 0xA900),
        "no descriptors": (archive.ingest_dataset(palette(RedPaletteColorLookupTableDescriptor=None)), 0xA900),
        "no LUT data": (archive.ingest_dataset(palette(RedPaletteColorLookupTableData=None)), 0xA900),
        "bad UID": (archive.ingest_dataset(palette(uid="1.2.03.x")), 0xA900),
    }
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 200)
    cases["not part 10"] = (archive.ingest_file(garbage), 0xC000)
    mismatch = tmp_path / "mismatch.dcm"
    _write_part10(palette(), mismatch)
    data = bytearray(mismatch.read_bytes())
    at = data.index(NEW_UID.encode())  # the file meta's Media Storage SOP Instance UID
    data[at + len(NEW_UID) - 1 : at + len(NEW_UID)] = b"8"
    mismatch.write_bytes(bytes(data))
    cases["meta mismatch"] = (archive.ingest_file(mismatch), 0xA900)
    for name, (result, status) in cases.items():
        assert result.status == status, (name, result)
        assert not result.ok and result.comment and len(result.comment) <= 64
    assert garbage.exists() and mismatch.exists()  # a refused file stays with its owner
    assert len(archive) == 8
    assert archive.verify().ok and len(listing(archive)) == 8


def test_missing_icc_profile_is_a_warning(archive: PaletteArchive) -> None:
    result = archive.ingest_dataset(palette(ICCProfile=None))
    assert result.status == 0xB007 and result.ok and "ICC" in result.comment
    assert find_uids(archive, SOPInstanceUID=NEW_UID) == {NEW_UID}


def test_locate(archive: PaletteArchive) -> None:
    archive.ingest_dataset(palette())
    found = archive.locate(locate_ds([NEW_UID, "1.2.3.4", HOT_IRON, NEW_UID]))
    assert [i.sop_instance_uid for i in found] == [NEW_UID, HOT_IRON]
    assert found.missing == ("1.2.3.4",)
    with_charset = locate_ds(HOT_IRON)
    with_charset.SpecificCharacterSet = "ISO_IR 100"
    assert len(archive.locate(with_charset)) == 1


@pytest.mark.parametrize(
    "build,tag",
    [
        (lambda: Dataset(), 0x00080018),
        (lambda: locate_ds(""), 0x00080018),
        (lambda: locate_ds("1.2.840.10008.1.5.*"), 0x00080018),
        (lambda: _with(locate_ds(HOT_IRON), QueryRetrieveLevel="IMAGE"), 0x00080052),
        (lambda: _with(locate_ds(HOT_IRON), ContentLabel="HOT_IRON"), 0x00700080),
    ],
    ids=["no-uid", "empty-uid", "wildcard-uid", "query-retrieve-level", "extra-key"],
)
def test_locate_refuses(archive: PaletteArchive, build, tag: int) -> None:
    with pytest.raises(IdentifierError) as info:
        archive.locate(build())
    assert info.value.status == 0xA900
    assert tag in info.value.offending_tags


def _with(ds: Dataset, **keys: object) -> Dataset:
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


class SimulatedKill(BaseException):
    """Raised inside a store step: like the process dying there (no cleanup runs)."""


@pytest.mark.parametrize("replace", [False, True], ids=["new", "replace"])
@pytest.mark.parametrize(("durability", "step"), mode_steps(STORE_STEPS))
def test_killed_at_each_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str, step: str, replace: bool
) -> None:
    data = tmp_path / "data"
    with PaletteArchive.open(data, durability=durability, inline_max=0) as arch:
        if replace:
            assert arch.ingest_dataset(palette(label="OLD")).ok
        monkeypatch.setattr(PaletteArchive, step, lambda self, *a: (_ for _ in ()).throw(SimulatedKill()))
        try:
            arch.ingest_dataset(palette(label="NEW"))
        except SimulatedKill:
            pass
        monkeypatch.undo()
        # not cleaned up in process (it "died") ...
    with PaletteArchive.open(data, inline_max=0) as arch:  # ... open() recovers
        report = arch.verify()
        assert report.ok, report
        assert not [n for n in listing(arch) if n.startswith(".")]
        labels = find_uids(arch, ContentLabel="NEW") | find_uids(arch, ContentLabel="OLD")
        if replace or step == "_step_remove_old":
            assert labels == {NEW_UID}  # old or new version, complete either way
        else:
            assert labels == set()  # never committed: gone
        stored = arch.get(NEW_UID)
        if stored is not None:
            assert dcmread(stored.path).ContentLabel in ("NEW", "OLD")
            expected = "NEW" if step == "_step_remove_old" else "OLD"
            assert dcmread(stored.path).ContentLabel == expected


@pytest.mark.parametrize(("durability", "step"), mode_steps(STORE_STEPS, last=-1))
def test_failure_at_each_step_is_out_of_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str, step: str
) -> None:
    def fail(self, *args):
        raise OSError(28, "No space left on device")

    with PaletteArchive.open(tmp_path / "data", durability=durability, inline_max=0) as archive:
        monkeypatch.setattr(PaletteArchive, step, fail)
        result = archive.ingest_dataset(palette())
        assert result.status == 0xA700 and "No space" in result.comment
        assert archive.get(NEW_UID) is None
        assert archive.verify().ok and len(listing(archive)) == 8  # cleaned in process


def test_failed_move_gives_the_file_back(archive: PaletteArchive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spooled = archive.files_dir / ".incoming-test.dcm"
    _write_part10(palette(), spooled)
    monkeypatch.setattr(PaletteArchive, "_step_index", lambda self, row: (_ for _ in ()).throw(sqlite3.OperationalError("disk I/O error")))
    assert archive.ingest_file(spooled).status == 0xA700
    assert spooled.exists()


def test_write_failure(archive: PaletteArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    from chromanet import dsutil

    monkeypatch.setattr(dsutil, "encode_dataset", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    assert archive.ingest_dataset(palette()).status == 0xA700
    assert archive.verify().ok


def test_verify_reports_both_ways_and_open_repairs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with PaletteArchive.open(data, inline_max=0) as arch:
        orphan = arch.files_dir / "1.2.3.4.dcm"
        shutil.copyfile(arch.get(HOT_IRON).path, orphan)
        temp = arch.files_dir / ".tmp-leftover.dcm"
        temp.write_bytes(b"half")
        arch.get("1.2.840.10008.1.5.2").path.unlink()
        with open(arch.get("1.2.840.10008.1.5.3").path, "ab") as handle:
            handle.write(b"\0\0")
        report = arch.verify()
        assert report.files_without_row == [orphan]
        assert report.rows_without_file == ["1.2.840.10008.1.5.2"]
        assert report.size_mismatches == ["1.2.840.10008.1.5.3"]
        assert report.temp_files == [temp]
        assert not report.ok
    with PaletteArchive.open(data, seed=False, inline_max=0) as arch:
        assert arch.recovered.files_without_row == [orphan]
        assert not orphan.exists() and not temp.exists()
        assert arch.get("1.2.840.10008.1.5.2") is None
        assert arch.verify().rows_without_file == []
    with PaletteArchive.open(data, inline_max=0) as arch:  # seeding puts PET back
        assert arch.get("1.2.840.10008.1.5.2") is not None


def test_one_process_per_data_dir(archive: PaletteArchive) -> None:
    with pytest.raises(ArchiveBusyError):
        PaletteArchive(archive.data_dir, inline_max=0)


def test_newer_schema_refused(tmp_path: Path) -> None:
    PaletteArchive.open(tmp_path, seed=False, inline_max=0).close()
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ArchiveVersionError):
        PaletteArchive(tmp_path, inline_max=0)
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.close()
    PaletteArchive(tmp_path, inline_max=0).close()


#: The columns of versions 2 and 3 (version 4 added ``data_id``).
_V3_COLUMNS = tuple(name for name in IndexRow.__slots__ if name != "data_id") + ("stored_at",)


def test_version_1_index_gains_owners(tmp_path: Path) -> None:
    """An index written before owners were kept is migrated in place: its
    rows stay, with no owner, and whoever may store can claim them."""
    with PaletteArchive.open(tmp_path / "new", seed=False, inline_max=0) as arch:
        assert arch.ingest_dataset(palette(label="OLD")).ok
        v1_columns = tuple(name for name in _V3_COLUMNS if name != "owner")
        (before,) = arch.index.select(v1_columns, "1", ())
    (tmp_path / "old").mkdir()
    shutil.copytree(tmp_path / "new" / "files", tmp_path / "old" / "files")
    conn = sqlite3.connect(tmp_path / "old" / "index.sqlite3", isolation_level=None)
    for statement in index_module._SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"INSERT INTO instance ({', '.join(v1_columns)}) VALUES ({', '.join('?' * len(before))})", before)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with PaletteArchive(tmp_path / "old", inline_max=0) as arch:
        (uid,) = find_uids(arch, ContentLabel="OLD")
        assert arch.index.get(uid).owner is None
        assert arch.ingest_dataset(palette(uid=uid, label="NEW"), owner="B").ok
        assert arch.index.get(uid).owner == "B"
    conn = sqlite3.connect(tmp_path / "old" / "index.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    conn.close()



def _v2_index(path: Path) -> None:
    """An empty index as version 2 wrote it (WITHOUT ROWID, owners kept)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in index_module._SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(index_module._SCHEMA_V2)
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_version_2_index_becomes_a_rowid_table(tmp_path: Path) -> None:
    """A version 2 index (every row in its primary key's B-tree) is copied
    into an ordinary table on open: every row, owner and time of storing
    kept, queries and stores as before, and the UID still unique."""
    with PaletteArchive.open(tmp_path / "new", seed=False, inline_max=0) as arch:
        assert arch.ingest_dataset(palette(label="OLD"), owner="A").ok
        (before,) = arch.index.select(_V3_COLUMNS, "1", ())
    (tmp_path / "old").mkdir()
    shutil.copytree(tmp_path / "new" / "files", tmp_path / "old" / "files")
    _v2_index(tmp_path / "old" / "index.sqlite3")
    conn = sqlite3.connect(tmp_path / "old" / "index.sqlite3", isolation_level=None)
    columns = ", ".join(_V3_COLUMNS)
    conn.execute(f"INSERT INTO instance ({columns}) VALUES ({', '.join('?' * len(before))})", before)
    assert "WITHOUT ROWID" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'instance'").fetchone()[0]
    conn.close()
    with PaletteArchive.open(tmp_path / "old", inline_max=0) as arch:
        assert arch.verify().ok and len(arch) == 9
        assert arch.index.select(_V3_COLUMNS, "sop_instance_uid = ?", (NEW_UID,)) == [before]
        assert find_uids(arch, ContentLabel="OLD") == {NEW_UID}
        refused = arch.ingest_dataset(palette(label="NEW"), owner="B")
        assert refused.status == 0x0124
        assert arch.ingest_dataset(palette(label="NEW"), owner="A").ok
        assert find_uids(arch, ContentLabel="NEW") == {NEW_UID} and len(arch) == 9
    conn = sqlite3.connect(tmp_path / "old" / "index.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'instance'").fetchone()[0]
    assert "WITHOUT ROWID" not in sql and "sop_instance_uid       TEXT NOT NULL UNIQUE" in sql
    indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "instance_content_label" in indexes
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(f"INSERT INTO instance ({columns}) VALUES ({', '.join('?' * len(before))})",
                     (NEW_UID,) + tuple(before[1:3]) + ("other.dcm",) + tuple(before[4:]))  # fmt: skip
    conn.close()


def test_only_the_owner_replaces(archive: PaletteArchive) -> None:
    uid = "1.2.826.0.1.3680043.8.498.777"
    assert archive.ingest_dataset(palette(uid=uid, label="BYA"), owner="A").ok
    refused = archive.ingest_dataset(palette(uid=uid, label="BYB"), owner="B")
    assert refused.status == 0x0124 and "not replaced" in refused.comment
    assert find_uids(archive, ContentLabel="BYA") == {uid}
    assert find_uids(archive, ContentLabel="BYB") == set()
    # The owner may; so may a peer the policy lets replace others (the owner stays A).
    assert archive.ingest_dataset(palette(uid=uid, label="BYA2"), owner="A").ok
    assert archive.ingest_dataset(palette(uid=uid, label="BYC"), owner="C", may_replace_others=True).ok
    assert find_uids(archive, ContentLabel="BYC") == {uid}
    assert archive.index.get(uid).owner == "A"
    # A local store without an owner is not checked.
    assert archive.ingest_dataset(palette(uid=uid, label="ADMIN")).ok
    assert archive.verify().ok


def test_refused_replacement_leaves_the_spooled_file(archive: PaletteArchive, tmp_path: Path) -> None:
    """A refused store moves nothing: the spool file stays for its owner
    (the storage service) to remove, and no temporary is left behind."""
    uid = "1.2.826.0.1.3680043.8.498.778"
    assert archive.ingest_dataset(palette(uid=uid, label="BYA"), owner="A").ok
    spooled = tmp_path / "spooled.dcm"
    _write_part10(palette(uid=uid, label="BYB"), spooled)
    assert archive.ingest_file(spooled, owner="B").status == 0x0124
    assert spooled.exists()
    assert archive.ingest_file(spooled, owner="B", move=False).status == 0x0124
    assert [p.name for p in archive.files_dir.iterdir() if p.name.startswith(".")] == []
    assert archive.verify().ok


def test_queries_from_threads(archive: PaletteArchive) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ds = Dataset()
    ds.ContentLabel = "*"
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda _: archive.find(ds).count, range(16)))
    assert counts == [8] * 16


def _alternate_json_by_copies(ds: Dataset) -> str | None:
    """The index's Alternate Content Description JSON as it was first built:
    the kept attributes copied into new Datasets, then Dataset.to_json_dict."""
    import copy
    import json

    from pydicom.sequence import Sequence

    from chromanet.archive import matching as m

    elem = ds.get(m.ALTERNATE_CONTENT_DESCRIPTION_SEQUENCE)
    if elem is None:
        return None
    items = []
    for item in elem.value or ():
        kept = Dataset()
        if m.CONTENT_DESCRIPTION in item:
            kept.add(copy.deepcopy(item[m.CONTENT_DESCRIPTION]))
        if m.LANGUAGE_CODE_SEQUENCE in item:
            codes = Sequence()
            for code in item[m.LANGUAGE_CODE_SEQUENCE].value or ():
                kept_code = Dataset()
                for tag in m.CODE_ITEM_KEYS:
                    if tag in code:
                        kept_code.add(copy.deepcopy(code[tag]))
                codes.append(kept_code)
            kept.LanguageCodeSequence = codes
        items.append(kept.to_json_dict())
    return json.dumps(items, ensure_ascii=False)


def test_alternate_descriptions_json_as_by_dataset_copies() -> None:
    """The index keeps the same text as when it was built from copies (the
    faster way builds it from the elements' own JSON), for every palette
    pydicom ships, decoded by pydicom and by chromanet's codec, and for
    items with empty, multi-valued and absent values."""
    from pydicom.data import get_palette_files

    from chromanet import dsutil
    from chromanet.archive import validation

    for path in get_palette_files("*.dcm"):
        ds = dcmread(path)
        assert validation._alternate_json(ds) == _alternate_json_by_copies(ds), path
        part = dsutil.open_part10(path)
        native = dsutil.decode_dataset(part.dataset_bytes(), part.transfer_syntax)
        part.close()
        assert validation._alternate_json(native) == _alternate_json_by_copies(native), path
    odd = palette()
    first = odd.AlternateContentDescriptionSequence[0]
    empty, bare = Dataset(), Dataset()
    empty.ContentDescription = ""
    empty.LanguageCodeSequence = [Dataset()]
    bare.LanguageCodeSequence = [first.LanguageCodeSequence[0]]
    multi = Dataset()
    multi.ContentDescription = ["ONE", "TWO"]
    spaced = Dataset()
    spaced.ContentDescription = "PADDED   "
    spaced.LanguageCodeSequence = [Dataset()]
    spaced.LanguageCodeSequence[0].CodeValue = "en\\fr"
    spaced.LanguageCodeSequence[0].CodeMeaning = "X\\Y "
    odd.AlternateContentDescriptionSequence = [first, empty, bare, multi, spaced, Dataset()]
    assert validation._alternate_json(odd) == _alternate_json_by_copies(odd)
    # The same, undecoded (the elements raw, as a received store's are), in
    # the character sets where ASCII is ASCII and in one where it is not.
    for charset in (None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "GB18030"):
        if charset is None:
            odd.pop(0x00080005, None)
        else:
            odd.SpecificCharacterSet = charset
        for syntax in (uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian):
            raw = dsutil.decode_dataset(dsutil.encode_dataset(odd, syntax), syntax)
            assert validation._alternate_json(raw) == _alternate_json_by_copies(raw), (charset, syntax)
    del odd.AlternateContentDescriptionSequence
    assert validation._alternate_json(odd) is None


def _find_ds(**keys: object) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_find_reads_only_the_columns_its_keys_return(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A C-FIND selects NULL in place of every column no return key reads
    (descriptions, creator names, the alternates' JSON, the SOP Class UID);
    the UID and what decides the character set are always read. What comes
    back is the same either way: the keys asked for, with their values."""
    with PaletteArchive.open(tmp_path, inline_max=0) as arch:
        assert arch.ingest_dataset(palette(label="TIE", ContentDescription="Beschreibung äöü")).ok
        selects: list[str] = []
        original = Index.select

        def select(self: Index, columns: Any, where: str, params: Any, order: str = "") -> Any:
            selects.append(", ".join(columns))
            return original(self, columns, where, params, order)

        monkeypatch.setattr(Index, "select", select)
        narrow = list(arch.find(_find_ds(ContentLabel="TIE")).matches)
        assert selects[-1] == ("NULL, sop_instance_uid, content_label, NULL, NULL, NULL, specific_character_set,"
                               " ascii_only")  # fmt: skip
        assert [(d.SOPInstanceUID, d.ContentLabel, "ContentDescription" in d) for d in narrow] == [
            (NEW_UID, "TIE", False)
        ]
        wide = list(arch.find(_find_ds(ContentLabel="TIE", ContentDescription="", SOPClassUID="")).matches)
        assert selects[-1] == ("sop_class_uid, sop_instance_uid, content_label, content_description, NULL,"
                               " NULL, specific_character_set, ascii_only")  # fmt: skip
        assert [(d.ContentDescription, d.SOPClassUID) for d in wide] == [("Beschreibung äöü", uids.ColorPaletteStorage)]


def test_find_orders_ties_of_label_as_stored_without_sorting_the_matches(tmp_path: Path) -> None:
    """Matches come by Content Label, ties in the order they were first
    stored (a replacement keeps its place), read in that order from the
    label index: SQLite plans no temporary B-tree to sort them."""
    with PaletteArchive.open(tmp_path, inline_max=0) as arch:
        stored = ["1.2.826.0.1.3680043.10.1234.9", "1.2.826.0.1.3680043.10.1234.10", "1.2.826.0.1.3680043.10.1234.1"]
        for uid in stored:
            assert arch.ingest_dataset(palette(uid=uid, label="TIE")).ok
        assert arch.ingest_dataset(palette(uid="1.2.826.0.1.3680043.10.1234.5", label="AAA")).ok
        assert arch.ingest_dataset(palette(uid=stored[0], label="TIE")).ok  # replaced: keeps its place
        found = [d.SOPInstanceUID for d in arch.find(_find_ds(ContentLabel="TIE")).matches]
        assert found == stored
        everything = [(d.ContentLabel, d.SOPInstanceUID) for d in arch.find(_find_ds(ContentLabel="")).matches]
        assert [label for label, _ in everything] == sorted(label for label, _ in everything)
        assert [uid for label, uid in everything if label == "TIE"] == stored
        # The archive's own queries, as SQLite ran them (parameters bound),
        # planned again: no temporary B-tree for the ORDER BY.
        reader = arch.index.reader()
        ran: list[str] = []
        reader.set_trace_callback(ran.append)
        for label in ("TIE", "T*", ""):
            arch.find(_find_ds(ContentLabel=label))
        reader.set_trace_callback(None)
        queries = [sql for sql in ran if sql.lstrip().upper().startswith("SELECT")]
        assert len(queries) == 3
        for sql in queries:
            plan = reader.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
            assert not any("TEMP B-TREE" in row[-1] for row in plan), (sql, plan)
