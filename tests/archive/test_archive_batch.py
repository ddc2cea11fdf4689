"""Group commit in the SQLite archive (``PaletteArchive.prepare_file`` and
``commit_batch``, ``archive/store.py`` "Group commit") and through the
node's ``IngestQueue``:

- every test runs in both durability modes (``archive/durability.py``);
- a batch costs one index transaction, and before it either an fsync of
  every file and one of the directory (``fsync``) or one syncfs(2) of the
  file system and no fsync at all (``syncfs``);
- a failed syncfs (or directory fsync) fails the whole batch: no row, the
  spooled files given back, our temporaries removed, nothing for
  ``recover()`` to find; a syncfs error reported to another batch also
  fails a batch whose files were written before it (errseq: an error is
  reported once per descriptor, syncfs(2));
- a store that fails in a batch fails alone (refused replacement of another
  owner's palette, a failed rename, a row that cannot be written), with its
  spooled file given back; refusals found while validating (not a palette,
  a stored well-known palette) are answered in their place, in order;
- two stores of one UID in one batch commit one after the other;
- killed at any step of a batch, ``recover()`` leaves every store of it
  either complete (indexed, its file intact) or gone, for spooled files
  and for data sets received in memory (``prepare_data``, which writes
  the temporary in ``files/`` itself), and for a kill between that write
  and the commit;
- a data set received in memory is stored as the same file its spool
  would have been;
- batches from several processes at once, over the same UIDs, keep index
  and files in agreement (the cross-process stripe locks).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import sqlite3
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from chromanet import dsutil
from chromanet.archive import IngestResult, PaletteArchive
from chromanet.archive.group_commit import IngestQueue
from helpers.data import hot_iron_copy, write_part10
from helpers.durability import BATCH_STEPS, DURABILITIES, mode_steps
from helpers.waits import WAIT_TIMEOUT

pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR"),
              pytest.mark.skipif(os.name != "posix", reason="fsync of a directory, lockf")]  # fmt: skip

HOT_IRON = "1.2.840.10008.1.5.1"
EXPLICIT = "1.2.840.10008.1.2.1"
PALETTE_CLASS = "1.2.840.10008.5.1.4.39.1"


class SimulatedKill(BaseException):
    """Raised inside a step: like the process dying there (no cleanup runs)."""


@pytest.fixture(params=DURABILITIES)
def archive(tmp_path: Path, request: pytest.FixtureRequest):
    arch = PaletteArchive.open(tmp_path / "data", durability=request.param, inline_max=0)
    yield arch
    arch.close()


def spool(archive: PaletteArchive, uid: str, label: str = "BATCH", **changes: Any) -> Path:
    """A spooled C-STORE: a Part 10 file next to the archive's files."""
    path = archive.data_dir / "incoming" / f".incoming-{generate_uid()[-12:]}.dcm"
    path.parent.mkdir(exist_ok=True)
    return write_part10(hot_iron_copy(uid, label, **changes), path)


def prepared(archive: PaletteArchive, path: Path, **rights: Any) -> Any:
    result = archive.prepare_file(path, **rights)
    assert not isinstance(result, IngestResult), result
    return result


def received(archive: PaletteArchive, uid: str, label: str = "BATCH", **changes: Any) -> Any:
    """A C-STORE received in memory, validated and written by ``prepare_data``."""
    ds = hot_iron_copy(uid, label, **changes)
    data = dsutil.encode_dataset(ds, EXPLICIT)
    result = archive.prepare_data(data, EXPLICIT, ds.SOPClassUID, uid)
    assert not isinstance(result, IngestResult), result
    return result


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    calls: list[Any] = []
    original = getattr(PaletteArchive, name)

    def counted(self: PaletteArchive, *args: Any) -> Any:
        calls.append(args)
        return original(self, *args)

    monkeypatch.setattr(PaletteArchive, name, counted)
    return calls


def test_a_batch_is_one_sync_and_one_transaction(archive: PaletteArchive, monkeypatch) -> None:
    uids = [generate_uid() for _ in range(6)]
    batch = [prepared(archive, spool(archive, uid)) for uid in uids]
    dir_fsyncs = count_calls(monkeypatch, "_step_fsync_dir")
    syncfs = count_calls(monkeypatch, "_step_syncfs")
    transactions = count_calls(monkeypatch, "_step_index_many")
    single = count_calls(monkeypatch, "_step_index")
    fsynced = count_calls(monkeypatch, "_step_fsync_file")
    results = archive.commit_batch(batch)
    assert [r.status for r in results] == [0x0000] * 6
    assert [r.sop_instance_uid for r in results] == uids
    assert len(transactions) == 1 and not single
    if archive.durability == "fsync":
        assert len(dir_fsyncs) == 1 and len(fsynced) == 6 and not syncfs
    else:
        assert len(syncfs) == 1 and not dir_fsyncs and not fsynced
    assert all(archive.get(uid) is not None for uid in uids)
    assert archive.verify().ok and not list((archive.data_dir / "incoming").iterdir())


def test_one_failing_store_fails_alone(archive: PaletteArchive, monkeypatch) -> None:
    # Another owner's palette: its replacement is refused (0x0124).
    theirs = generate_uid()
    assert archive.ingest_file(spool(archive, theirs, "THEIRS"), owner="OTHER").ok
    ok_uids = [generate_uid() for _ in range(3)]
    bad_row = generate_uid()
    paths = [spool(archive, ok_uids[0]), spool(archive, theirs, "MINE"), spool(archive, ok_uids[1]),
             spool(archive, bad_row), spool(archive, ok_uids[2])]  # fmt: skip
    batch = [prepared(archive, p, owner="ME") for p in paths]
    # The batch's transaction fails because of one row; so does that row alone.
    original = PaletteArchive._step_index

    def index(self: PaletteArchive, row: Any, data: Any = None) -> None:
        if row.sop_instance_uid == bad_row:
            raise sqlite3.OperationalError("disk I/O error")
        original(self, row, data)

    monkeypatch.setattr(PaletteArchive, "_step_index", index)
    def index_many(self: PaletteArchive, rows: list[Any], data: Any = None) -> None:
        if any(row.sop_instance_uid == bad_row for row in rows):
            raise sqlite3.OperationalError("disk I/O error")
        raise AssertionError("the batch holds the bad row")

    monkeypatch.setattr(PaletteArchive, "_step_index_many", index_many)
    results = archive.commit_batch(batch)
    assert [r.status for r in results] == [0x0000, 0x0124, 0x0000, 0xA700, 0x0000]
    assert "disk I/O" in results[3].comment
    assert all(archive.get(uid) is not None for uid in ok_uids)
    assert archive.get(bad_row) is None and archive.get(theirs).path.exists()
    assert pydicom.dcmread(archive.get(theirs).path).ContentLabel == "THEIRS"
    # The failed and the refused store's spooled files are left to the caller.
    assert paths[1].exists() and paths[3].exists()
    assert not any(p.exists() for p in (paths[0], paths[2], paths[4]))
    assert archive.verify().ok


def test_a_failed_rename_fails_that_store_alone(archive: PaletteArchive, monkeypatch) -> None:
    uids = [generate_uid() for _ in range(3)]
    paths = [spool(archive, uid) for uid in uids]
    batch = [prepared(archive, p) for p in paths]
    original = PaletteArchive._step_rename

    def rename(self: PaletteArchive, source: Path, target: Path) -> None:
        if source == paths[1]:
            raise OSError(28, "No space left on device")
        original(self, source, target)

    monkeypatch.setattr(PaletteArchive, "_step_rename", rename)
    assert [r.status for r in archive.commit_batch(batch)] == [0x0000, 0xA700, 0x0000]
    assert paths[1].exists() and archive.get(uids[1]) is None and archive.verify().ok


def test_a_failed_sync_fails_the_batch_and_gives_files_back(archive: PaletteArchive, monkeypatch) -> None:
    """The directory fsync (``fsync``) or the syncfs (``syncfs``) fails:
    every store of the batch fails, spooled or received in memory; no row,
    no file left behind, now or for ``recover()``."""
    paths = [spool(archive, generate_uid()) for _ in range(3)]
    memory_uids = [generate_uid() for _ in range(2)]
    batch = [prepared(archive, p) for p in paths] + [received(archive, uid) for uid in memory_uids]
    step = "_step_fsync_dir" if archive.durability == "fsync" else "_step_syncfs"
    monkeypatch.setattr(PaletteArchive, step, lambda self, *a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    results = archive.commit_batch(batch)
    assert [r.status for r in results] == [0xA700] * 5 and all("I/O error" in r.comment for r in results)
    assert all(p.exists() for p in paths) and len(archive) == 8 and archive.verify().ok
    assert archive.recover().ok  # nothing for recovery either


@pytest.mark.parametrize("durability", DURABILITIES[1:])
def test_a_syncfs_error_fails_every_batch_written_before_it(tmp_path: Path, durability: str) -> None:
    """syncfs(2) reports an error once per descriptor: the batch whose
    syncfs sees it fails, and so does a batch whose files were written
    before it, although its own syncfs then succeeds; a batch written
    after it commits."""
    import ctypes

    with PaletteArchive.open(tmp_path / "data", durability=durability, inline_max=0) as arch:
        first = [received(arch, generate_uid()) for _ in range(2)]
        second = [received(arch, generate_uid()) for _ in range(2)]
        real = arch._syncfs._call

        def failing(fd: int) -> int:
            ctypes.set_errno(5)
            return -1

        arch._syncfs._call = failing
        assert [r.status for r in arch.commit_batch(first)] == [0xA700] * 2
        arch._syncfs._call = real
        failed = arch.commit_batch(second)
        assert [r.status for r in failed] == [0xA700] * 2 and "write-back error" in failed[0].comment
        third = [received(arch, generate_uid()) for _ in range(2)]
        assert [r.status for r in arch.commit_batch(third)] == [0x0000] * 2
        assert len(arch) == 10 and arch.verify().ok


def test_two_stores_of_one_uid_in_a_batch_commit_in_order(archive: PaletteArchive) -> None:
    uid = generate_uid()
    batch = [prepared(archive, spool(archive, uid, "FIRST")), prepared(archive, spool(archive, uid, "SECOND"))]
    first, second = archive.commit_batch(batch)
    assert first.status == second.status == 0x0000
    assert first.comment == "" and second.comment == "replaced"
    assert pydicom.dcmread(archive.get(uid).path).ContentLabel == "SECOND"
    assert archive.verify().ok and len(archive) == 9


@pytest.mark.parametrize("source", ["spooled", "in-memory"])
@pytest.mark.parametrize(("durability", "step"), mode_steps(BATCH_STEPS))
def test_killed_in_a_batch_each_store_is_whole_or_gone(
    tmp_path: Path, monkeypatch, durability: str, step: str, source: str
) -> None:
    data = tmp_path / "data"
    replaced = generate_uid()
    with PaletteArchive.open(data, durability=durability, inline_max=0) as arch:
        assert arch.ingest_file(spool(arch, replaced, "OLD")).ok
        uids = [generate_uid() for _ in range(4)] + [replaced]
        if source == "spooled":
            batch = [prepared(arch, spool(arch, uid, "NEW")) for uid in uids]
        else:
            batch = [received(arch, uid, "NEW") for uid in uids]
        calls = []

        def die(self: PaletteArchive, *args: Any) -> None:
            calls.append(args)
            if step not in ("_step_fsync_file", "_step_rename") or len(calls) == 3:
                raise SimulatedKill()  # in the middle of the batch's files
            return original(self, *args)

        original = getattr(PaletteArchive, step)
        monkeypatch.setattr(PaletteArchive, step, die)
        with pytest.raises(SimulatedKill):
            arch.commit_batch(batch)
        monkeypatch.undo()
    with PaletteArchive.open(data, inline_max=0) as arch:  # recovers
        assert arch.verify().ok
        assert not [n for n in os.listdir(arch.files_dir) if n.startswith(".")]
        committed = step == "_step_remove_old"
        for uid in uids:
            stored = arch.get(uid)
            if uid == replaced:
                assert stored is not None
                assert pydicom.dcmread(stored.path).ContentLabel == ("NEW" if committed else "OLD")
            else:
                assert (stored is not None) == committed
                if stored is not None:
                    assert pydicom.dcmread(stored.path).ContentLabel == "NEW"


def test_killed_after_prepare_data_leaves_no_orphan(tmp_path: Path) -> None:
    """``prepare_data`` wrote its temporaries into ``files/``; the process
    dies before ``commit_batch``: the next open removes them, nothing is
    indexed."""
    data = tmp_path / "data"
    uids = [generate_uid() for _ in range(3)]
    with PaletteArchive.open(data, inline_max=0) as arch:
        batch = [received(arch, uid) for uid in uids]
        assert sorted(p.name for p in arch.verify().temp_files) == sorted(s.source.name for s in batch)
    with PaletteArchive.open(data, inline_max=0) as arch:  # recovers
        assert arch.verify().ok and len(arch) == 8
        assert not [n for n in os.listdir(arch.files_dir) if n.startswith(".")]
        assert all(arch.get(uid) is None for uid in uids)


def test_in_memory_store_is_the_file_its_spool_would_be(archive: PaletteArchive) -> None:
    """Through the queue: ``ingest_data`` stores the file a spool of the
    same C-STORE stores (file meta from the request, then the bytes
    received), and refuses what ``ingest_file`` refuses, alike."""
    spooled_uid, memory_uid = generate_uid(), generate_uid()
    path = spool(archive, spooled_uid, "SAME")
    ds = hot_iron_copy(memory_uid, "SAME")
    data = dsutil.encode_dataset(ds, EXPLICIT)
    not_palette = dsutil.encode_dataset(hot_iron_copy(generate_uid(), "X", ContentLabel=""), EXPLICIT)

    async def main() -> list[IngestResult]:
        queue = IngestQueue(archive)
        try:
            return await asyncio.wait_for(asyncio.gather(
                queue.ingest_file(path),
                queue.ingest_data(data, EXPLICIT, ds.SOPClassUID, memory_uid, owner="PEER"),
                queue.ingest_data(not_palette, EXPLICIT, ds.SOPClassUID, memory_uid),
                queue.ingest_data(data[:-5], EXPLICIT, ds.SOPClassUID, memory_uid),
            ), WAIT_TIMEOUT)  # fmt: skip
        finally:
            await queue.close()

    results = asyncio.run(main())
    assert [r.status for r in results] == [0x0000, 0x0000, 0xA900, 0xC000]
    # Each file: the header a spool makes of the request, then the data set.
    for uid, path_of in ((spooled_uid, archive.get(spooled_uid).path), (memory_uid, archive.get(memory_uid).path)):
        header = dsutil.encode_file_header(dsutil.build_file_meta(ds.SOPClassUID, uid, EXPLICIT))
        body = dsutil.encode_dataset(hot_iron_copy(uid, "SAME"), EXPLICIT)
        assert path_of.read_bytes() == header + body
    assert archive.index.get(memory_uid).owner == "PEER"
    assert archive.verify().ok


def test_stores_kept_in_the_index_are_validated_on_arrival(tmp_path: Path, monkeypatch) -> None:
    """A data set the archive keeps in its index is validated on the event
    loop as it arrives (the commit threads are left the transaction); one
    that becomes a file is validated in a commit thread, where its file is
    written. Refusals on arrival keep their place among the results."""
    archive = PaletteArchive.open(tmp_path / "data")
    threads: list[str] = []
    prepare_data = archive.prepare_data

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return prepare_data(*args, **kwargs)

    monkeypatch.setattr(archive, "prepare_data", recording)
    small = [generate_uid() for _ in range(3)]
    sets = [(uid, dsutil.encode_dataset(hot_iron_copy(uid, "SMALL"), EXPLICIT)) for uid in small]
    not_palette = dsutil.encode_dataset(hot_iron_copy(generate_uid(), "X", ContentLabel=""), EXPLICIT)

    async def main() -> list[IngestResult]:
        queue = IngestQueue(archive)
        try:
            results = await asyncio.wait_for(asyncio.gather(
                queue.ingest_data(sets[0][1], EXPLICIT, PALETTE_CLASS, sets[0][0]),
                queue.ingest_data(not_palette, EXPLICIT, PALETTE_CLASS, ""),
                queue.ingest_data(sets[1][1], EXPLICIT, PALETTE_CLASS, sets[1][0]),
            ), WAIT_TIMEOUT)  # fmt: skip
            archive.inline_max = 0
            results.append(await asyncio.wait_for(
                queue.ingest_data(sets[2][1], EXPLICIT, PALETTE_CLASS, sets[2][0]), WAIT_TIMEOUT
            ))  # fmt: skip
            return results
        finally:
            await queue.close()

    try:
        results = asyncio.run(main())
        assert [r.status for r in results] == [0x0000, 0xA900, 0x0000, 0x0000]
        assert threads[:3] == [threading.main_thread().name] * 3
        assert threads[3].startswith("chromanet-commit")
        assert archive.get(small[0]).path is None and archive.get(small[2]).path is not None
        assert archive.verify().ok
    finally:
        archive.close()


def test_ingest_queue_answers_refusals_in_place(archive: PaletteArchive) -> None:
    """Through the node's queue: a well-known palette already stored
    (0x0124) and a data set that is not a palette (0xA900) are refused
    while the stores around them commit together, results in order."""
    good = [generate_uid() for _ in range(3)]
    well_known = write_part10(hot_iron_copy(HOT_IRON, "HOT_IRON"), archive.data_dir / ".incoming-wk.dcm")
    no_label = spool(archive, generate_uid(), ContentLabel="")
    paths = [spool(archive, good[0]), well_known, spool(archive, good[1]), no_label, spool(archive, good[2])]

    async def main() -> list[IngestResult]:
        queue = IngestQueue(archive, max_batch=64, max_wait=0.0)
        try:
            return await asyncio.wait_for(asyncio.gather(*(queue.ingest_file(p) for p in paths)), WAIT_TIMEOUT)
        finally:
            await queue.close()

    results = asyncio.run(main())
    assert [r.status for r in results] == [0x0000, 0x0124, 0x0000, 0xA900, 0x0000]
    assert "well-known" in results[1].comment
    assert all(archive.get(uid) is not None for uid in good) and archive.verify().ok


# -- several processes --------------------------------------------------

SHARED_UIDS = [f"1.2.826.0.1.3680043.10.1437.9{n}" for n in range(1, 5)]
ROUNDS = 8
_START: Any = None


def _init(start: Any) -> None:
    global _START
    _START = start


def _store_batches(data_dir: str, who: str) -> list[int]:
    """A worker process: ROUNDS batches, each the shared UIDs (replacing
    one another across processes) and two of its own."""
    archive = PaletteArchive.open(data_dir, shared=True, inline_max=0)
    statuses = []
    try:
        _START.wait(30)
        for round_ in range(ROUNDS):
            uids = SHARED_UIDS + [generate_uid(), generate_uid()]
            batch = [prepared(archive, spool(archive, uid, f"{who}_{round_}")) for uid in uids]
            statuses += [r.status for r in archive.commit_batch(batch)]
    finally:
        archive.close()
    return statuses


def test_batches_from_several_processes_stay_consistent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    supervisor = PaletteArchive.open(data, inline_max=0)
    supervisor.share()
    try:
        context = multiprocessing.get_context("spawn")
        start = context.Event()
        with context.Pool(3, initializer=_init, initargs=(start,)) as pool:
            results = [pool.apply_async(_store_batches, (str(data), f"W{n}")) for n in range(3)]
            start.set()
            statuses = [s for result in results for s in result.get(timeout=120)]
        assert statuses and set(statuses) == {0x0000}
        report = supervisor.verify()
        assert report.ok, report
        assert len(supervisor) == 8 + len(SHARED_UIDS) + 3 * ROUNDS * 2
        assert len(list((data / "files").iterdir())) == len(supervisor)
    finally:
        supervisor.close()


def _hold_b_then_take_a(data_dir: str, a: int, b: int, holding: Any, release: Any, result: Any) -> None:
    """Process 2: one thread holds stripe b; another then asks for stripe a,
    which process 1 holds while one of its threads waits for b."""
    import threading

    archive = PaletteArchive.open(data_dir, shared=True, inline_max=0)
    try:
        def hold_b() -> None:
            with archive._stripe_locks([b]):
                holding.set()
                release.wait(30)

        holder = threading.Thread(target=hold_b)
        holder.start()
        holding.wait(30)
        _START.wait(30)  # process 1's second thread is waiting for b now
        try:
            with archive._stripe_locks([a]):
                result.put("locked")
        except OSError as exc:
            result.put(f"error {exc.errno}")
        release.set()
        holder.join(30)
    finally:
        archive.close()


def test_the_kernels_false_deadlock_is_waited_out(tmp_path: Path) -> None:
    """POSIX record locks belong to processes: process 1 (thread 1 holding
    stripe a, thread 2 waiting for b) and process 2 (holding b, now asking
    for a) look deadlocked to the kernel (EDEADLK), though thread 1 will
    release a. The commit waits instead of failing the stores."""
    import threading
    import time

    data = tmp_path / "data"
    supervisor = PaletteArchive.open(data, inline_max=0)
    supervisor.share()
    mine = PaletteArchive.open(data, shared=True, inline_max=0)
    a, b = 3, 40
    context = multiprocessing.get_context("spawn")
    holding, release, start = context.Event(), context.Event(), context.Event()
    result = context.Queue()
    child = context.Process(target=_hold_b_then_take_a_main, args=(str(data), a, b, holding, release, result, start))
    try:
        with mine._stripe_locks([a]):
            child.start()
            assert holding.wait(30)
            def take_b() -> None:
                with mine._stripe_locks([b]):
                    pass

            waiter = threading.Thread(target=take_b, daemon=True)
            waiter.start()
            time.sleep(0.3)  # thread 2 blocked on b
            start.set()
            time.sleep(0.5)  # process 2 asks for a: refused or waiting
        # a released: process 2 gets it, then releases b for our thread 2
        assert result.get(timeout=30) == "locked"
        waiter.join(30)
        assert not waiter.is_alive()
    finally:
        release.set()
        child.join(30)
        mine.close()
        supervisor.close()


def _hold_b_then_take_a_main(data_dir: str, a: int, b: int, holding: Any, release: Any, result: Any, start: Any) -> None:
    _init(start)
    _hold_b_then_take_a(data_dir, a, b, holding, release, result)
