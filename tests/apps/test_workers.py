"""``chromanet serve --workers N`` (issue 14): one supervisor, N worker
processes accepting on one port over one archive.

Checked as an operator sees it, on a subprocess: the workers share the port
and the archive (a palette stored through an association one worker served
is found and retrieved through one the other served, told apart by the
per-worker association counter of the metrics and the pids of the
supervisor's log); SIGTERM drains (an association in progress finishes,
new ones are refused, exit status 0); a worker killed with SIGKILL is
logged and replaced and the port keeps serving; the association limit
holds across workers (A-ASSOCIATE-RJ transient, local limit exceeded:
PS3.8 Table 9-21); the audit trail of several workers is whole JSON lines.
Stores into one archive from several processes at once stay consistent
(``tests/archive/test_archive_shared.py`` for the archive alone).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from chromanet import evt, uids
from chromanet.ae import AE

from helpers.nodeproc import ServeProcess, scrape, value
from helpers.qr import GET, FIND, StoreLog, statuses
from helpers.waits import NETWORK_TIMEOUT, WAIT_TIMEOUT, wait_until

pytestmark = pytest.mark.skipif(os.name != "posix", reason="worker processes are tested on POSIX")

WORKER_METRIC = "chromanet_worker_associations_total"


def scu(store: bool = False) -> AE:
    """Verification and either Color Palette Storage (to store) or FIND and
    GET (which brings Color Palette Storage with the SCP role along)."""
    ae = AE("WORKSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = NETWORK_TIMEOUT
    for context in (uids.Verification, *((uids.ColorPaletteStorage,) if store else (FIND, GET))):
        ae.add_requested_context(context)
    return ae


def new_palette_file(directory: Path, label: str) -> tuple[str, Path]:
    ds = pydicom.dcmread(pydicom.data.get_palette_files("hotiron.dcm")[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ContentLabel = label
    path = directory / f"{label}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID, path


def per_worker(node: ServeProcess) -> dict[str, float]:
    assert node.metrics_port is not None
    samples = scrape(node.metrics_port)
    return {dict(labels)["worker"]: v for (name, labels), v in samples.items() if name == WORKER_METRIC}


def associate_on_worker(node: ServeProcess, ae: AE, want: str | None = None, avoid: str | None = None,
                        store: StoreLog | None = None, tries: int = 60) -> tuple[Any, str]:
    """An association the kernel gave to worker ``want`` (or to any but
    ``avoid``), and that worker's index: associate, see whose counter rose,
    release and try again otherwise."""
    handlers = [(evt.EVT_C_STORE, store)] if store is not None else None
    for _ in range(tries):
        before = per_worker(node)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CHROMANET", evt_handlers=handlers)
        assert assoc.is_established
        served: list[str] = []

        def counted() -> bool:
            # The worker counts it right after writing the A-ASSOCIATE-AC:
            # on a busy machine we may read before it has.
            after = per_worker(node)
            served[:] = [w for w in after if after[w] > before.get(w, 0)]
            return bool(served)

        assert wait_until(counted), before
        assert len(served) == 1, served
        worker = served[0]
        if (want is None or worker == want) and worker != avoid:
            return assoc, worker
        assoc.release()
    raise AssertionError(f"no association on the worker wanted ({want=}, {avoid=}) in {tries} tries")


@pytest.fixture
def workers(tmp_path: Path):
    node = ServeProcess(tmp_path / "data", ["--workers", "2", "--default-access", "all"], metrics=True)
    with node:
        node.wait_ready(workers=2)
        yield node


@pytest.fixture
def workers_on_postgresql(tmp_path: Path, pg_url: str):
    """Two workers whose archive is a PostgreSQL database (each worker opens
    it itself; the supervisor opens no SQLite index)."""
    node = ServeProcess(tmp_path / "data", ["--workers", "2", "--default-access", "all", "--index", pg_url],
                        metrics=True)
    with node:
        node.wait_ready(workers=2)
        yield node


def test_workers_share_the_port_and_the_archive(workers: ServeProcess, tmp_path: Path):
    _store_on_one_find_and_get_on_the_other(workers, tmp_path)


def test_workers_share_a_postgresql_archive(workers_on_postgresql: ServeProcess, tmp_path: Path):
    _store_on_one_find_and_get_on_the_other(workers_on_postgresql, tmp_path)
    assert not (tmp_path / "data" / "index.sqlite3").exists()


def _store_on_one_find_and_get_on_the_other(workers: ServeProcess, tmp_path: Path) -> None:
    pids = workers.worker_pids()
    assert set(pids) == {1, 2} and pids[1] != pids[2] and os.getpid() not in pids.values()
    # Both worker processes said they listen, each under its own pid.
    listening = {int(m[1]) for m in workers.wait_line(r"\[worker-\d+ (\d+)\]: CHROMANET listening", count=2)}
    assert listening == set(pids.values())

    uid, path = new_palette_file(tmp_path, "WORKER_SHARED")
    assoc, stored_on = associate_on_worker(workers, scu(store=True))
    try:
        assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()

    log = StoreLog()
    assoc, other = associate_on_worker(workers, scu(), avoid=stored_on, store=log)
    try:
        assert other != stored_on
        query = pydicom.Dataset()
        query.ContentLabel = "WORKER_SHARED"
        query.SOPInstanceUID = ""
        found = [ident.SOPInstanceUID for status, ident in assoc.send_c_find(query, FIND)
                 if status.Status == 0xFF00]  # fmt: skip
        assert found == [uid]
        retrieve = pydicom.Dataset()
        retrieve.SOPInstanceUID = uid
        assert statuses(list(assoc.send_c_get(retrieve, GET)))[-1] == 0x0000
        assert log.uids == [uid]
    finally:
        assoc.release()
    counts = per_worker(workers)
    assert counts[stored_on] >= 1 and counts[other] >= 1


def test_sigterm_drains_then_exits_zero(tmp_path: Path):
    node = ServeProcess(tmp_path / "data", ["--workers", "2", "--drain-timeout", "20"])
    with node:
        node.wait_ready(workers=2)
        ae = scu()
        busy = ae.associate("127.0.0.1", node.port, ae_title="CHROMANET")
        assert busy.is_established
        node.process.send_signal(signal.SIGTERM)
        node.wait_line(r"draining: 1 association\(s\) in progress")

        # New associations are refused (nothing accepts any more).
        def refused() -> bool:
            assoc = ae.associate("127.0.0.1", node.port, ae_title="CHROMANET")
            if assoc.is_established:
                assoc.release()
                return False
            return True

        assert wait_until(refused)
        # The one in progress still works, and ends as its peer decides.
        assert busy.send_c_echo().Status == 0x0000
        assert node.process.poll() is None
        busy.release()
        assert node.process.wait(WAIT_TIMEOUT) == 0
    assert "drain timeout" not in node.output
    assert "stopped" in node.output


def test_sigterm_aborts_what_outlasts_the_drain_timeout(tmp_path: Path):
    node = ServeProcess(tmp_path / "data", ["--workers", "2", "--drain-timeout", "1"])
    with node:
        node.wait_ready(workers=2)
        busy = scu().associate("127.0.0.1", node.port, ae_title="CHROMANET")
        assert busy.is_established
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(WAIT_TIMEOUT) == 0
        assert wait_until(lambda: busy.is_aborted)
    assert "drain timeout (1 s): aborting 1 association(s)" in node.output


def test_a_killed_worker_is_replaced(workers: ServeProcess):
    pids = workers.worker_pids()
    os.kill(pids[1], signal.SIGKILL)
    workers.wait_line(rf"WARNING chromanet.workers .*worker 1 \(pid {pids[1]}\) killed by SIGKILL")
    workers.wait_line(r"worker 1 started \(pid \d+\)", count=2)
    replaced = workers.worker_pids()
    assert replaced[1] != pids[1] and replaced[2] == pids[2]
    workers.wait_line(r"CHROMANET listening", count=3, timeout=60)
    # The port keeps serving, on both sockets: every association works.
    ae = scu()
    served = set()
    for _ in range(12):
        assoc, worker = associate_on_worker(workers, ae)
        served.add(worker)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    assert served == {"1", "2"}


def test_the_association_limit_holds_across_workers(tmp_path: Path):
    node = ServeProcess(tmp_path / "data", ["--workers", "2", "--max-associations", "2"], metrics=True)
    with node:
        node.wait_ready(workers=2)
        ae = scu()
        held = []
        try:
            # Two held associations, on whichever workers; with a limit per
            # worker the next ones would still land where there is room.
            while len(held) < 2:
                assoc = ae.associate("127.0.0.1", node.port, ae_title="CHROMANET")
                assert assoc.is_established
                held.append(assoc)
            for _ in range(8):
                refused = ae.associate("127.0.0.1", node.port, ae_title="CHROMANET")
                assert refused.is_rejected
                rj = refused.acse_response
                assert (rj.result, rj.source, rj.reason) == (2, 3, 2)
            # Counted when the refused connection closes, which may be just
            # after the peer has read the A-ASSOCIATE-RJ.
            assert wait_until(lambda: value(scrape(node.metrics_port or 0), "chromanet_associations_rejected_total",
                                            reason="local limit exceeded") == 8)  # fmt: skip
        finally:
            for assoc in held:
                assoc.release()
        # Released: room again.
        assert wait_until(lambda: value(scrape(node.metrics_port or 0), "chromanet_associations_open") == 0)
        again = ae.associate("127.0.0.1", node.port, ae_title="CHROMANET")
        assert again.is_established
        again.release()


def test_the_audit_trail_of_several_workers_is_whole_lines(tmp_path: Path):
    audit = tmp_path / "audit.jsonl"
    node = ServeProcess(tmp_path / "data", ["--workers", "2", "--audit-file", str(audit)], metrics=True)
    with node:
        node.wait_ready(workers=2)
        ae = scu()
        served = set()
        for _ in range(30):
            assoc, worker = associate_on_worker(node, ae)
            served.add(worker)
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
            if served == {"1", "2"} and _ >= 10:
                break
        assert served == {"1", "2"}
    assert node.process.returncode == 0
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    associations = [r for r in records if r["record"] == "association" and r["result"] == "released"]
    starts = [r for r in records if r["record"] == "application" and r["event"] == "start"]
    pids = set(node.worker_pids().values())
    assert {r["pid"] for r in starts} == pids
    assert {r["pid"] for r in associations} == pids
    assert sum(r["operations"].get("C-ECHO", 0) for r in associations) == len(associations)


def test_tls_listener_with_workers(tmp_path: Path, pki):
    """The TLS listener's sockets are the supervisor's too: both workers
    serve DICOM over TLS (PS3.15 B.1) on one port."""
    import subprocess
    import sys

    from helpers.servers import free_port, wait_listening
    from helpers.tls import client_tls_flags

    tls = free_port()
    node = ServeProcess(tmp_path / "data", [
        "--workers", "2", "--tls-port", str(tls), "--tls-certificate", str(pki.server.certificate),
        "--tls-key", str(pki.server.key), "--tls-ca", str(pki.ca)], metrics=True)  # fmt: skip
    with node:
        node.wait_ready(workers=2)
        wait_listening(tls)
        trust = client_tls_flags(pki)

        def both_served() -> bool:
            echo = subprocess.run([sys.executable, "-m", "chromanet.apps.cli", "echo", "127.0.0.1", str(tls), *trust],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert echo.returncode == 0, echo.stderr
            counts = per_worker(node)
            return all(counts.get(w, 0) > 0 for w in ("1", "2"))

        assert wait_until(both_served, timeout=60)
    assert node.process.returncode == 0


def test_a_second_sigterm_aborts_at_once(tmp_path: Path):
    node = ServeProcess(tmp_path / "data", ["--workers", "2", "--drain-timeout", "120"])
    with node:
        node.wait_ready(workers=2)
        busy = scu().associate("127.0.0.1", node.port, ae_title="CHROMANET")
        assert busy.is_established
        node.process.send_signal(signal.SIGTERM)
        node.wait_line(r"draining: 1 association\(s\) in progress")
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(WAIT_TIMEOUT) == 0, node.output  # far within the 120 s drain
        assert wait_until(lambda: busy.is_aborted)
    assert "again: aborting" in node.output
