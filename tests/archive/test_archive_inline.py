"""Small instances kept in the SQLite index (``archive/store.py``, "Small
instances are kept in the index"; index schema version 4):

- a Part 10 file of at most ``inline_max`` bytes is a row of
  ``instance_data``, committed with its ``instance`` row; ``files/`` gets
  nothing; a larger one, or ``inline_max=0``, is a file as before;
- its bytes come back unchanged (``read``, ``read_many``), it is found and
  located like any other (``StoredInstance.path`` None);
- replacing moves between the two kinds in every direction and leaves
  nothing behind: no bytes a row no longer names, no file a row no longer
  names; a refused replacement keeps nothing of the refused store;
- a row that cannot be written fails its store alone; a failed syncfs
  fails the batch's files, not the stores kept in the index;
- killed before or inside a batch's transaction, none of the batch is
  there; killed after it, all of it is, whole; killed by SIGKILL while
  storing from a child process, every acknowledged store is there, whole;
- several processes storing the same UIDs keep index and bytes in
  agreement;
- a version 3 index is migrated: its rows keep their files;
- ``verify()`` reports bytes of the wrong size.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from chromanet import dsutil
from chromanet.archive import PaletteArchive
from chromanet.archive import index as index_module
from chromanet.archive.index import SCHEMA_VERSION
from chromanet.archive.seed import well_known_palette_files
from helpers.data import find_uids, hot_iron_copy, locate_ds, write_part10
from helpers.durability import DURABILITIES
from helpers.waits import WAIT_TIMEOUT

pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR"),
              pytest.mark.skipif(os.name != "posix", reason="fsync of a directory, lockf, SIGKILL")]  # fmt: skip

EXPLICIT = "1.2.840.10008.1.2.1"
HOT_IRON = "1.2.840.10008.1.5.1"


class SimulatedKill(BaseException):
    """Raised inside a step: like the process dying there (no cleanup runs)."""


def blob_count(archive: PaletteArchive) -> int:
    return int(archive.index.reader().execute("SELECT count(*) FROM instance_data").fetchone()[0])


def listing(archive: PaletteArchive) -> list[str]:
    return sorted(os.listdir(archive.files_dir))


def received(uid: str, label: str) -> bytes:
    """A data set as a C-STORE receives it (no file meta), explicit VR LE."""
    return dsutil.encode_dataset(hot_iron_copy(uid, label), EXPLICIT)


def store(archive: PaletteArchive, uid: str, label: str, **kwargs: object):
    ds = hot_iron_copy(uid, label)
    prepared = archive.prepare_data(received(uid, label), EXPLICIT, ds.SOPClassUID, uid, **kwargs)
    if not hasattr(prepared, "fields"):
        return prepared
    return archive.commit_batch([prepared])[0]


@pytest.fixture(params=DURABILITIES)
def archive(tmp_path: Path, request: pytest.FixtureRequest):
    arch = PaletteArchive.open(tmp_path / "data", durability=request.param)
    yield arch
    arch.close()


def test_seeded_palettes_are_kept_in_the_index_byte_for_byte(archive: PaletteArchive) -> None:
    assert listing(archive) == []
    assert blob_count(archive) == len(archive) == 8
    for path in well_known_palette_files():
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        stored = archive.get(uid)
        assert stored is not None and stored.path is None and stored.size == path.stat().st_size
        assert archive.read(uid) == path.read_bytes()
    located = archive.locate(locate_ds([HOT_IRON, "1.2.840.10008.1.5.2", "1.2.3.404"]))
    assert [i.path for i in located] == [None, None] and located.missing == ("1.2.3.404",)
    read = archive.read_many([HOT_IRON, "1.2.3.404"])
    assert set(read) == {HOT_IRON}
    assert dsutil.parse_part10(memoryview(read[HOT_IRON])).sop_instance_uid == HOT_IRON
    assert archive.verify().ok


def test_inline_max_decides_where_an_instance_goes(archive: PaletteArchive) -> None:
    small, large = generate_uid(), generate_uid()
    size = len(received(small, "SMALL")) + 1000  # and its file meta header
    archive.inline_max = size
    assert store(archive, small, "SMALL").path is None
    archive.inline_max = 1000  # smaller than any palette
    result = store(archive, large, "LARGE")
    assert result.ok and result.path is not None and listing(archive) == [f"{large}.dcm"]
    assert archive.get(small).path is None and archive.get(large).path == result.path
    assert find_uids(archive, ContentLabel="SMALL") == {small}
    assert find_uids(archive, ContentLabel="LARGE") == {large}
    # Both read back whole, whichever way they are kept.
    for uid, label in ((small, "SMALL"), (large, "LARGE")):
        ds = dcmread(BytesIO(archive.read(uid)))
        assert ds.SOPInstanceUID == uid and ds.ContentLabel == label
    assert archive.read_many([small, large]).keys() == {small}
    assert archive.verify().ok


def test_replacing_moves_between_kinds_and_leaves_nothing_behind(archive: PaletteArchive) -> None:
    uid = generate_uid()
    archive.inline_max = 0
    assert store(archive, uid, "FILE1").ok and listing(archive) == [f"{uid}.dcm"]
    blobs = blob_count(archive)
    archive.inline_max = 65536
    assert store(archive, uid, "INLINE1").comment == "replaced"
    assert listing(archive) == [] and blob_count(archive) == blobs + 1  # file -> index: its file removed
    assert store(archive, uid, "INLINE2").ok
    assert blob_count(archive) == blobs + 1  # index -> index: the old bytes dropped
    archive.inline_max = 0
    assert store(archive, uid, "FILE2").ok
    assert blob_count(archive) == blobs and len(listing(archive)) == 1  # index -> file: bytes dropped
    archive.inline_max = 65536
    assert store(archive, uid, "INLINE3").ok and listing(archive) == []
    assert find_uids(archive, ContentLabel="INLINE3") == {uid}
    assert find_uids(archive, ContentLabel="INLINE2") == set()
    assert dcmread(BytesIO(archive.read(uid))).ContentLabel == "INLINE3"
    assert archive.verify().ok and len(archive) == 9


def test_a_batch_larger_than_one_statement_is_whole(archive: PaletteArchive) -> None:
    """A batch's rows go in multi-row statements of at most
    ``_ROWS_PER_STATEMENT`` rows: a batch of more, some in the index and
    some in files, some replacing rows of the same batch's earlier
    statements' UIDs, is stored whole, each instance's bytes its own."""
    per_statement = index_module._ROWS_PER_STATEMENT
    uids = [generate_uid() for _ in range(2 * per_statement + 3)]
    first = [store(archive, uid, "FIRST") for uid in uids[:5]]  # replaced within the batch below
    assert all(result.ok for result in first)
    archive.inline_max = 65536
    prepared = []
    for k, uid in enumerate(uids):
        if k == per_statement:
            archive.inline_max = 0  # the rest of the batch in files
        elif k == per_statement + 10:
            archive.inline_max = 65536
        ds = hot_iron_copy(uid, f"L{k}")
        prepared.append(archive.prepare_data(received(uid, f"L{k}"), EXPLICIT, ds.SOPClassUID, uid))
    results = archive.commit_batch(prepared)
    assert all(result.ok for result in results)
    assert [r.comment == "replaced" for r in results] == [k < 5 for k in range(len(uids))]
    assert len(listing(archive)) == 10
    assert blob_count(archive) == 8 + len(uids) - 10
    for k, uid in enumerate(uids):
        ds = dcmread(BytesIO(archive.read(uid)))
        assert (ds.SOPInstanceUID, ds.ContentLabel) == (uid, f"L{k}")
    assert archive.verify().ok and len(archive) == 8 + len(uids)


def test_refusals_keep_nothing_of_the_refused_store(archive: PaletteArchive) -> None:
    uid = generate_uid()
    assert store(archive, uid, "BYA", owner="A").ok
    blobs = blob_count(archive)
    refused = store(archive, uid, "BYB", owner="B")
    assert refused.status == 0x0124 and blob_count(archive) == blobs
    assert dcmread(BytesIO(archive.read(uid))).ContentLabel == "BYA"
    # A well-known palette already here: refused before anything is prepared.
    well_known = store(archive, HOT_IRON, "EVIL")
    assert well_known.status == 0x0124 and blob_count(archive) == blobs
    assert dcmread(BytesIO(archive.read(HOT_IRON))).ContentLabel != "EVIL"
    assert archive.verify().ok


def test_a_row_that_cannot_be_written_fails_alone(archive: PaletteArchive, monkeypatch) -> None:
    uids = [generate_uid() for _ in range(4)]
    bad = uids[2]
    batch = [archive.prepare_data(received(u, f"L{k}"), EXPLICIT, hot_iron_copy(u, "x").SOPClassUID, u)
             for k, u in enumerate(uids)]  # fmt: skip
    original = PaletteArchive._step_index

    def index_many(self: PaletteArchive, rows, data=None) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    def index(self: PaletteArchive, row, data=None) -> None:
        if row.sop_instance_uid == bad:
            raise sqlite3.OperationalError("disk I/O error")
        original(self, row, data)

    monkeypatch.setattr(PaletteArchive, "_step_index_many", index_many)
    monkeypatch.setattr(PaletteArchive, "_step_index", index)
    results = archive.commit_batch(batch)
    assert [r.status for r in results] == [0, 0, 0xA700, 0]
    assert archive.get(bad) is None and archive.read_many(uids).keys() == set(uids) - {bad}
    assert blob_count(archive) == 8 + 3 and archive.verify().ok


@pytest.mark.parametrize("mode", DURABILITIES)
def test_a_failed_sync_fails_the_files_not_the_stores_in_the_index(tmp_path: Path, monkeypatch, mode: str) -> None:
    step = {"fsync": "_step_fsync_dir", "syncfs": "_step_syncfs"}[mode]
    with PaletteArchive.open(tmp_path / "data", durability=mode) as arch:
        small = [generate_uid() for _ in range(2)]
        big = generate_uid()
        spooled = write_part10(hot_iron_copy(big, "BIG"), tmp_path / "big.dcm")
        batch = [arch.prepare_data(received(u, "SMALL"), EXPLICIT, hot_iron_copy(u, "x").SOPClassUID, u)
                 for u in small]  # fmt: skip
        batch.append(arch.prepare_file(spooled))  # moved in: a file
        assert batch[-1].source is not None and all(p.source is None for p in batch[:2])

        def fail(self: PaletteArchive, *args: object) -> None:
            raise OSError(5, "I/O error")

        monkeypatch.setattr(PaletteArchive, step, fail)
        results = arch.commit_batch(batch)
        monkeypatch.undo()
        assert [r.status for r in results] == [0, 0, 0xA700]
        assert spooled.exists()  # the caller's file given back
        assert arch.get(big) is None and set(arch.read_many(small)) == set(small)
        assert listing(arch) == [] and arch.verify().ok


@pytest.mark.parametrize("where", ["before", "inside", "after"])
def test_killed_around_the_transaction_a_batch_is_whole_or_gone(tmp_path: Path, monkeypatch, where: str) -> None:
    data = tmp_path / "data"
    replaced = generate_uid()
    with PaletteArchive.open(data, seed=False, inline_max=0) as arch:
        assert store(arch, replaced, "OLD").ok  # a file, replaced by bytes in the index
    uids = [generate_uid() for _ in range(3)] + [replaced]
    with PaletteArchive.open(data) as arch:
        batch = [arch.prepare_data(received(u, "NEW"), EXPLICIT, hot_iron_copy(u, "x").SOPClassUID, u)
                 for u in uids]  # fmt: skip
        if where == "before":
            step = "_step_index_many"

            def die(self: PaletteArchive, *args: object) -> None:
                raise SimulatedKill()
        elif where == "inside":
            step = "_step_index_many"
            original_upsert = index_module.Index.upsert_many

            def die(self: PaletteArchive, rows, data=None) -> None:
                # The transaction begun and written, the process gone before COMMIT.
                def write_then_die(index, rows, data=None):
                    conn = index._writer
                    conn.execute("BEGIN IMMEDIATE")
                    for row, blob in zip(rows, data):
                        data_id = conn.execute("INSERT INTO instance_data (data) VALUES (?)", (blob,)).lastrowid
                        conn.execute(index_module._INSERT, index_module._values(row, data_id))
                    raise SimulatedKill()

                write_then_die(self.index, rows, data)
        else:
            step = "_step_remove_old"

            def die(self: PaletteArchive, *args: object) -> None:
                raise SimulatedKill()

        monkeypatch.setattr(PaletteArchive, step, die)
        with pytest.raises(SimulatedKill):
            arch.commit_batch(batch)
        monkeypatch.undo()
        if where == "inside":
            assert original_upsert is index_module.Index.upsert_many
            arch.index._writer.close()  # the dying process's open transaction goes with it
            arch.index._writer = arch.index._connect()
    with PaletteArchive.open(data) as arch:  # recovers
        committed = where == "after"
        # The replaced file is removed once its replacement committed (by recover() if killed before).
        assert arch.verify().ok and listing(arch) == ([] if committed else [f"{replaced}.dcm"])
        for uid in uids[:3]:
            assert (arch.get(uid) is not None) == committed
        if committed:
            assert find_uids(arch, ContentLabel="NEW") == set(uids)
            assert all(dcmread(BytesIO(arch.read(u))).ContentLabel == "NEW" for u in uids)
        else:
            # The replaced instance is still its old version, whole.
            assert find_uids(arch, ContentLabel="OLD") == {replaced}
            assert dcmread(BytesIO(arch.read(replaced))).ContentLabel == "OLD"
        assert blob_count(arch) == 8 + (4 if committed else 0)


def _store_until_killed(data_dir: str, acked: "multiprocessing.Queue[str]", start: "multiprocessing.Event") -> None:
    archive = PaletteArchive.open(data_dir, seed=False)
    start.set()
    n = 0
    while True:
        uids = [f"2.25.{os.getpid()}{n}{k}" for k in range(8)]
        n += 1
        batch = [archive.prepare_data(received(u, "ACKED"), EXPLICIT, hot_iron_copy(u, "x").SOPClassUID, u)
                 for u in uids]  # fmt: skip
        for uid, result in zip(uids, archive.commit_batch(batch)):
            if result.ok:
                acked.put(uid)


def test_sigkill_while_storing_loses_no_acknowledged_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    PaletteArchive.open(data, seed=False).close()
    context = multiprocessing.get_context("spawn")
    for round_ in range(3):
        acked = context.Queue()
        start = context.Event()
        child = context.Process(target=_store_until_killed, args=(str(data), acked, start))
        child.start()
        try:
            assert start.wait(WAIT_TIMEOUT)
            seen: list[str] = []
            while len(seen) < 40 * (round_ + 1):
                seen.append(acked.get(timeout=WAIT_TIMEOUT))
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.join(WAIT_TIMEOUT)
        while True:
            try:
                seen.append(acked.get(timeout=0.5))
            except Exception:
                break
        with PaletteArchive.open(data, seed=False) as arch:
            assert arch.verify().ok and listing(arch) == []
            read = arch.read_many(seen)
            assert set(read) == set(seen)
            for uid in seen:
                ds = dcmread(BytesIO(read[uid]))
                assert ds.SOPInstanceUID == uid and ds.ContentLabel == "ACKED"
            # Nothing half there: every row has its bytes, every byte string a row.
            assert blob_count(arch) == len(arch)


def _store_shared(data_dir: str, uids: list[str], who: str) -> None:
    archive = PaletteArchive.open(data_dir, shared=True)
    for round_ in range(5):
        batch = [archive.prepare_data(received(u, f"{who}{round_}"), EXPLICIT, hot_iron_copy(u, "x").SOPClassUID, u)
                 for u in uids]  # fmt: skip
        assert all(r.ok for r in archive.commit_batch(batch))
    archive.close()


def test_several_processes_keep_rows_and_bytes_in_agreement(tmp_path: Path) -> None:
    data = tmp_path / "data"
    supervisor = PaletteArchive.open(data)
    supervisor.share()
    shared_uids = [generate_uid() for _ in range(6)]
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_store_shared, args=(str(data), shared_uids, who)) for who in "ABC"]
    for child in children:
        child.start()
    for child in children:
        child.join(WAIT_TIMEOUT)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert len(supervisor) == 8 + 6 and blob_count(supervisor) == 8 + 6
    assert supervisor.verify().ok and listing(supervisor) == []
    for uid in shared_uids:
        assert dcmread(BytesIO(supervisor.read(uid))).ContentLabel.endswith("4")
    supervisor.close()


def test_version_3_index_keeps_its_files(tmp_path: Path) -> None:
    uid = generate_uid()
    with PaletteArchive.open(tmp_path / "new", seed=False, inline_max=0) as arch:
        assert store(arch, uid, "OLD", owner="A").ok
        columns = [c for c in index_module.IndexRow.__slots__ if c != "data_id"] + ["stored_at"]
        (before,) = arch.index.select(columns, "1", ())
    (tmp_path / "old").mkdir()
    os.rename(tmp_path / "new" / "files", tmp_path / "old" / "files")
    conn = sqlite3.connect(tmp_path / "old" / "index.sqlite3", isolation_level=None)
    for statement in index_module._SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(index_module._SCHEMA_V2)
    for statement in index_module._statements(index_module._SCHEMA_V3):
        conn.execute(statement)
    conn.execute(f"INSERT INTO instance ({', '.join(columns)}) VALUES ({', '.join('?' * len(before))})", before)
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with PaletteArchive.open(tmp_path / "old") as arch:
        assert arch.verify().ok and len(arch) == 9
        assert arch.index.select(columns, "sop_instance_uid = ?", (uid,)) == [before]
        assert arch.get(uid).path == arch.files_dir / f"{uid}.dcm"
        assert store(arch, uid, "NEW", owner="A").ok  # now kept in the index, its file removed
        assert listing(arch) == [] and arch.get(uid).path is None
    conn = sqlite3.connect(tmp_path / "old" / "index.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    with pytest.raises(sqlite3.IntegrityError):  # a row is a file or bytes, never neither
        conn.execute("UPDATE instance SET data_id = NULL WHERE sop_instance_uid = ?", (uid,))
    conn.close()


def test_verify_reports_bytes_of_the_wrong_size(archive: PaletteArchive) -> None:
    uid = generate_uid()
    assert store(archive, uid, "X").ok
    writer = sqlite3.connect(archive.index.path, isolation_level=None)
    writer.execute(
        "UPDATE instance_data SET data = x'00' WHERE id = (SELECT data_id FROM instance WHERE sop_instance_uid = ?)",
        (uid,),
    )
    writer.close()
    report = archive.verify()
    assert report.size_mismatches == [uid] and not report.ok
