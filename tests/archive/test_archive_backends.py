"""One body, two backends: what a store, a C-FIND and a retrieve lookup mean
must not depend on where the index is. Each test runs against the embedded
SQLite archive (``PaletteArchive``) and the PostgreSQL one (``PgArchive``
on a throwaway cluster, behind ``helpers.postgres.SyncPgArchive``).

Checked: seeding (PS3.6 Annex A palettes, idempotent), storing and finding
again, last write wins, the C-STORE statuses of refusals (PS3.4 B.2.3:
0xA900, 0xC000, 0xB007), the read-only well-known palettes and owners
(0x0124), the retrieve lookup (PS3.4 X.4.2: request order, missing UIDs,
0xA900 for a bad identifier), and racing stores of one SOP Instance UID by
two owners: exactly one wins.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydicom import Dataset

from chromanet.archive import IdentifierError, PaletteArchive

from helpers.data import find_uids, locate_ds, hot_iron_copy, write_part10
from helpers.postgres import SyncPgArchive

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

NEW_UID = "1.2.826.0.1.3680043.10.1234.88"
HOT_IRON = "1.2.840.10008.1.5.1"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "postgresql":
        archive: Any = SyncPgArchive(request.getfixturevalue("pg_url"))
    else:
        archive = PaletteArchive.open(tmp_path / "data")
    try:
        yield archive
    finally:
        archive.close()


def owner_of(archive: Any, uid: str) -> str | None:
    if isinstance(archive, PaletteArchive):
        return archive.index.get(uid).owner
    return archive.get(uid).owner


def test_seeded_once(backend: Any, request: pytest.FixtureRequest) -> None:
    assert len(backend) == 8
    assert find_uids(backend, ContentLabel="*") == {f"1.2.840.10008.1.5.{n}" for n in range(1, 9)}
    if isinstance(backend, SyncPgArchive):
        again = SyncPgArchive(backend.url)  # a second node on the same database
        try:
            assert len(again) == 8
        finally:
            again.close()


def test_store_find_locate(backend: Any, tmp_path: Path) -> None:
    result = backend.ingest_dataset(hot_iron_copy(NEW_UID, "MY_PALETTE"))
    assert result.status == 0x0000 and result.ok
    assert find_uids(backend, ContentLabel="MY_*") == {NEW_UID}
    found = backend.locate(locate_ds([NEW_UID, "1.2.3.4", HOT_IRON, NEW_UID]))
    assert [i.sop_instance_uid for i in found] == [NEW_UID, HOT_IRON]
    assert found.missing == ("1.2.3.4",)
    assert len(backend) == 9


def test_ingest_file_moves_and_refusal_keeps(backend: Any, tmp_path: Path) -> None:
    spooled = write_part10(hot_iron_copy(NEW_UID, "SPOOLED"), tmp_path / "spool.dcm")
    assert backend.ingest_file(spooled, owner="A").status == 0x0000
    assert not spooled.exists()
    again = write_part10(hot_iron_copy(NEW_UID, "BY_B"), tmp_path / "again.dcm")
    assert backend.ingest_file(again, owner="B").status == 0x0124
    assert again.exists()  # a refused file stays with its owner
    assert find_uids(backend, ContentLabel="BY_B") == set()


def test_last_write_wins(backend: Any) -> None:
    assert backend.ingest_dataset(hot_iron_copy(NEW_UID, "FIRST")).comment == ""
    second = backend.ingest_dataset(hot_iron_copy(NEW_UID, "SECOND"))
    assert second.status == 0x0000 and second.comment == "replaced"
    assert find_uids(backend, ContentLabel="FIRST") == set()
    assert find_uids(backend, ContentLabel="SECOND") == {NEW_UID}
    assert len(backend) == 9


def test_refusals_and_warning(backend: Any, tmp_path: Path) -> None:
    ct = hot_iron_copy(NEW_UID, "CT")
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    assert backend.ingest_dataset(ct).status == 0xA900
    assert backend.ingest_dataset(hot_iron_copy(NEW_UID, "")).status == 0xA900
    assert backend.ingest_dataset(hot_iron_copy(NEW_UID, "X", RedPaletteColorLookupTableData=None)).status == 0xA900
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 200)
    assert backend.ingest_file(garbage).status == 0xC000
    assert len(backend) == 8
    warned = backend.ingest_dataset(hot_iron_copy(NEW_UID, "NO_ICC", ICCProfile=None))
    assert warned.status == 0xB007 and warned.ok and "ICC" in warned.comment
    assert find_uids(backend, SOPInstanceUID=NEW_UID) == {NEW_UID}


def test_well_known_read_only(backend: Any) -> None:
    result = backend.ingest_dataset(hot_iron_copy(HOT_IRON, "EVIL"), owner="A", may_replace_others=True)
    assert result.status == 0x0124 and "not stored" in result.comment
    assert find_uids(backend, ContentLabel="EVIL") == set()
    assert find_uids(backend, SOPInstanceUID=HOT_IRON, ContentLabel="HOT_IRON") == {HOT_IRON}


def test_only_the_owner_replaces(backend: Any) -> None:
    assert backend.ingest_dataset(hot_iron_copy(NEW_UID, "BYA"), owner="A").ok
    refused = backend.ingest_dataset(hot_iron_copy(NEW_UID, "BYB"), owner="B")
    assert refused.status == 0x0124 and "not replaced" in refused.comment
    assert find_uids(backend, ContentLabel="BYA") == {NEW_UID}
    assert backend.ingest_dataset(hot_iron_copy(NEW_UID, "BYA2"), owner="A").ok
    assert backend.ingest_dataset(hot_iron_copy(NEW_UID, "BYC"), owner="C", may_replace_others=True).ok
    assert find_uids(backend, ContentLabel="BYC") == {NEW_UID}
    assert owner_of(backend, NEW_UID) == "A"
    assert backend.ingest_dataset(hot_iron_copy(NEW_UID, "ADMIN")).ok  # no owner: not checked


def test_locate_refuses(backend: Any) -> None:
    for identifier in (Dataset(), locate_ds(""), locate_ds("1.2.840.10008.1.5.*")):
        with pytest.raises(IdentifierError) as info:
            backend.locate(identifier)
        assert info.value.status == 0xA900


def test_racing_owners_one_wins(backend: Any, tmp_path: Path) -> None:
    """Two owners store the same new UIDs at the same moment (through two
    archive objects, i.e. two nodes, for PostgreSQL; two threads for the
    one-process SQLite archive): for each UID exactly one store succeeds
    and the index names its owner."""
    second = SyncPgArchive(backend.url, seed=False) if isinstance(backend, SyncPgArchive) else backend
    try:
        racers = 8
        uids_ = [f"1.2.826.0.1.3680043.10.1234.9{n}" for n in range(racers)]
        start = threading.Barrier(2)

        def run(owner: str, archive: Any) -> list[int]:
            start.wait(timeout=30)
            return [archive.ingest_dataset(hot_iron_copy(u, owner), owner=owner).status for u in uids_]

        with ThreadPoolExecutor(2) as pool:
            a, b = pool.submit(run, "A", backend), pool.submit(run, "B", second)
            statuses = {"A": a.result(timeout=60), "B": b.result(timeout=60)}
        for n, uid in enumerate(uids_):
            pair = sorted((statuses["A"][n], statuses["B"][n]))
            assert pair == [0x0000, 0x0124], (uid, pair)
            winner = "A" if statuses["A"][n] == 0 else "B"
            assert owner_of(backend, uid) == winner
            assert find_uids(backend, SOPInstanceUID=uid, ContentLabel=winner) == {uid}
    finally:
        if second is not backend:
            second.close()


def test_nul_in_a_key_matches_nothing(backend: Any) -> None:
    """PostgreSQL text cannot hold NUL: a key with one is answered (no
    match, as in SQLite), not turned into a database error."""
    assert find_uids(backend, ContentLabel="HOT\x00IRON") == set()
    assert find_uids(backend, ContentLabel="HOT\x00*") == set()
