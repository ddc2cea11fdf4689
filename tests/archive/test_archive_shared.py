"""One archive, several processes (``chromanet serve --workers``; see
``archive/store.py``, "Several processes").

- The supervisor's exclusive open (recovery, seeding) becomes a shared
  lock that worker processes join with ``shared=True``; a process wanting
  the data directory to itself is still refused.
- Stores from several processes at once, of the same SOP Instance UIDs
  (last write wins, each replacement removing the file it replaced) and of
  new ones, leave index and files in agreement: one file per row, no
  temporary, no file without a row, and the row count what was stored.
- A shared open does not recover: another process's store in progress
  (a renamed file whose row is not committed yet) is not debris.
- Processes sharing the index take turns to write it through a byte-range
  lock of commit.lock, waited for in the kernel (not SQLite's sleeping
  busy handler): a store waits while another process holds the turn and
  commits as soon as it is let go.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from chromanet.archive import ArchiveBusyError, PaletteArchive

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock and lockf")

SHARED_UIDS = [f"1.2.826.0.1.3680043.10.1437.{n}" for n in range(1, 6)]
ROUNDS = 12


def _palette(uid: str, label: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(pydicom.data.get_palette_files("hotiron.dcm")[0])
    ds.SOPInstanceUID = uid
    ds.ContentLabel = label
    return ds


_START: Any = None


def _init(start: Any) -> None:
    global _START
    _START = start


def _store_many(data_dir: str, who: str) -> list[int]:
    """A worker: the shared UIDs ROUNDS times over, and ROUNDS of its own,
    all workers starting together."""
    archive = PaletteArchive.open(data_dir, shared=True, inline_max=0)
    statuses = []
    try:
        _START.wait(30)
        for round_ in range(ROUNDS):
            for uid in SHARED_UIDS:
                statuses.append(archive.ingest_dataset(_palette(uid, f"{who}_{round_}")).status)
            statuses.append(archive.ingest_dataset(_palette(generate_uid(), f"{who}_OWN")).status)
    finally:
        archive.close()
    return statuses


def test_stores_from_several_processes_stay_consistent(tmp_path: Path):
    data = tmp_path / "data"
    supervisor = PaletteArchive.open(data, inline_max=0)
    supervisor.share()
    try:
        with pytest.raises(ArchiveBusyError):
            PaletteArchive(data, inline_max=0)  # exclusive: refused while shared
        context = multiprocessing.get_context("spawn")
        start = context.Event()
        with context.Pool(3, initializer=_init, initargs=(start,)) as pool:
            results = [pool.apply_async(_store_many, (str(data), f"W{n}")) for n in range(3)]
            start.set()
            statuses = [status for result in results for status in result.get(timeout=120)]
        assert statuses and set(statuses) == {0x0000}
        report = supervisor.verify()
        assert not report.temp_files and not report.files_without_row and not report.rows_without_file
        assert not report.size_mismatches
        assert len(supervisor) == 8 + len(SHARED_UIDS) + 3 * ROUNDS
        files = sorted(p.name for p in (data / "files").iterdir())
        assert len(files) == len(supervisor)
    finally:
        supervisor.close()


def test_a_shared_open_leaves_other_processes_files_alone(tmp_path: Path):
    data = tmp_path / "data"
    with PaletteArchive.open(data, seed=False, inline_max=0) as first:
        first.share()
        # What another process's store looks like between its rename and
        # its index commit: a complete file that no row names yet.
        in_flight = data / "files" / f"{generate_uid()}.dcm"
        in_flight.write_bytes(b"\0" * 200)
        temp = data / "files" / ".tmp-inflight.dcm"
        temp.write_bytes(b"\0" * 10)
        with PaletteArchive.open(data, shared=True, inline_max=0) as worker:
            assert worker.shared and not worker.recovered.files_without_row
        assert in_flight.exists() and temp.exists()
    # Alone again, an exclusive open recovers both.
    with PaletteArchive.open(data, seed=False, inline_max=0) as alone:
        assert in_flight in alone.recovered.files_without_row and temp in alone.recovered.temp_files
    assert not in_flight.exists() and not temp.exists()


def _hold_the_index_turn(data_dir: str, held: Any, release: Any) -> None:
    import fcntl

    from chromanet.archive.store import _INDEX_TURN

    with open(Path(data_dir) / "commit.lock", "a+b") as handle:
        fcntl.lockf(handle.fileno(), fcntl.LOCK_EX, 1, _INDEX_TURN)
        held.set()
        release.wait(60)


def test_a_store_waits_for_the_index_turn_another_process_holds(tmp_path: Path) -> None:
    import threading

    data = tmp_path / "data"
    supervisor = PaletteArchive.open(data)
    supervisor.share()
    worker = PaletteArchive.open(data, shared=True)
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_the_index_turn, args=(str(data), held, release))
    holder.start()
    try:
        assert held.wait(60)
        results: list[Any] = []
        storing = threading.Thread(target=lambda: results.append(worker.ingest_dataset(_palette(generate_uid(), "TURN"))))
        storing.start()
        storing.join(0.5)
        assert storing.is_alive() and not results  # waiting for its turn
        release.set()
        storing.join(30)
        assert results and results[0].ok
    finally:
        release.set()
        holder.join(30)
        worker.close()
        supervisor.close()
