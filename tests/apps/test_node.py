"""`chromanet serve` as users run it: a subprocess on a free port, driven by
the chromanet CLI, pynetdicom and DCMTK; restarts; a server killed in the
middle of a store; a store aborted by its client."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.uid import generate_uid

from chromanet import _pdu, uids

from helpers.data import StoredView
from helpers.dcmtk import require_dcmtk, storescp_palette_options
from helpers.peers import require_module
from helpers.rawpeer import partial_store
from helpers.servers import free_port, subprocess_server, wait_listening
from helpers.waits import WAIT_TIMEOUT

WELL_KNOWN = {f"1.2.840.10008.1.5.{n}" for n in range(1, 9)}


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chromanet.apps.cli", *args], capture_output=True, text=True, timeout=timeout
    )


class Node:
    def __init__(self, data_dir: Path, port: int, extra: list[str]) -> None:
        self.data_dir = data_dir
        self.port = port
        self.extra = extra
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        args = [
            sys.executable, "-m", "chromanet.apps.cli", "serve",
            "--data-dir", str(self.data_dir), "--port", str(self.port), "--bind", "127.0.0.1",
            "--log-level", "INFO", *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_listening(self.port, self.process, timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> str:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            output, _ = self.process.communicate(timeout=WAIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        self.process = None
        return output

    def index_uids(self) -> set[str]:
        with contextlib.closing(sqlite3.connect(self.data_dir / "index.sqlite3")) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
                if "sop_instance_uid" in columns:
                    return {r[0] for r in db.execute(f"SELECT sop_instance_uid FROM {table}")}
        raise AssertionError("no table with sop_instance_uid in the index")

    def stored_files(self) -> list[Path]:
        return sorted(p for p in (self.data_dir / "files").rglob("*") if p.is_file())

    @property
    def stored(self) -> StoredView:
        """What the node's archive holds (its index and files)."""
        return StoredView(self.data_dir)

    def leftovers(self) -> list[Path]:
        """Files a crash or an abort could leave: temporary or spooled."""
        return [p for p in self.data_dir.rglob(".*") if p.is_file()]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    destination_port = free_port()
    server = Node(tmp_path / "data", free_port(), ["--move-dest", f"DEST=127.0.0.1:{destination_port}", "--default-access", "all"])
    server.destination_port = destination_port  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()


def new_palette(label: str = "TEST_LUT") -> pydicom.Dataset:
    """A copy of Hot Iron under a new SOP Instance UID and label."""
    ds = pydicom.dcmread(pydicom.data.get_palette_files("hotiron.dcm")[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ContentLabel = label
    ds.PaletteColorLookupTableUID = generate_uid()
    return ds


# ------------------------------------------------------------ the CLI
def test_cli_echo_find_get_store(node: Node, tmp_path: Path):
    assert cli("echo", "127.0.0.1", str(node.port)).returncode == 0

    found = cli("find", "127.0.0.1", str(node.port), "-k", "ContentLabel=*")
    assert found.returncode == 0, found.stderr
    assert {line.split()[0] for line in found.stdout.splitlines()} == WELL_KNOWN

    hot = cli("find", "127.0.0.1", str(node.port), "-k", "ContentLabel=HOT*")
    assert {line.split()[1] for line in hot.stdout.splitlines()} == {"HOT_IRON", "HOT_METAL_BLUE"}

    out = tmp_path / "got"
    got = cli("get", "127.0.0.1", str(node.port), "-k", "SOPInstanceUID=1.2.840.10008.1.5.1\\1.2.840.10008.1.5.8",
              "-od", str(out))  # fmt: skip
    assert got.returncode == 0, got.stderr
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in out.iterdir()}
    assert set(received) == {"1.2.840.10008.1.5.1", "1.2.840.10008.1.5.8"}
    for path in pydicom.data.get_palette_files("*.dcm"):
        original = pydicom.dcmread(path)
        if original.SOPInstanceUID in received:
            copy = received[original.SOPInstanceUID]
            for element in original:
                assert copy[element.tag].value == element.value

    palette = new_palette("CLI_STORED")
    source = tmp_path / "new.dcm"
    palette.save_as(source, enforce_file_format=True)
    stored = cli("store", "127.0.0.1", str(node.port), str(source))
    assert stored.returncode == 0, stored.stdout + stored.stderr
    again = cli("find", "127.0.0.1", str(node.port), "-k", "ContentLabel=CLI_STORED")
    assert again.stdout.split()[0] == palette.SOPInstanceUID


def test_cli_failures_exit_non_zero(node: Node, tmp_path: Path):
    # Nothing listens there: the association fails.
    assert cli("echo", "127.0.0.1", str(free_port()), "--timeout", "5").returncode == 1
    # A UID that is not stored: its sub-operation fails, the final status is a failure.
    missing = cli("get", "127.0.0.1", str(node.port), "-k", "SOPInstanceUID=1.2.3.4", "-od", str(tmp_path))
    assert missing.returncode == 1 and "0xA702" in missing.stderr
    # A move destination the node does not know.
    unknown = cli("move", "127.0.0.1", str(node.port), "-aem", "NOBODY", "-k", "SOPInstanceUID=1.2.840.10008.1.5.1")
    assert unknown.returncode == 1 and "0xA801" in unknown.stderr
    # An identifier the Color Palette model refuses: Query/Retrieve Level
    # must not be present (PS3.4 X.4.1) -> 0xA900, for FIND and for GET.
    refused = cli("find", "127.0.0.1", str(node.port), "-k", "QueryRetrieveLevel=IMAGE")
    assert refused.returncode == 1 and "0xA900" in refused.stderr
    refused = cli("get", "127.0.0.1", str(node.port), "-k", "SOPInstanceUID=1.2.840.10008.1.5.1",
                  "-k", "QueryRetrieveLevel=IMAGE", "-od", str(tmp_path))  # fmt: skip
    assert refused.returncode == 1 and "0xA900" in refused.stderr
    # Bad usage.
    assert cli("find", "127.0.0.1", str(node.port), "-k", "NotAKeyword=1").returncode == 2


def test_cli_move_into_dcmtk_storescp(node: Node, tmp_path: Path):
    storescp = require_dcmtk("storescp")
    out = tmp_path / "moved"
    out.mkdir()
    port = node.destination_port  # type: ignore[attr-defined]
    with subprocess_server([storescp, *storescp_palette_options(), "-od", str(out), str(port)], port):
        moved = cli("move", "127.0.0.1", str(node.port), "-aem", "DEST", "-k",
                    "SOPInstanceUID=" + "\\".join(sorted(WELL_KNOWN)))  # fmt: skip
        assert moved.returncode == 0, moved.stderr
    assert {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()} == WELL_KNOWN


# ------------------------------------------------------------ pynetdicom
def test_pynetdicom_against_node(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pynetdicom = require_module("pynetdicom")
    from pydicom import Dataset

    received: list[str] = []

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    ae = pynetdicom.AE("PYN")
    for model in (uids.ColorPaletteInformationModelFind, uids.ColorPaletteInformationModelGet,
                  uids.ColorPaletteStorage):  # fmt: skip
        ae.add_requested_context(model)
    role = pynetdicom.build_role(uids.ColorPaletteStorage, scu_role=True, scp_role=True)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CHROMANET", ext_neg=[role],
                         evt_handlers=[(pynetdicom.evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    try:
        query = Dataset()
        # "*LUT" is a query, not a valid CS value: no warning about it.
        monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
        query.ContentLabel = "*LUT"
        query.SOPInstanceUID = ""
        labels = [
            identifier.ContentLabel
            for status, identifier in assoc.send_c_find(query, uids.ColorPaletteInformationModelFind)
            if status.Status == 0xFF00
        ]
        assert sorted(labels) == ["FALL LUT", "SPRING LUT", "SUMMER LUT", "WINTER LUT"]

        palette = new_palette("PYN_STORED")
        assert assoc.send_c_store(palette).Status == 0x0000

        retrieve = Dataset()
        retrieve.SOPInstanceUID = [palette.SOPInstanceUID, "1.2.840.10008.1.5.2"]
        statuses = [s.Status for s, _ in assoc.send_c_get(retrieve, uids.ColorPaletteInformationModelGet)]
        assert statuses[-1] == 0x0000
        assert sorted(received) == sorted([palette.SOPInstanceUID, "1.2.840.10008.1.5.2"])
    finally:
        assoc.release()


def test_pynetdicom_move_from_node_to_pynetdicom_scp(node: Node):
    """pynetdicom as the C-MOVE SCU and as the destination's Storage SCP."""
    pynetdicom = require_module("pynetdicom")
    from pydicom import Dataset

    arrived: list[tuple[str, str]] = []

    def on_store(event):
        arrived.append((event.dataset.SOPInstanceUID, event.request.MoveOriginatorApplicationEntityTitle))
        return 0x0000

    destination = pynetdicom.AE("DEST")
    destination.add_supported_context(uids.ColorPaletteStorage)
    port = node.destination_port  # type: ignore[attr-defined]
    server = destination.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(pynetdicom.evt.EVT_C_STORE, on_store)])  # fmt: skip
    try:
        ae = pynetdicom.AE("PYMOVER")
        ae.add_requested_context(uids.ColorPaletteInformationModelMove)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CHROMANET")
        assert assoc.is_established
        try:
            query = Dataset()
            query.SOPInstanceUID = ["1.2.840.10008.1.5.1", "1.2.840.10008.1.5.4"]
            responses = list(assoc.send_c_move(query, "DEST", uids.ColorPaletteInformationModelMove))
        finally:
            assoc.release()
    finally:
        server.shutdown()
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 2
    assert sorted(arrived) == [("1.2.840.10008.1.5.1", "PYMOVER"), ("1.2.840.10008.1.5.4", "PYMOVER")]


# ------------------------------------------------------------ DCMTK
def test_dcmtk_storescu_and_echoscu_into_node(node: Node, tmp_path: Path):
    storescu = require_dcmtk("storescu")
    echoscu = require_dcmtk("echoscu")
    assert subprocess.run([echoscu, "-aec", "CHROMANET", "127.0.0.1", str(node.port)],
                          capture_output=True, timeout=60).returncode == 0  # fmt: skip
    files = []
    for label in ("DCMTK_ONE", "DCMTK_TWO"):
        palette = new_palette(label)
        path = tmp_path / f"{label}.dcm"
        palette.save_as(path, enforce_file_format=True)
        files.append((palette.SOPInstanceUID, path))
    result = subprocess.run([storescu, "-R", "-aec", "CHROMANET", "127.0.0.1", str(node.port), *(str(p) for _, p in files)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert {uid for uid, _ in files} <= node.index_uids()


# ------------------------------------------------------------ durability
def test_restart_keeps_index_and_files(node: Node, tmp_path: Path):
    palette = new_palette("SURVIVOR")
    source = tmp_path / "survivor.dcm"
    palette.save_as(source, enforce_file_format=True)
    assert cli("store", "127.0.0.1", str(node.port), str(source)).returncode == 0
    files_before = node.stored_files()
    stored_before = node.stored.part10(palette.SOPInstanceUID)
    assert stored_before is not None
    node.stop()
    node.start()
    assert node.index_uids() == WELL_KNOWN | {palette.SOPInstanceUID}
    assert node.stored_files() == files_before
    assert node.stored.part10(palette.SOPInstanceUID) == stored_before and node.stored.consistent()
    found = cli("find", "127.0.0.1", str(node.port), "-k", "ContentLabel=SURVIVOR")
    assert found.stdout.split()[0] == palette.SOPInstanceUID


def _encoded(ds: pydicom.Dataset) -> bytes:
    from chromanet import dsutil

    return dsutil.encode_dataset(ds, uids.ExplicitVRLittleEndian)


def test_server_killed_mid_store_leaves_nothing_partial(node: Node):
    """Every data set spooled (``--store-memory-limit 0``): a kill while one
    arrives leaves a partial spool file, which the restart removes."""
    node.stop()
    node.extra = [*node.extra, "--store-memory-limit", "0"]
    node.start()
    palette = new_palette("KILLED")
    sock = partial_store(node.port, _encoded(palette), palette.SOPInstanceUID)
    # Wait until the server has spooled part of it, then kill it hard.
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not node.leftovers() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node.leftovers(), "the partial data set was never spooled"
    node.stop(signal.SIGKILL)
    sock.close()
    node.start()
    assert palette.SOPInstanceUID not in node.index_uids()
    assert node.leftovers() == []
    assert all(pydicom.dcmread(p).SOPInstanceUID in node.index_uids() for p in node.stored_files())
    assert node.stored.consistent()


def test_client_abort_mid_store_leaves_nothing_partial(node: Node):
    palette = new_palette("ABORTED")
    sock = partial_store(node.port, _encoded(palette), palette.SOPInstanceUID)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not node.leftovers() and time.monotonic() < deadline:
        time.sleep(0.02)
    sock.sendall(_pdu.encode_pdu(_pdu.Abort(source=0, reason=0)))
    sock.close()
    deadline = time.monotonic() + WAIT_TIMEOUT
    while node.leftovers() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node.leftovers() == []
    assert palette.SOPInstanceUID not in node.index_uids()
    # The node still works.
    assert cli("echo", "127.0.0.1", str(node.port)).returncode == 0


def test_config_file_and_allowed_calling_aets(tmp_path: Path):
    config = tmp_path / "node.toml"
    port = free_port()
    config.write_text(
        f'ae_title = "PALETTES"\nport = {port}\nbind_address = "127.0.0.1"\n'
        f'data_dir = "{tmp_path / "d"}"\nallowed_calling_aets = ["FRIEND"]\n'
        '[move_destinations]\nDEST = ["127.0.0.1", 11112]\n'
    )
    process = subprocess.Popen([sys.executable, "-m", "chromanet.apps.cli", "serve", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_listening(port, process, timeout=30)
        ok = cli("echo", "127.0.0.1", str(port), "-aec", "PALETTES", "-aet", "FRIEND")
        assert ok.returncode == 0, ok.stderr
        refused = cli("echo", "127.0.0.1", str(port), "-aec", "PALETTES", "-aet", "STRANGER")
        assert refused.returncode == 1 and "rejected" in refused.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=WAIT_TIMEOUT)
    assert process.returncode == 0
    assert os.path.exists(tmp_path / "d" / "index.sqlite3")
